"""PPO with a distillation term: the train state, the optimizer and the jitted ``update``.

One PPO iteration (docs/architecture.md): ``rollout.collect`` steps the envs with the student and
returns a ``Rollout``; ``update`` is ONE jitted call that queries the teacher once per labelled
transition (every collected one, unless a teacher budget chose fewer: rpd_jax/budget.py),
computes GAE, and runs ``lax.scan`` over epochs and shuffled minibatches.
Shapes: T = num_steps, B = num_envs, A = action dim, N = teacher samples.
"""

from __future__ import annotations

from typing import Any, Optional

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from rpd_jax import gaussian, losses
from rpd_jax.envs.base import Observation
from rpd_jax.networks import ActorCritic
from rpd_jax.rollout import Rollout
from rpd_jax.teachers.base import Teacher, query


@struct.dataclass
class TrainState:
  params: Any
  opt_state: Any
  iteration: jax.Array  # int32 scalar: PPO iterations done
  env_steps: jax.Array  # int32 scalar: env transitions collected
  # int32 scalar: the env steps at which the student's evaluation first passed its teacher's
  # success (the "surpass" schedule of lambda; losses.NEVER before, and under other schedules).
  surpassed_at: jax.Array


def make_optimizer(ppo: ml_collections.ConfigDict, num_iterations: int):
  """Adam with global-norm clipping, as ManiSkill's PPO (``config.ppo``)."""
  lr = ppo.learning_rate
  if ppo.anneal_lr:
    lr = optax.linear_schedule(lr, 0.0, num_iterations * ppo.update_epochs * ppo.num_minibatches)
  return optax.chain(optax.clip_by_global_norm(ppo.max_grad_norm), optax.adam(lr, eps=1e-5))


def init_train_state(network: ActorCritic, optimizer, obs: Observation,
                     key: jax.Array) -> TrainState:
  params = network.init(key, obs)
  return TrainState(params=params, opt_state=optimizer.init(params),
                    iteration=jnp.zeros((), jnp.int32), env_steps=jnp.zeros((), jnp.int32),
                    surpassed_at=jnp.asarray(losses.NEVER, jnp.int32))


def _flatten(tree):
  """[T, B, ...] -> [T * B, ...]."""
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def teacher_targets(teacher: Teacher, rollout: Rollout, key: jax.Array, num_samples: int,
                    min_std: float, max_batch: int, num_labelled: int = 0
                    ) -> losses.TeacherTargets:
  """The teacher's targets [T * B, A] for the collected transitions, in calls of at most
  ``max_batch`` observations.

  Without ``rollout.labelled`` the teacher labels every transition, ONCE. With it (a teacher
  budget, rpd_jax/budget.py) the teacher is asked on the B observations of each of the
  ``num_labelled`` steps that have labelled transitions (none at all where nothing is
  labelled), and the targets carry ``weight`` [T * B]: 1 where labelled, else 0 (those rows'
  targets are zeros). ``num_samples`` > 0 (PPD) also fits a Gaussian to that many samples per
  labelled transition. Where the update is vmapped over students (``students.Students``),
  their teacher calls run one student after another (``sequential_vmap``): a call holds one
  student's chunk whatever the number of students, each student gets the answers its own run
  would, and a student that labels nothing skips its call.
  """
  prev_obs = jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest[:-1]]),
                          rollout.prev_obs0, rollout.obs)  # prev_obs[t] = obs[t - 1]
  inputs = (rollout.obs, prev_obs, rollout.is_first)
  if rollout.labelled is None:
    out = _ask(teacher, *map(_flatten, inputs), key, None, num_samples, max_batch)
    weight = None
  else:
    # The labelled steps, padded (with step 0, unread) where fewer than num_labelled are.
    steps = jnp.nonzero(rollout.labelled.any(axis=1), size=num_labelled, fill_value=0)[0]
    picked = jax.tree.map(lambda x: _flatten(x[steps]), inputs)  # [n * B, ...]
    out = _ask(teacher, *picked, key, rollout.labelled.any(), num_samples, max_batch)
    out = jax.tree.map(lambda x: _scatter_steps(x, steps, rollout.labelled.shape), out)
    weight = rollout.labelled.reshape(-1).astype(jnp.float32)
  if not num_samples:
    return jax.lax.stop_gradient(losses.TeacherTargets(out.action, weight=weight))
  mean, std = gaussian.fit(out.samples, min_std)
  return jax.lax.stop_gradient(losses.TeacherTargets(out.action, mean, std, weight))


