"""Flax actor-critic: a state MLP, a NatureCNN-like pixel encoder, or the published RPD run's
rgb agent (``encoder="ppo_rgb"``), chosen by config.

The policy is a diagonal Gaussian with a state-independent log-std (ManiSkill's PPO): actions are
sampled unbounded and clipped to [-1, 1] by the environment.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rpd_jax.envs.base import Observation


def _dense(features: int, scale: float = np.sqrt(2), name: Optional[str] = None) -> nn.Dense:
  return nn.Dense(features, kernel_init=nn.initializers.orthogonal(scale),
                  bias_init=nn.initializers.zeros, name=name)


class MLP(nn.Module):
  """Tanh MLP, ManiSkill's state-PPO trunk; ``out`` features from a small-scale last layer."""
  hidden: Sequence[int]
  out: int
  out_scale: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.hidden:
      x = nn.tanh(_dense(width)(x))
    return _dense(self.out, self.out_scale)(x)


class NatureCNN(nn.Module):
  """NatureCNN-like encoder of uint8 rgb [B, H, W, 3] (plus optional state) to [B, features]."""
  features: int

  @nn.compact
  def __call__(self, obs: Observation) -> jax.Array:
    x = obs["rgb"].astype(jnp.float32) / 255.0
    for channels, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
      x = nn.relu(nn.Conv(channels, (kernel, kernel), (stride, stride), padding="VALID")(x))
    x = nn.relu(_dense(self.features)(x.reshape(x.shape[0], -1)))
    if "state" in obs:
      x = jnp.concatenate([x, nn.relu(_dense(self.features)(obs["state"]))], axis=-1)
    return x


def _torch_default(fan_in: int):
  """(kernel_init, bias_init) of torch's nn.Linear / nn.Conv2d: both U(+-1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)
  return (nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
          lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                    bound))


class TorchNatureCNN(nn.Module):
  """The published RPD student's encoder (ManiSkill's ppo_rgb NatureCNN) with torch's default
  initialisation: conv 32@8/4, 64@4/2, 64@3/1, flatten, Linear -> features, ReLU; a state, where
  given, through its own Linear -> 256, ReLU, concatenated."""
  features: int

  @nn.compact
  def __call__(self, obs: Observation) -> jax.Array:
    x = obs["rgb"].astype(jnp.float32) / 255.0
    for channels, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
      k_init, b_init = _torch_default(x.shape[-1] * kernel * kernel)
      x = nn.relu(nn.Conv(channels, (kernel, kernel), (stride, stride), padding="VALID",
                          kernel_init=k_init, bias_init=b_init)(x))
    x = x.reshape(x.shape[0], -1)
    dense = lambda features, fan_in: nn.Dense(
        features, **dict(zip(("kernel_init", "bias_init"), _torch_default(fan_in))))
    x = nn.relu(dense(self.features, x.shape[-1])(x))
    if "state" in obs:
      state = obs["state"]
      x = jnp.concatenate([x, nn.relu(dense(256, state.shape[-1])(state))], axis=-1)
    return x


class ActorCritic(nn.Module):
  """Returns (action mean [B, A], log-std [A], value [B]) for an observation dict [B, ...]."""
  action_dim: int
  encoder: str
  obs_keys: Sequence[str]
  hidden: Sequence[int]
  cnn_features: int
  log_std_init: float
  log_std_min: Optional[float] = None  # floor on the log-std the policy uses (None: none)
  log_std_max: Optional[float] = None  # ceiling (None: none)

  @nn.compact
  def __call__(self, obs: Observation):
    obs = {k: obs[k] for k in self.obs_keys}
    if self.encoder == "ppo_rgb":
      # The published run's agent (ManiSkill's ppo_rgb): ReLU heads of 512, orthogonal init
      # (sqrt 2; the action mean's last layer 0.01 * sqrt 2), on the torch-initialised CNN.
      x = TorchNatureCNN(self.cnn_features, name="encoder")(obs)
      head = lambda out, scale, name: _dense(out, scale, f"{name}_out")(
          nn.relu(_dense(512, name=f"{name}_hidden")(x)))
      mean = head(self.action_dim, 0.01 * np.sqrt(2), "actor")
      value = head(1, np.sqrt(2), "critic")[:, 0]
    else:
      if self.encoder == "cnn":
        # One pixel encoder shared by actor and critic, as ManiSkill's rgb PPO does.
        x = NatureCNN(self.cnn_features, name="encoder")(obs)
      else:
        x = jnp.concatenate([obs[k].reshape(obs[k].shape[0], -1) for k in self.obs_keys], -1)
      mean = MLP(self.hidden, self.action_dim, 0.01 * np.sqrt(2), name="actor")(x)
      value = MLP(self.hidden, 1, 1.0, name="critic")(x)[:, 0]
    log_std = self.param("log_std", nn.initializers.constant(self.log_std_init),
                         (self.action_dim,))
    if self.log_std_min is not None or self.log_std_max is not None:
      log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
    return mean, log_std, value


def make_network(network: ml_collections.ConfigDict, action_dim: int) -> ActorCritic:
  """The actor-critic of ``config.network`` for an action space of ``action_dim``."""
  return ActorCritic(action_dim=action_dim, encoder=network.encoder,
                     obs_keys=tuple(network.obs_keys), hidden=tuple(network.hidden),
                     cnn_features=network.cnn_features, log_std_init=network.log_std_init,
                     log_std_min=network.log_std_min, log_std_max=network.log_std_max)
