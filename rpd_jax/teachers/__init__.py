"""Teachers by name: ``make_teacher(config.teacher)``, built from the teacher's own config.

A teacher reads only ``config.teacher.kwargs`` (its task, instruction or checkpoint come there,
not from the env's config). Backends are imported when built, so that naming one costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Mapping

import ml_collections

from rpd_jax.errors import ConfigError, check_options
from rpd_jax.teachers.base import Teacher, TeacherOutput, query

# name -> (module, factory); the factory takes config.teacher.kwargs as keyword arguments.
TEACHERS: Mapping[str, tuple[str, str]] = {
    "scripted_push": ("rpd_jax.teachers.scripted", "make_push_teacher"),
    "scripted_maniskill": ("rpd_jax.teachers.maniskill_scripted", "make_teacher"),
    "octo": ("rpd_jax.teachers.octo", "make_teacher"),
    # Any torch policy: kwargs.factory = "package.module:function" (returning the policy),
    # kwargs.factory_kwargs its arguments, kwargs.action_dim (rpd_jax.teachers.torch_policy).
    "torch": ("rpd_jax.teachers.torch_policy", "make_teacher"),
}
TEACHER_NAMES = ("none", *TEACHERS)


def observation_keys(teacher_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The observation keys the teacher reads: scripted teachers the privileged state; Octo what
  its checkpoint reads (cameras, proprio), learned from the checkpoint's files without its
  weights (ConfigError for one it cannot feed); a torch policy its camera and, if it names one,
  its ``kwargs.state_key``."""
  if teacher_config.name == "octo":
    from rpd_jax.teachers import octo  # pylint: disable=g-import-not-at-top  (only for Octo)
    return octo.observation_keys(teacher_config.kwargs)
  if teacher_config.name == "torch":
    state_key = teacher_config.kwargs.get("state_key", None)
    return (teacher_config.kwargs.get("image_key", "rgb"),) + ((state_key,) if state_key else ())
  return ("privileged",) if teacher_config.name in TEACHERS else ()


def make_teacher(teacher_config: ml_collections.ConfigDict) -> Teacher | None:
  """The teacher named by ``teacher_config.name`` with ``teacher_config.kwargs``; None for "none".

  Raises ConfigError for an unknown name or a keyword its factory does not take.
  """
  name = teacher_config.name
  if name == "none":
    return None
  if name not in TEACHERS:
    raise ConfigError(f"config.teacher.name={name!r} is unknown; use one of "
                      f"{', '.join(TEACHER_NAMES)}")
  module, function = TEACHERS[name]
  factory = getattr(importlib.import_module(module), function)
  kwargs = dict(teacher_config.kwargs)
  check_options(factory, kwargs, "teacher.kwargs", f"the {name!r} teacher")
  return factory(**kwargs)


__all__ = ["TEACHERS", "TEACHER_NAMES", "Teacher", "TeacherOutput", "make_teacher",
           "observation_keys", "query"]
