"""Environments by name: ``make_env(config.env, num_envs, seed)``.

Backends are imported when built, so that the pure-JAX env needs neither torch nor ManiSkill,
and a config can be checked (``observation_keys``) without importing either.
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
}
ENV_NAMES = tuple(ENVS)
# The observation keys each env gives per ``obs_mode`` (``env.kwargs.obs_mode``, default
# "state"); tests hold every env to this table.
OBSERVATION_KEYS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "jax_push": {"state": ("privileged", "state"), "state_rgb": ("privileged", "rgb", "state"),
                 "rgb": ("privileged", "rgb", "state")},
    "maniskill": {"state": ("privileged", "state"), "rgb": ("privileged", "rgb"),
                  "state_rgb": ("privileged", "rgb", "state")},
}


# name -> module with ``configure(config)``: the env's own word on a run's config before anything
# is built (machine-dependent defaults resolved in place, its limits checked); light imports.
CONFIG_HOOKS: Mapping[str, str] = {
    "maniskill": "rpd_jax.envs.maniskill_config",
}


def configure(config: ml_collections.ConfigDict) -> None:
  """Lets the env named by ``config.env.name`` resolve and check ``config`` in place (a
  ConfigError for what it cannot run); nothing for envs without a hook."""
  observation_keys(config.env)
  if config.env.name in CONFIG_HOOKS:
    importlib.import_module(CONFIG_HOOKS[config.env.name]).configure(config)


def observation_keys(env_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The observation keys of ``config.env``; ConfigError for an unknown env or obs_mode."""
  if env_config.name not in ENVS:
    raise ConfigError(f"config.env.name={env_config.name!r} is unknown; use one of "
                      f"{', '.join(ENV_NAMES)}")
  modes = OBSERVATION_KEYS[env_config.name]
  obs_mode = env_config.kwargs.get("obs_mode", "state")
  if obs_mode not in modes:
    raise ConfigError(f"config.env.kwargs.obs_mode={obs_mode!r} is unknown for the "
                      f"{env_config.name} env; use one of {', '.join(modes)}")
  return modes[obs_mode]


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


__all__ = ["ENV_NAMES", "OBSERVATION_KEYS", "StepResult", "VecEnv", "configure", "env_class",
           "make_env", "observation_keys"]
