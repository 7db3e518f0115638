"""The teacher budget's plan: which steps the teacher labels, and what the envs observe for it.
(The update's side: tests/test_ppo.py; the envs': test_jax_push.py, test_maniskill.py.)"""

import numpy as np
import pytest

from rpd_jax import budget


@pytest.mark.parametrize("num_steps,fraction,n", [(50, 1.0, 50), (50, 0.25, 12), (50, 0.0625, 3),
                                                  (16, 0.5, 8), (6, 0.25, 2)])
def test_labelled_steps_are_evenly_spaced_and_cover_every_step_over_iterations(
    num_steps, fraction, n):
  seen = np.zeros(num_steps, int)
  spacing = num_steps / n
  for iteration in range(1, 200):
    steps = budget.labelled_steps(iteration, num_steps, fraction)
    assert len(steps) == n == budget.num_labelled(num_steps, fraction)
    assert steps.min() >= 0 and steps.max() < num_steps
    gaps = np.diff(steps)
    assert gaps.min() >= np.floor(spacing) and gaps.max() <= np.ceil(spacing)
    seen[steps] += 1
  assert seen.min() > 0  # the comb shifts: every step index is labelled some time
  # ... and about equally often (a fraction of 1 labels every step every time).
  assert seen.max() <= 1.6 * seen.min()


def test_the_plan_labels_asking_students_and_observes_what_the_teacher_reads():
  # T = 8, a quarter: 2 steps 4 apart; the comb's offset is frac(i * 0.618...) * 4.
  assert list(budget.labelled_steps(5, 8, 0.25)) == [0, 4]  # offset 0.36
  assert list(budget.labelled_steps(6, 8, 0.25)) == [2, 6]  # offset 2.83
  plan = budget.Budget(num_steps=8, fraction=0.25, window=1, envs_per_student=2)
  asking = np.array([True, False, True])
  rows = np.repeat(asking, 2)
  labelled, observe = plan.plan(5, asking)
  assert labelled.shape == observe.shape == (8, 6)
  np.testing.assert_array_equal(labelled, np.isin(np.arange(8), [0, 4])[:, None] & rows)
  # Step t returns obs[t + 1]: step 3 returns the labelled obs[4]; obs[0] was returned by the
  # last iteration's last step, and this one's last step returns the next rollout's obs[0],
  # which is not labelled (steps 2 and 6).
  np.testing.assert_array_equal(observe, np.isin(np.arange(8), [3])[:, None] & rows)
  # A two-frame teacher also reads the frame before each labelled one: obs[3] and obs[4].
  two = budget.Budget(num_steps=8, fraction=0.25, window=2, envs_per_student=2)
  np.testing.assert_array_equal(two.plan(5, asking)[1],
                                np.isin(np.arange(8), [2, 3])[:, None] & rows)
  # Where the next rollout labels its step 0 (iteration 5's does), the last step observes it.
  np.testing.assert_array_equal(plan.plan(4, asking)[1][7], rows)
  assert plan.calls_per_step == 0.25


def test_keys_no_one_reads_are_never_observed(tmp_path):
  """Without a teacher (PPO), and in every evaluation, the env's keys that the student does not
  read (a teacher's camera beside a state student) are on demand and never asked for."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rpd_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from rpd_jax import rollout, trainer  # pylint: disable=g-import-not-at-top
  from rpd_jax.envs import make_env  # pylint: disable=g-import-not-at-top
  c = config_lib.load("experiments/jax_push.py:smoke,ppo")
  config_lib.validate(c)
  assert config_lib.unread_keys(c) == ("privileged",) and c.network.obs_keys == ("state",)
  run, _, carry, _ = trainer.build(c, str(tmp_path), teacher=None)
  try:
    assert run.budget is None and run.env.on_demand_keys == ("privileged",)
    policy = lambda obs, prev_obs, is_first, key: (
        jnp.zeros((obs["state"].shape[0], run.env.action_dim)), {})
    _, obs, _ = rollout.run(run.env, policy, carry, jax.random.key(0), 3, keep=lambda t: t.obs)
    assert not np.asarray(obs["privileged"][1:]).any()  # obs[0] is the reset's, observed whole
    assert np.asarray(obs["state"]).any()
  finally:
    run.env.close()
  eval_env = make_env(c.env, 2, seed=1, final_obs_keys=(), on_demand_keys=("privileged",))
  _, obs, _ = rollout.run(eval_env, policy, rollout.reset(eval_env, 5), jax.random.key(0), 2,
                          keep=lambda t: t.obs)
  assert not np.asarray(obs["privileged"][1:]).any()
