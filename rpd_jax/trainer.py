"""The host loop: rollout -> update -> log -> evaluate -> checkpoint, resumable.

``train_and_evaluate(config, workdir)`` is the whole of training. A run killed at any point
resumes from ``workdir`` with the same continuation: every key derives from (seed, iteration),
and the checkpoint holds the train state, the rollout carry and, where the env can give it, the
env's own state (the pure-JAX env can; ManiSkill is re-seeded on resume instead).
"""

from __future__ import annotations

import json
import os
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging
from tensorboardX import SummaryWriter

from rpd_jax import config as config_lib
from rpd_jax import evaluate as evaluate_lib
from rpd_jax import ppo
from rpd_jax.checkpoint import Checkpointer
from rpd_jax.envs import make_env
from rpd_jax.envs.base import Observation, VecEnv, describe
from rpd_jax.networks import make_network
from rpd_jax.teachers import make_teacher


class NonFiniteError(FloatingPointError):
  """Training produced NaN/inf; the last good checkpoint is kept."""


class Carry(NamedTuple):
  """What a rollout hands to the next one (all [B, ...])."""
  obs: Observation  # current observation
  prev_obs: Observation  # the observation before it (teacher window)
  final_obs: Observation  # final observation of episodes that ended at the last step
  is_first: jax.Array  # bool: obs starts an episode
  episode_return: jax.Array  # running return of the current episode
  episode_length: jax.Array  # int32
  episode_success: jax.Array  # bool: solved at some step of the current episode


class EpisodeStats(NamedTuple):
  count: jax.Array
  return_sum: jax.Array
  length_sum: jax.Array
  success_sum: jax.Array


@jax.jit
def _track_episodes(carry: Carry, rewards, dones, successes):
  """Folds [T, B] rewards/dones/successes into the running episode sums; sums finished ones."""
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


_stack = jax.jit(lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs))


def collect(env: VecEnv, policy_step, params, carry: Carry, key: jax.Array,
            num_steps: int) -> tuple[ppo.Rollout, Carry, EpisodeStats]:
  """Runs ``num_steps`` env steps with the current policy: the host loop of one iteration."""
  obs, final_obs, is_first, prev_obs = carry.obs, carry.final_obs, carry.is_first, carry.prev_obs
  steps = []
  final_values = []
  for t in range(num_steps):
    out = policy_step(params, obs, final_obs, jax.random.fold_in(key, t))
    if t:
      final_values.append(out.final_value)
    res = env.step(out.action)
    steps.append((obs, is_first, out.action, out.log_prob, out.value, res.reward,
                  res.terminated, res.truncated, res.success))
    prev_obs, obs, final_obs = obs, res.obs, res.final_obs
    is_first = res.terminated | res.truncated
  last = policy_step(params, obs, final_obs, jax.random.fold_in(key, num_steps))
  final_values.append(last.final_value)
  (obs_t, first_t, actions, log_probs, values, rewards, terminated, truncated,
   successes) = _stack(steps)
  rollout = ppo.Rollout(obs=obs_t, prev_obs0=carry.prev_obs, is_first=first_t, actions=actions,
                        log_probs=log_probs, values=values, rewards=rewards,
                        terminated=terminated, truncated=truncated,
                        final_values=_stack(final_values), last_value=last.value)
  carry = carry._replace(obs=obs, prev_obs=prev_obs, final_obs=final_obs, is_first=is_first)
  carry, stats = _track_episodes(carry, rewards, terminated | truncated, successes)
  return rollout, carry, stats


def _env_state(env: VecEnv):
  """The env's own state where it supports get_state/set_state (checkpointed), else ()."""
  return env.get_state() if hasattr(env, "get_state") else ()


def initial_carry(env: VecEnv, seed: int) -> Carry:
  obs = env.reset(seed=seed)
  b = env.num_envs
  return Carry(obs=obs, prev_obs=obs, final_obs=obs, is_first=jnp.ones(b, bool),
               episode_return=jnp.zeros(b, jnp.float32),
               episode_length=jnp.zeros(b, jnp.int32),
               episode_success=jnp.zeros(b, bool))


class MetricsWriter:
  """metrics.jsonl (one JSON object per log) plus TensorBoard, in ``workdir``."""

  def __init__(self, workdir: str, resume_iteration: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
    # Drop what a killed run logged after its last checkpoint: it will be logged again.
    if os.path.exists(self.path):
      with open(self.path) as f:
        lines = [l for l in f if l.strip() and json.loads(l)["iteration"] <= resume_iteration]
      with open(self.path, "w") as f:
        f.writelines(lines)
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, iteration: int, env_steps: int, metrics: dict[str, float]) -> None:
    record = {"iteration": iteration, "env_steps": env_steps, **metrics}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for k, v in metrics.items():
      self._tb.add_scalar(k, v, env_steps)
    self._tb.flush()

  def close(self):
    self._tb.close()


def _summarise(metrics: list[dict], stats: list[EpisodeStats]) -> dict[str, float]:
  """Averages per-iteration metrics and pools episode stats (ONE device_get per log)."""
  metrics, stats = jax.device_get((metrics, stats))
  out = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
  count = sum(float(s.count) for s in stats)
  out["train/episodes"] = count
  if count:
    out["train/episode_return"] = sum(float(s.return_sum) for s in stats) / count
    out["train/episode_length"] = sum(float(s.length_sum) for s in stats) / count
    out["train/success_rate"] = sum(float(s.success_sum) for s in stats) / count
  return out


