"""A run read back from its workdir: its saved students, without the trainer.

``python -m rpd_jax.evaluate`` and ``python -m rpd_jax.export`` start here. A workdir holds
``config.json`` (the resolved config the run used, ``config.from_workdir``) and
``checkpoints/<iteration>/``, whose train
state carries K students (``config.num_seeds``) along a leading axis; the rollout carry holds
the last observations, whose shapes give the student's observation spec.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

import jax
import ml_collections
import numpy as np

from rpd_jax.checkpoint import Checkpointer
from rpd_jax.errors import ConfigError
from rpd_jax.networks import ActorCritic, make_network


class SavedStudent(NamedTuple):
  """One student of a saved run."""
  network: ActorCritic
  params: Any  # the network's, without the student axis
  observation_spec: dict[str, tuple[tuple[int, ...], str]]  # the student's keys: (shape, dtype)
  iteration: int  # the checkpoint's
  env_steps: int  # this student's env steps at that checkpoint
  index: int  # k of K
  count: int  # K


def read_checkpoint(workdir: str, step: Optional[int] = None) -> tuple[int, Any]:
  """(step, the checkpoint as saved) of step ``step`` (None: the newest); ConfigError naming
  the steps there are."""
  folder = os.path.join(workdir, "checkpoints")
  steps = Checkpointer(workdir, max_to_keep=1).steps() if os.path.isdir(folder) else []
  if not steps:
    raise ConfigError(f"--workdir={workdir} has no checkpoint in {folder}: the run saved none "
                      "yet (config.checkpoint_every)")
  if step is None:
    step = steps[-1]
  if step not in steps:
    raise ConfigError(f"--checkpoint={step}: {folder} holds checkpoints "
                      f"{', '.join(map(str, steps))}")
  ckpt = Checkpointer(workdir, max_to_keep=len(steps))
  try:
    return step, ckpt.read(step)
  finally:
    ckpt.close()


def _student_params(state: Any, k: int) -> tuple[Any, int]:
  """(student k's params, K) from a checkpoint's train state as saved (``Checkpointer.read``:
  nested dicts of arrays; the students' layout, ``students.Students``). One student written
  before the student axis has no leading K (its iteration counter is a scalar)."""
  iteration = np.asarray(state["iteration"])
  count = 1 if iteration.ndim == 0 else iteration.shape[0]
  if not 0 <= k < count:
    raise IndexError(f"student {k} of {count}")
  params = state["params"]
  return (params if iteration.ndim == 0 else jax.tree.map(lambda x: x[k], params)), count


def saved_student(config: ml_collections.ConfigDict, checkpoint: tuple[int, Any],
                  student: int = 0) -> SavedStudent:
  """Student ``student`` of a checkpoint (``read_checkpoint``) of a run with ``config``;
  ConfigError for a student the run does not have."""
  step, tree = checkpoint
  state = tree["state"]
  try:
    params, count = _student_params(state, student)
  except IndexError:
    count = _student_params(state, 0)[1]
    raise ConfigError(f"--student={student}: the run trained {count} student(s) "
                      f"(config.num_seeds); pick one of 0..{count - 1}") from None
  params = jax.tree.map(np.asarray, params)
  action_dim = int(params["params"]["log_std"].shape[-1])
  network = make_network(config.network, action_dim)
  obs = tree["carry"]["obs"]
  spec = {k: (tuple(np.shape(obs[k])[1:]), str(np.asarray(obs[k]).dtype))
          for k in network.obs_keys}
  env_steps = np.asarray(state["env_steps"]).reshape(-1)
  return SavedStudent(network, params, spec, step, int(env_steps[min(student, env_steps.size - 1)]),
                      student, count)
