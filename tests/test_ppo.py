"""The jitted PPO update: lambda = 0 is PPO exactly, one teacher call per transition, one trace."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpd_jax import config as config_lib
from rpd_jax import gaussian, ppo, rollout, students
from rpd_jax.networks import make_network
from rpd_jax.teachers.base import Teacher, TeacherOutput, query

T, B, D, A = 6, 4, 5, 7


def linear_teacher(calls=None):
  """A teacher whose action is a fixed linear map of the state; counts rows it is asked for."""
  def apply_fn(params, obs, prev_obs, is_first, key, num_samples):
    if calls is not None:
      jax.debug.callback(lambda n: calls.append(int(n)), is_first.shape[0])
    action = jnp.tanh(obs["state"] @ params["w"])
    samples = None
    if num_samples:
      samples = action + 0.1 * jax.random.normal(key, (num_samples,) + action.shape)
    return TeacherOutput(action, samples)
  w = jax.random.normal(jax.random.key(1), (D, A))
  return Teacher(params={"w": w}, apply_fn=apply_fn)


def make_config(loss="mse", coef=1.0):
  c = config_lib.base_config()
  c.env.num_envs, c.ppo.num_steps = B, T
  c.ppo.num_minibatches, c.ppo.update_epochs = 2, 2
  c.ppo.target_kl = 0.0
  c.network.hidden = (16,)
  c.distill.loss, c.distill.coef = loss, coef
  c.distill.ppd_samples = 3
  c.teacher.name = "test"
  return c


def random_rollout(seed):
  k = jax.random.split(jax.random.key(seed), 8)
  obs = {"state": jax.random.normal(k[0], (T, B, D))}
  return rollout.Rollout(
      obs=obs, prev_obs0={"state": jax.random.normal(k[1], (B, D))},
      is_first=jax.random.bernoulli(k[2], 0.2, (T, B)),
      actions=jax.random.normal(k[3], (T, B, A)),
      log_probs=-5.0 + jax.random.normal(k[4], (T, B)),
      values=jax.random.normal(k[5], (T, B)), rewards=jax.random.normal(k[6], (T, B)),
      terminated=jax.random.bernoulli(k[7], 0.1, (T, B)),
      truncated=jnp.zeros((T, B), bool), final_values=jnp.zeros((T, B)),
      last_value=jnp.zeros(B))


def setup(config, num_labelled=0):
  network = make_network(config.network, A)
  optimizer = ppo.make_optimizer(config.ppo, 10)
  state = ppo.init_train_state(network, optimizer, {"state": jnp.zeros((B, D))},
                               jax.random.key(0))
  update = ppo.make_update(network, optimizer, config.ppo, config.distill,
                           config.teacher.max_batch or T * B, config.teacher.resample,
                           num_labelled)
  return state, update


def test_lambda_zero_is_exactly_ppo():
  data, key = random_rollout(0), jax.random.key(3)
  state_ppo, update_ppo = setup(make_config("none"))
  new_ppo, m_ppo = update_ppo(state_ppo, None, data, key)
  state_mse, update_mse = setup(make_config("mse", coef=0.0))
  new_mse, m_mse = update_mse(state_mse, linear_teacher(), data, key)
  # The same loss to the bit; the parameters to float rounding (XLA fuses the two graphs
  # differently, so sums may associate differently: ~1e-11 here).
  assert float(m_ppo["loss/total"]) == float(m_mse["loss/total"])
  chex.assert_trees_all_close(new_ppo.params, new_mse.params, rtol=1e-5, atol=1e-9)
  assert float(m_mse["loss/distill"]) > 0  # the term was computed, with weight 0


@pytest.mark.parametrize("loss", ["mse", "l1", "bc", "ppd"])
def test_distillation_moves_student_toward_teacher(loss):
  """With PPO switched off (zero advantages) the update must reduce the distillation loss."""
  config = make_config(loss)
  config.ppo.vf_coef = 0.0
  config.ppo.update_epochs = 20
  config.ppo.learning_rate = 3e-3
  state, update = setup(config)
  data = random_rollout(1)._replace(rewards=jnp.zeros((T, B)), values=jnp.zeros((T, B)))
  teacher = linear_teacher()
  state, first = update(state, teacher, data, jax.random.key(0))
  first = float(first["loss/distill"])  # averaged over the first update's minibatch steps
  for _ in range(3):
    state, last = update(state, teacher, data, jax.random.key(0))
  assert float(last["loss/distill"]) < 0.8 * first


def test_teacher_called_once_per_transition_and_update_compiles_once():
  calls = []
  teacher = linear_teacher(calls=calls)
  config = make_config("ppd")
  config.teacher.max_batch = 8  # T * B = 24 rows in 3 chunks of 8
  state, update = setup(config)
  for i in range(3):
    state, metrics = update(state, teacher, random_rollout(i), jax.random.key(i))
    jax.block_until_ready(metrics)
    assert float(metrics["teacher/calls_per_step"]) == 1.0
  jax.effects_barrier()
  assert calls == [8] * 9  # 3 updates x 3 chunks x 8 rows: each transition exactly once
  assert int(state.iteration) == 3 and int(state.env_steps) == 3 * T * B
  # A 4th call with new data but the same shapes must not retrace (assert_max_traces(n=1)).
  update(state, teacher, random_rollout(7), jax.random.key(7))


def test_target_kl_stops_the_update():
  config = make_config("none")
  config.ppo.target_kl = 1e-9
  config.ppo.learning_rate = 1e-2
  state, update = setup(config)
  # Log-probs of the current policy, so that the first minibatch starts at KL 0.
  data = random_rollout(0)
  network = make_network(config.network, A)
  flat_obs = {"state": data.obs["state"].reshape(T * B, D)}
  mean, log_std, _ = network.apply(state.params, flat_obs)
  mean = mean.reshape(T, B, A)
  data = data._replace(log_probs=gaussian.log_prob(data.actions, mean, log_std))
  _, metrics = update(state, None, data, jax.random.key(0))
  # The first minibatch is measured at the old policy (KL 0) and applied; the second exceeds
  # the target and stops the rest: 1 of 4 minibatch steps.
  assert float(metrics["loss/update_fraction"]) == pytest.approx(0.25)


def test_a_max_batch_that_does_not_divide_the_batch_pads_the_last_chunk():
  teacher, key = linear_teacher(), jax.random.key(0)
  obs = {"state": jax.random.normal(key, (24, D))}
  first = jnp.zeros(24, bool)
  whole = query(teacher, obs, obs, first, key, 2, max_batch=24)
  padded = query(teacher, obs, obs, first, key, 2, max_batch=5)  # 5 chunks of 5: 1 row padded
  # The same rows through a matrix product of another batch size: equal up to float32 rounding,
  # which depends on the CPU's vector width (an AVX2-only EPYC: 3e-8 apart on a value of 0.02,
  # a relative 1.3e-6). Actions are tanh outputs of order 1: 1e-6 absolute is a few ulps.
  np.testing.assert_allclose(padded.action, whole.action, rtol=1e-6, atol=1e-6)
  assert padded.samples.shape == whole.samples.shape == (2, 24, A)


def test_resample_per_epoch_queries_the_teacher_at_every_epoch_with_fresh_keys():
  keys = []

  def apply_fn(params, obs, prev_obs, is_first, key, num_samples):
    jax.debug.callback(lambda k: keys.append(tuple(np.asarray(k))), jax.random.key_data(key))
    action = jnp.tanh(obs["state"] @ params["w"]) + 0.1 * jax.random.normal(
        key, (obs["state"].shape[0], A))
    return TeacherOutput(action, None)

  teacher = Teacher(params=linear_teacher().params, apply_fn=apply_fn)
  config = make_config("mse")
  config.ppo.update_epochs = 3
  config.teacher.resample = "epoch"
  state, update = setup(config)
  data = random_rollout(0)
  _, metrics = update(state, teacher, data, jax.random.key(0))
  jax.effects_barrier()
  assert float(metrics["teacher/calls_per_step"]) == 3.0  # one answer per epoch
  assert len(keys) == 3 and len(set(keys)) == 3  # each epoch a fresh sample
  # Once per transition (the default): one query, and a different update.
  config.teacher.resample = "transition"
  keys.clear()
  state_once, update_once = setup(config)
  _, once = update_once(state_once, teacher, data, jax.random.key(0))
  jax.effects_barrier()
  assert float(once["teacher/calls_per_step"]) == 1.0 and len(keys) == 1
  assert float(once["loss/distill"]) != float(metrics["loss/distill"])


def test_resample_per_epoch_makes_no_query_after_a_target_kl_stop():
  config = make_config("mse")
  config.ppo.update_epochs = 4
  config.ppo.target_kl = 1e-9
  config.ppo.learning_rate = 1e-2
  config.teacher.resample = "epoch"
  state, update = setup(config)
  _, metrics = update(state, linear_teacher(), random_rollout(0), jax.random.key(0))
  # KL is 0 at the first minibatch only (log-probs are random here, so the stop comes at
  # once): epochs after the stop make no query.
  assert 1.0 <= float(metrics["teacher/calls_per_step"]) < 4.0


def _labelled(steps):
  """bool [T, B]: every env of ``steps`` labelled (a teacher budget, rpd_jax/budget.py)."""
  return jnp.asarray(np.isin(np.arange(T), steps)[:, None] & np.ones(B, bool))


def test_the_teacher_answers_labelled_steps_only_and_the_update_compiles_once():
  calls = []
  teacher = linear_teacher(calls=calls)
  config = make_config("ppd")
  state, update = setup(config, num_labelled=2)
  for i in range(3):
    data = random_rollout(i)._replace(labelled=_labelled([i, i + 3]))
    state, metrics = update(state, teacher, data, jax.random.key(i))
    assert float(metrics["teacher/calls_per_step"]) == pytest.approx(2 / T)
  jax.effects_barrier()
  assert calls == [2 * B] * 3  # 2 steps x B envs per update, in one call
  # Nothing labelled (a student past its lambda's end): no call, no distillation.
  calls.clear()
  data = random_rollout(5)._replace(labelled=jnp.zeros((T, B), bool))
  _, metrics = update(state, teacher, data, jax.random.key(5))
  jax.effects_barrier()
  assert calls == [] and float(metrics["teacher/calls_per_step"]) == 0.0
  assert float(metrics["loss/distill"]) == 0.0


def test_a_budget_with_a_fresh_answer_per_epoch_asks_the_labelled_steps_every_epoch():
  calls = []
  config = make_config("mse")
  config.teacher.resample = "epoch"  # 2 epochs, no target-KL stop
  state, update = setup(config, num_labelled=2)
  data = random_rollout(0)._replace(labelled=_labelled([0, 5]))
  _, metrics = update(state, linear_teacher(calls=calls), data, jax.random.key(0))
  jax.effects_barrier()
  assert calls == [2 * B] * 2
  assert float(metrics["teacher/calls_per_step"]) == pytest.approx(2 * 2 / T)


def test_distillation_reads_the_labelled_transitions_alone():
  """The teacher's view of unlabelled steps is zeros (the env skipped it): were those rows
  answered or weighted, the NaNs put there would reach the loss."""
  def apply_fn(params, obs, prev_obs, is_first, key, num_samples):
    return TeacherOutput(jnp.tanh(obs["view"] @ params["w"]), None)

  teacher = Teacher(params=linear_teacher().params, apply_fn=apply_fn)
  config = make_config("mse")
  labelled = _labelled([1, 4])
  data = random_rollout(0)
  view = jnp.where(labelled[..., None], data.obs["state"], jnp.nan)
  state, update = setup(config, num_labelled=2)
  prev_obs0 = {**data.prev_obs0, "view": data.prev_obs0["state"]}
  data = data._replace(prev_obs0=prev_obs0)
  _, masked = update(state, teacher, data._replace(obs={**data.obs, "view": view},
                                                   labelled=labelled), jax.random.key(0))
  assert np.isfinite(float(masked["loss/distill"])) and float(masked["loss/distill"]) > 0
  # Every transition labelled through the mask: the update without a budget, to rounding.
  full = jnp.ones((T, B), bool)
  state, update = setup(config, num_labelled=T)
  obs = {**data.obs, "view": data.obs["state"]}
  new_mask, with_mask = update(state, teacher, data._replace(obs=obs, labelled=full),
                               jax.random.key(0))
  state, update = setup(config)
  new_all, without = update(state, teacher, data._replace(obs=obs), jax.random.key(0))
  for name in ("loss/distill", "loss/total", "loss/teacher_gap"):
    assert float(with_mask[name]) == pytest.approx(float(without[name]), rel=1e-5), name
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               new_mask.params, new_all.params)


def test_students_with_a_budget_update_as_each_alone():
  """Two students vmapped, each with its own labelled rows (one asks, one has stopped), get
  what each would alone."""
  config = make_config("mse")
  network = make_network(config.network, A)
  stack = students.Students(network, 2, 2)
  optimizer = ppo.make_optimizer(config.ppo, 10)
  one = ppo.make_update(network, optimizer, config.ppo, config.distill, T * B, "transition", 2)
  obs = {"state": jnp.zeros((2 * B, D))}
  states = stack.init(lambda o, k: ppo.init_train_state(network, optimizer, o, k), obs,
                      stack.run_keys(0)[0])
  parts = [random_rollout(k)._replace(labelled=_labelled([1, 4]) & (k == 0)) for k in range(2)]
  # [T, B] each -> [T, 2 B] as collected (student k on rows [k B, (k + 1) B)).
  both = rollout.Rollout(**{
      name: jax.tree.map(lambda *x, axis=int(name not in ("prev_obs0", "last_value")):
                         jnp.concatenate(x, axis=axis), *[p._asdict()[name] for p in parts])
      for name in rollout.Rollout._fields})
  keys, teacher = stack.run_keys(0)[1], linear_teacher()
  _, together = stack.make_update(one)(states, teacher, both, keys)
  # Each alone: an update of its own (each compiles once).
  solo = ppo.make_update(network, optimizer, config.ppo, config.distill, T * B, "transition", 2)
  for k in range(2):
    _, alone = solo(jax.tree.map(lambda x: x[k], states), teacher, parts[k], keys[k])
    for name in ("loss/distill", "loss/total", "teacher/calls_per_step"):
      assert float(together[name][k]) == pytest.approx(float(alone[name]), rel=1e-5, abs=1e-7)
  assert float(together["teacher/calls_per_step"][1]) == 0.0
