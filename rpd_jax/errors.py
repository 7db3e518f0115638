"""The project's error types, which every command prints as one ``error:`` line.

``ConfigError``: bad input (a config value, a flag, a missing or mismatched file); exit status 2.
``RunError``: a run stopped by a fault outside the code's control (a simulator worker died, the
disk filled, a teacher server stopped answering); exit status 1. Both say what to do next.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping


class ConfigError(ValueError):
  """A config value, flag or input that cannot work; the message names the value and the fix."""


class RunError(RuntimeError):
  """A run failed for a reason outside the code; the message says what was kept and what next."""


def check_options(factory: Callable[..., Any], kwargs: Mapping[str, Any], section: str,
                  what: str, fixed: Iterable[str] = ()) -> None:
  """Raises ConfigError if ``kwargs`` (``config.<section>``) names a keyword that ``factory``
  does not take; ``fixed`` are the keywords the caller passes itself (not the user's)."""
  accepted = inspect.signature(factory).parameters
  if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
    return
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    options = [k for k in accepted if k not in set(fixed)]
    raise ConfigError(f"config.{section}.{unknown[0]} is not an option of {what}; it takes "
                      f"{', '.join(options)}")
