"""Acting in an environment: policies, the one step loop, training rollouts, episode bookkeeping.

(brax's ``acting.py``.) Everything that steps a ``VecEnv`` goes through ``run``: training
rollouts (``collect``), evaluation with videos (``rpd_jax.evaluate``), demonstration recording
(``rpd_jax.pipeline.demos``) and teacher evaluation (``rpd_jax.pipeline.eval_teacher``).

A policy has one signature, for students and teachers alike:

    policy(obs [B, ...], prev_obs [B, ...], is_first bool [B], key) -> (action [B, A], extras)

``prev_obs`` is each env's previous observation (another episode's where ``is_first``: teachers
that look at two frames pad it out); ``extras`` is a dict of per-env arrays recorded with the
step (the student's log-probability and value while training, else empty).
``student_policy`` and ``teacher_policy`` make one.

Shapes: T = steps, B = envs, A = action dim.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rpd_jax import gaussian
from rpd_jax.envs.base import Observation, VecEnv
from rpd_jax.networks import ActorCritic
from rpd_jax.teachers.base import Teacher

Policy = Callable[[Observation, Observation, jax.Array, jax.Array],
                  tuple[jax.Array, dict[str, jax.Array]]]


def fold_in(key: jax.Array, data: int) -> jax.Array:
  """``jax.random.fold_in`` of a key, or of each key of a batch (one per student)."""
  return jax.vmap(jax.random.fold_in, (0, None))(key.reshape(-1), data).reshape(key.shape)


@functools.partial(jax.jit, static_argnums=0)
def _student_sample(network: ActorCritic, params, obs: Observation, key: jax.Array):
  mean, log_std, value = network.apply(params, obs)
  action = gaussian.sample(mean, log_std, key)
  return action, {"log_prob": gaussian.log_prob(action, mean, log_std), "value": value}


@functools.partial(jax.jit, static_argnums=0)
def _student_mean(network: ActorCritic, params, obs: Observation) -> jax.Array:
  return network.apply(params, obs)[0]


@jax.jit
def _teacher_action(teacher: Teacher, obs, prev_obs, is_first, key) -> jax.Array:
  return teacher.apply_fn(teacher.params, obs, prev_obs, is_first, key, 0).action


def student_policy(network: ActorCritic, params, deterministic: bool = False) -> Policy:
  """The student: a sample of its Gaussian, with ``log_prob`` and ``value`` [B] as extras (for
  training), or its mean action (``deterministic``, for evaluation). ``network``: anything with
  the actor-critic's ``apply`` (``students.Students``: K students on their rows of B, with a
  batch of K keys)."""
  if deterministic:
    return lambda obs, prev_obs, is_first, key: (_student_mean(network, params, obs), {})
  return lambda obs, prev_obs, is_first, key: _student_sample(network, params, obs, key)


@functools.partial(jax.jit, static_argnums=0)
def _ensemble_mean(students, params, obs: Observation) -> jax.Array:
  return students.ensemble(params, obs)


def ensemble_policy(students, params) -> Policy:
  """Students acting as one (``students.Students.ensemble``: the mean of their mean actions),
  for evaluation."""
  return lambda obs, prev_obs, is_first, key: (_ensemble_mean(students, params, obs), {})


def teacher_policy(teacher: Teacher) -> Policy:
  """A teacher acting alone: its action (for a stochastic teacher, one sample)."""
  return lambda obs, prev_obs, is_first, key: (
      _teacher_action(teacher, obs, prev_obs, is_first, key), {})


class Carry(NamedTuple):
  """Where every env stands between two calls of ``run`` (all [B, ...])."""
  obs: Observation  # the current observation
  prev_obs: Observation  # the one before it
  is_first: jax.Array  # bool: obs starts an episode
  episode_return: jax.Array  # of the episode under way
  episode_length: jax.Array  # int32
  episode_success: jax.Array  # bool: solved at some step of the episode under way


def reset(env: VecEnv, seed: int) -> Carry:
  """Resets every env (env i with ``seed + i``): the carry of fresh episodes."""
  obs = env.reset(seed=seed)
  b = env.num_envs
  return Carry(obs=obs, prev_obs=obs, is_first=jnp.ones(b, bool),
               episode_return=jnp.zeros(b, jnp.float32),
               episode_length=jnp.zeros(b, jnp.int32), episode_success=jnp.zeros(b, bool))


class Transition(NamedTuple):
  """One step of B envs: what the policy saw and did, and what the env answered."""
  obs: Observation  # [B, ...] the observation the action was taken in
  prev_obs: Observation  # [B, ...] the one before it
  is_first: jax.Array  # bool [B]: obs starts an episode
  action: jax.Array  # [B, A]
  extras: dict[str, jax.Array]  # the policy's
  reward: jax.Array  # [B]
  terminated: jax.Array  # bool [B]
  truncated: jax.Array  # bool [B]
  success: jax.Array  # bool [B]: solved at this step
  final_obs: Observation  # [B, ...] last observation of episodes that ended here, else the next
  frame: Optional[jax.Array]  # uint8 [B, H, W, 3]: env.render() before the step, if asked


def without_observations(t: Transition) -> Transition:
  """What ``run`` keeps by default: everything but the (large) observations."""
  return t._replace(obs=None, prev_obs=None, final_obs=None)


class EpisodeStats(NamedTuple):
  """Sums over the episodes that ended during a ``run`` (scalars)."""
  count: jax.Array
  return_sum: jax.Array
  length_sum: jax.Array
  success_sum: jax.Array


@jax.jit
def _track_episodes(carry: Carry, rewards, dones, successes) -> tuple[Carry, EpisodeStats]:
  """Folds [T, B] rewards / dones / successes into the carry's running episode sums, and sums
  the episodes that ended."""
  def step(acc, x):
    ret, length, succ, stats = acc
    r, d, s = x
    ret, length, succ = ret + r, length + 1, succ | s
    stats = EpisodeStats(stats.count + d.sum(), stats.return_sum + jnp.sum(ret * d),
                         stats.length_sum + jnp.sum(length * d),
                         stats.success_sum + jnp.sum(succ & d))
    keep = ~d
    return (ret * keep, length * keep, succ & keep, stats), None

  zero = jnp.zeros((), jnp.float32)
  init = (carry.episode_return, carry.episode_length, carry.episode_success,
          EpisodeStats(zero, zero, zero, zero))
  (ret, length, succ, stats), _ = jax.lax.scan(step, init, (rewards, dones, successes))
  return carry._replace(episode_return=ret, episode_length=length, episode_success=succ), stats


_stack = jax.jit(lambda steps: jax.tree.map(lambda *x: jnp.stack(x), *steps))


def run(env: VecEnv, policy: Policy, carry: Carry, key: jax.Array, num_steps: int, *,
        keep: Callable[[Transition], Any] = without_observations, render: bool = False,
        until_done: bool = False, on_demand: Optional[np.ndarray] = None,
        timings: Optional[dict[str, float]] = None) -> tuple[Carry, Any, EpisodeStats]:
  """THE step loop: ``num_steps`` steps of ``policy`` in ``env`` from ``carry``.

  Step t's policy key is ``fold_in(key, t)``. ``keep`` maps each step's ``Transition`` to what is
  recorded (jit it if it computes); ``render`` fills ``Transition.frame``; ``until_done`` stops
  early once every env has ended an episode since the start. ``on_demand`` bool [T, B]: step t
  is ``env.step(action, on_demand[t])`` (the envs whose next observation holds the env's
  ``on_demand_keys``, ``envs/base.py``); None: none of them (the policy does not read those keys;
  an env without any steps with ``env.step(action)``). ``timings``, where given,
  gets the seconds spent acting (the policy, waited for) and simulating (``env.step`` and
  ``render``) added to its ``"act_s"`` and ``"simulate_s"``.

  Returns the carry after the last step, what ``keep`` kept of every step stacked along a
  leading time axis [T, ...] (T <= num_steps), and the stats of the episodes that ended.
  """
  kept, outcomes = [], []
  ended = np.zeros(env.num_envs, bool)
  obs, prev_obs, is_first = carry.obs, carry.prev_obs, carry.is_first
  clock = {"act_s": 0.0, "simulate_s": 0.0}
  if on_demand is None and env.on_demand_keys:
    on_demand = np.zeros((num_steps, env.num_envs), bool)
  for t in range(num_steps):
    start = time.perf_counter()
    frame = env.render() if render else None
    acting = time.perf_counter()
    action, extras = policy(obs, prev_obs, is_first, fold_in(key, t))
    if timings is not None:
      jax.block_until_ready(action)  # the step waits for it anyway
    stepping = time.perf_counter()
    res = env.step(action) if on_demand is None else env.step(action, on_demand[t])
    clock["act_s"] += stepping - acting
    clock["simulate_s"] += time.perf_counter() - stepping + acting - start
    kept.append(keep(Transition(obs, prev_obs, is_first, action, extras, res.reward,
                                res.terminated, res.truncated, res.success, res.final_obs,
                                frame)))
    done = res.terminated | res.truncated
    outcomes.append((res.reward, done, res.success))
    prev_obs, obs, is_first = obs, res.obs, done
    if until_done:
      ended |= np.asarray(done)
      if ended.all():
        break
  if timings is not None:
    for name, seconds in clock.items():
      timings[name] = timings.get(name, 0.0) + seconds
  carry = carry._replace(obs=obs, prev_obs=prev_obs, is_first=is_first)
  carry, stats = _track_episodes(carry, *_stack(outcomes))
  return carry, _stack(kept), stats


def first_episode_mask(done: jax.Array) -> np.ndarray:
  """bool [T, B]: step t belongs to env b's first episode of the run (no end before t)."""
  done = np.asarray(done)
  return (np.cumsum(done, axis=0) - done) == 0


