"""Pure losses: GAE and its bootstrap targets, the PPO clip loss, the distillation terms by name,
and the lambda schedules.

Shapes: T = rollout steps, B = envs, M = minibatch, A = action dim, N = teacher samples.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rpd_jax import gaussian

BOOTSTRAPS = ("always", "truncated")
SCHEDULES = ("constant", "linear", "cosine", "surpass")
# ``surpassed_at`` of a student that has not passed its teacher (yet).
NEVER = np.iinfo(np.int32).max


class TeacherTargets(NamedTuple):
  """What the teacher said about each transition of a minibatch, [M, A] each."""
  action: jax.Array  # one teacher action: the MSE / L1 / BC target
  mean: Optional[jax.Array] = None  # PPD: the Gaussian fitted to N teacher samples
  std: Optional[jax.Array] = None
  # float32 [M]: 1 where the teacher labelled the transition, 0 where it did not (a teacher
  # budget, rpd_jax/budget.py); None: every transition is labelled.
  weight: Optional[jax.Array] = None


def labelled_mean(x: jax.Array, weight: Optional[jax.Array]) -> jax.Array:
  """The mean of x [M, ...] over the minibatch, or over its labelled rows (``weight`` [M] of
  0 / 1): a minibatch without labelled rows gives 0, so it adds no distillation."""
  if weight is None:
    return jnp.mean(x)
  per_row = x.reshape(x.shape[0], -1).mean(axis=1)
  return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)


class Minibatch(NamedTuple):
  """M transitions, flat: what the PPO and distillation losses read."""
  obs: Any  # observation dict [M, ...]
  actions: jax.Array  # [M, A] sampled (unclipped) actions
  log_probs: jax.Array  # [M] their log-probability under the policy that collected them
  values: jax.Array  # [M] V(obs) under that policy
  advantages: jax.Array  # [M]
  returns: jax.Array  # [M] value targets: advantages + values
  teacher: Optional[TeacherTargets] = None  # None for plain PPO


def bootstrap_values(values: jax.Array, last_value: jax.Array, final_values: jax.Array,
                     terminated: jax.Array, truncated: jax.Array, mode: str) -> jax.Array:
  """The value each transition t bootstraps from, [T, B].

  V(obs[t + 1]) where the episode goes on (``last_value`` [B] after the last step); where it
  ended at t, V(final observation) (``final_values`` [T, B]) if ``mode`` is "always"
  (ManiSkill's PPO), or, with "truncated", that on truncation and 0 on termination.
  ManiSkill tasks terminate on success, so with "truncated" and a dense reward an episode that
  hovers short of success earns more than one that succeeds.
  """
  next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
  if mode == "always":
    return jnp.where(terminated | truncated, final_values, next_values)
  if mode == "truncated":
    next_values = jnp.where(truncated, final_values, next_values)
    return jnp.where(terminated, 0.0, next_values)
  raise ValueError(f"bootstrap mode {mode!r}; use one of {', '.join(BOOTSTRAPS)}")


def gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array, dones: jax.Array,
        gamma: float, gae_lambda: float, finite_horizon: bool) -> jax.Array:
  """Advantages [T, B] by (finite-horizon) GAE, as ManiSkill's PPO computes them.

  Args:
    rewards: [T, B] reward of transition t.
    values: [T, B] V(s_t).
    next_values: [T, B] the value to bootstrap transition t from (``bootstrap_values``).
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


def normalize(advantages: jax.Array) -> jax.Array:
  """Zero mean, unit std over the minibatch (ManiSkill's per-minibatch normalisation)."""
  return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def ppo_loss(mean: jax.Array, log_std: jax.Array, value: jax.Array, mb: Minibatch, *,
             clip_coef: float, vf_coef: float, ent_coef: float, clip_vloss: bool,
             norm_adv: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO clip loss of a minibatch: (loss, aux); aux["ratio"] [M] is the new probability ratio
  (for PPD), the other entries are scalar metrics.

  mean [M, A], log_std [A], value [M]: the current policy on ``mb.obs``.
  """
  advantages = normalize(mb.advantages) if norm_adv else mb.advantages
  log_ratio = gaussian.log_prob(mb.actions, mean, log_std) - mb.log_probs
  ratio = jnp.exp(log_ratio)
  pg_loss = jnp.maximum(-advantages * ratio,
                        -advantages * jnp.clip(ratio, 1 - clip_coef, 1 + clip_coef)).mean()
  if clip_vloss:
    clipped = mb.values + jnp.clip(value - mb.values, -clip_coef, clip_coef)
    v_loss = 0.5 * jnp.maximum((value - mb.returns)**2, (clipped - mb.returns)**2).mean()
  else:
    v_loss = 0.5 * ((value - mb.returns)**2).mean()
  entropy = gaussian.entropy(log_std)
  loss = pg_loss + vf_coef * v_loss - ent_coef * entropy
  aux = dict(pg_loss=pg_loss, v_loss=v_loss, entropy=entropy, ratio=ratio,
             approx_kl=((ratio - 1) - log_ratio).mean(),
             clipfrac=(jnp.abs(ratio - 1.0) > clip_coef).astype(jnp.float32).mean())
  return loss, aux


# The distillation terms. One signature: (student mean [M, A], student log-std [A], the
# teacher's targets, the PPO ratio [M], PPO's clip epsilon) -> scalar loss, a mean over the
# labelled transitions (``labelled_mean``). No gradient reaches the teacher's side.
DistillLoss = Callable[[jax.Array, jax.Array, TeacherTargets, jax.Array, float], jax.Array]


def distill_mse(mean, log_std, teacher: TeacherTargets, ratio, clip_coef) -> jax.Array:
  """RPD-MSE: mean over batch and action dims of (mu - a_teacher)^2."""
  del log_std, ratio, clip_coef
  return labelled_mean((mean - jax.lax.stop_gradient(teacher.action))**2, teacher.weight)


def distill_l1(mean, log_std, teacher: TeacherTargets, ratio, clip_coef) -> jax.Array:
  """RPD-L1: mean over batch and action dims of |mu - a_teacher|."""
  del log_std, ratio, clip_coef
  return labelled_mean(jnp.abs(mean - jax.lax.stop_gradient(teacher.action)), teacher.weight)


def distill_bc(mean, log_std, teacher: TeacherTargets, ratio, clip_coef) -> jax.Array:
  """RPD-BC: negative log-likelihood of the teacher's action under the student, batch mean."""
  del ratio, clip_coef
  return -labelled_mean(gaussian.log_prob(jax.lax.stop_gradient(teacher.action), mean, log_std),
                        teacher.weight)


def distill_ppd(mean, log_std, teacher: TeacherTargets, ratio, clip_coef) -> jax.Array:
  """Proximal Policy Distillation (Spigler 2024): mean of max(r_t, 1-eps) * KL(teacher || student),
  the teacher being the Gaussian fitted to its samples (``teacher.mean``, ``teacher.std``)."""
  kl = gaussian.kl(jax.lax.stop_gradient(teacher.mean), jax.lax.stop_gradient(teacher.std),
                   mean, log_std)
  return labelled_mean(jnp.maximum(ratio, 1.0 - clip_coef) * kl, teacher.weight)


DISTILL: dict[str, DistillLoss] = {
    "mse": distill_mse, "l1": distill_l1, "bc": distill_bc, "ppd": distill_ppd}


def distill_coef(env_steps: jax.Array, coef: float, schedule: str, decay_steps: int,
                 surpassed_at: jax.Array | int = NEVER) -> jax.Array:
  """lambda(env_steps): constant; a linear / cosine decay that reaches 0 at decay_steps; or
  ("surpass") constant until ``surpassed_at``, the env step at which the student's evaluation
  passed its teacher's success (NEVER before), then a linear decay that reaches 0 decay_steps
  later (at once for 0)."""
  if schedule == "constant":
    return jnp.asarray(coef, jnp.float32)
  if schedule == "surpass":
    since = jnp.asarray(env_steps, jnp.int32) - jnp.asarray(surpassed_at, jnp.int32)
    progress = (since >= 0 if decay_steps == 0 else
                jnp.clip(since / decay_steps, 0.0, 1.0))
    return coef * (1.0 - progress.astype(jnp.float32))
  progress = jnp.clip(env_steps / decay_steps, 0.0, 1.0)
  if schedule == "linear":
    return coef * (1.0 - progress)
  if schedule == "cosine":
    return coef * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  raise ValueError(f"unknown distill schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
