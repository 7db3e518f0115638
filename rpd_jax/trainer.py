"""The host loop: rollout -> update -> log -> evaluate -> checkpoint, resumable.

``train_and_evaluate(config, workdir)`` is the whole of training, in three parts: ``build``
makes a run (teacher, envs, students, update, state, restored where a checkpoint is),
``iterate`` collects one rollout and updates on it, and ``evaluate`` plays the students'
evaluation episodes. A run stopped at any point resumes from ``workdir`` with the same
continuation: every key derives from (seed, iteration), and the checkpoint holds the train
state, the rollout carry and, where the env holds its state, the env's own (the pure-JAX env
does; ManiSkill is re-seeded on resume instead).

SIGINT (Ctrl-C) and SIGTERM (a cluster's preemption) drop the iteration in flight, save the
last completed one if it is not saved yet, close the envs and raise ``preemption.Stopped``; a
second Ctrl-C quits at once. SIGKILL loses the iterations since the last periodic checkpoint.
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from rpd_jax import budget as budget_lib
from rpd_jax import config as config_lib
from rpd_jax import evaluate as evaluate_lib
from rpd_jax import losses, parallel, ppo, preemption, rollout, teachers
from rpd_jax.checkpoint import Checkpointer
from rpd_jax.envs import env_class, make_env
from rpd_jax.envs.base import EnvWorkerError, VecEnv, describe
from rpd_jax.errors import RunError
from rpd_jax.logger import Logger
from rpd_jax.networks import make_network
from rpd_jax.students import Students
from rpd_jax.teachers import make_teacher, records
from rpd_jax.teachers.base import Teacher, auto_max_batch, check_action_dim


class NonFiniteError(RunError):
  """Training produced NaN/inf; the last good checkpoint is kept."""


class Run(NamedTuple):
  """What ``build`` makes: everything an iteration and an evaluation need besides the state."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any  # jax.sharding.Mesh, or None on one device
  env: VecEnv
  teacher: Optional[Teacher]
  budget: Optional[budget_lib.Budget]  # which transitions the teacher labels; None: all
  students: Students
  update: Any  # (states [K], teacher, rollout, keys [K]) -> (states, metrics [K])
  keys: tuple[jax.Array, jax.Array]  # the loop's and evaluation's keys [K]
  batch: int  # transitions per iteration and student
  num_iterations: int
  ckpt: Checkpointer
  log: Logger


class _Completed(NamedTuple):
  """The last iteration that finished (logged and, when due, saved): what a stop saves."""
  iteration: int
  state: ppo.TrainState
  carry: rollout.Carry
  env_state: Any

  def save(self, ckpt: Checkpointer) -> None:
    ckpt.save(self.iteration, _tree(self.state, self.carry, self.env_state))


def _tree(state, carry, env_state) -> dict[str, Any]:
  return {"state": state, "carry": carry, "env": env_state}


def _env_state(env: VecEnv):
  """The env's own state where it hands one out (``holds_state``: checkpointed), else ()."""
  return env.get_state() if env.holds_state else ()


def _check_finite(summary: dict[str, float], iteration: int, workdir: str) -> None:
  if not summary.pop("train/finite"):
    raise NonFiniteError(
        f"non-finite parameters or loss at iteration {iteration} (loss/total="
        f"{summary.get('loss/total')}); stopped before saving, so the last good checkpoint "
        f"in {workdir}/checkpoints is kept. Lower config.ppo.learning_rate or "
        "config.distill.coef and resume.")


def _make_train_env(c: ml_collections.ConfigDict, mesh, num_students: int,
                    on_demand_keys: tuple[str, ...]) -> VecEnv:
  """The K x N training envs. A simulator outside JAX under a mesh runs one per process, its
  envs' arrays global over the mesh; the envs of a JAX env are sharded like any array."""
  keys = tuple(c.network.obs_keys)  # the student's: they bootstrap ended episodes
  if mesh is not None and not env_class(c.env).jax_native:
    local = make_env(c.env, c.env.num_envs // jax.process_count(), seed=c.seed,
                     final_obs_keys=keys, on_demand_keys=on_demand_keys)
    return parallel.ProcessEnvs(local, mesh)
  return make_env(c.env, num_students * c.env.num_envs, seed=c.seed, final_obs_keys=keys,
                  on_demand_keys=on_demand_keys)


