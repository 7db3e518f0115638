"""The host loop: rollout -> update -> log -> evaluate -> checkpoint, resumable.

``train_and_evaluate(config, workdir)`` is the whole of training. A run stopped at any point
resumes from ``workdir`` with the same continuation: every key derives from (seed, iteration),
and the checkpoint holds the train state, the rollout carry and, where the env can give it, the
env's own state (the pure-JAX env can; ManiSkill is re-seeded on resume instead).

SIGINT (Ctrl-C) and SIGTERM (a cluster's preemption) drop the iteration in flight, save the
last completed one if it is not saved yet, close the envs and raise ``preemption.Stopped``; a second
Ctrl-C quits at once. SIGKILL loses the iterations since the last periodic checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from typing import Any, NamedTuple, Optional

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from tensorboardX import SummaryWriter

from rpd_jax import config as config_lib
from rpd_jax import evaluate as evaluate_lib
from rpd_jax import parallel, ppo, preemption, rollout, seeds
from rpd_jax.checkpoint import Checkpointer
from rpd_jax.envs import devices, make_env
from rpd_jax.envs.base import EnvWorkerError, VecEnv, describe
from rpd_jax.errors import RunError
from rpd_jax.networks import make_network
from rpd_jax.teachers import make_teacher, provenance
from rpd_jax.teachers.base import auto_chunk_size, check_action_dim


class NonFiniteError(RunError):
  """Training produced NaN/inf; the last good checkpoint is kept."""


class _Completed(NamedTuple):
  """The last iteration that finished (logged and, when due, saved): what a stop saves."""
  iteration: int
  state: ppo.TrainState
  carry: rollout.Carry
  env_state: Any

  def save(self, ckpt: Checkpointer) -> None:
    ckpt.save(self.iteration, {"state": self.state, "carry": self.carry, "env": self.env_state})


def _check_finite(summary: dict[str, float], iteration: int, workdir: str) -> None:
  if not summary.pop("train/finite"):
    raise NonFiniteError(
        f"non-finite parameters or loss at iteration {iteration} (loss/total="
        f"{summary.get('loss/total')}); stopped before saving, so the last good checkpoint "
        f"in {workdir}/checkpoints is kept. Lower config.ppo.learning_rate or "
        "config.distill.coef and resume.")


def _env_state(env: VecEnv):
  """The env's own state where it hands one out (``holds_state``: checkpointed), else ()."""
  return env.get_state() if env.holds_state else ()


def _restore(ckpt: Checkpointer, env: VecEnv, state: ppo.TrainState, carry: rollout.Carry,
             seed: int) -> tuple[int, ppo.TrainState, rollout.Carry]:
  """(iteration, train state, carry) of the newest checkpoint that restores, or (0, the given
  state and carry). The env continues from its saved state where it can hand one out, else from
  fresh episodes seeded apart from every earlier start."""
  iteration, restored = ckpt.restore_latest(
      {"state": state, "carry": carry, "env": _env_state(env)})
  if not iteration:
    return 0, state, carry
  state, carry = restored["state"], restored["carry"]
  if env.holds_state:
    env.set_state(restored["env"])
  else:
    fresh = rollout.reset(env, seed=seed + 7919 * iteration)
    carry = fresh._replace(episode_return=carry.episode_return,
                           episode_length=carry.episode_length,
                           episode_success=carry.episode_success)
  return iteration, state, carry


