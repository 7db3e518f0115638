"""The teachers' records: where a teacher was made, and how well it does alone.

Records are files beside a teacher, never numbers in code: an Octo teacher's in its checkpoint
folder (``teacher_eval.json``, ``demonstrations.json``, ``config.json``), the scripted ManiSkill
teachers' in ``scripted_maniskill_eval.json`` here, the pure-JAX push task's scripted teacher's
in ``scripted_push_eval.json`` (``experiments/measure_push_teacher.py``, per noise and bias);
rows of evaluations are as
``python -m rpd_jax.pipeline.eval_teacher`` writes them (``teacher_table.json``).

Where a teacher was made:
ManiSkill's ``pd_ee_delta_pose`` controller moves the arm differently on its two backends (one
Jacobian IK step on the GPU, pinocchio's iterative IK on the CPU), so a teacher whose
demonstrations were recorded, and whose success was measured, on one backend acts in another
arm when used on the other. The pipeline records the backend (``demos`` in its metadata,
``finetune`` in the checkpoint's ``config.json``, ``eval_teacher`` in each row of
``teacher_eval.json``); ``made_on`` reads it back, and the trainer and ``eval_teacher`` warn
when it differs from the backend they simulate on.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Optional

import ml_collections

SCRIPTED_EVALUATIONS = pathlib.Path(__file__).parent / "scripted_maniskill_eval.json"
PUSH_EVALUATIONS = pathlib.Path(__file__).parent / "scripted_push_eval.json"

# (file in the checkpoint folder, how to read the backend from its JSON), most direct first.
_RECORDS: tuple[tuple[str, Callable[[Any], Optional[str]]], ...] = (
    ("config.json", lambda d: d.get("rpd_jax_sim_backend") if isinstance(d, dict) else None),
    ("demonstrations.json", lambda d: d.get("sim_backend") if isinstance(d, dict) else None),
    ("teacher_eval.json",
     lambda rows: rows[0].get("sim_backend") if isinstance(rows, list) and rows else None),
)


def made_on(folder: str) -> Optional[str]:
  """The simulation backend a teacher folder's records name (e.g. "physx_cpu"), or None where
  they name none (a released checkpoint, trained on real robots)."""
  for name, read in _RECORDS:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      continue
    try:
      with open(path) as f:
        backend = read(json.load(f))
    except (OSError, ValueError):
      continue
    if backend:
      return backend
  return None


def mismatch(teacher_name: str, made: Optional[str], sim_backend: str) -> Optional[str]:
  """The warning for a teacher made on one simulation backend and used on another, or None."""
  if made is None or made == sim_backend:
    return None
  return (f"the teacher {teacher_name} was made on {made} (its demonstrations and measured "
          f"success), and this simulates on {sim_backend}: ManiSkill's pd_ee_delta_pose moves "
          "the arm differently there (one Jacobian IK step on the GPU, pinocchio's iterative "
          "IK on the CPU), so it may act worse than its records say. To match them, simulate "
          f"on {made} (--config.env.kwargs.sim_backend={made})")


def _rows(path: Optional[str]) -> list[dict]:
  if not path or not os.path.isfile(path):
    return []
  with open(path) as f:
    rows = json.load(f)
  return [rows] if isinstance(rows, dict) else rows


def success(teacher: ml_collections.ConfigDict, env: ml_collections.ConfigDict
            ) -> Optional[float]:
  """The success rate of the teacher of ``config.teacher`` alone on the task (and camera) of
  ``config.env``, executed as RPD queries it (one action per step), where it was measured;
  else None. A scripted teacher's counts only at the noise (and bias) it was measured with."""
  kwargs, task = teacher.kwargs, env.kwargs.get("env_id", env.name)
  camera = env.kwargs.get("camera_variant")
  if teacher.name == "scripted_maniskill":
    rows = [r for r in _rows(str(SCRIPTED_EVALUATIONS))
            if kwargs.get("noise") is None or r["noise"] == kwargs.get("noise")]
  elif teacher.name == "scripted_push":
    rows = [r for r in _rows(str(PUSH_EVALUATIONS))
            if r["noise"] == kwargs.get("noise") and r["bias"] == kwargs.get("bias")]
  elif teacher.name == "octo":
    from rpd_jax.octo import hub  # pylint: disable=g-import-not-at-top
    try:
      folder = hub.resolve_checkpoint(kwargs.get("checkpoint", ""))
    except FileNotFoundError:
      return None
    rows = _rows(os.path.join(folder, "teacher_eval.json"))
  else:
    return None
  for row in rows:
    if (row.get("task") == task and row.get("execution") == "first" and
        row.get("camera_variant") == camera):
      return float(row["success_rate"])
  return None