def _budget(c: ml_collections.ConfigDict, teacher: Optional[Teacher]
            ) -> tuple[Optional[budget_lib.Budget], tuple[str, ...]]:
  """(the teacher budget, the keys the envs observe on demand): None and () where the teacher
  labels every transition (query_fraction 1 and a constant lambda), as without a budget; None
  and every key the student does not read without a teacher (PPO: nothing renders a camera
  that only a teacher would read)."""
  if teacher is None:
    return None, config_lib.unread_keys(c)
  if c.teacher.query_fraction == 1 and c.distill.schedule == "constant":
    return None, ()
  plan = budget_lib.Budget(c.ppo.num_steps, c.teacher.query_fraction, teacher.window,
                           c.env.num_envs)
  student = set(c.network.obs_keys)
  return plan, tuple(k for k in teachers.observation_keys(c.teacher) if k not in student)


def _teacher_batch(c: ml_collections.ConfigDict, teacher: Optional[Teacher], env: VecEnv,
                   batch: int) -> int:
  """The most observations one teacher call inside the update takes: config.teacher.max_batch,
  or what fits the device's memory. Students updating side by side call the teacher one after
  another (``ppo.teacher_targets``), so this holds whatever their number."""
  if teacher is None:
    return batch
  max_batch = c.teacher.max_batch or auto_max_batch(
      teacher, env.observation_spec, batch, c.distill.ppd_samples if c.distill.loss == "ppd" else 0)
  logging.info("teacher: at most %d observations per call inside the update", max_batch)
  return max_batch


def build(c: ml_collections.ConfigDict, workdir: str, teacher: Optional[Teacher]
          ) -> tuple[Run, ppo.TrainState, rollout.Carry, int]:
  """(the run, its train state, its rollout carry, the iteration it resumes after)."""
  batch = c.env.num_envs * c.ppo.num_steps  # per student: K students step K x N envs
  num_iterations = c.total_env_steps // batch
  mesh = parallel.make_mesh(c.mesh.data)
  plan, on_demand_keys = _budget(c, teacher)
  env = _make_train_env(c, mesh, c.num_seeds, on_demand_keys)
  try:
    return _build_on(c, workdir, teacher, plan, mesh, env, batch, num_iterations)
  except BaseException:  # a bad checkpoint folder, a signal: nothing else holds the env
    env.close(terminate=True)
    raise


def _build_on(c, workdir, teacher, plan, mesh, env, batch, num_iterations):
  logging.info("env %s x%d on %s: %s", c.env.name, env.num_envs, env.sim_backend,
               describe(env.observation_spec))
  # Validation checked these where the env's keys are known beforehand; a factory's are now.
  config_lib.check_observation_keys(c, tuple(env.observation_spec))
  network = make_network(c.network, env.action_dim)
  students = Students.from_config(network, c)
  k_init, k_loop, k_eval = students.run_keys(c.seed)
  carry = students.reset(env, lambda seed: make_env(c.env, c.env.num_envs, seed=seed), c.seed)
  optimizer = ppo.make_optimizer(c.ppo, num_iterations)
  state = students.init(lambda obs, key: ppo.init_train_state(network, optimizer, obs, key),
                        carry.obs, k_init)
  if teacher is not None:
    check_action_dim(teacher, env.observation_spec, env.action_dim, c.env.name)
    warning = records.mismatch(teacher.name, teacher.made_on, env.sim_backend)
    if warning:
      logging.warning("%s", warning)
  num_labelled = budget_lib.num_labelled(c.ppo.num_steps, c.teacher.query_fraction)
  update = students.make_update(ppo.make_update(
      network, optimizer, c.ppo, c.distill,
      _teacher_batch(c, teacher, env, num_labelled * c.env.num_envs), c.teacher.resample,
      num_labelled))
  ckpt = Checkpointer(workdir, c.keep_checkpoints)
  start, state, carry = _restore(ckpt, env, students, state, carry, c.seed)
  # The train state replicated (with one device: committed to it, as the update's outputs and
  # the env's observations are, else the second iteration's arguments differ in commitment
  # and act and update compile again), the envs split over the mesh.
  state, carry = parallel.replicate(state, mesh), parallel.shard_envs(carry, mesh)
  if env.holds_state:
    env.set_state(parallel.shard_envs(env.get_state(), mesh))
  if start:
    logging.info("resumed from iteration %d (%d env steps)", start, int(np.max(state.env_steps)))
  log = Logger(workdir, start, num_iterations, batch, writer=parallel.is_main_process(),
               tags={"sim_backend": env.sim_backend})
  if plan is not None:
    logging.info("teacher budget: %d of %d steps per rollout labelled (%.3g of the "
                 "transitions); observed on demand: %s", num_labelled, c.ppo.num_steps,
                 plan.calls_per_step, ", ".join(env.on_demand_keys) or "nothing")
  run = Run(c, workdir, mesh, env, teacher, plan, students, update, (k_loop, k_eval), batch,
            num_iterations, ckpt, log)
  return run, state, carry, start