def make_eval_act(act_deterministic, params):
  return lambda obs, prev_obs, is_first, key: act_deterministic(params, obs)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains a student per ``config`` in ``workdir``, resuming if a checkpoint is there.

  Returns the last evaluation's metrics.
  """
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  c = config
  num_envs, num_steps = c.env.num_envs, c.ppo.num_steps
  batch = num_envs * num_steps
  num_iterations = c.total_env_steps // batch
  root_key = jax.random.key(c.seed)
  k_init, k_loop, k_eval = jax.random.split(root_key, 3)

  # The teacher first (big_vision habit): it is the slowest part to load and the likeliest to
  # fail, and it never enters the student's checkpoint.
  teacher = make_teacher(c.teacher, c.env) if c.distill.loss != "none" else None
  env = make_env(c.env, num_envs, seed=c.seed)
  eval_env, ckpt, writer = None, None, None
  try:
    carry = initial_carry(env, seed=c.seed)
    logging.info("env %s x%d: %s", c.env.name, num_envs, describe(env.observation_spec))
    network = make_network(c, env.action_dim)
    optimizer = ppo.make_optimizer(c, num_iterations)
    state = ppo.init_train_state(network, optimizer, carry.obs, k_init)
    policy_step = ppo.make_policy_step(network)
    act_deterministic = ppo.make_act_deterministic(network)
    update = ppo.make_update(network, optimizer, c)

    ckpt = Checkpointer(workdir, c.keep_checkpoints)
    start = ckpt.latest() or 0
    if start:
      restored = ckpt.restore(start, {"state": state, "carry": carry, "env": _env_state(env)})
      state, carry = restored["state"], restored["carry"]
      if hasattr(env, "set_state"):
        env.set_state(restored["env"])
      else:
        carry = initial_carry(env, seed=c.seed + 7919 * start)._replace(
            **{k: getattr(carry, k) for k in ("episode_return", "episode_length",
                                               "episode_success")})
      logging.info("resumed from iteration %d (%d env steps)", start, int(state.env_steps))
    writer = MetricsWriter(workdir, resume_iteration=start)

    last_eval: dict[str, float] = {}
    pending, pending_stats = [], []
    t_log = time.perf_counter()
    steps_at_log = start * batch
    bar = tqdm.tqdm(total=num_iterations * batch, initial=start * batch, unit="step",
                    unit_scale=True, dynamic_ncols=True, desc="train")
    for iteration in range(start + 1, num_iterations + 1):
      k_rollout, k_update = jax.random.split(jax.random.fold_in(k_loop, iteration))
      t0 = time.perf_counter()
      rollout, carry, stats = collect(env, policy_step, state.params, carry, k_rollout,
                                      num_steps)
      jax.block_until_ready(rollout.rewards)
      t1 = time.perf_counter()
      state, metrics = update(state, teacher, rollout, k_update)
      jax.block_until_ready(metrics)
      t2 = time.perf_counter()
      metrics["time/rollout_s"], metrics["time/update_s"] = t1 - t0, t2 - t1
      pending.append(metrics)
      pending_stats.append(stats)
      bar.update(batch)

      last = iteration == num_iterations
      save = last or iteration % c.checkpoint_every == 0
      if last or save or iteration % c.log_every == 0:
        summary = _summarise(pending, pending_stats)
        pending, pending_stats = [], []
        if not summary.pop("train/finite"):
          raise NonFiniteError(
              f"non-finite parameters or loss at iteration {iteration} (loss/total="
              f"{summary.get('loss/total')}); stopped before saving, so the last good "
              f"checkpoint in {workdir}/checkpoints is kept. Lower config.ppo.learning_rate "
              f"or config.distill.coef and resume.")
        now = time.perf_counter()
        env_steps = iteration * batch
        summary["time/env_steps_per_s"] = (env_steps - steps_at_log) / (now - t_log)
        t_log, steps_at_log = now, env_steps
        if iteration % c.eval_every == 0 or last:
          if eval_env is None:
            eval_env = make_env(c.env, c.eval_envs, seed=c.seed + 1)
          last_eval = evaluate_lib.evaluate(
              eval_env, make_eval_act(act_deterministic, state.params), c.eval_episodes,
              seed=10_000 + iteration, key=jax.random.fold_in(k_eval, iteration),
              video_dir=os.path.join(workdir, "videos"), num_videos=c.eval_videos,
              video_prefix=f"step{env_steps:09d}")
          summary.update(last_eval)
          t_log = time.perf_counter()  # evaluation time is not training time
        writer.write(iteration, env_steps, summary)
        bar.set_postfix({"sps": f"{summary['time/env_steps_per_s']:.0f}",
                         "success": f"{summary.get('train/success_rate', float('nan')):.2f}",
                         **({"eval": f"{last_eval['eval/success_rate']:.2f}"}
                            if last_eval else {})})
      if save:
        ckpt.save(iteration, {"state": state, "carry": carry, "env": _env_state(env)})
    bar.close()
    return last_eval
  finally:
    if ckpt is not None:
      ckpt.close()  # waits for a save in flight: a crash never loses a finished iteration's save
    if writer is not None:
      writer.close()
    env.close()
    if eval_env is not None:
      eval_env.close()
