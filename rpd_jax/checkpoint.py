"""Orbax checkpoints of the student's train state and the rollout carry, for exact resume.

The teacher is never saved here: it is loaded from its own checkpoint at start-up.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import flax.serialization
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores a pytree under ``workdir/checkpoints/<iteration>``."""

  def __init__(self, workdir: str, max_to_keep: int):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, iteration: int, tree: Any) -> None:
    self._manager.save(iteration, args=ocp.args.StandardSave(flax.serialization.to_state_dict(tree)))

  def restore(self, iteration: int, target: Any) -> Any:
    """Restores into the structure (and dtypes/shapes) of ``target``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            flax.serialization.to_state_dict(target))
    restored = self._manager.restore(iteration, args=ocp.args.StandardRestore(abstract))
    return flax.serialization.from_state_dict(target, restored)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
