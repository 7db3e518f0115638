"""Training throughput: env steps per second of the same config with and without the teacher.

  python -m rpd_jax.bench.train --config=experiments/jax_push.py --iterations=10

Runs each listed variant (default: ppo and rpd_mse) for ``--iterations`` PPO iterations in a
temporary workdir, in one process one after the other, and reports the steady-state env steps
per second (the first iteration, which compiles, is excluded) with the split of an iteration into
simulating (``env.step``), acting (the student's forward pass), the rest of the rollout, and the
update (which holds the teacher query). ``--query_fractions`` measures each distilling variant
at each teacher budget (``config.teacher.query_fraction``), and ``--rounds`` repeats the whole
list in turns, so that a machine's changing load falls on every row alike:

  python -m rpd_jax.bench.train --config=experiments/pushcube.py --variants=ppo,rpd_mse \
      --query_fractions=1,0.25 --rounds=2 --iterations=4
Target-KL early stopping is off, so every variant does the same number of minibatch steps.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
from absl import flags

from rpd_jax import cli
from rpd_jax import config as config_lib
from rpd_jax import trainer
from rpd_jax.errors import ConfigError


# The loss variants of rpd_jax.config.COMMON_VARIANTS (which says which loss each one sets).
_LOSS_VARIANTS = ("ppo", "rpd_mse", "rpd_l1", "rpd_bc", "ppd")


def measure(config, iterations: int) -> dict[str, float]:
  c = config
  batch = c.env.num_envs * c.ppo.num_steps
  c.total_env_steps = iterations * batch
  c.eval_every = c.checkpoint_every = iterations + 1
  c.log_every = 1  # one metrics row per iteration (a row averages the iterations since the last)
  # Target-KL early stopping skips the rest of an update once the policy moved far enough, and
  # how often that happens depends on the loss: compare the same work, every minibatch step.
  c.ppo.target_kl = 0.0
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train_and_evaluate(c, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(l) for l in f][1:]  # drop the compiling iteration
  median = lambda name: float(np.median([r.get(name, 0.0) for r in rows]))
  rollout, update = median("time/rollout_s"), median("time/update_s")
  return {"env_steps_per_s": batch / (rollout + update), "rollout_s": rollout,
          "simulate_s": median("time/simulate_s"), "act_s": median("time/act_s"),
          "update_s": update, "transitions_per_iteration": batch,
          "teacher_calls_per_step": median("teacher/calls_per_step")}


def main(base_config, spec: str) -> None:
  del spec
  iterations, variants = flags.FLAGS.iterations, flags.FLAGS.variants
  if iterations < 2:
    raise ConfigError(f"--iterations={iterations} must be >= 2: the first one compiles")
  unknown = [v for v in variants if v not in _LOSS_VARIANTS]
  if unknown:
    raise ConfigError(f"unknown variants {unknown}; use some of {', '.join(_LOSS_VARIANTS)}")
  try:
    fractions = [float(f) for f in flags.FLAGS.query_fractions]
  except ValueError:
    raise ConfigError(f"--query_fractions={','.join(flags.FLAGS.query_fractions)}: give "
                      "numbers in (0, 1], e.g. --query_fractions=1,0.25") from None
  if flags.FLAGS.rounds < 1:
    raise ConfigError(f"--rounds={flags.FLAGS.rounds} must be >= 1")
  configs = []
  for variant in variants:
    for fraction in fractions:
      config = base_config.copy_and_resolve_references()
      config_lib.COMMON_VARIANTS[variant](config)
      if config.distill.loss == "none" and fraction != fractions[0]:
        continue  # no teacher: a budget changes nothing
      config.teacher.query_fraction = fraction
      # Every row's error first; validation also fills what the backend decides (num_envs).
      config_lib.validate(config)
      config.eval_episodes = config.eval_envs
      configs.append((variant, fraction, config))
  print("| variant | query fraction | env steps/s | rollout s/iter | simulate s | act s | "
        "update s/iter | teacher answers/step | transitions/iter |")
  print("|---|---|---|---|---|---|---|---|---|")
  for _ in range(flags.FLAGS.rounds):
    for variant, fraction, config in configs:
      r = measure(config.copy_and_resolve_references(), iterations)
      shown = "-" if config.distill.loss == "none" else f"{fraction:g}"
      print(f"| {variant} | {shown} | {r['env_steps_per_s']:.1f} | {r['rollout_s']:.3f} | "
            f"{r['simulate_s']:.3f} | {r['act_s']:.3f} | {r['update_s']:.3f} | "
            f"{r['teacher_calls_per_step']:.3g} | {r['transitions_per_iteration']} |",
            flush=True)


if __name__ == "__main__":  # flags here: the suite imports this module for ``measure``
  flags.DEFINE_list("variants", ["ppo", "rpd_mse"], "Losses to compare.")
  flags.DEFINE_integer("iterations", 10, "PPO iterations per variant (>= 2).")
  flags.DEFINE_list("query_fractions", ["1"], "Teacher budgets (config.teacher.query_fraction) "
                    "each distilling variant is measured at.")
  flags.DEFINE_integer("rounds", 1, "Times the whole list is measured, in turns.")
  cli.run_with_config(main)
