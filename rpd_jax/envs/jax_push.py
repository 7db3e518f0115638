"""A pure-JAX planar pushing task in the spirit of ManiSkill's PushCube-v1.

A tool centre point (tcp, a disc) pushes a block to a goal region ahead of it on a table. The
block is modelled as a friction-free puck of radius ``block_half_size`` (PushCube's cube seen
from above, without rotation): when the tcp's disc overlaps it, the block is pushed out along the
line of centres until they just touch, so an off-centre push deflects it sideways.

Coordinates follow PushCube: metres, table plane z = 0, the robot stands at -x and pushes toward
+x. Actions follow ManiSkill's ``pd_ee_delta_pose``: 7 numbers in [-1, 1] (delta xyz, delta
rotation as axis-angle, gripper), clipped; only dx, dy move the tcp (by ``action * max_delta``
metres per step). The tcp stays at block height and is a disc, so dz, rotation and the gripper
are clipped and have no effect, as if those joints were locked.

The functions ``reset``, ``observe``, ``step`` and ``render`` are pure and act on ONE env; vmap
them over envs and ``lax.scan`` them for rollouts. ``JaxPushVecEnv`` wraps them as a stateful
``VecEnv`` with one jitted batched step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rpd_jax.envs.base import Observation, StepResult, final_keys, spec_of
from rpd_jax.errors import ConfigError

ACTION_DIM = 7
OBS_MODES = ("state", "state_rgb", "rgb")
REWARD_MODES = ("normalized_dense", "dense", "sparse")
DENSE_MAX = 3.0  # PushCube's dense reward on success, its maximum

# Render colours, RGB in [0, 1]: PushCube's red and white goal target and blue cube.
_TABLE = np.array([0.80, 0.72, 0.60])
_RED = np.array([0.76, 0.07, 0.09])
_WHITE = np.array([1.0, 1.0, 1.0])
_BLOCK = np.array([0.05, 0.16, 0.63])
_TCP = np.array([0.10, 0.65, 0.25])


@dataclasses.dataclass(frozen=True)
class PushParams:
  """Static settings of the task; hashable, so jitted functions close over it."""

  reward_mode: str = "normalized_dense"  # one of REWARD_MODES
  obs_mode: str = "state"  # one of OBS_MODES
  image_size: int = 64  # H = W of rendered frames
  max_episode_steps: int = 50
  max_delta: float = 0.02  # tcp metres per step at |action| = 1, per axis
  motion_noise: float = 0.001  # std (m) of the tcp's per-step motion: imperfect tracking
  tcp_radius: float = 0.015  # about the width of a closed Panda gripper
  block_half_size: float = 0.02  # PushCube's cube half size, the puck's radius here
  goal_radius: float = 0.1  # PushCube: success when the block's centre is this close to the goal
  block_range: float = 0.1  # block spawns uniformly in [-range, range]^2, as in PushCube
  goal_ahead: float = 0.2  # PushCube: goal = block + (0.1 + goal_radius, 0)
  goal_y_jitter: float = 0.05  # goal y offset uniform in [-jitter, jitter]
  tcp_start: tuple[float, float] = (-0.2, 0.0)  # tcp rest position, behind every block spawn
  tcp_start_jitter: float = 0.02  # tcp start offset uniform in [-jitter, jitter]^2
  # The table region the camera shows, [x_min, x_max, y_min, y_max]; the tcp cannot leave it.
  view: tuple[float, float, float, float] = (-0.25, 0.45, -0.35, 0.35)
  # Success does not end the episode (the published evaluation's fixed-step protocol): the
  # episode runs to its time limit and ``terminated`` stays False.
  ignore_terminations: bool = False

  def __post_init__(self):
    if self.reward_mode not in REWARD_MODES:
      raise ValueError(f"reward_mode={self.reward_mode!r} is unknown; use one of "
                       f"{', '.join(REWARD_MODES)}")
    if self.obs_mode not in OBS_MODES:
      raise ValueError(f"obs_mode={self.obs_mode!r} is unknown; use one of {', '.join(OBS_MODES)}")
    if self.image_size < 8:
      raise ValueError(f"image_size={self.image_size} is too small to show the scene; use >= 8")


@struct.dataclass
class PushState:
  """One env's state; ``jax.vmap`` adds a leading [B] to every field."""

  tcp: jax.Array  # float32 [2], xy
  block: jax.Array  # float32 [2], xy of the block's centre
  goal: jax.Array  # float32 [2], xy of the goal region's centre
  elapsed: jax.Array  # int32 [], steps taken in this episode
  key: jax.Array  # PRNG key for motion noise and the next reset


