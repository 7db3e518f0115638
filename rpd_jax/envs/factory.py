"""An environment of your own, by path: ``config.env.name = "factory"``.

  config.env.kwargs.factory = "mypkg.envs:make"    # imported by the trainer (on PYTHONPATH)
  config.env.kwargs.<other>  = ...                 # passed on to it

``make(num_envs, seed, reward_mode, final_obs_keys, **the other env.kwargs)`` returns a
``base.VecEnv`` of ``num_envs`` envs: batched JAX arrays in and out, actions float32 [B, A] in
[-1, 1], auto-reset inside ``step`` with the ended episodes' last observations in
``final_obs`` (of the keys ``final_obs_keys`` names; None: all), env i reset with
``seed + i``, and the attributes the protocol lists (``num_envs``, ``action_dim``,
``max_episode_steps``, ``observation_spec``, ``final_obs_keys``, ``holds_state``,
``sim_backend``, ``jax_native``). ``reward_mode`` is the run's ``config.env.reward_mode``
(``normalized_dense``, ``dense`` or ``sparse``). A gymnasium vector env becomes one with
``rpd_jax.envs.gymnasium_vector.GymnasiumVecEnv``.

The factory is checked when the config is (imported, its keywords matched) and what it returns
when it is built; which observation keys it gives is known only then, and the trainer checks
the student's and the teacher's against them before compiling anything.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections

from rpd_jax.envs import base
from rpd_jax.errors import ConfigError, check_options, load_by_path

# The keywords the trainer passes to every env itself.
FIXED = ("num_envs", "seed", "reward_mode", "final_obs_keys")


def load(kwargs: Mapping[str, Any]) -> Callable[..., Any]:
  """The factory ``config.env.kwargs.factory`` names (``kwargs``: config.env.kwargs), its
  options (the other kwargs) checked; ConfigError naming what is wrong."""
  path = kwargs.get("factory")
  if path is None:
    raise ConfigError("config.env.name='factory' needs config.env.kwargs.factory, "
                      "'package.module:function' naming a function (or VecEnv class) that "
                      "builds the envs")
  make = load_by_path(path, f"config.env.kwargs.factory={path!r}",
                      "function (or VecEnv class)")
  options = {k: v for k, v in kwargs.items() if k != "factory"}
  check_options(make, options, "env.kwargs", f"the factory {path!r}", fixed=FIXED)
  return make


def configure(config: ml_collections.ConfigDict) -> None:
  """The config hook (``envs.CONFIG_HOOKS``): a factory that cannot be imported or takes other
  options stops here, before anything is built."""
  load(config.env.kwargs)


class FactoryVecEnv:
  """The env a factory builds, held to the ``base.VecEnv`` contract (module doc).

  ``jax_native`` is False: whether the built env is JAX arrays alone is known only once it is
  built, and one env per process (``parallel.ProcessEnvs``) is right for any env under a mesh.
  """

  jax_native = False

  def __init__(self, num_envs: int, seed: int, reward_mode: str = "normalized_dense",
               final_obs_keys: Optional[Sequence[str]] = None,
               on_demand_keys: Sequence[str] = (), **kwargs):
    del on_demand_keys  # a factory's env observes every key at every step (on_demand_keys=())
    make = load(kwargs)
    options = {k: v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v
               for k, v in kwargs.items() if k != "factory"}
    env = make(num_envs=num_envs, seed=seed, reward_mode=reward_mode,
               final_obs_keys=final_obs_keys, **options)
    where = f"config.env.kwargs.factory={kwargs['factory']!r}"
    missing = [n for n in _CONTRACT if getattr(env, n, None) is None]
    if missing:
      raise ConfigError(f"{where} returned a {type(env).__name__} without "
                        f"{', '.join(missing)}: it must return a VecEnv (rpd_jax/envs/base.py)")
    if env.num_envs != num_envs:
      raise ConfigError(f"{where} was asked for {num_envs} envs and built {env.num_envs}")
    self._env = env
    self.num_envs, self.action_dim = env.num_envs, int(env.action_dim)
    self.max_episode_steps = int(env.max_episode_steps)
    self.sim_backend, self.final_obs_keys = env.sim_backend, tuple(env.final_obs_keys)
    self.observation_spec = dict(env.observation_spec)
    self.on_demand_keys: tuple[str, ...] = ()

  @property
  def holds_state(self) -> bool:
    return self._env.holds_state

  def get_state(self):
    return self._env.get_state()

  def set_state(self, state) -> None:
    self._env.set_state(state)

  def reset(self, seed: int) -> base.Observation:
    return self._env.reset(seed)

  def step(self, action, on_demand=None) -> base.StepResult:
    del on_demand  # every env observes everything (no on-demand keys)
    return self._env.step(action)

  def render(self):
    return self._env.render()

  def close(self, terminate: bool = False) -> None:
    self._env.close(terminate=terminate)


# What a VecEnv has (base.VecEnv), named where a factory's env lacks some; on_demand_keys is
# optional (a factory's env observes every key at every step).
_CONTRACT = ("num_envs", "action_dim", "max_episode_steps", "holds_state", "jax_native",
             "sim_backend", "final_obs_keys", "observation_spec", "reset", "step", "render",
             "close")
