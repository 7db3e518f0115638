"""Command line: ``python -m rpd_jax.train --config=experiments/<name>.py[:variants] --workdir=DIR``.

Override any value with ``--config.x.y=value`` (e.g. ``--config.distill.coef=0.5``). Running
again with the same ``--workdir`` resumes from its last checkpoint.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rpd_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/jax_push.py:sparse,smoke.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics.jsonl, TensorBoard logs and videos go. "
    "Defaults to runs/<config file name>.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=experiments/jax_push.py")
  config = _CONFIG.value
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  logging.info("workdir: %s", workdir)
  from rpd_jax import trainer  # after validation: nothing heavy is imported for a bad config
  final = trainer.train_and_evaluate(config, workdir)
  print("final evaluation: " + ", ".join(f"{k}={v:.3f}" for k, v in final.items()))


def default_workdir(config_path: str) -> str:
  import os
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("runs", name)


if __name__ == "__main__":
  app.run(main)