class Logger:
  """Pools the iterations between two logs; writes metrics.jsonl, TensorBoard and the bar.

  ``add`` keeps each iteration's metrics on the device; ``summary`` fetches them with ONE
  ``device_get``, averages them, pools the episode stats and adds env steps per second (time
  spent in ``evaluation`` is not counted); ``write`` records one row.
  """

  def __init__(self, workdir: str, start: int, num_iterations: int, batch: int,
               writer: bool = True, tags: Optional[dict[str, str]] = None):
    """``writer``: False in every process but the first of a multi-process run, which keeps
    the bookkeeping (the same summaries) but writes nothing. ``tags``: text written into every
    row of metrics.jsonl (the simulation backend), not to TensorBoard."""
    self._tags = dict(tags or {})
    self.path = os.path.join(workdir, "metrics.jsonl") if writer else None
    # Drop what a stopped run logged after its last checkpoint (it will be logged again), and a
    # last line cut short by a kill.
    if self.path is not None and os.path.exists(self.path):
      with open(self.path) as f:
        rows = [_parse(l) for l in f]
      with open(self.path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows if r and r["iteration"] <= start)
    # TensorBoard hides the events a stopped run wrote after its checkpoint, likewise.
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                             purge_step=(start + 1) * batch if start else None) if writer else None
    self._bar = tqdm.tqdm(total=num_iterations * batch, initial=start * batch, unit="step",
                          unit_scale=True, dynamic_ncols=True, desc="train", disable=not writer)
    self._batch = batch
    self._pending: list[tuple[dict, rollout.EpisodeStats]] = []
    self._since, self._steps_since = time.perf_counter(), start * batch
    self._start = self._since
    self._eval: dict[str, float] = {}

  def add(self, metrics: dict, stats: rollout.EpisodeStats) -> None:
    self._pending.append((metrics, stats))
    self._bar.update(self._batch)

  def summary(self, iteration: int) -> dict[str, float]:
    metrics, stats = parallel.fetch(list(zip(*self._pending)))
    self._pending = []
    out = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
    count = sum(float(s.count) for s in stats)
    out["train/episodes"] = count
    if count:
      out["train/episode_return"] = sum(float(s.return_sum) for s in stats) / count
      out["train/episode_length"] = sum(float(s.length_sum) for s in stats) / count
      out["train/success_rate"] = sum(float(s.success_sum) for s in stats) / count
    now, steps = time.perf_counter(), iteration * self._batch
    out["time/env_steps_per_s"] = (steps - self._steps_since) / (now - self._since)
    out["time/elapsed_s"] = now - self._start  # wall time of this process's run, evaluations too
    self._since, self._steps_since = now, steps
    return out

  @contextlib.contextmanager
  def evaluation(self):
    """Evaluation time is not training time."""
    yield
    self._since = time.perf_counter()

  def write(self, iteration: int, summary: dict[str, float]) -> None:
    env_steps = iteration * self._batch
    if self.path is not None:
      with open(self.path, "a") as f:
        f.write(json.dumps({"iteration": iteration, "env_steps": env_steps, **self._tags,
                            **summary}) + "\n")
      for k, v in summary.items():
        self._tb.add_scalar(k, v, env_steps)
      self._tb.flush()
    self._eval = {k: v for k, v in summary.items() if k.startswith("eval/")} or self._eval
    self._bar.set_postfix({"sps": f"{summary['time/env_steps_per_s']:.0f}",
                           "success": f"{summary.get('train/success_rate', float('nan')):.2f}",
                           **({"eval": f"{self._eval['eval/success_rate']:.2f}"}
                              if self._eval else {})})

  def close(self) -> None:
    self._bar.close()
    if self._tb is not None:
      self._tb.close()


