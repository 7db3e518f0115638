"""PPO with a distillation term: pure, jitted ``policy_step`` and ``update``.

One PPO iteration (see DESIGN.md): the trainer's host loop calls ``policy_step`` once per env
step and collects a ``Rollout``; ``update`` is ONE jitted call that queries the teacher once per
collected transition, computes GAE, and runs ``lax.scan`` over epochs and shuffled minibatches.
Shapes: T = num_steps, B = num_envs, A = action dim, N = teacher samples.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from rpd_jax import losses
from rpd_jax.envs.base import Observation
from rpd_jax.networks import ActorCritic, gaussian_log_prob
from rpd_jax.teachers.base import Teacher, query


@struct.dataclass
class TrainState:
  params: Any
  opt_state: Any
  iteration: jax.Array  # int32 scalar: PPO iterations done
  env_steps: jax.Array  # int32 scalar: env transitions collected


class Rollout(NamedTuple):
  """T steps of B envs, as collected by the trainer's host loop."""
  obs: Observation  # [T, B, ...] observation the action was taken in
  prev_obs0: Observation  # [B, ...] the observation before obs[0] (for window-2 teachers)
  is_first: jax.Array  # bool [T, B]: obs[t] starts an episode
  actions: jax.Array  # [T, B, A] sampled (unclipped) actions
  log_probs: jax.Array  # [T, B]
  values: jax.Array  # [T, B] V(obs[t])
  rewards: jax.Array  # [T, B]
  terminated: jax.Array  # bool [T, B]
  truncated: jax.Array  # bool [T, B]
  final_values: jax.Array  # [T, B] V(final observation) of episodes that ended at t, else junk
  last_value: jax.Array  # [B] V(observation after the last step)


class PolicyStep(NamedTuple):
  action: jax.Array  # [B, A]
  log_prob: jax.Array  # [B]
  value: jax.Array  # [B] V(obs)
  final_value: jax.Array  # [B] V(final_obs) of the previous env step


def make_optimizer(config: ml_collections.ConfigDict, num_iterations: int):
  c = config.ppo
  lr = c.learning_rate
  if c.anneal_lr:
    lr = optax.linear_schedule(lr, 0.0, num_iterations * c.update_epochs * c.num_minibatches)
  return optax.chain(optax.clip_by_global_norm(c.max_grad_norm), optax.adam(lr, eps=1e-5))


def init_train_state(network: ActorCritic, optimizer, obs: Observation,
                     key: jax.Array) -> TrainState:
  params = network.init(key, obs)
  return TrainState(params=params, opt_state=optimizer.init(params),
                    iteration=jnp.zeros((), jnp.int32), env_steps=jnp.zeros((), jnp.int32))


def make_policy_step(network: ActorCritic):
  """Jitted (params, obs, final_obs, key) -> PolicyStep: one sampled action per env.

  V(final_obs) of the previous step is computed here, in the same call, so that bootstrapping
  on truncation costs no extra dispatch and no stored final observations.
  """
  @jax.jit
  def policy_step(params, obs: Observation, final_obs: Observation, key) -> PolicyStep:
    mean, log_std, value = network.apply(params, obs)
    action = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    _, _, final_value = network.apply(params, final_obs)
    return PolicyStep(action, gaussian_log_prob(action, mean, log_std), value, final_value)
  return policy_step


def make_act_deterministic(network: ActorCritic):
  """Jitted (params, obs) -> mean action [B, A], for evaluation."""
  return jax.jit(lambda params, obs: network.apply(params, obs)[0])


def _shift_in(first: Observation, rest: Observation) -> Observation:
  """prev[t] = rest[t - 1], prev[0] = first: [B, ...], [T, B, ...] -> [T, B, ...]."""
  return jax.tree.map(lambda f, r: jnp.concatenate([f[None], r[:-1]], axis=0), first, rest)


def _flatten(tree):
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def teacher_targets(teacher: Teacher, rollout: Rollout, key: jax.Array, loss: str,
                    num_samples: int, min_std: float) -> dict[str, jax.Array]:
  """Queries the teacher ONCE for every collected transition: [T * B, A] targets."""
  prev_obs = _shift_in(rollout.prev_obs0, rollout.obs)
  out = query(teacher, _flatten(rollout.obs), _flatten(prev_obs), _flatten(rollout.is_first),
              key, num_samples if loss == "ppd" else 0)
  targets = dict(teacher_action=out.action)
  if loss == "ppd":
    targets["teacher_mean"], targets["teacher_std"] = losses.fit_gaussian(out.samples, min_std)
  return jax.lax.stop_gradient(targets)