def _ask(teacher: Teacher, obs: Observation, prev_obs: Observation, is_first: jax.Array,
         key: jax.Array, asked: Optional[jax.Array], num_samples: int, max_batch: int):
  """One student's teacher call (``query``) on flat rows; where ``asked`` is False none is
  made and the answer is zeros. Vmapped over students, the students' calls run one after
  another (``teacher_targets``)."""
  @jax.custom_batching.sequential_vmap
  def ask(teacher, obs, prev_obs, is_first, key, asked):
    call = lambda: query(teacher, obs, prev_obs, is_first, key, num_samples, max_batch)
    if asked is None:
      return call()
    skip = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(call))
    return jax.lax.cond(asked, call, skip)

  return ask(teacher, obs, prev_obs, is_first, key, asked)


def _scatter_steps(x: jax.Array, steps: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """Answers for the B rows of each of n steps, [..., n * B, A] -> [..., T * B, A], zeros on
  the other steps."""
  t, b = shape
  lead = x.shape[:-2]
  rows = x.reshape(lead + (steps.shape[0], b) + x.shape[-1:])
  full = jnp.zeros(lead + (t, b) + x.shape[-1:], x.dtype).at[..., steps, :, :].set(rows)
  return full.reshape(lead + (t * b,) + x.shape[-1:])


RESAMPLE = ("transition", "epoch")


def make_update(network: ActorCritic, optimizer, ppo: ml_collections.ConfigDict,
                distill: ml_collections.ConfigDict, teacher_max_batch: int,
                teacher_resample: str = "transition", num_labelled: int = 0):
  """The jitted ``update(state, teacher, rollout, key) -> (state, metrics)``.

  ``ppo`` and ``distill`` are ``config.ppo`` and ``config.distill``; ``teacher_max_batch``
  bounds the observations per teacher call (``config.teacher.max_batch``).
  ``teacher_resample`` (``config.teacher.resample``): "transition" queries the teacher once per
  labelled transition, and that answer serves every epoch; "epoch" draws a fresh answer for
  every labelled transition at the start of each epoch, as the published code did per
  minibatch (8 samples per transition with 8 epochs; an epoch after a target-KL stop makes no
  query). Every collected transition is labelled, unless the rollout carries a ``labelled``
  mask (a teacher budget, rpd_jax/budget.py) with at most ``num_labelled`` labelled steps; the
  distillation term then averages over the labelled transitions of each minibatch. It
  compiles once (``chex.assert_max_traces``): every shape is fixed by the config, and the
  distillation weight lambda(env_steps) is computed in the graph, not baked in.
  """
  if teacher_resample not in RESAMPLE:
    raise ValueError(f"teacher_resample={teacher_resample!r}; use one of {', '.join(RESAMPLE)}")
  distill_loss = losses.DISTILL.get(distill.loss)  # None: plain PPO
  num_samples = distill.ppd_samples if distill.loss == "ppd" else 0

  def loss_fn(params, mb: losses.Minibatch, coef):
    mean, log_std, value = network.apply(params, mb.obs)
    loss, metrics = losses.ppo_loss(
        mean, log_std, value, mb, clip_coef=ppo.clip_coef, vf_coef=ppo.vf_coef,
        ent_coef=ppo.ent_coef, clip_vloss=ppo.clip_vloss, norm_adv=ppo.norm_adv)
    ratio = metrics.pop("ratio")
    if distill_loss is not None:
      metrics["distill"] = distill_loss(mean, log_std, mb.teacher, ratio, ppo.clip_coef)
      metrics["teacher_gap"] = losses.labelled_mean(jnp.abs(mean - mb.teacher.action),
                                                    mb.teacher.weight)
      loss = loss + coef * metrics["distill"]
    metrics["total"] = loss
    return loss, metrics

  def minibatch_step(carry, mb: losses.Minibatch, coef):
    params, opt_state, stopped = carry

    def apply(_):
      (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb, coef)
      metrics["grad_norm"] = optax.tree.norm(grads)
      # ManiSkill's early stop: once a minibatch's KL (measured before its step) exceeds the
      # target, neither it nor any later minibatch of this update is applied.
      ok = metrics["approx_kl"] <= ppo.target_kl if ppo.target_kl > 0 else jnp.bool_(True)
      updates, new_opt_state = optimizer.update(grads, opt_state, params)
      pick = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
      return ((pick(optax.apply_updates(params, updates), params),
               pick(new_opt_state, opt_state), ~ok), (metrics, ok))

    def skip(_):
      metrics = jax.tree.map(jnp.zeros_like, jax.eval_shape(apply, None)[1][0])
      return (params, opt_state, stopped), (metrics, jnp.bool_(False))

    return jax.lax.cond(stopped, skip, apply, None)

  # chex identifies a function by its source and definition stack, so every update made here
  # shares one counter: start it afresh for this one (a run builds its update once).
  chex.clear_trace_counter()

  @chex.assert_max_traces(n=1)
  def update(state: TrainState, teacher: Optional[Teacher], rollout: Rollout, key: jax.Array):
    batch_size = rollout.rewards.size
    k_teacher, k_perm = jax.random.split(key)
    next_values = losses.bootstrap_values(rollout.values, rollout.last_value,
                                          rollout.final_values, rollout.terminated,
                                          rollout.truncated, ppo.bootstrap_at_done)
    advantages = losses.gae(rollout.rewards * ppo.reward_scale, rollout.values, next_values,
                            rollout.terminated | rollout.truncated, ppo.gamma, ppo.gae_lambda,
                            ppo.finite_horizon_gae)
    batch = losses.Minibatch(*_flatten((rollout.obs, rollout.actions, rollout.log_probs,
                                        rollout.values, advantages, advantages + rollout.values)))
    metrics = {}
    targets = lambda k: teacher_targets(teacher, rollout, k, num_samples, distill.ppd_min_std,
                                        teacher_max_batch, num_labelled)
    per_epoch = distill_loss is not None and teacher_resample == "epoch"
    if distill_loss is not None and not per_epoch:
      batch = batch._replace(teacher=targets(k_teacher))
    coef = losses.distill_coef(state.env_steps, distill.coef, distill.schedule,
                               distill.decay_steps, state.surpassed_at)

    def epoch_step(carry, inputs):
      """One epoch: the shuffle cut into num_minibatches [K, M] indices, a scan over them."""
      perm, epoch = inputs
      epoch_batch, queried = batch, jnp.float32(0)
      if per_epoch:  # a fresh teacher answer per transition, unless a KL stop ended the update
        zeros = jax.eval_shape(targets, k_teacher)
        answer = jax.lax.cond(carry[2], lambda: jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype), zeros),
            lambda: targets(jax.random.fold_in(k_teacher, epoch)))
        epoch_batch, queried = batch._replace(teacher=answer), 1.0 - carry[2]
      carry, outputs = jax.lax.scan(
          lambda c, idx: minibatch_step(c, jax.tree.map(lambda x: x[idx], epoch_batch), coef),
          carry, perm.reshape(ppo.num_minibatches, -1))
      return carry, (outputs, queried)

    perms = jax.vmap(lambda k: jax.random.permutation(k, batch_size))(
        jax.random.split(k_perm, ppo.update_epochs))
    (params, opt_state, _), ((mb_metrics, applied), queried) = jax.lax.scan(
        epoch_step, (state.params, state.opt_state, jnp.bool_(False)),
        (perms, jnp.arange(ppo.update_epochs)))
    # [E, K, ...] -> [E * K, ...]: one entry per minibatch step, in order.
    mb_metrics, applied = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]),
                                       (mb_metrics, applied))
    if distill_loss is not None:
      # Teacher answers per collected transition: the labelled fraction (1 without a budget),
      # once, or once per epoch queried.
      labelled = (jnp.float32(1.0) if rollout.labelled is None
                  else rollout.labelled.astype(jnp.float32).mean())
      metrics["teacher/calls_per_step"] = labelled * (queried.sum() if per_epoch else 1.0)

    weight = applied / jnp.maximum(applied.sum(), 1)  # averages over the applied steps only
    metrics.update({f"loss/{k}": jnp.sum(v * weight) for k, v in mb_metrics.items()})
    metrics["loss/update_fraction"] = applied.mean()
    metrics["loss/distill_coef"] = coef
    metrics["train/log_std"] = jnp.clip(params["params"]["log_std"], network.log_std_min,
                                        network.log_std_max).mean()  # as the policy uses it
    metrics["train/value_mean"] = rollout.values.mean()
    metrics["train/finite"] = jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
    state = state.replace(params=params, opt_state=opt_state, iteration=state.iteration + 1,
                          env_steps=state.env_steps + batch_size)
    return state, metrics

  # The state is not donated: the trainer keeps the last completed iteration's state while the
  # next update runs, so that a signal can drop the iteration in flight and save that one.
  return jax.jit(update)