def _restore(ckpt: Checkpointer, env: VecEnv, students: Students, state: ppo.TrainState,
             carry: rollout.Carry, seed: int) -> tuple[int, ppo.TrainState, rollout.Carry]:
  """(iteration, train state, carry) of the newest checkpoint that restores, or (0, the given
  state and carry). The env continues from its saved state where it holds one, else from
  fresh episodes seeded apart from every earlier start."""
  target = _tree(state, carry, _env_state(env))
  iteration, restored = ckpt.restore_latest(target, legacy=students.legacy_checkpoints(target))
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


def iterate(run: Run, state: ppo.TrainState, carry: rollout.Carry, iteration: int):
  """One iteration: the rollout, then the update. (state, carry, metrics, episode stats)."""
  k_rollout, k_update = run.students.iteration_keys(run.keys[0], iteration)
  t0, timings = time.perf_counter(), {}
  labelled = observe = None
  if run.budget is not None:
    labelled, observe = run.budget.plan(iteration, _asking(run.config, state))
  data, carry, stats = rollout.collect(run.env, run.students, state.params, carry, k_rollout,
                                       run.config.ppo.num_steps, timings, observe)
  if labelled is not None:
    data = data._replace(labelled=parallel.shard_envs(labelled, run.mesh, axis=1))
  jax.block_until_ready(data.rewards)
  t1 = time.perf_counter()
  state, metrics = run.update(state, run.teacher, data, k_update)
  metrics = run.students.metrics(metrics)
  jax.block_until_ready(metrics)
  metrics["time/rollout_s"], metrics["time/update_s"] = t1 - t0, time.perf_counter() - t1
  metrics.update({f"time/{name}": seconds for name, seconds in timings.items()})
  return state, carry, metrics, stats


def _asking(c: ml_collections.ConfigDict, state: ppo.TrainState) -> np.ndarray:
  """bool [K]: the students whose distillation weight lambda is above 0 at this iteration (the
  others do not ask the teacher)."""
  env_steps, surpassed_at = parallel.fetch((state.env_steps, state.surpassed_at))
  coef = losses.distill_coef(env_steps, c.distill.coef, c.distill.schedule,
                             c.distill.decay_steps, surpassed_at)
  return np.broadcast_to(np.asarray(coef) > 0, np.shape(env_steps))


def _mark_surpassed(run: Run, state: ppo.TrainState, evaluation: dict[str, float]
                    ) -> ppo.TrainState:
  """The "surpass" schedule: a student whose evaluation passes its teacher's success for the
  first time starts its lambda's decay now (``TrainState.surpassed_at``)."""
  c = run.config
  success = run.students.each(evaluation, "eval/success_rate")
  surpassed_at, env_steps = parallel.fetch((state.surpassed_at, state.env_steps))
  passing = (surpassed_at == losses.NEVER) & (success > c.distill.teacher_success)
  for k in np.nonzero(passing)[0]:
    logging.info("student %d passed its teacher at %d env steps (eval success %.3f > %.3f): "
                 "lambda decays to 0 over %d env steps", k, env_steps[k], success[k],
                 c.distill.teacher_success, c.distill.decay_steps)
  if not passing.any():
    return state
  surpassed_at = np.where(passing, env_steps, surpassed_at).astype(np.int32)
  return state.replace(surpassed_at=parallel.replicate(surpassed_at, run.mesh))


