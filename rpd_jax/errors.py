"""The project's error types, which every command prints as one ``error:`` line.

``ConfigError``: bad input (a config value, a flag, a missing or mismatched file); exit status 2.
``RunError``: a run stopped by a fault outside the code's control (a simulator worker died, the
disk filled, a teacher server stopped answering); exit status 1. Both say what to do next.
"""

from __future__ import annotations

import importlib
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


def load_by_path(path: Any, where: str, what: str = "function") -> Callable[..., Any]:
  """The callable named by ``path``, "package.module:name" (``name`` may be dotted, e.g. a
  class's method), importing the module; ConfigError saying what is wrong with it otherwise.
  ``where``: how the user set it (e.g. "config.env.kwargs.factory='m:f'"); ``what``: what it
  should be, for the messages."""
  if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
    raise ConfigError(f"{where} must be 'package.module:function', a module to import and the "
                      f"{what} in it")
  module_name, attribute = path.split(":")
  try:
    found = importlib.import_module(module_name)
  except ImportError as e:
    raise ConfigError(f"{where}: module {module_name!r} cannot be imported "
                      f"({type(e).__name__}: {e}); check the name and that it (and what it "
                      "imports) is installed and on PYTHONPATH") from e
  for part in attribute.split("."):
    if not hasattr(found, part):
      raise ConfigError(f"{where}: module {module_name!r} has no {attribute!r}; name a "
                        f"{what} defined in it")
    found = getattr(found, part)
  if not callable(found):
    raise ConfigError(f"{where}: {attribute!r} in {module_name!r} is a "
                      f"{type(found).__name__}, not a {what}")
  return found
