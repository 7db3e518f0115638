"""Command line: ``python -m rpd_jax.train --config=experiments/<name>.py[:variants] --workdir=DIR``.

Override any value with ``--config.x.y=value`` (e.g. ``--config.distill.coef=0.5``). Running
again with the same ``--workdir`` resumes from its last checkpoint.
"""

import glob
import os
import re
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
    _fail(str(e))
  # Orbax logs every step of every save at INFO; keep the console for training progress.
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
  workdir = _WORKDIR.value or config_lib.default_workdir(
      flags.FLAGS["config"].config_filename)
  logging.info("workdir: %s", workdir)
  from rpd_jax import trainer  # after validation: nothing heavy is imported for a bad config
  try:
    final = trainer.train_and_evaluate(config, workdir)
  except (FileNotFoundError, config_lib.ConfigError) as e:  # a missing checkpoint, tokenizer...
    _fail(str(e))
  if not final:  # the checkpoint was already at the last iteration
    print(f"nothing to do: {workdir} holds a finished run; its results are in "
          f"{workdir}/metrics.jsonl (use another --workdir for a new run)")
    return
  print("final evaluation: " + ", ".join(f"{k}={v:.3f}" for k, v in final.items()))


def parse_flags(argv):
  """absl's parser, but a bad config file, variant or override stops with one clear line."""
  config_args = [a for a in argv[1:] if a.startswith("--config=")]
  if config_args:
    path = config_args[-1].split("=", 1)[1].split(":")[0]
    if not os.path.isfile(path):
      _fail(f"config file {path!r} not found; experiments/ has "
            f"{', '.join(sorted(glob.glob('experiments/*.py'))) or 'none here'}")
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    if isinstance(e, (KeyError, AttributeError)):  # an override naming no config field
      field = str(e).strip("\"'")
      bad = [a for a in argv[1:] if a.startswith("--config.") and field in a]
      _fail(f"{bad[0] if bad else field}: the config has no field {field!r}; see the "
            f"experiment file for the fields it sets")
    # config_flags wraps the config module's own exception, traceback and all: keep its last
    # line ("ValueError: unknown config variant ...") without the exception's type.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    last = lines[-1] if lines else repr(e)
    _fail(re.sub(r"^\w+(Error|Exception): ", "", last))


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
