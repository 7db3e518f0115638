"""One function in a fresh Python process, with a time limit: how ManiSkill settings are measured.

SAPIEN does not give GPU memory back when an env closes, and CPU and GPU PhysX cannot share a
process (GPU PhysX must be enabled before any CPU PhysX scene exists, and gymnasium's
AsyncVectorEnv builds a CPU env in the parent). So the device suite and the GPU check run each
ManiSkill setting in its own process:

  row = isolated.call("rpd_jax.bench.suite:training_row", {"spec": ..., ...}, timeout_s=600)

The function takes JSON-able keyword arguments and returns a JSON-able value. The child runs in
its own session; on a timeout the whole group (ManiSkill's worker processes too) is killed.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any, Mapping, Optional

from rpd_jax.errors import RunError

TAIL = 3000  # characters of the child's stderr an error quotes


class Timeout(RunError):
  """The function ran past its time limit; its process group was killed."""


def call(target: str, kwargs: Mapping[str, Any], timeout_s: float,
         env: Optional[Mapping[str, str]] = None, log: Optional[str] = None) -> Any:
  """Runs ``module:function(**kwargs)`` in a new Python process; returns its result.

  Args:
    target: "package.module:function".
    kwargs: JSON-able keyword arguments.
    timeout_s: the limit; past it the child's process group is killed and Timeout raised.
    env: the child's environment (default: this process's).
    log: a file for the child's stdout and stderr (default: kept in memory, quoted on error).

  Raises:
    Timeout, or RunError with the exit status and the end of the child's stderr.
  """
  with tempfile.TemporaryDirectory(prefix="isolated-") as scratch:
    args, result = os.path.join(scratch, "args.json"), os.path.join(scratch, "result.json")
    with open(args, "w") as f:
      json.dump(dict(kwargs), f)
    out = open(log, "w") if log else tempfile.TemporaryFile("w+", dir=scratch)
    try:
      proc = subprocess.Popen([sys.executable, "-m", "rpd_jax.bench.isolated", target, args,
                               result], stdout=out, stderr=subprocess.STDOUT, text=True,
                              env=None if env is None else dict(env), start_new_session=True)
      try:
        proc.wait(timeout=timeout_s)
      except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise Timeout(f"{target} ran past its limit of {timeout_s:.0f} s; stopped it and its "
                      f"child processes{_tail(out, log)}") from None
      finally:
        _kill_group(proc)  # workers a finished child left behind
      if proc.returncode != 0 or not os.path.exists(result):
        raise RunError(f"{target} failed (exit status {proc.returncode}){_tail(out, log)}")
      with open(result) as f:
        return json.load(f)
    finally:
      out.close()


def _kill_group(proc: subprocess.Popen) -> None:
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  proc.wait()


def _tail(out, log: Optional[str]) -> str:
  out.flush()
  if log:
    with open(log) as f:
      text = f.read()
  else:
    out.seek(0)
    text = out.read()
  text = text.strip()[-TAIL:]
  return f":\n{text}" if text else ""


def main(argv: list[str]) -> None:
  target, args, result = argv
  module, _, function = target.partition(":")
  with open(args) as f:
    kwargs = json.load(f)
  value = getattr(importlib.import_module(module), function)(**kwargs)
  with open(result + ".tmp", "w") as f:
    json.dump(value, f, default=_jsonable)
  os.replace(result + ".tmp", result)


def _jsonable(x):
  if hasattr(x, "tolist"):  # numpy and JAX scalars and arrays
    return x.tolist()
  return str(x)


if __name__ == "__main__":
  main(sys.argv[1:])