def _parse(line: str) -> Optional[dict]:
  try:
    return json.loads(line)
  except json.JSONDecodeError:
    return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains a student per ``config`` in ``workdir``, resuming if a checkpoint is there.

  Returns the last evaluation's metrics (empty if the checkpoint was already at the end).
  """
  config_lib.validate(config)
  parallel.check_same_config(config.to_json_best_effort(sort_keys=True))
  main_process = parallel.is_main_process()
  os.makedirs(workdir, exist_ok=True)
  if main_process:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  c = config
  batch = c.env.num_envs * c.ppo.num_steps  # per student: K students step K x N envs
  num_iterations = c.total_env_steps // batch
  num_seeds = c.num_seeds
  k_init, k_loop, k_eval = seeds.run_keys(c.seed, num_seeds)
  mesh = parallel.make_mesh(c.mesh.data)

  # The teacher first (big_vision habit): it is the slowest part to load and the likeliest to
  # fail, and it never enters the student's checkpoint.
  teacher = make_teacher(c.teacher) if c.distill.loss != "none" else None
  env, eval_env, ckpt, log, stopped, done = None, None, None, None, None, None
  with preemption.Guard() as guard:
    try:
      if mesh is not None and c.env.name != "jax_push":
        # A simulator outside JAX: one per process, its envs' arrays global over the mesh.
        env = parallel.ProcessEnvs(make_env(c.env, c.env.num_envs // jax.process_count(),
                                            seed=c.seed, final_obs_keys=c.network.obs_keys),
                                   mesh)
      else:
        env = make_env(c.env, num_seeds * c.env.num_envs, seed=c.seed,
                       final_obs_keys=c.network.obs_keys)
      carry = seeds.reset(env, lambda seed: make_env(c.env, c.env.num_envs, seed=seed),
                          c.seed, num_seeds)
      logging.info("env %s x%d on %s: %s", c.env.name, env.num_envs, env.sim_backend,
                   describe(env.observation_spec))
      network = make_network(c.network, env.action_dim)
      # The acting network: K students (config.num_seeds) act on their slices of the envs.
      actor = rollout.SeedStack(network, num_seeds) if num_seeds > 1 else network
      optimizer = ppo.make_optimizer(c.ppo, num_iterations)
      state = seeds.init_train_state(
          lambda obs, key: ppo.init_train_state(network, optimizer, obs, key), carry.obs,
          k_init, num_seeds)
      if teacher is not None:
        check_action_dim(teacher, env.observation_spec, env.action_dim, c.env.name)
        warning = provenance.mismatch(teacher.name, teacher.made_on, env.sim_backend)
        if warning:
          logging.warning("%s", warning)
      chunk = c.teacher.chunk_size
      if teacher is not None and not chunk:
        chunk = auto_chunk_size(teacher, env.observation_spec, batch,
                                c.distill.ppd_samples if c.distill.loss == "ppd" else 0)
        logging.info("teacher: %d observations per call inside the update", chunk)
      update = seeds.vmap_update(ppo.make_update(network, optimizer, c.ppo, c.distill,
                                                 chunk or batch, c.teacher.resample),
                                 num_seeds, seeds.side_by_side(c))

      ckpt = Checkpointer(workdir, c.keep_checkpoints)
      start, state, carry = _restore(ckpt, env, state, carry, c.seed)
      # The train state replicated (with one device: committed to it, as the update's outputs
      # and DLPack observations are, else the second iteration's arguments differ in
      # commitment and act and update compile again), the envs split over the mesh.
      state, carry = parallel.replicate(state, mesh), parallel.shard_envs(carry, mesh)
      if mesh is not None and env.holds_state:
        env.set_state(parallel.shard_envs(env.get_state(), mesh))
      if start:
        logging.info("resumed from iteration %d (%d env steps)", start,
                     int(np.max(state.env_steps)))
      done = _Completed(start, state, carry, _env_state(env))
      log = Logger(workdir, start, num_iterations, batch, writer=main_process,
                   tags={"sim_backend": env.sim_backend})
      last_eval: dict[str, float] = {}
      for iteration in range(start + 1, num_iterations + 1):
        k_rollout, k_update = seeds.iteration_keys(k_loop, iteration)
        t0, timings = time.perf_counter(), {}
        data, carry, stats = rollout.collect(env, actor, state.params, carry, k_rollout,
                                             c.ppo.num_steps, timings)
        jax.block_until_ready(data.rewards)
        t1 = time.perf_counter()
        if num_seeds > 1:
          data = seeds.split_rollout(data, num_seeds)
        state, metrics = update(state, teacher, data, k_update)
        metrics = seeds.per_seed(metrics, num_seeds)
        jax.block_until_ready(metrics)
        metrics["time/rollout_s"], metrics["time/update_s"] = t1 - t0, time.perf_counter() - t1
        metrics.update({f"time/{name}": seconds for name, seconds in timings.items()})
        log.add(metrics, stats)

        last = iteration == num_iterations
        save = last or iteration % c.checkpoint_every == 0
        summary = None
        if last or save or iteration % c.log_every == 0:
          summary = log.summary(iteration)
          _check_finite(summary, iteration, workdir)
          if last or iteration % c.eval_every == 0:
            if eval_env is None:
              eval_env = make_env(_eval_env_config(c), num_seeds * c.eval_envs,
                                  seed=c.seed + 1, final_obs_keys=())
            # The evaluation envs live on one device of each process: the params copied there
            # once per evaluation (every process evaluates alike; the first records videos).
            params = state.params if mesh is None else jax.device_put(
                parallel.fetch(state.params), devices.default_device())
            evaluate = functools.partial(
                evaluate_lib.evaluate, eval_env, num_episodes=num_seeds * c.eval_episodes,
                seed=10_000 + iteration,
                key=jax.random.fold_in(k_eval if num_seeds == 1 else k_eval[0], iteration),
                protocol=c.eval_protocol, steps=c.eval_steps)
            with log.evaluation():
              last_eval = evaluate(
                  rollout.student_policy(actor, params, deterministic=True),
                  video_dir=os.path.join(workdir, "videos"),
                  num_videos=c.eval_videos if main_process else 0,
                  video_prefix=f"step{iteration * batch:09d}", groups=num_seeds)
              if num_seeds > 1:
                # The K students as one policy (their mean action) on the same episodes.
                ensemble = evaluate(rollout.ensemble_policy(actor, params))
                last_eval.update(seeds.seeds_summary(last_eval, num_seeds))
                last_eval.update({f"ensemble/{k}": v for k, v in ensemble.items()})
            summary.update(last_eval)
        with guard.deferred():  # the iteration completes: a signal now waits for the save
          if summary is not None:
            log.write(iteration, summary)
          done = _Completed(iteration, state, carry, _env_state(env))
          if save:
            done.save(ckpt)
      return last_eval
    except (preemption.Interrupt, EnvWorkerError) as e:
      if isinstance(e, EnvWorkerError) and guard.received is None:
        raise
      # A signal, or a worker that the same signal (a cluster's SIGTERM to every process of the
      # job) stopped first.
      guard.acknowledge()
      stopped = guard.received
      if done is None or done.iteration == 0:  # nothing finished yet: nothing to save
        raise preemption.Stopped(stopped, 0, None) from None
      if done.iteration != ckpt.latest():
        done.save(ckpt)
      raise preemption.Stopped(stopped, done.iteration,
                               os.path.join(ckpt.directory, str(done.iteration))) from None
    finally:
      _close(ckpt, log, (env, eval_env), terminate=stopped is not None)


def _eval_env_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The evaluation envs' config: the training envs', whose successes do not end episodes under
  the fixed-step protocol."""
  if c.eval_protocol != "fixed_steps":
    return c.env
  env = c.env.copy_and_resolve_references()
  with env.unlocked():
    env.kwargs.ignore_terminations = True
  return env


def _close(ckpt: Optional[Checkpointer], log: Optional[Logger], envs, terminate: bool) -> None:
  """Waits for a save in flight (a stop never loses a finished save), then closes the rest,
  even when that save failed."""
  try:
    if ckpt is not None:
      ckpt.close()
  finally:
    if log is not None:
      log.close()
    for env in envs:
      if env is not None:
        env.close(terminate=terminate)
