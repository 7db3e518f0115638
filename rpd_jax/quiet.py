"""Warnings a user cannot act on, silenced exactly where they are known not to apply."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator


@contextlib.contextmanager
def fork_exec() -> Iterator[None]:
  """Around a call that starts a program by fork + exec: a subprocess, such as imageio's
  ffmpeg writing a video, or multiprocessing's forkserver and resource tracker.

  JAX warns at every fork once it runs threads ("os.fork() was called ... will likely lead to
  a deadlock"), since a forked child that goes on running Python can block on a lock one of
  them held. A child that execs at once runs no Python, so the warning does not apply there.
  """
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                            category=RuntimeWarning)
    yield