def reset(params: PushParams, key: jax.Array) -> tuple[PushState, Observation]:
  """Samples an initial state like PushCube's and returns it with its observation."""
  k_draw, key = jax.random.split(key)
  u = jax.random.uniform(k_draw, (5,), minval=-1.0, maxval=1.0)  # one draw: cheaper to compile
  block = params.block_range * u[0:2]
  goal = block + jnp.stack([params.goal_ahead, params.goal_y_jitter * u[2]])
  tcp = jnp.asarray(params.tcp_start, jnp.float32) + params.tcp_start_jitter * u[3:5]
  state = PushState(tcp=tcp, block=block, goal=goal,
                    elapsed=jnp.zeros((), jnp.int32), key=key)
  return state, observe(params, state)


def observe(params: PushParams, state: PushState) -> Observation:
  """Observation dict of one env: ``state`` [D], ``privileged`` [7], ``rgb`` [H, W, 3]."""
  privileged = jnp.concatenate([
      state.tcp, state.block, state.goal,
      (state.elapsed / params.max_episode_steps)[None]]).astype(jnp.float32)
  obs = {"privileged": privileged}
  if params.obs_mode == "rgb":  # like ManiSkill's rgb mode: the state part is the robot only
    obs["state"] = state.tcp.astype(jnp.float32)
  else:
    obs["state"] = jnp.concatenate([state.tcp, state.block, state.goal, state.goal - state.block,
                                    state.block - state.tcp]).astype(jnp.float32)
  if params.obs_mode in ("rgb", "state_rgb"):
    obs["rgb"] = render(params, state)
  return obs


def _success(params: PushParams, state: PushState) -> jax.Array:
  return jnp.linalg.norm(state.block - state.goal) < params.goal_radius


def _reward(params: PushParams, state: PushState, success: jax.Array) -> jax.Array:
  """PushCube's reward: reach the push pose behind the block, then bring the block to the goal."""
  if params.reward_mode == "sparse":
    return success.astype(jnp.float32)
  # PushCube's push pose is 5 mm behind the cube's face along -x; here behind the tcp's rim, so
  # that a tcp in contact behind the block counts as having reached it.
  push_pose = state.block - jnp.array([params.block_half_size + 0.005 + params.tcp_radius, 0.0])
  reach_dist = jnp.linalg.norm(push_pose - state.tcp)
  reward = 1.0 - jnp.tanh(5.0 * reach_dist)
  place = 1.0 - jnp.tanh(5.0 * jnp.linalg.norm(state.block - state.goal))
  reward = reward + place * (reach_dist < 0.01)
  reward = jnp.where(success, DENSE_MAX, reward)
  if params.reward_mode == "normalized_dense":
    reward = reward / DENSE_MAX
  return reward.astype(jnp.float32)


