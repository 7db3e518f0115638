"""Diagonal Gaussians: the student's policy and PPD's fit to teacher samples.

The student is ``N(mean [..., A], exp(log_std [A])^2)`` with a state-independent log-std
(ManiSkill's PPO). Densities, entropies and KLs sum over the action axis A.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample(mean: jax.Array, log_std: jax.Array, key: jax.Array) -> jax.Array:
  """One sample [..., A] of N(mean, exp(log_std)^2).

  ``key`` may be K keys for K students stacked along the batch (mean [K * N, A]): student k's
  rows then draw their noise from key k alone, as they would in a run of their own (one key is
  a batch of one: the same noise as ``jax.random.normal(key, mean.shape)``).
  """
  keys = key.reshape(-1)
  rows = (mean.shape[0] // keys.shape[0],) + mean.shape[1:]
  noise = jax.vmap(lambda k: jax.random.normal(k, rows))(keys).reshape(mean.shape)
  return mean + jnp.exp(log_std) * noise


def log_prob(x: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
  """Log-density of x: [..., A] -> [...]."""
  z = (x - mean) * jnp.exp(-log_std)
  return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


def entropy(log_std: jax.Array) -> jax.Array:
  """Entropy of a Gaussian with log-std [A] (a scalar)."""
  return jnp.sum(log_std + 0.5 * jnp.log(2 * jnp.pi * jnp.e))


def kl(mean_p: jax.Array, std_p: jax.Array, mean_q: jax.Array,
       log_std_q: jax.Array) -> jax.Array:
  """KL(p || q) of p = N(mean_p, std_p^2) and q = N(mean_q, exp(log_std_q)^2): [..., A] -> [...]."""
  var_ratio = (std_p * jnp.exp(-log_std_q))**2
  return jnp.sum(0.5 * (var_ratio + ((mean_q - mean_p) * jnp.exp(-log_std_q))**2 - 1.0)
                 - jnp.log(std_p) + log_std_q, axis=-1)


def fit(samples: jax.Array, min_std: float) -> tuple[jax.Array, jax.Array]:
  """Per-dimension fit to samples [N, ..., A] -> (mean, std) [..., A].

  The std is floored at ``min_std``: with few samples (or a deterministic teacher) the sample
  std can be ~0, and the KL to a zero-width Gaussian is unbounded.
  """
  return samples.mean(axis=0), jnp.maximum(samples.std(axis=0), min_std)