def evaluate(run: Run, eval_env: VecEnv, state: ppo.TrainState, iteration: int
             ) -> dict[str, float]:
  """The students' evaluation after ``iteration`` (``Students.evaluate``), on seeds 10,000 +
  iteration onwards. Every process evaluates alike on its own devices; the first records the
  videos."""
  c = run.config
  videos = c.eval_videos if parallel.is_main_process() else 0

  def episodes(policy, videos_: bool) -> evaluate_lib.Episodes:
    return evaluate_lib.episodes(
        eval_env, policy, run.students.num * c.eval_episodes, seed=10_000 + iteration,
        key=jax.random.fold_in(run.keys[1][0], iteration), protocol=c.eval_protocol,
        steps=c.eval_steps, video_dir=os.path.join(run.workdir, "videos"),
        num_videos=videos if videos_ else 0, video_prefix=f"step{iteration * run.batch:09d}")

  params = parallel.local_copy(state.params, run.mesh)
  with run.log.evaluation():
    return run.students.evaluate(
        lambda policy, videos: episodes(policy, videos), params, c.eval_protocol)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains the students of ``config`` in ``workdir``, resuming if a checkpoint is there.

  Returns the last evaluation's metrics (empty if the checkpoint was already at the end).
  """
  c = config
  config_lib.validate(c)
  parallel.check_same_config(c.to_json_best_effort(sort_keys=True))
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_main_process():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(c.to_json_best_effort(indent=2))
  # The teacher first (big_vision habit): it is the slowest part to load and the likeliest to
  # fail, and it never enters the student's checkpoint.
  teacher = make_teacher(c.teacher) if c.distill.loss != "none" else None
  run, eval_env, stopped, done = None, None, None, None
  with preemption.Guard() as guard:
    try:
      run, state, carry, start = build(c, workdir, teacher)
      done = _Completed(start, state, carry, _env_state(run.env))
      last_eval: dict[str, float] = {}
      for iteration in range(start + 1, run.num_iterations + 1):
        state, carry, metrics, stats = iterate(run, state, carry, iteration)
        run.log.add(metrics, stats)
        last = iteration == run.num_iterations
        save = last or iteration % c.checkpoint_every == 0
        summary = None
        if last or save or iteration % c.log_every == 0:
          summary = run.log.summary(iteration)
          _check_finite(summary, iteration, workdir)
          if last or iteration % c.eval_every == 0:
            eval_env = eval_env or make_env(evaluate_lib.env_config(c),
                                            c.num_seeds * c.eval_envs, seed=c.seed + 1,
                                            final_obs_keys=(),
                                            on_demand_keys=config_lib.unread_keys(c))
            last_eval = evaluate(run, eval_env, state, iteration)
            summary.update(last_eval)
            if run.budget is not None and c.distill.schedule == "surpass":
              state = _mark_surpassed(run, state, last_eval)
        with guard.deferred():  # the iteration completes: a signal now waits for the save
          if summary is not None:
            run.log.write(iteration, summary)
          done = _Completed(iteration, state, carry, _env_state(run.env))
          if save:
            done.save(run.ckpt)
      return last_eval
    except (preemption.Interrupt, EnvWorkerError) as e:
      if isinstance(e, EnvWorkerError) and guard.received is None:
        raise
      # A signal, or a worker that the same signal (a cluster's SIGTERM to every process of the
      # job) stopped first.
      guard.acknowledge()
      stopped = guard.received
      raise _stop(run, done, stopped) from None
    finally:
      _close(run, eval_env, terminate=stopped is not None)


def _stop(run: Optional[Run], done: Optional[_Completed], signum: int) -> preemption.Stopped:
  """Saves the last completed iteration if it is not saved yet; the Stopped to raise."""
  if run is None or done is None or done.iteration == 0:  # nothing finished: nothing to save
    return preemption.Stopped(signum, 0, None)
  if done.iteration != run.ckpt.latest():
    done.save(run.ckpt)
  return preemption.Stopped(signum, done.iteration,
                            os.path.join(run.ckpt.directory, str(done.iteration)))


def _close(run: Optional[Run], eval_env: Optional[VecEnv], terminate: bool) -> None:
  """Waits for a save in flight (a stop never loses a finished save), then closes the rest,
  even when that save failed."""
  if run is None:  # build failed: what it made is gone with it
    if eval_env is not None:
      eval_env.close(terminate=terminate)
    return
  try:
    run.ckpt.close()
  finally:
    run.log.close()
    for env in (run.env, eval_env):
      if env is not None:
        env.close(terminate=terminate)
