"""Where a teacher was made: the simulation backend its records name.

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
from typing import Any, Callable, Optional

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
