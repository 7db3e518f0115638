"""The jitted PPO update: lambda = 0 is PPO exactly, one teacher call per transition, one trace."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpd_jax import config as config_lib
from rpd_jax import gaussian, ppo, rollout
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


def setup(config):
  network = make_network(config.network, A)
  optimizer = ppo.make_optimizer(config.ppo, 10)
  state = ppo.init_train_state(network, optimizer, {"state": jnp.zeros((B, D))},
                               jax.random.key(0))
  update = ppo.make_update(network, optimizer, config.ppo, config.distill,
                           config.teacher.max_batch or T * B, config.teacher.resample)
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
