"""Command line: evaluate a saved student with the config of its run.

  python -m rpd_jax.evaluate --workdir=runs/pushcube [--episodes=100] [--videos=4] \\
      [--checkpoint=STEP] [--student=k] [--seed=S] [--out=DIR] [--config.x.y=value ...]

Reads ``<workdir>/config.json`` (any value can be overridden, e.g.
``--config.env.kwargs.sim_backend=physx_cpu`` for a run trained on a GPU, or
``--config.eval_envs=4``), restores the student from the newest checkpoint (or ``--checkpoint``;
of K students trained at once, ``--student``, default 0) and plays ``--episodes`` episodes
with its deterministic action, as the trainer's evaluations do: the same protocol, envs and,
by default, the same seeds as the run's own evaluation at that checkpoint (10,000 + its
iteration onwards), so a one-student run's evaluation is reproduced (of K students, the run
evaluated student k > 0 on the envs after those of the students before it: other seeds). Prints one line of
``eval/`` metrics, led by the success rate, and writes ``metrics.json`` and ``videos/`` to
``--out`` (default ``<workdir>/evaluations/checkpoint<N>_student<k>``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import ml_collections
from absl import flags

from rpd_jax import cli
from rpd_jax import config as config_lib
from rpd_jax import evaluate as evaluate_lib
from rpd_jax import rollout, runs
from rpd_jax.errors import ConfigError


def _apply(c: ml_collections.ConfigDict, episodes: Optional[int], videos: Optional[int]) -> None:
  """``--episodes`` and ``--videos`` into the config, checked."""
  if episodes is not None:
    if episodes < 1 or episodes % c.eval_envs:
      raise ConfigError(f"--episodes={episodes} must be a positive multiple of the run's "
                        f"config.eval_envs={c.eval_envs} (or set --config.eval_envs)")
    c.eval_episodes = episodes
  if videos is not None:
    if videos < 0:
      raise ConfigError(f"--videos={videos} must be >= 0")
    c.eval_videos = videos


def evaluate_run(c: ml_collections.ConfigDict, workdir: str, *, checkpoint: Optional[int] = None,
                 student: int = 0, episodes: Optional[int] = None, videos: Optional[int] = None,
                 seed: Optional[int] = None, out: Optional[str] = None
                 ) -> tuple[dict[str, Any], str]:
  """(metrics.json's contents, the folder written): the flags' evaluation (module doc) of the
  run in ``workdir`` whose config is ``c`` (its config.json, overridden)."""
  _apply(c, episodes, videos)
  config_lib.validate(c)  # resolves what follows this machine, e.g. the simulation backend
  saved = runs.saved_student(c, runs.read_checkpoint(workdir, checkpoint), student)
  out = out or os.path.join(workdir, "evaluations",
                            f"checkpoint{saved.iteration}_student{saved.index}")
  seed = 10_000 + saved.iteration if seed is None else seed
  from rpd_jax.envs import make_env  # pylint: disable=g-import-not-at-top  (after the checks)
  env = make_env(evaluate_lib.env_config(c), c.eval_envs, seed=c.seed + 1, final_obs_keys=(),
                 on_demand_keys=config_lib.unread_keys(c))
  try:
    played = evaluate_lib.episodes(
        env, rollout.student_policy(saved.network, saved.params, deterministic=True),
        c.eval_episodes, seed=seed, key=jax.random.key(seed), protocol=c.eval_protocol,
        steps=c.eval_steps, video_dir=os.path.join(out, "videos"), num_videos=c.eval_videos,
        video_prefix=f"checkpoint{saved.iteration}", progress=True)
    backend = env.sim_backend
  finally:
    env.close()
  record = {"workdir": workdir, "checkpoint": saved.iteration, "env_steps": saved.env_steps,
            "student": saved.index, "students": saved.count, "seed": seed,
            "sim_backend": backend, "protocol": c.eval_protocol,
            **evaluate_lib.summary(played, c.eval_protocol)}
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(record, f, indent=2)
  return record, out


def main(c: ml_collections.ConfigDict, workdir: str) -> None:
  cli.quiet_libraries()
  f = flags.FLAGS
  record, out = evaluate_run(c, workdir, checkpoint=f.checkpoint, student=f.student,
                             episodes=f.episodes, videos=f.videos, seed=f.seed, out=f.out)
  first = "eval/success_rate"
  metrics = sorted(k for k in record if k.startswith("eval/") and k != first)
  line = ", ".join(f"{k}={record[k]:.3f}" for k in [first] + metrics)
  print(f"evaluate {workdir}: checkpoint {record['checkpoint']} ({record['env_steps']} env "
        f"steps), student {record['student']} of {record['students']}, on "
        f"{record['sim_backend']}, seeds {record['seed']}+: {line}; written to {out}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "the run's folder (config.json, checkpoints/)")
  flags.DEFINE_integer("checkpoint", None, "the iteration of the checkpoint to evaluate "
                       "(default: the newest)")
  flags.DEFINE_integer("student", 0, "which of the run's config.num_seeds students")
  flags.DEFINE_integer("episodes", None, "episodes (default: the run's config.eval_episodes; "
                       "a multiple of config.eval_envs)")
  flags.DEFINE_integer("videos", None, "episodes recorded as video (default: the run's "
                       "config.eval_videos)")
  flags.DEFINE_integer("seed", None, "seed of the first episode (default: 10,000 + the "
                       "checkpoint's iteration, the run's own evaluation seeds)")
  flags.DEFINE_string("out", None, "where metrics.json and videos/ go (default: "
                      "<workdir>/evaluations/checkpoint<N>_student<k>)")
  cli.run_with_config(main, from_workdir=True)
