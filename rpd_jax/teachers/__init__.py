"""Teachers by name: ``make_teacher(config.teacher, config.env)``."""

from __future__ import annotations

import ml_collections

from rpd_jax.teachers.base import Teacher, TeacherOutput, query

TEACHER_NAMES = ("none", "scripted_push", "scripted_maniskill", "octo")


def make_teacher(teacher_config: ml_collections.ConfigDict,
                 env_config: ml_collections.ConfigDict) -> Teacher | None:
  """Builds the teacher named by ``teacher_config.name`` for the env of ``env_config``."""
  name, kwargs = teacher_config.name, dict(teacher_config.kwargs)
  chunk = teacher_config.chunk_size
  if name == "none":
    return None
  if name == "scripted_push":
    from rpd_jax.teachers import scripted
    return scripted.make_push_teacher(chunk_size=chunk, **kwargs)
  if name == "scripted_maniskill":
    from rpd_jax.teachers import maniskill_scripted
    return maniskill_scripted.make_teacher(env_config, chunk_size=chunk, **kwargs)
  if name == "octo":
    from rpd_jax.teachers import octo
    return octo.make_teacher(env_config, chunk_size=chunk, **kwargs)
  raise ValueError(f"config.teacher.name={name!r} is unknown; use one of "
                   f"{', '.join(TEACHER_NAMES)}")


__all__ = ["TEACHER_NAMES", "Teacher", "TeacherOutput", "make_teacher", "query"]
