"""Command line: ``python -m rpd_jax.train --config=experiments/<name>.py[:variants] --workdir=DIR``.

Override any value with ``--config.x.y=value`` (e.g. ``--config.distill.coef=0.5``). Running
again with the same ``--workdir`` resumes from its last checkpoint.
"""

from absl import flags, logging

from rpd_jax import cli
from rpd_jax import config as config_lib
from rpd_jax import parallel
from rpd_jax import preemption

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics.jsonl, TensorBoard logs and videos go. "
    "Defaults to runs/<config file name>.")


def main(config, spec: str) -> None:
  cli.quiet_libraries()
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
          f"{workdir}/metrics.jsonl (use another --workdir for a new run). Evaluate it again "
          f"with `python -m rpd_jax.evaluate --workdir={workdir}`, export its student with "
          f"`python -m rpd_jax.export --workdir={workdir} --out=<folder>`")
    return
  print("final evaluation: " + ", ".join(f"{k}={v:.3f}" for k, v in final.items()))


if __name__ == "__main__":
  cli.run_with_config(main)
