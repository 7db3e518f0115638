"""Chunk execution of the teacher evaluation (first, receding horizon, temporal ensembling)."""

import jax
import jax.numpy as jnp
import numpy as np

from rpd_jax.pipeline import eval_teacher


def _chunks_fn():
  """Chunks whose action k of the chunk made at call c is c * 10 + k (one action dim)."""
  calls = {"n": 0}

  def chunks(params, obs, prev_obs, is_first, key):
    del params, prev_obs, key
    c = obs["t"].astype(jnp.float32)  # [B]: the env's step counter stands in for the call
    chunk = c[:, None, None] * 10 + jnp.arange(4.0)[None, :, None]
    return chunk[None]  # [1, B, 4, 1]

  return chunks, calls


def _run(execution, steps=6):
  chunks, _ = _chunks_fn()
  act = eval_teacher.chunk_executor(chunks, None, execution, horizon=4)
  out = []
  for t in range(steps):
    obs = {"t": jnp.full((2,), t)}
    is_first = np.array([t == 0, t in (0, 2)])  # env 1 starts a new episode at step 2
    out.append(np.asarray(act(obs, obs, is_first, None)[0])[:, 0])
  return np.stack(out)  # [steps, B]


def test_first_executes_the_first_action_of_each_new_chunk():
  np.testing.assert_array_equal(_run("first")[:, 0], [0, 10, 20, 30, 40, 50])


def test_receding_executes_whole_chunks_and_restarts_at_episode_starts():
  out = _run("receding")
  np.testing.assert_array_equal(out[:, 0], [0, 1, 2, 3, 40, 41])
  np.testing.assert_array_equal(out[:, 1], [0, 1, 20, 21, 22, 23])


def test_ensemble_averages_the_predictions_for_this_step():
  out = _run("ensemble")
  # Step 2 of env 0: predictions 2 (chunk 0), 11 (chunk 1), 20 (chunk 2): uniform mean 11.
  assert out[2, 0] == np.mean([2, 11, 20])
  # Env 1 restarted at step 2: only chunk 2's prediction counts there.
  assert out[2, 1] == 20
  assert out[5, 0] == np.mean([23, 32, 41, 50])


def test_markdown_table():
  row = {"task": "PushCube-v1", "teacher": "octo:x", "execution": "ensemble", "episodes": 100,
         "success_rate": 0.42, "success_stderr": 0.049, "normalized_reward": 0.31,
         "episode_length": 33.3}
  table = eval_teacher.markdown([row])
  assert "| PushCube-v1 | octo:x | ensemble | 100 | 0.42 ± 0.05 | 0.310 | 33.3 |" in table


def test_evaluation_episodes_start_from_distinct_seeds():
  from rpd_jax import evaluate  # pylint: disable=g-import-not-at-top
  from rpd_jax.envs import base  # pylint: disable=g-import-not-at-top

  class OneStepEnv:
    num_envs, max_episode_steps = 2, 3
    on_demand_keys = ()  # the VecEnv contract (envs/base.py): every key at every step
    seeds = []

    def reset(self, seed):
      self.seeds.append(seed)
      return {"x": jnp.zeros((2, 1))}

    def step(self, action):
      del action
      done = jnp.ones(2, bool)
      obs = {"x": jnp.zeros((2, 1))}
      return base.StepResult(obs=obs, reward=jnp.ones(2), terminated=done, truncated=~done,
                             success=done, final_obs=obs)

  env = OneStepEnv()
  result = evaluate.evaluate(env, lambda o, p, f, k: (jnp.zeros((2, 1)), {}), 6, seed=10,
                             key=jax.random.key(0))
  assert env.seeds == [10, 12, 14]  # env i of round r: 10 + 2r + i, six different episodes
  assert result["eval/success_rate"] == 1.0 and result["eval/episode_length"] == 1.0


def test_the_fixed_step_protocol_runs_past_success_and_reports_success_at_end():
  """The published evaluation: successes do not end episodes; success_once >= success_at_end."""
  from rpd_jax import evaluate, rollout  # pylint: disable=g-import-not-at-top
  from rpd_jax.envs.jax_push import JaxPushVecEnv  # pylint: disable=g-import-not-at-top
  from rpd_jax.teachers import scripted  # pylint: disable=g-import-not-at-top
  teacher = scripted.make_push_teacher(noise=0.0, bias=0.0)
  policy = rollout.teacher_policy(teacher)
  env = JaxPushVecEnv(num_envs=8, seed=0, ignore_terminations=True)
  _, kept, _ = rollout.run(env, policy, rollout.reset(env, 0), jax.random.key(0), 50,
                           keep=lambda t: (t.terminated, t.truncated, t.success))
  terminated, truncated, success = map(np.asarray, kept)
  assert success.any() and not terminated.any()  # solved, yet the episodes went on
  assert truncated[-1].all() and not truncated[:-1].any()  # to the time limit, 50 steps
  fixed = evaluate.evaluate(env, policy, 16, seed=0, key=jax.random.key(1),
                            protocol="fixed_steps", steps=50)
  assert fixed["eval/episode_length"] == 50.0 and fixed["eval/episodes"] == 16.0
  assert 0 < fixed["eval/success_at_end"] <= fixed["eval/success_rate"] <= 1
  ending = JaxPushVecEnv(num_envs=8, seed=0)
  first = evaluate.evaluate(ending, policy, 16, seed=0, key=jax.random.key(1))
  assert "eval/success_at_end" not in first and first["eval/episode_length"] < 50
  # The same starts and actions: solved-at-any-step agrees between the two protocols.
  assert first["eval/success_rate"] == fixed["eval/success_rate"]
