"""The project's one error type for bad input, which every command prints as one ``error:`` line."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping


class ConfigError(ValueError):
  """A config value, flag or input that cannot work; the message names the value and the fix."""


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
