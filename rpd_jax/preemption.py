"""Stopping on SIGINT and SIGTERM without losing work: Ctrl-C, and a cluster's preemption.

    with preemption.Guard() as guard:
      try:
        for ...:
          ...                      # work that may be dropped: a signal raises Interrupt here
          with guard.deferred():   # work that must finish (a checkpoint save): a signal
            ...                    # received meanwhile raises Interrupt at the end
      except preemption.Interrupt:
        guard.acknowledge()        # stopping now: save what finished, close, exit
        ...

The first SIGINT or SIGTERM raises ``Interrupt`` (a BaseException, like KeyboardInterrupt, so
that no ``except Exception`` swallows it) where the main thread is. Python cannot raise into
every place: an exception raised while a garbage-collection callback or a ``__del__`` runs (JAX
registers one) is printed and dropped. So until ``acknowledge`` is called, the guard raises it
again every second. Once acknowledged, a second SIGINT exits at once with status 130 and
another SIGTERM is ignored. Outside the main thread the guard does nothing (signals are
delivered to the main thread only).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)
RETRY_S = 1.0


class Interrupt(BaseException):
  """A stop asked for by a signal; ``signum`` is the signal."""

  def __init__(self, signum: int):
    super().__init__(f"stopped by {signal.Signals(signum).name}")
    self.signum = signum


class Stopped(Exception):
  """A run stopped on a signal after saving what had finished: ``step`` (0: nothing had) in
  ``checkpoint`` (None: nothing saved)."""

  def __init__(self, signum: int, step: int, checkpoint: Optional[str], unit: str = "iteration"):
    super().__init__(f"stopped by {signal.Signals(signum).name} after "
                     + (f"{unit} {step}" if step else f"no {unit} had finished"))
    self.signum, self.step, self.checkpoint = signum, step, checkpoint


def exit_status(signum: int) -> int:
  """The conventional status of a process stopped by ``signum``: 130 for SIGINT, 143 SIGTERM."""
  return 128 + signum


class Guard:
  """Turns SIGINT / SIGTERM into ``Interrupt`` while active (module doc)."""

  def __init__(self):
    self.received: Optional[int] = None
    self._deferring = False
    self._stopping = threading.Event()
    self._retries = 0  # re-deliveries asked for and not yet handled
    self._lock = threading.Lock()
    self._previous: dict[int, object] = {}

  def __enter__(self) -> Guard:
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    self._stopping.set()  # ends the re-delivery thread
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def acknowledge(self) -> None:
    """The Interrupt arrived: no more re-deliveries; a second Ctrl-C now quits at once."""
    self._stopping.set()

  def _handle(self, signum: int, frame) -> None:
    del frame
    with self._lock:
      retry = self._retries > 0
      self._retries -= retry
    if self._stopping.is_set():
      if signum == signal.SIGINT and not retry:
        os._exit(exit_status(signum))  # a second Ctrl-C: quit at once
      return
    if self.received is None:
      self.received = signum
      threading.Thread(target=self._redeliver, daemon=True, name="preemption").start()
    if not self._deferring:
      raise Interrupt(self.received)

  def _redeliver(self) -> None:
    while not self._stopping.wait(RETRY_S):
      if not self._deferring:
        with self._lock:
          self._retries += 1
        _thread.interrupt_main(self.received)

  @contextlib.contextmanager
  def deferred(self) -> Iterator[None]:
    """A block that a signal does not cut short; the Interrupt comes at its end."""
    self._deferring = True
    try:
      yield
    finally:
      self._deferring = False
    if self.received is not None and not self._stopping.is_set():
      raise Interrupt(self.received)
