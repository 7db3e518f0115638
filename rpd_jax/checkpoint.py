"""Orbax checkpoints of the student's train state and the rollout carry, for exact resume.

The teacher is never saved here: it is loaded from its own checkpoint at start-up.

Saves are atomic (orbax writes ``<step>.orbax-checkpoint-tmp`` and renames it when complete, so
a killed save leaves no half-written step). A step that cannot be restored (truncated or missing
files) is moved to ``damaged_checkpoints/`` beside ``checkpoints/``, with a warning, and the run
resumes from the newest step that restores; nothing is deleted.
"""

from __future__ import annotations

import logging as std_logging
import os
import shutil
from typing import Any, Callable, Optional, Sequence

import flax.serialization
import jax
import orbax.checkpoint as ocp
from absl import logging

from rpd_jax.errors import ConfigError, RunError


class CheckpointError(RunError):
  """A checkpoint could not be written (a full disk); the message names what is intact."""


class Checkpointer:
  """Saves and restores a pytree under ``workdir/checkpoints/<iteration>``."""

  def __init__(self, workdir: str, max_to_keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.damaged_directory = os.path.abspath(os.path.join(workdir, "damaged_checkpoints"))
    self._max_to_keep = max_to_keep
    self._manager = self._open()
    self._saving: Optional[int] = None  # the step of the last save started

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True,
                                             cleanup_tmp_directories=True,
                                             enable_async_checkpointing=False))

  def latest(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, iteration: int, tree: Any) -> None:
    """Saves ``tree`` as step ``iteration``; returns once it is on disk."""
    previous, self._saving = self._saving, iteration
    # Refuse before writing rather than fail half way: orbax's writers report a full disk from
    # many threads at once. The arrays' raw size bounds what is written (it compresses).
    needed = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(tree)) + (64 << 10)
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise self._save_error(iteration, OSError(
          28, f"No space left on device: {free:,} bytes free, up to {needed:,} needed"))
    try:
      self._manager.save(iteration,
                         args=ocp.args.StandardSave(flax.serialization.to_state_dict(tree)))
    except (OSError, ValueError) as e:  # a previous save's failure surfaces here too
      failed = iteration if previous is None or previous in self._manager.all_steps() else previous
      raise self._save_error(failed, e) from e

  def _save_error(self, iteration: int, error: Exception) -> CheckpointError:
    # Orbax's writer tasks fail alongside; asyncio would print each one's traceback when they
    # are collected at exit. The error below says it all once.
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
    full = "No space left" in str(error) or getattr(error, "errno", None) == 28
    intact = [s for s in self._manager.all_steps() if s != iteration]
    kept = (f"checkpoint {max(intact)} is intact" if intact else "no earlier checkpoint exists")
    cause = ("the disk is full" + (f" ({error.strerror.split(': ', 1)[1]})"
                                   if getattr(error, "strerror", None) and ": " in error.strerror
                                   else "")
             if full else f"{type(error).__name__}: {str(error)[:200]}")
    return CheckpointError(
        f"could not write checkpoint {iteration} to {self.directory}: {cause}; {kept}. "
        "Free space and run the same command again to resume")

  def restore(self, iteration: int, target: Any) -> Any:
    """Restores step ``iteration`` into the structure (and dtypes/shapes) of ``target``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            flax.serialization.to_state_dict(target))
    restored = self._manager.restore(iteration, args=ocp.args.StandardRestore(abstract))
    return flax.serialization.from_state_dict(target, restored)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def read(self, iteration: int) -> Any:
    """Step ``iteration`` as saved (nested dicts of arrays), without a target: for reading a
    run back without rebuilding what trained it (``rpd_jax.runs``)."""
    return self._manager.restore(iteration, args=ocp.args.StandardRestore())

  def restore_latest(self, target: Any,
                     legacy: Sequence[tuple[Any, Callable[[Any], Any]]] = ()
                     ) -> tuple[int, Any]:
    """(step, tree) of the newest step that restores, or (0, None) without checkpoints.

    ``legacy``: (an older layout's target, its conversion to ``target``'s) per earlier layout,
    tried in order where a step does not restore into ``target``: a checkpoint written before
    a layout change resumes.
    Newer steps that restore into neither are moved to ``damaged_checkpoints/`` with a
    warning. If no step restores, ConfigError names the folder and the choices, and nothing is
    moved.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    failures = []
    for step in steps:
      try:
        tree = self._restore_either(step, target, legacy)
      except Exception as e:  # pylint: disable=broad-except  (any damage: truncated, missing)
        failures.append((step, e))
        continue
      if failures:
        self._set_aside(step, failures)
      return step, tree
    if failures:
      detail = "; ".join(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                         for s, e in failures)
      raise ConfigError(
          f"no checkpoint in {self.directory} can be restored ({detail}); move that folder "
          "away to start this run afresh, or restore it from a copy")
    return 0, None

  def _restore_either(self, step: int, target: Any,
                      legacy: Sequence[tuple[Any, Callable[[Any], Any]]]) -> Any:
    try:
      return self.restore(step, target)
    except Exception:  # pylint: disable=broad-except  (re-raised where every legacy fails too)
      for old_target, convert in legacy:
        try:
          tree = convert(self.restore(step, old_target))
        except Exception:  # pylint: disable=broad-except
          continue
        logging.info("checkpoint %d has the layout of an earlier version; converted", step)
        return tree
      raise

  def _set_aside(self, restored: int, failures: list[tuple[int, Exception]]) -> None:
    self._manager.close()
    os.makedirs(self.damaged_directory, exist_ok=True)
    for step, error in failures:
      destination = os.path.join(self.damaged_directory, str(step))
      while os.path.exists(destination):
        destination += "_"
      shutil.move(os.path.join(self.directory, str(step)), destination)
      message = (f"checkpoint {step} in {self.directory} cannot be restored "
                 f"({type(error).__name__}: {str(error).splitlines()[0][:160]}); moved it to "
                 f"{destination} and resuming from checkpoint {restored}")
      logging.warning(message)
      print(f"warning: {message}", flush=True)
    self._manager = self._open()

  def close(self) -> None:
    """Waits for a save in flight, then releases the manager."""
    try:
      self._manager.wait_until_finished()
    except (OSError, ValueError) as e:
      raise self._save_error(self._saving, e) from e
    finally:
      self._manager.close()
