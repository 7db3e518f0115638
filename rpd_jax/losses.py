"""Pure loss functions: GAE, the PPO clip loss, the distillation terms and the lambda schedules.

Shapes: T = rollout steps, B = envs, M = minibatch, A = action dim, N = teacher samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rpd_jax.networks import gaussian_entropy, gaussian_log_prob


def gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array, dones: jax.Array,
        gamma: float, gae_lambda: float, finite_horizon: bool) -> jax.Array:
  """Advantages [T, B] by (finite-horizon) GAE, as ManiSkill's PPO computes them.

  Args:
    rewards: [T, B] reward of transition t.
    values: [T, B] V(s_t).
    next_values: [T, B] the value to bootstrap transition t from: V(s_{t+1}) where the episode
      goes on, V(final observation) where it was truncated, 0 where it terminated.
    dones: [T, B] the episode ended at transition t (terminated or truncated); the recursion does
      not carry across it.
  Finite-horizon GAE normalises the lambda-weighted sum of n-step returns by the sum of the
  weights actually available before the episode (or rollout) ends, instead of by 1 / (1 - lambda).
  """
  not_done = 1.0 - dones.astype(jnp.float32)

  def step(carry, x):
    lam_sum, reward_sum, value_sum, last_adv = carry
    reward, value, next_value, nd = x
    if finite_horizon:
      lam_sum = 1.0 + gae_lambda * lam_sum * nd
      reward_sum = gae_lambda * gamma * reward_sum * nd + lam_sum * reward
      value_sum = gae_lambda * gamma * value_sum * nd + gamma * next_value
      adv = (reward_sum + value_sum) / lam_sum - value
    else:
      delta = reward + gamma * next_value - value
      adv = delta + gamma * gae_lambda * nd * last_adv
    return (lam_sum, reward_sum, value_sum, adv), adv

  zeros = jnp.zeros_like(rewards[0])
  _, adv = jax.lax.scan(step, (zeros, zeros, zeros, zeros),
                        (rewards, values, next_values, not_done), reverse=True)
  return adv


def ppo_loss(mean: jax.Array, log_std: jax.Array, value: jax.Array, actions: jax.Array,
             old_log_probs: jax.Array, old_values: jax.Array, advantages: jax.Array,
             returns: jax.Array, clip_coef: float, vf_coef: float, ent_coef: float,
             clip_vloss: bool):
  """PPO clip loss of a minibatch: (loss, aux) with the new log-ratio for KL and PPD.

  mean [M, A], log_std [A], value [M], actions [M, A], the rest [M].
  """
  new_log_probs = gaussian_log_prob(actions, mean, log_std)
  log_ratio = new_log_probs - old_log_probs
  ratio = jnp.exp(log_ratio)
  pg_loss = jnp.maximum(-advantages * ratio,
                        -advantages * jnp.clip(ratio, 1 - clip_coef, 1 + clip_coef)).mean()
  if clip_vloss:
    clipped = old_values + jnp.clip(value - old_values, -clip_coef, clip_coef)
    v_loss = 0.5 * jnp.maximum((value - returns)**2, (clipped - returns)**2).mean()
  else:
    v_loss = 0.5 * ((value - returns)**2).mean()
  entropy = gaussian_entropy(log_std)
  loss = pg_loss + vf_coef * v_loss - ent_coef * entropy
  aux = dict(pg_loss=pg_loss, v_loss=v_loss, entropy=entropy, ratio=ratio,
             approx_kl=((ratio - 1) - log_ratio).mean(),
             clipfrac=(jnp.abs(ratio - 1.0) > clip_coef).astype(jnp.float32).mean())
  return loss, aux


def distill_mse(mean: jax.Array, target: jax.Array) -> jax.Array:
  """RPD-MSE: mean over batch and action dims of (mu - a_teacher)^2."""
  return jnp.mean((mean - jax.lax.stop_gradient(target))**2)


def distill_l1(mean: jax.Array, target: jax.Array) -> jax.Array:
  """RPD-L1: mean over batch and action dims of |mu - a_teacher|."""
  return jnp.mean(jnp.abs(mean - jax.lax.stop_gradient(target)))


def distill_bc(mean: jax.Array, log_std: jax.Array, target: jax.Array) -> jax.Array:
  """RPD-BC: negative log-likelihood of the teacher's action under the student, batch mean."""
  return -jnp.mean(gaussian_log_prob(jax.lax.stop_gradient(target), mean, log_std))


def fit_gaussian(samples: jax.Array, min_std: float) -> tuple[jax.Array, jax.Array]:
  """Per-dimension Gaussian fit to teacher samples [N, ..., A] -> (mean, std) [..., A].

  The std is floored at ``min_std``: with few samples (or a deterministic teacher) the sample
  std can be ~0, and the KL to a zero-width Gaussian is unbounded.
  """
  mean = samples.mean(axis=0)
  std = jnp.maximum(samples.std(axis=0), min_std)
  return mean, std


def gaussian_kl(mean_p: jax.Array, std_p: jax.Array, mean_q: jax.Array,
                log_std_q: jax.Array) -> jax.Array:
  """KL(p || q) of diagonal Gaussians, summed over the last axis: [..., A] -> [...]."""
  var_ratio = (std_p * jnp.exp(-log_std_q))**2
  return jnp.sum(0.5 * (var_ratio + ((mean_q - mean_p) * jnp.exp(-log_std_q))**2 - 1.0)
                 - jnp.log(std_p) + log_std_q, axis=-1)


def distill_ppd(mean: jax.Array, log_std: jax.Array, teacher_mean: jax.Array,
                teacher_std: jax.Array, ratio: jax.Array, clip_coef: float) -> jax.Array:
  """Proximal Policy Distillation (Spigler 2024): mean of max(r_t, 1-eps) * KL(teacher || student).

  mean [M, A], log_std [A], teacher_mean/std [M, A] (a Gaussian fitted to N teacher samples),
  ratio [M] the PPO probability ratio of the taken action.
  """
  kl = gaussian_kl(jax.lax.stop_gradient(teacher_mean), jax.lax.stop_gradient(teacher_std),
                   mean, log_std)
  return jnp.mean(jnp.maximum(ratio, 1.0 - clip_coef) * kl)


def distill_coef(env_steps: jax.Array, coef: float, schedule: str,
                 decay_steps: int) -> jax.Array:
  """lambda(env_steps): constant, or a linear / cosine decay that reaches 0 at decay_steps."""
  if schedule == "constant":
    return jnp.asarray(coef, jnp.float32)
  progress = jnp.clip(env_steps / decay_steps, 0.0, 1.0)
  if schedule == "linear":
    return coef * (1.0 - progress)
  if schedule == "cosine":
    return coef * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  raise ValueError(f"unknown distill schedule {schedule!r}")