def make_update(network: ActorCritic, optimizer, config: ml_collections.ConfigDict):
  """Returns the jitted ``update(state, teacher, rollout, key) -> (state, metrics)``.

  It compiles once (``chex.assert_max_traces``): every shape is fixed by the config, and the
  distillation weight lambda(env_steps) is computed in the graph, not baked in.
  """
  c, d = config.ppo, config.distill
  loss_name = d.loss

  def loss_fn(params, mb, coef):
    mean, log_std, value = network.apply(params, mb["obs"])
    adv = mb["advantages"]
    if c.norm_adv:
      adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    loss, aux = losses.ppo_loss(mean, log_std, value, mb["actions"], mb["log_probs"],
                                mb["values"], adv, mb["returns"], c.clip_coef, c.vf_coef,
                                c.ent_coef, c.clip_vloss)
    metrics = {k: v for k, v in aux.items() if k != "ratio"}
    if loss_name != "none":
      if loss_name == "mse":
        distill = losses.distill_mse(mean, mb["teacher_action"])
      elif loss_name == "l1":
        distill = losses.distill_l1(mean, mb["teacher_action"])
      elif loss_name == "bc":
        distill = losses.distill_bc(mean, log_std, mb["teacher_action"])
      else:
        distill = losses.distill_ppd(mean, log_std, mb["teacher_mean"], mb["teacher_std"],
                                     aux["ratio"], c.clip_coef)
      loss = loss + coef * distill
      metrics["distill"] = distill
      metrics["teacher_gap"] = jnp.mean(jnp.abs(mean - mb["teacher_action"]))
    metrics["total"] = loss
    return loss, metrics

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def minibatch_step(carry, idx, batch, coef):
    params, opt_state, stopped = carry
    mb = jax.tree.map(lambda x: x[idx], batch)

    def run(_):
      (_, metrics), grads = grad_fn(params, mb, coef)
      # ManiSkill's early stop: once a minibatch's KL (measured before its step) exceeds the
      # target, neither it nor any later minibatch of this update is applied.
      apply = (metrics["approx_kl"] <= c.target_kl) if c.target_kl > 0 else jnp.bool_(True)
      updates, new_opt = optimizer.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      pick = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
      metrics["grad_norm"] = optax.tree.norm(grads)
      return (pick(new_params, params), pick(new_opt, opt_state), ~apply), (metrics, apply)

    def skip(_):
      metrics = jax.tree.map(jnp.zeros_like, jax.eval_shape(run, None)[1][0])
      return (params, opt_state, stopped), (metrics, jnp.bool_(False))

    return jax.lax.cond(stopped, skip, run, None)

  # chex identifies a function by its source and definition stack, so every update made here
  # shares one counter: start it afresh for this one (a run builds its update once).
  chex.clear_trace_counter()

  @chex.assert_max_traces(n=1)
  def update(state: TrainState, teacher: Optional[Teacher], rollout: Rollout, key: jax.Array):
    num_steps, num_envs = rollout.rewards.shape
    batch_size = num_steps * num_envs
    k_teacher, k_perm = jax.random.split(key)

    dones = rollout.terminated | rollout.truncated
    next_values = jnp.concatenate([rollout.values[1:], rollout.last_value[None]], axis=0)
    if c.bootstrap_at_done == "always":
      next_values = jnp.where(dones, rollout.final_values, next_values)
    else:  # "truncated": a terminal state is worth 0
      next_values = jnp.where(rollout.truncated, rollout.final_values, next_values)
      next_values = jnp.where(rollout.terminated, 0.0, next_values)
    advantages = losses.gae(rollout.rewards * c.reward_scale, rollout.values, next_values, dones,
                            c.gamma, c.gae_lambda, c.finite_horizon_gae)
    batch = _flatten(dict(obs=rollout.obs, actions=rollout.actions,
                          log_probs=rollout.log_probs, values=rollout.values,
                          advantages=advantages, returns=advantages + rollout.values))
    metrics = {}
    if loss_name != "none":
      batch.update(teacher_targets(teacher, rollout, k_teacher, loss_name, d.ppd_samples,
                                   d.ppd_min_std))
      # What the teacher saw per collected transition: 1 by construction, logged as a check.
      metrics["teacher/calls_per_step"] = jnp.float32(batch["teacher_action"].shape[0] /
                                                      batch_size)
    coef = losses.distill_coef(state.env_steps, d.coef, d.schedule, d.decay_steps)

    mb_size = batch_size // c.num_minibatches
    perms = jax.vmap(lambda k: jax.random.permutation(k, batch_size))(
        jax.random.split(k_perm, c.update_epochs))
    indices = perms.reshape(c.update_epochs * c.num_minibatches, mb_size)
    (params, opt_state, _), (mb_metrics, applied) = jax.lax.scan(
        lambda carry, idx: minibatch_step(carry, idx, batch, coef),
        (state.params, state.opt_state, jnp.bool_(False)), indices)

    num_applied = applied.sum()
    weight = applied / jnp.maximum(num_applied, 1)
    metrics.update({f"loss/{k}": jnp.sum(v * weight) for k, v in mb_metrics.items()})
    metrics["loss/update_fraction"] = num_applied / applied.shape[0]
    metrics["loss/distill_coef"] = coef
    metrics["train/log_std"] = params["params"]["log_std"].mean()
    metrics["train/value_mean"] = rollout.values.mean()
    metrics["train/finite"] = jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
    state = TrainState(params=params, opt_state=opt_state, iteration=state.iteration + 1,
                       env_steps=state.env_steps + batch_size)
    return state, metrics

  return jax.jit(update, donate_argnums=(0,))
