"""Command line: ``python -m rpd_jax.train --config=experiments/<name>.py[:variants] --workdir=DIR``.

Override any value with ``--config.x.y=value`` (e.g. ``--config.distill.coef=0.5``). Running
again with the same ``--workdir`` resumes from its last checkpoint.
"""

import logging as std_logging

from absl import flags, logging

from rpd_jax import cli
from rpd_jax import config as config_lib
from rpd_jax import parallel
from rpd_jax import preemption

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics.jsonl, TensorBoard logs and videos go. "
    "Defaults to runs/<config file name>.")


def main(config, spec: str) -> None:
  # Orbax logs every step of every save at INFO, and JAX its search for backends this machine
  # lacks ("Unable to initialize backend 'tpu'"): keep the console for training progress.
  logging.get_absl_handler().addFilter(
      lambda r: "orbax" not in r.pathname and not (
          "xla_bridge" in r.pathname and r.levelno < std_logging.WARNING))
  # Before anything touches a device: joins a multi-process run (RPD_JAX_COORDINATOR, ...).
  parallel.initialize()
  config_lib.validate(config)
  workdir = _WORKDIR.value or config_lib.default_workdir(spec)
  logging.info("workdir: %s", workdir)
  from rpd_jax import trainer  # after validation: nothing heavy is imported for a bad config
  try:
    final = trainer.train_and_evaluate(config, workdir)
  except preemption.Stopped as e:
    cli.stopped(e, "rpd_jax.train", workdir if not _WORKDIR.value else None)
  if not final:  # the checkpoint was already at the last iteration
    print(f"nothing to do: {workdir} holds a finished run; its results are in "
          f"{workdir}/metrics.jsonl (use another --workdir for a new run)")
    return
  print("final evaluation: " + ", ".join(f"{k}={v:.3f}" for k, v in final.items()))


if __name__ == "__main__":
  cli.run_with_config(main)