def _move(params: PushParams, state: PushState, action: jax.Array,
          key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Kinematics of one step: returns the new tcp and block xy."""
  x0, x1, y0, y1 = params.view
  r = params.tcp_radius
  motion = action[:2] * params.max_delta + params.motion_noise * jax.random.normal(key, (2,))
  tcp = jnp.clip(state.tcp + motion, jnp.array([x0 + r, y0 + r]), jnp.array([x1 - r, y1 - r]))
  # A step moves the tcp at most sqrt(2) * max_delta plus noise, less than the contact distance,
  # so the tcp never passes the block's centre and the line of centres is the contact normal.
  contact = params.tcp_radius + params.block_half_size
  offset = state.block - tcp
  dist = jnp.linalg.norm(offset)
  normal = offset / jnp.maximum(dist, 1e-6)
  block = state.block + normal * jnp.maximum(contact - dist, 0.0)
  return tcp, block


def step(params: PushParams, state: PushState,
         action: jax.Array) -> tuple[PushState, StepResult]:
  """One env step with auto-reset; ``action`` is float32 [7], clipped to [-1, 1].

  Returns the next state and a StepResult without the batch dim. Where the episode ended (success
  or time limit), the next state is a fresh episode and ``final_obs`` observes the ended one.
  """
  action = jnp.clip(action, -1.0, 1.0)
  k_motion, k_reset, key = jax.random.split(state.key, 3)
  tcp, block = _move(params, state, action, k_motion)
  after = PushState(tcp=tcp, block=block, goal=state.goal, elapsed=state.elapsed + 1, key=key)
  success = _success(params, after)
  reward = _reward(params, after, success)
  truncated = after.elapsed >= params.max_episode_steps
  terminated = success & (not params.ignore_terminations)
  done = terminated | truncated
  final_obs = observe(params, after)
  fresh, fresh_obs = reset(params, k_reset)
  pick = lambda new, old: jnp.where(done, new, old)
  next_state = jax.tree.map(pick, fresh, after)
  obs = jax.tree.map(pick, fresh_obs, final_obs)
  return next_state, StepResult(obs=obs, reward=reward, terminated=terminated,
                                truncated=truncated, success=success, final_obs=final_obs)


def render(params: PushParams, state: PushState) -> jax.Array:
  """Top-down uint8 [H, W, 3] frame of one env: +x points up, +y left (robot at the bottom)."""
  x0, x1, y0, y1 = params.view
  size = params.image_size
  pixel = (x1 - x0) / size
  centres = (np.arange(size) + 0.5) / size
  xs = jnp.asarray(x1 - centres * (x1 - x0), jnp.float32)[:, None]  # [H, 1], rows
  ys = jnp.asarray(y1 - centres * (y1 - y0), jnp.float32)[None, :]  # [1, W], columns

  def disc(centre, radius):  # [H, W] coverage in [0, 1], antialiased over one pixel
    dist = jnp.sqrt((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2)
    return jnp.clip(0.5 - (dist - radius) / pixel, 0.0, 1.0)[..., None]

  def paint(image, coverage, colour):
    return image * (1.0 - coverage) + coverage * jnp.asarray(colour, jnp.float32)

  image = jnp.broadcast_to(jnp.asarray(_TABLE, jnp.float32), (size, size, 3))
  for ring in range(5):  # PushCube's target: alternating red and white rings, red outside
    image = paint(image, disc(state.goal, params.goal_radius * (5 - ring) / 5),
                  _RED if ring % 2 == 0 else _WHITE)
  image = paint(image, disc(state.block, params.block_half_size), _BLOCK)
  image = paint(image, disc(state.tcp, params.tcp_radius), _TCP)
  return jnp.round(image * 255.0).astype(jnp.uint8)


# Batched and jitted over envs; keyed by the (hashable) params, so envs with equal params, e.g.
# a training and an evaluation env, share one compilation.
@functools.partial(jax.jit, static_argnums=0)
def _batched_reset(params: PushParams, keys: jax.Array) -> tuple[PushState, Observation]:
  return jax.vmap(functools.partial(reset, params))(keys)


@functools.partial(jax.jit, static_argnums=0)
def _batched_step(params: PushParams, state: PushState,
                  action: jax.Array) -> tuple[PushState, StepResult]:
  return jax.vmap(functools.partial(step, params))(state, action)


@functools.partial(jax.jit, static_argnums=0)
def _batched_render(params: PushParams, state: PushState) -> jax.Array:
  return jax.vmap(functools.partial(render, params))(state)


@jax.jit
def _only_rows(rows: jax.Array, obs: Observation) -> Observation:
  """obs [B, ...] where ``rows`` bool [B] is True, zeros elsewhere."""
  return jax.tree.map(lambda x: jnp.where(rows.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0)
                      .astype(x.dtype), obs)


class JaxPushVecEnv:
  """``num_envs`` pushing envs behind the VecEnv protocol, stepped by one jitted batched call."""

  action_dim = ACTION_DIM
  holds_state = True  # get_state / set_state: checkpointed, resumes exactly (base.VecEnv)
  jax_native = True  # its state is JAX arrays: a mesh shards it like any other
  sim_backend = "jax"

  def __init__(self, num_envs: int, seed: int = 0, reward_mode: str = "normalized_dense",
               final_obs_keys: Optional[Sequence[str]] = None,
               on_demand_keys: Sequence[str] = (), **kwargs):
    """``kwargs`` override PushParams fields (obs_mode, image_size, max_delta, ...);
    ``final_obs_keys``: the keys of ``StepResult.final_obs`` (None: all); ``on_demand_keys``:
    keys observed only where ``step`` asks (``base``'s module doc; here zeroed elsewhere)."""
    unknown = set(kwargs) - {f.name for f in dataclasses.fields(PushParams)}
    if unknown:
      raise ConfigError(f"config.env.kwargs.{sorted(unknown)[0]} is not an option of the "
                        f"jax_push env; it takes the fields of PushParams: "
                        f"{', '.join(f.name for f in dataclasses.fields(PushParams))}")
    if num_envs <= 0:
      raise ValueError(f"num_envs={num_envs} must be a positive integer")
    # Config files may hold tuples as lists; the params must stay hashable (a static jit arg).
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    self.params = PushParams(reward_mode=reward_mode, **kwargs)
    self.num_envs = num_envs
    self.max_episode_steps = self.params.max_episode_steps
    obs = self.reset(seed)
    self.observation_spec = spec_of(obs)
    self.final_obs_keys = final_keys(tuple(obs), final_obs_keys)
    unknown = sorted(set(on_demand_keys) - set(obs))
    if unknown:
      raise ValueError(f"on_demand_keys has {unknown[0]!r}, which this env does not observe "
                       f"(it gives {', '.join(obs)})")
    self.on_demand_keys = tuple(on_demand_keys)

  def reset(self, seed: int) -> Observation:
    keys = jax.random.split(jax.random.key(seed), self.num_envs)
    self.state, obs = _batched_reset(self.params, keys)
    return obs

  def step(self, action: jax.Array, on_demand: Optional[np.ndarray] = None) -> StepResult:
    chex.assert_shape(action, (self.num_envs, ACTION_DIM))
    self.state, result = _batched_step(self.params, self.state, action)
    obs = result.obs
    if on_demand is not None and self.on_demand_keys:
      obs = {**obs, **_only_rows(np.asarray(on_demand, bool),
                                 {k: obs[k] for k in self.on_demand_keys})}
    return result._replace(obs=obs,
                           final_obs={k: result.final_obs[k] for k in self.final_obs_keys})

  def render(self) -> jax.Array:
    return _batched_render(self.params, self.state)

  def get_state(self) -> PushState:
    """The batched env state as plain arrays (PRNG keys as raw key data), for checkpoints."""
    return self.state.replace(key=jax.random.key_data(self.state.key))

  def set_state(self, state: PushState) -> None:
    """Continues from a state that ``get_state`` gave: resumed runs step on identically."""
    self.state = state.replace(key=jax.random.wrap_key_data(jnp.asarray(state.key)))

  def close(self, terminate: bool = False) -> None:
    """Nothing to release: the whole simulator is the JAX arrays in ``self.state``."""
