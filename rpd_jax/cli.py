"""One command-line pattern for every command: absl flags, and bad input as one ``error:`` line.

  cli.run(main)               main(): flags only (``positional=True``: main(args))
  cli.run_with_config(main)   main(config, spec): ``--config=<file>.py[:variants]`` loaded by
                              ``rpd_jax.config.load``, then ``--config.x.y=value`` overrides
                              (ml_collections); ``spec`` is the ``--config`` text
  cli.run_with_config(main, from_workdir=True)
                              the same with the config of the run in ``--workdir`` (its
                              config.json); ``spec`` is the workdir

A bad flag, config file, variant or override, and any ConfigError or FileNotFoundError that
``main`` raises (an unknown teacher, a missing checkpoint), print ``error: <message>`` on stderr
and exit with status 2, without a traceback; a RunError (a simulator worker died, a full disk)
does the same with status 1.
"""

from __future__ import annotations

import logging as std_logging
import re
import shlex
import sys
from typing import Callable, NoReturn, Optional

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from rpd_jax import config as config_lib
from rpd_jax import preemption
from rpd_jax.errors import ConfigError, RunError

USER_ERRORS = (ConfigError, FileNotFoundError)


def fail(message: str, status: int = 2) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def stopped(stop: preemption.Stopped, module: str, workdir: Optional[str] = None) -> NoReturn:
  """The one line a command stopped by a signal prints (what it saved, how to resume), then
  the conventional exit status. ``workdir``: added to the command when it was a default."""
  if stop.checkpoint is None:
    print(f"{stop}: nothing saved", file=sys.stderr)
  else:
    command = " ".join([f"python -m {module}"] + [shlex.quote(a) for a in sys.argv[1:]])
    if workdir is not None:
      command += f" --workdir={shlex.quote(workdir)}"
    print(f"{stop}: saved {stop.checkpoint}; resume with: {command}", file=sys.stderr)
  sys.exit(preemption.exit_status(stop.signum))


def quiet_libraries() -> None:
  """Keeps the console for the command's own progress: orbax logs every step of every save at
  INFO, JAX its search for backends this machine lacks ("Unable to initialize backend 'tpu'"),
  and jax2onnx its progress."""
  logging.get_absl_handler().addFilter(
      lambda r: "orbax" not in r.pathname and not (
          ("xla_bridge" in r.pathname or "jax2onnx" in r.pathname)
          and r.levelno < std_logging.WARNING))


def integers(values: list[str], flag: str) -> tuple[int, ...]:
  """A list flag's values as integers; ConfigError naming ``--flag`` for one that is not."""
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ConfigError(f"--{flag}={','.join(values)}: give integers, e.g. --{flag}=1,32") from None


def _parse(argv: list[str], config_spec: list[str] | None, positional: bool = False,
           from_workdir: bool = False) -> list[str]:
  """absl's parser; with ``config_spec`` (a list to fill), first loads ``--config=`` (or, with
  ``from_workdir``, the config.json of ``--workdir=``)."""
  try:
    if config_spec is not None:
      flag = "--workdir=" if from_workdir else "--config="
      specs = [a.split("=", 1)[1] for a in argv[1:] if a.startswith(flag)]
      if not specs:
        fail("--workdir is required: the folder of a run (python -m rpd_jax.train --workdir=...)"
             if from_workdir else "--config is required, e.g. --config=experiments/jax_push.py")
      if from_workdir:
        config = config_lib.from_workdir(specs[-1])
      else:
        config = config_lib.load(specs[-1])
        argv = [a for a in argv if not a.startswith("--config=")]
      # The override flags (--config.x.y) are defined from sys_argv as the flag is made.
      config_flags.DEFINE_config_dict("config", config, "the experiment config",
                                      lock_config=True, sys_argv=argv)
      config_spec.append(specs[-1])
    rest = flags.FLAGS(argv)
  except ConfigError as e:
    fail(str(e))
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    if isinstance(e, (KeyError, AttributeError)):  # an override naming no config field
      field = str(e).strip("\"'")
      bad = [a for a in argv[1:] if a.startswith("--config.") and field in a]
      path = bad[0].split("=")[0].removeprefix("--config.") if bad else field
      if path in config_lib.RENAMED:
        fail(f"{bad[0]}: config.{path} is now config.{config_lib.RENAMED[path]}")
      fail(f"{bad[0] if bad else field}: the config has no field {field!r}; see the "
           f"experiment file for the fields it sets")
    # config_flags wraps a config's own exception, traceback and all: keep its last line.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    fail(re.sub(r"^\w+(Error|Exception): ", "", lines[-1] if lines else repr(e)))
  if len(rest) > 1 and not positional:
    fail(f"unexpected arguments: {' '.join(rest[1:])}")
  return rest


def _guarded(call: Callable[[], None]) -> None:
  try:
    call()
  except USER_ERRORS as e:
    fail(str(e))
  except RunError as e:
    fail(str(e), status=1)


def run(main: Callable[..., None], positional: bool = False) -> None:
  """Runs ``main()`` after parsing the flags; ``main(args)`` with the positional arguments if
  ``positional`` (else they are an error)."""
  app.run(lambda argv: _guarded(lambda: main(argv[1:]) if positional else main()),
          flags_parser=lambda argv: _parse(argv, None, positional))


def run_with_config(main: Callable[[ml_collections.ConfigDict, str], None],
                    from_workdir: bool = False) -> None:
  """Runs ``main(config, spec)`` with the ``--config`` file (``from_workdir``: the config.json
  of the run in ``--workdir``, a flag ``main``'s module defines) loaded and overridden."""
  spec: list[str] = []
  app.run(lambda argv: _guarded(lambda: main(flags.FLAGS.config, spec[0])),
          flags_parser=lambda argv: _parse(argv, spec, from_workdir=from_workdir))
