"""Tests of the pure-JAX push env and its scripted teacher.

Compiling the batched step dominates the run time, so the tests share a few env settings: the
stateful env in sparse mode with NUM_ENVS envs, one small-image rgb env, and one scanned rollout
of the pure functions in normalized_dense mode.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpd_jax import config as config_lib
from rpd_jax.envs import jax_push, make_env, observation_keys
from rpd_jax.errors import ConfigError
from rpd_jax.teachers import make_teacher, query, scripted

NUM_ENVS = 16
TEACHER = scripted.make_push_teacher()


def sparse_env(seed=0):
  return jax_push.JaxPushVecEnv(NUM_ENVS, seed=seed, reward_mode="sparse")


def with_knobs(noise, bias):
  """TEACHER with other settings; its apply_fn, hence its compilation, is shared."""
  return TEACHER.replace(params={"noise": jnp.float32(noise), "bias": jnp.float32(bias)})


@jax.jit
def teacher_action(teacher, obs, key):
  return teacher.apply_fn(teacher.params, obs, obs, jnp.zeros(NUM_ENVS, bool), key, 0).action


def teacher_rollout(env, teacher, key, num_steps, seed=0):
  """Resets ``env`` with ``seed``, runs ``teacher``'s action; returns the StepResults."""
  obs, results = env.reset(seed), []
  for k in jax.random.split(key, num_steps):
    results.append(env.step(teacher_action(teacher, obs, k)))
    obs = results[-1].obs
  return results


def assert_obs_match_spec(env, obs):
  assert set(obs) == set(env.observation_spec)
  for name, spec in env.observation_spec.items():
    assert obs[name].shape == (env.num_envs,) + spec.shape and obs[name].dtype == spec.dtype, name


def test_state_obs_and_step_types():
  env = sparse_env()
  result = env.step(jnp.zeros((NUM_ENVS, env.action_dim)))
  for obs in (env.reset(1), result.obs, result.final_obs):
    assert_obs_match_spec(env, obs)
  assert env.observation_spec["state"].shape == (10,) and "rgb" not in env.observation_spec
  assert (result.reward.dtype, result.terminated.dtype, result.truncated.dtype) == (
      jnp.float32, jnp.bool_, jnp.bool_)
  frames = env.render()  # videos work in state mode too
  assert frames.shape == (NUM_ENVS, 64, 64, 3) and frames.dtype == jnp.uint8


def test_rgb_obs():
  env = jax_push.JaxPushVecEnv(4, seed=0, obs_mode="rgb", image_size=16)
  result = env.step(jnp.zeros((4, env.action_dim)))
  for obs in (result.obs, result.final_obs):
    assert_obs_match_spec(env, obs)
  # Like ManiSkill's rgb mode, the state part holds the robot (tcp xy) only.
  assert env.observation_spec["state"].shape == (2,)
  assert env.observation_spec["rgb"] == jax.ShapeDtypeStruct((16, 16, 3), jnp.uint8)
  np.testing.assert_array_equal(result.obs["rgb"], env.render())


def test_on_demand_keys_are_observed_where_a_step_asks_and_zero_elsewhere():
  env = jax_push.JaxPushVecEnv(4, seed=0, obs_mode="rgb", image_size=16,
                               on_demand_keys=("rgb",))
  twin = jax_push.JaxPushVecEnv(4, seed=0, obs_mode="rgb", image_size=16)
  action = jnp.zeros((4, env.action_dim))
  asked = np.array([True, False, True, False])
  result, full = env.step(action, asked), twin.step(action)
  assert_obs_match_spec(env, result.obs)
  np.testing.assert_array_equal(result.obs["rgb"][asked], full.obs["rgb"][asked])
  assert not np.asarray(result.obs["rgb"])[~asked].any()
  np.testing.assert_array_equal(result.obs["state"], full.obs["state"])  # not on demand
  np.testing.assert_array_equal(env.step(action).obs["rgb"], twin.step(action).obs["rgb"])
  with pytest.raises(ValueError, match="on_demand_keys has 'depth'"):
    jax_push.JaxPushVecEnv(2, seed=0, on_demand_keys=("depth",))


def test_actions_are_clipped():
  action = jax.random.normal(jax.random.key(0), (NUM_ENVS, 7)) * 5.0
  clipped = sparse_env(seed=3).step(jnp.clip(action, -1.0, 1.0))
  raw = sparse_env(seed=3).step(action)
  np.testing.assert_array_equal(raw.obs["state"], clipped.obs["state"])


def test_truncation_at_the_limit():
  env = sparse_env()
  first = env.reset(0)
  for t in range(1, env.max_episode_steps + 1):  # standing still never succeeds
    result = env.step(jnp.zeros((NUM_ENVS, 7)))
    assert not result.terminated.any()
    assert bool(result.truncated.all()) == (t == env.max_episode_steps), t
  assert env.max_episode_steps == 50
  # The next episode's block and goal are new draws, not the first episode's.
  assert not np.allclose(result.obs["privileged"][:, 2:6], first["privileged"][:, 2:6])


