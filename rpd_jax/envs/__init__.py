"""Environments by name: ``make_env(config.env, num_envs, seed)``.

Backends are imported lazily so that the pure-JAX env needs neither torch nor ManiSkill.
"""

from __future__ import annotations

import ml_collections

from rpd_jax.envs.base import StepResult, VecEnv

ENV_NAMES = ("jax_push", "maniskill")


def make_env(env_config: ml_collections.ConfigDict, num_envs: int, seed: int) -> VecEnv:
  """Builds ``num_envs`` environments of ``env_config.name`` (see ENV_NAMES)."""
  kwargs = dict(env_config.kwargs)
  if env_config.name == "jax_push":
    from rpd_jax.envs import jax_push
    return jax_push.JaxPushVecEnv(num_envs=num_envs, seed=seed,
                                  reward_mode=env_config.reward_mode, **kwargs)
  if env_config.name == "maniskill":
    from rpd_jax.envs import maniskill
    return maniskill.ManiSkillVecEnv(num_envs=num_envs, seed=seed,
                                     reward_mode=env_config.reward_mode, **kwargs)
  raise ValueError(f"config.env.name={env_config.name!r} is unknown; use one of "
                   f"{', '.join(ENV_NAMES)}")


__all__ = ["ENV_NAMES", "StepResult", "VecEnv", "make_env"]
