"""Environments by name: ``make_env(config.env, num_envs, seed)``.

Backends are imported when built, so that the pure-JAX env needs neither torch nor ManiSkill,
and a config can be checked (``observation_keys``) without importing either. ``factory`` is an
env of your own, built by a function you name (``rpd_jax.envs.factory``).
"""

from __future__ import annotations

import importlib
from typing import Mapping, Optional, Sequence

import ml_collections

from rpd_jax.envs.base import StepResult, VecEnv
from rpd_jax.errors import ConfigError, check_options

# name -> (module, class); the class takes (num_envs, seed, reward_mode, **config.env.kwargs).
ENVS: Mapping[str, tuple[str, str]] = {
    "jax_push": ("rpd_jax.envs.jax_push", "JaxPushVecEnv"),
    "maniskill": ("rpd_jax.envs.maniskill", "ManiSkillVecEnv"),
    # config.env.kwargs.factory = "package.module:function" builds the envs (envs/factory.py).
    "factory": ("rpd_jax.envs.factory", "FactoryVecEnv"),
}
ENV_NAMES = tuple(ENVS)
# The observation keys each env gives per ``obs_mode`` (``env.kwargs.obs_mode``, default
# "state"); tests hold every env to this table. A factory's env is not in it: its keys are
# known once it is built.
# "state"); tests hold every env to this table.
_ROBOT_STATE = ("qpos", "qvel", "tcp_pose")  # ManiSkill's robot state, for Octo's proprio
OBSERVATION_KEYS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "jax_push": {"state": ("privileged", "state"), "state_rgb": ("privileged", "rgb", "state"),
                 "rgb": ("privileged", "rgb", "state")},
    "maniskill": {"state": ("privileged", "state") + _ROBOT_STATE,
                  "rgb": ("privileged", "rgb") + _ROBOT_STATE,
                  "state_rgb": ("privileged", "rgb", "state") + _ROBOT_STATE},
}
# Keys an env gives in any obs_mode when the env kwarg named here is set: (kwarg, what it does).
OPTIONAL_OBSERVATIONS: Mapping[str, Mapping[str, tuple[str, str]]] = {
    "maniskill": {"rgb_wrist": ("wrist_image_size", "renders the Panda's hand camera at that "
                                                    "size")},
}


# The env kwarg that sets each camera observation's (square) frame size, where an env has it.
FRAME_SIZE_KWARGS = {"rgb": "image_size", "rgb_wrist": "wrist_image_size"}


def frame_sizes(env_config: ml_collections.ConfigDict) -> dict[str, tuple[int, int]]:
  """(H, W) of the camera observations whose size ``config.env.kwargs`` sets."""
  return {key: (size, size) for key, kwarg in FRAME_SIZE_KWARGS.items()
          if (size := env_config.kwargs.get(kwarg))}


# name -> module with ``configure(config)``: the env's own word on a run's config before anything
# is built (machine-dependent defaults resolved in place, its limits checked); light imports.
CONFIG_HOOKS: Mapping[str, str] = {
    "maniskill": "rpd_jax.envs.maniskill_config",
    "factory": "rpd_jax.envs.factory",
}


def configure(config: ml_collections.ConfigDict) -> None:
  """Lets the env named by ``config.env.name`` resolve and check ``config`` in place (a
  ConfigError for what it cannot run); nothing for envs without a hook."""
  observation_keys(config.env)
  if config.env.name in CONFIG_HOOKS:
    importlib.import_module(CONFIG_HOOKS[config.env.name]).configure(config)


def observation_keys(env_config: ml_collections.ConfigDict) -> Optional[tuple[str, ...]]:
  """The observation keys of ``config.env``, None where they are known only once the env is
  built (a factory's); ConfigError for an unknown env or obs_mode."""
  if env_config.name not in ENVS:
    raise ConfigError(f"config.env.name={env_config.name!r} is unknown; use one of "
                      f"{', '.join(ENV_NAMES)}")
  if env_config.name not in OBSERVATION_KEYS:
    return None
  modes = OBSERVATION_KEYS[env_config.name]
  obs_mode = env_config.kwargs.get("obs_mode", "state")
  if obs_mode not in modes:
    raise ConfigError(f"config.env.kwargs.obs_mode={obs_mode!r} is unknown for the "
                      f"{env_config.name} env; use one of {', '.join(modes)}")
  optional = OPTIONAL_OBSERVATIONS.get(env_config.name, {})
  return modes[obs_mode] + tuple(key for key, (kwarg, _) in optional.items()
                                 if env_config.kwargs.get(kwarg))


def how_to_observe(env_config: ml_collections.ConfigDict, key: str) -> str:
  """How to make the env of ``config.env`` give observation ``key``: the env kwarg that turns
  it on, else the obs_modes that have it (or that none does)."""
  optional = OPTIONAL_OBSERVATIONS.get(env_config.name, {})
  if key in optional:
    kwarg, what = optional[key]
    return f"set config.env.kwargs.{kwarg} (it {what})"
  modes = [m for m, keys in OBSERVATION_KEYS.get(env_config.name, {}).items() if key in keys]
  if modes:
    return f"pick an obs_mode that includes it ({', '.join(modes)})"
  return f"the {env_config.name} env gives it in no obs_mode"


def env_class(env_config: ml_collections.ConfigDict) -> type:
  """The class of ``config.env.name`` (imports its module), whose class attributes declare
  what the env can do (``base.VecEnv``: ``jax_native``, ``holds_state``)."""
  observation_keys(env_config)
  module, name = ENVS[env_config.name]
  return getattr(importlib.import_module(module), name)


def make_env(env_config: ml_collections.ConfigDict, num_envs: int, seed: int,
             final_obs_keys: Optional[Sequence[str]] = None,
             on_demand_keys: Sequence[str] = ()) -> VecEnv:
  """Builds ``num_envs`` environments of ``env_config.name`` with ``env_config.kwargs``;
  ``final_obs_keys``: the keys of ``StepResult.final_obs`` (None: all); ``on_demand_keys``:
  keys observed only where a step asks for them (``base``'s module doc)."""
  cls = env_class(env_config)
  kwargs = dict(env_config.kwargs)
  check_options(cls, kwargs, "env.kwargs", f"the {env_config.name} env",
                fixed=("num_envs", "seed", "reward_mode", "final_obs_keys", "on_demand_keys"))
  return cls(num_envs=num_envs, seed=seed, reward_mode=env_config.reward_mode,
             final_obs_keys=final_obs_keys, on_demand_keys=tuple(on_demand_keys), **kwargs)


__all__ = ["ENV_NAMES", "FRAME_SIZE_KWARGS", "OBSERVATION_KEYS", "OPTIONAL_OBSERVATIONS",
           "StepResult", "VecEnv", "configure", "env_class", "frame_sizes", "how_to_observe",
           "make_env", "observation_keys"]