def test_auto_reset_keeps_final_obs_and_sparse_reward_is_success():
  ends = 0
  for result in teacher_rollout(sparse_env(), TEACHER, jax.random.key(1), 60):
    done = np.asarray(result.terminated | result.truncated)
    differs = np.any(np.asarray(result.obs["privileged"] != result.final_obs["privileged"]), -1)
    np.testing.assert_array_equal(differs, done)
    np.testing.assert_array_equal(result.reward, result.success.astype(np.float32))
    np.testing.assert_array_equal(result.terminated, result.success)
    ends += done.sum()
  assert ends >= NUM_ENVS  # every env finished an episode: the check above saw auto-resets


def test_same_seed_same_episodes():
  run = lambda seed: teacher_rollout(sparse_env(), TEACHER, jax.random.key(0), 10,
                                     seed)[-1].obs["state"]
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), run(1))


def test_scanned_rollout_normalized_dense_reward_in_unit_interval():
  params = jax_push.PushParams(reward_mode="normalized_dense")
  batched_step = jax.vmap(functools.partial(jax_push.step, params))

  @jax.jit
  def rollout(key):  # the teacher driving the pure functions under lax.scan
    k_reset, k_teacher = jax.random.split(key)
    state, obs = jax.vmap(functools.partial(jax_push.reset, params))(
        jax.random.split(k_reset, NUM_ENVS))

    def one_step(carry, k):
      state, result = batched_step(carry[0], teacher_action(TEACHER, carry[1], k))
      return (state, result.obs), result

    keys = jax.random.split(k_teacher, params.max_episode_steps)
    return jax.lax.scan(one_step, (state, obs), keys)[1]

  results = rollout(jax.random.key(2))
  reward, success = np.asarray(results.reward), np.asarray(results.success)
  assert reward.shape == (params.max_episode_steps, NUM_ENVS)
  assert (reward >= 0).all() and (reward <= 1).all()
  assert success.any()
  np.testing.assert_array_equal(reward[success], 1.0)  # the success bonus is the maximum
  assert (reward[~success] < 1).all()


def test_noise_free_teacher_beats_a_noisy_one():
  def success_rate(noise, bias):  # successes per episode over two episode lengths
    env = sparse_env()
    results = teacher_rollout(env, with_knobs(noise, bias), jax.random.key(0),
                              2 * env.max_episode_steps)
    ended = sum(int((r.terminated | r.truncated).sum()) for r in results)
    return sum(int(r.success.sum()) for r in results) / ended

  clean, noisy = success_rate(0.0, 0.0), success_rate(1.25, 0.75)
  assert clean > 0.9 and noisy < 0.3, (clean, noisy)


def test_teacher_samples_under_jit():
  obs, first = sparse_env().reset(0), jnp.ones(NUM_ENVS, bool)
  teacher = scripted.make_push_teacher()

  @jax.jit
  def action_sum(params):  # differentiable in the teacher's params, without NaNs
    out = query(teacher.replace(params=params), obs, obs, first, jax.random.key(0), 3,
                max_batch=8)
    return out.action.sum(), out

  grads, out = jax.grad(action_sum, has_aux=True)(teacher.params)
  assert all(np.isfinite(g) for g in jax.tree.leaves(grads))
  assert out.action.shape == (NUM_ENVS, 7) and out.samples.shape == (3, NUM_ENVS, 7)
  assert np.abs(out.samples).max() <= 1.0
  assert not np.allclose(out.samples[0], out.samples[1])  # independent samples
  no_samples = jax.eval_shape(lambda: query(teacher, obs, obs, first, jax.random.key(0)))
  assert no_samples.samples is None


def test_built_by_name_from_config():
  c = config_lib.base_config()
  c.teacher.name = "scripted_push"
  c.env.reward_mode = "sparse"
  env = make_env(c.env, num_envs=NUM_ENVS, seed=0)
  assert env.observation_spec["state"].shape == (10,)
  assert make_teacher(c.teacher).params["noise"] == scripted.DEFAULT_NOISE
  c.teacher.kwargs.nois = 0.5
  with pytest.raises(ConfigError, match="kwargs.nois is not an option of the 'scripted_push'"):
    make_teacher(c.teacher)
  c.env.kwargs.colour = "red"
  with pytest.raises(ConfigError, match="config.env.kwargs.colour is not an option"):
    make_env(c.env, num_envs=NUM_ENVS, seed=0)


@pytest.mark.parametrize("obs_mode", ["state", "state_rgb", "rgb"])
def test_observation_keys_match_the_registry(obs_mode):
  c = config_lib.base_config()
  c.env.kwargs.obs_mode = obs_mode
  env = make_env(c.env, num_envs=2, seed=0)
  assert sorted(env.observation_spec) == sorted(observation_keys(c.env))
