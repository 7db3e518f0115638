"""The vector-environment contract shared by the pure-JAX env and the ManiSkill bridge.

Every environment the trainer sees is a stateful host object with batched JAX arrays at its
boundary and ManiSkill's semantics:

- actions: float32 [B, A] in [-1, 1] (A = 7 for pd_ee_delta_pose: delta xyz, delta rotation,
  gripper);
- observations: a dict of JAX arrays with a leading batch dim [B, ...], on the process's default
  JAX device (``devices.default_device()``). Keys the project uses: ``state`` (float32 [B, D]),
  ``rgb`` (uint8 [B, H, W, 3]) and ``privileged`` (float32 [B, P], the full simulator state:
  what scripted teachers read, and what a state student reads in simulation where a camera
  teacher needs ``rgb`` rendered, e.g. ManiSkill's default configs);
- ``holds_state``: True for envs that can hand out their whole state (``get_state() -> pytree``
  / ``set_state(pytree)``, the pure-JAX env): they are checkpointed with it, so a resumed run
  continues exactly; others are re-seeded on resume;
- ``jax_native``: True for envs whose whole state is JAX arrays (the pure-JAX env): a mesh
  shards their envs like any array; a simulator outside JAX (False) runs one per process
  (``parallel.ProcessEnvs``). A class attribute, asked before the env is built;
- ``sim_backend``: what simulates (``jax``, ``physx_cpu``, ``physx_cuda``), recorded with runs
  and compared with where a teacher was made;
- auto-reset: an episode that ends at a step is reset inside that step; ``obs`` is then the first
  observation of the new episode and ``final_obs`` the last observation of the old one (for
  bootstrapping on truncation), holding only the keys ``final_obs_keys`` names (the envs take
  them as an argument: the student's, whose value bootstraps ended episodes; an image there may
  cost a second render). Where no episode ended ``final_obs`` equals ``obs`` on those keys.
- observations on demand: the keys ``on_demand_keys`` names (the envs take them as an argument:
  the teacher's keys that the student does not read, e.g. its camera beside a state student,
  under a teacher budget, ``rpd_jax/budget.py``) are observed only for the envs that a step
  asks for: ``step(action, on_demand)`` with bool ``on_demand`` [B] (numpy) fills them in the
  returned ``obs`` where it is True and leaves zeros (of their spec) elsewhere, so that skipped
  rows skip their work (a render); ``step(action)`` observes every env. ``reset``, ``render``
  and ``final_obs`` are not affected. The ManiSkill bridge renders its camera only where some
  env asks (on the GPU one render of the batch, in CPU workers one per asking worker); the
  pure-JAX env zeroes the rows (its rendering is one cheap fused XLA computation).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Protocol, Sequence, runtime_checkable

import jax
import numpy as np

from rpd_jax.errors import RunError

Observation = dict[str, jax.Array]


class EnvWorkerError(RunError):
  """A simulator process of a VecEnv died; the message names the env and the worker."""


class StepResult(NamedTuple):
  """What ``VecEnv.step`` returns; every field has leading dim B = num_envs."""

  obs: Observation  # next observation, after auto-reset where an episode ended
  reward: jax.Array  # float32 [B]
  terminated: jax.Array  # bool [B]: the episode ended in a terminal state (e.g. success)
  truncated: jax.Array  # bool [B]: the episode hit its time limit
  success: jax.Array  # bool [B]: task solved at this step
  final_obs: Observation  # last observation of episodes that ended here (else == obs), of the
  # keys final_obs_keys only


@runtime_checkable
class VecEnv(Protocol):
  """A batch of ``num_envs`` environments with auto-reset (see module docstring)."""

  num_envs: int
  action_dim: int
  max_episode_steps: int
  holds_state: bool  # get_state / set_state (see the module doc)
  jax_native: bool  # its state is JAX arrays (see the module doc)
  sim_backend: str  # "jax", "physx_cpu", "physx_cuda", ...
  final_obs_keys: tuple[str, ...]
  on_demand_keys: tuple[str, ...]  # observed only where a step asks (see the module doc)
  # Per-env shapes and dtypes of the observation dict, without the batch dim.
  observation_spec: dict[str, jax.ShapeDtypeStruct]

  def reset(self, seed: int) -> Observation:
    ...

  def step(self, action: jax.Array, on_demand: Optional[np.ndarray] = None) -> StepResult:
    """Steps every env with ``action`` [B, A]; ``on_demand`` bool [B] (None: all): the envs
    whose returned ``obs`` holds the ``on_demand_keys`` (zeros elsewhere)."""
    ...

  def render(self) -> jax.Array:
    """uint8 [B, H, W, 3] frames of the current state, for videos."""
    ...

  def close(self, terminate: bool = False) -> None:
    """Releases the simulator; ``terminate`` stops it at once (after an interrupt)."""
    ...


def spec_of(obs: Observation) -> dict[str, jax.ShapeDtypeStruct]:
  """Per-env observation spec (batch dim dropped) of a batched observation dict."""
  return {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in obs.items()}


def final_keys(keys: Sequence[str], asked: Optional[Sequence[str]]) -> tuple[str, ...]:
  """The env's ``final_obs_keys``: those of ``keys`` (what it observes) that ``asked`` names, in
  the env's order; all of them where ``asked`` is None."""
  return tuple(k for k in keys if asked is None or k in asked)


def describe(spec: dict[str, Any]) -> str:
  return ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in sorted(spec.items()))
