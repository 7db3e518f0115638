"""A gymnasium vector env behind the VecEnv contract, for ``config.env.name = "factory"``.

  # mypkg/envs.py
  def make(num_envs, seed, reward_mode, final_obs_keys, env_id="Pendulum-v1"):
    vector_env = gymnasium.make_vec(env_id, num_envs, vectorization_mode="sync",
                                    vector_kwargs={"autoreset_mode": SAME_STEP})
    return GymnasiumVecEnv(vector_env, reward_mode, final_obs_keys)

The vector env must reset ended episodes inside the step (``AutoresetMode.SAME_STEP``: the
observation is the new episode's, ``info["final_obs"]`` the ended one's), have a ``Box`` action
space with finite bounds (actions in [-1, 1] are scaled to it), and a ``Box`` observation space
(given as ``obs_key``, default ``state``, float32 [B, D] flattened) or a ``Dict`` of them (given
under their own keys; uint8 images stay uint8). Success is ``info["success"]`` (or
``"is_success"``) where the env reports it, else never; ``reward_mode="sparse"`` makes the reward
that success (the project's sparse reward), the other modes keep the env's reward.
"""

from __future__ import annotations

from typing import Optional, Sequence

import gymnasium as gym
import jax.numpy as jnp
import numpy as np

from rpd_jax.envs import base, devices
from rpd_jax.errors import RunError

SUCCESS_KEYS = ("success", "is_success")


class GymnasiumVecEnv:
  """``vector_env`` (a ``gymnasium.vector.VectorEnv``, numpy in and out) as a VecEnv.

  Args:
    vector_env: the envs, resetting ended episodes inside the step (module doc).
    reward_mode: the run's ``config.env.reward_mode``; "sparse": the success as the reward.
    final_obs_keys: the keys of ``StepResult.final_obs`` (None: all).
    obs_key: the key of a ``Box`` observation.
    max_episode_steps: None: the vector env's spec's (its ``TimeLimit``).
    sim_backend: what simulates, recorded with runs.
  """

  holds_state = False
  jax_native = False

  def __init__(self, vector_env: gym.vector.VectorEnv, reward_mode: str = "normalized_dense",
               final_obs_keys: Optional[Sequence[str]] = None, obs_key: str = "state",
               max_episode_steps: Optional[int] = None, sim_backend: str = "gymnasium"):
    mode = vector_env.metadata.get("autoreset_mode")
    if mode is not None and mode != gym.vector.AutoresetMode.SAME_STEP:
      raise ValueError(f"the vector env resets ended episodes in {mode}; make it with "
                       "autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP")
    space = vector_env.single_action_space
    if not isinstance(space, gym.spaces.Box) or not (
        np.isfinite(space.low).all() and np.isfinite(space.high).all()):
      raise ValueError(f"the vector env's action space is {space}; a Box with finite bounds "
                       "is needed (actions in [-1, 1] are scaled to it)")
    if max_episode_steps is None:
      spec = vector_env.spec
      max_episode_steps = spec and spec.max_episode_steps
    if not max_episode_steps:
      raise ValueError("the vector env has no time limit in its spec; give max_episode_steps")
    self._env, self._reward_mode, self._obs_key = vector_env, reward_mode, obs_key
    self._low, self._high = space.low.astype(np.float32), space.high.astype(np.float32)
    self.num_envs = vector_env.num_envs
    self.action_dim = int(np.prod(space.shape))
    self.max_episode_steps = int(max_episode_steps)
    self.sim_backend = sim_backend
    self._device = devices.default_device()
    self.observation_spec = base.spec_of(self.reset(0))
    self.final_obs_keys = base.final_keys(tuple(self.observation_spec), final_obs_keys)

  def _obs(self, obs) -> dict[str, np.ndarray]:
    """The vector env's batched observation as the project's dict [B, ...] (any B)."""
    if not isinstance(obs, dict):
      obs = np.asarray(obs)
      obs = {self._obs_key: obs.reshape(obs.shape[0], -1)}
    return {k: np.asarray(v) if np.asarray(v).dtype == np.uint8
            else np.asarray(v, np.float32) for k, v in obs.items()}

  def _jax(self, x: np.ndarray):
    return jnp.asarray(x, device=self._device)

  def reset(self, seed: int) -> base.Observation:
    """Resets every env, env i with ``seed + i``."""
    obs, _ = self._env.reset(seed=[seed + i for i in range(self.num_envs)])
    return {k: self._jax(v) for k, v in self._obs(obs).items()}

  on_demand_keys: tuple[str, ...] = ()  # every key observed at every step

  def step(self, action, on_demand=None) -> base.StepResult:
    """Steps with float32 action [B, A] in [-1, 1] (clipped, then scaled to the Box);
    ``on_demand`` is ignored (no on-demand keys)."""
    del on_demand
    unit = np.clip(np.asarray(action, np.float32).reshape(self.num_envs, -1), -1.0, 1.0)
    scaled = self._low + (unit + 1.0) * 0.5 * (self._high - self._low)
    obs, reward, terminated, truncated, info = self._env.step(
        scaled.reshape((self.num_envs,) + self._env.single_action_space.shape))
    obs = self._obs(obs)
    done = np.logical_or(terminated, truncated)
    ended = info.get("final_obs")  # object array: the ended episodes' last observations
    success = _success(info, self.num_envs)
    final_obs = {k: obs[k] for k in self.final_obs_keys}
    if ended is not None:
      final = info.get("final_info", {})
      success = np.where(done, _success(final, self.num_envs), success)
      for i in np.flatnonzero(done):
        last = self._obs(_batch_of_one(ended[i]))
        for k in final_obs:
          final_obs[k] = final_obs[k].copy()
          final_obs[k][i] = last[k][0]
    if self._reward_mode == "sparse":
      reward = success.astype(np.float32)
    return base.StepResult(
        obs={k: self._jax(v) for k, v in obs.items()},
        reward=self._jax(np.asarray(reward, np.float32)),
        terminated=self._jax(np.asarray(terminated, bool)),
        truncated=self._jax(np.asarray(truncated, bool)),
        success=self._jax(success),
        final_obs={k: self._jax(v) for k, v in final_obs.items()})

  def render(self):
    """uint8 [B, H, W, 3] frames (the envs' ``render_mode="rgb_array"``)."""
    frames = self._env.render()
    if frames is None or any(f is None for f in frames):
      raise RunError("the gymnasium vector env renders no frames for videos: make its envs "
                     "with render_mode='rgb_array', or set config.eval_videos=0")
    return self._jax(np.stack(frames))

  def close(self, terminate: bool = False) -> None:
    self._env.close()


def _success(info: dict, num_envs: int) -> np.ndarray:
  """bool [B]: the success an info dict reports (where its mask says it does), else False."""
  for key in SUCCESS_KEYS:
    if key in info:
      return np.asarray(info[key], bool) & np.asarray(info.get(f"_{key}", True), bool)
  return np.zeros(num_envs, bool)


def _batch_of_one(obs):
  """One env's observation with a batch axis of one."""
  if isinstance(obs, dict):
    return {k: np.asarray(v)[None] for k, v in obs.items()}
  return np.asarray(obs)[None]