def first_episodes(env: VecEnv, policy: Policy, seed: int, key: jax.Array, *,
                   keep: Callable[[Transition], Any] = without_observations,
                   render: bool = False) -> tuple[Any, np.ndarray]:
  """One episode per env from ``env.reset(seed)`` (env i with ``seed + i``), to its end or the
  time limit: (what ``keep`` kept [T, B, ...], the first-episode mask [T, B])."""
  _, (steps, done), _ = run(env, policy, reset(env, seed), key, env.max_episode_steps,
                            keep=lambda t: (keep(t), t.terminated | t.truncated),
                            render=render, until_done=True)
  return steps, first_episode_mask(done)


class Rollout(NamedTuple):
  """T steps of B envs collected for one PPO update."""
  obs: Observation  # [T, B, ...] the observation each action was taken in
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
  # bool [T, B]: the transitions the teacher labels (rpd_jax/budget.py; the teacher's own
  # observation keys hold zeros elsewhere); None: all of them.
  labelled: Optional[jax.Array] = None


@functools.partial(jax.jit, static_argnums=0)
def _training_record(network: ActorCritic, params, t: Transition) -> Transition:
  # V(final observation) is computed at the step it arrives, so no final observations are
  # stored: bootstrapping ended episodes costs one small forward pass per step.
  final_value = network.apply(params, t.final_obs)[2]
  return t._replace(prev_obs=None, final_obs=None, extras={**t.extras, "final_value": final_value})


@functools.partial(jax.jit, static_argnums=0)
def _value(network: ActorCritic, params, obs: Observation) -> jax.Array:
  return network.apply(params, obs)[2]


def collect(env: VecEnv, network: ActorCritic, params, carry: Carry, key: jax.Array,
            num_steps: int, timings: Optional[dict[str, float]] = None,
            on_demand: Optional[np.ndarray] = None) -> tuple[Rollout, Carry, EpisodeStats]:
  """One iteration's rollout: ``num_steps`` steps of the student sampling its actions
  (``timings``, ``on_demand``: see ``run``)."""
  carry_out, steps, stats = run(env, student_policy(network, params), carry, key, num_steps,
                                keep=functools.partial(_training_record, network, params),
                                on_demand=on_demand, timings=timings)
  rollout = Rollout(obs=steps.obs, prev_obs0=carry.prev_obs, is_first=steps.is_first,
                    actions=steps.action, log_probs=steps.extras["log_prob"],
                    values=steps.extras["value"], rewards=steps.reward,
                    terminated=steps.terminated, truncated=steps.truncated,
                    final_values=steps.extras["final_value"],
                    last_value=_value(network, params, carry_out.obs))
  return rollout, carry_out, stats
