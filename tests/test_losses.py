"""GAE against plain Python, losses against hand arithmetic, and the lambda schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpd_jax import gaussian, losses


def gae_reference(rewards, values, next_values, dones, gamma, lam, finite):
  """Plain Python: finite-horizon GAE as the lambda-weighted mean of the n-step returns that fit
  before the episode (or the rollout) ends; classic GAE by its recursion."""
  T, B = rewards.shape
  adv = np.zeros((T, B))
  for b in range(B):
    for t in range(T):
      if not finite:
        total, discount = 0.0, 1.0
        for k in range(t, T):
          delta = rewards[k, b] + gamma * next_values[k, b] - values[k, b]
          total += discount * delta
          if dones[k, b]:
            break
          discount *= gamma * lam
        adv[t, b] = total
        continue
      end = t
      while end < T - 1 and not dones[end, b]:
        end += 1
      num, den = 0.0, 0.0
      for n in range(1, end - t + 2):  # n-step returns G^(n), n = 1 .. steps left
        g = sum(gamma**k * rewards[t + k, b] for k in range(n))
        g += gamma**n * next_values[t + n - 1, b]
        num += lam**(n - 1) * g
        den += lam**(n - 1)
      adv[t, b] = num / den - values[t, b]
  return adv


@pytest.mark.parametrize("finite", [False, True])
def test_gae_matches_python_reference_with_truncation(finite):
  rng = np.random.default_rng(0)
  T, B = 9, 3
  rewards = rng.normal(size=(T, B))
  values = rng.normal(size=(T, B))
  next_values = rng.normal(size=(T, B))
  dones = np.zeros((T, B), bool)
  dones[3, 0] = dones[7, 0] = True  # two episode ends in env 0
  dones[5, 1] = True  # one in env 1; env 2 runs through the rollout end
  # A truncated episode bootstraps from V(final obs), a terminated one from 0: both arrive as
  # next_values, so zero a "terminated" one to cover that path too.
  next_values[7, 0] = 0.0
  got = losses.gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                   jnp.asarray(next_values, jnp.float32), jnp.asarray(dones), 0.9, 0.8, finite)
  want = gae_reference(rewards, values, next_values, dones, 0.9, 0.8, finite)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_one_step_gae_is_td_error():
  # T = 1: both forms reduce to r + gamma * V' - V = 1 + 0.5 * 4 - 2 = 1.
  args = [jnp.array([[1.0]]), jnp.array([[2.0]]), jnp.array([[4.0]]), jnp.array([[False]])]
  for finite in (False, True):
    assert float(losses.gae(*args, 0.5, 0.9, finite)[0, 0]) == pytest.approx(1.0)


def test_distill_mse_l1_by_hand():
  mean = jnp.array([[1.0, 2.0], [0.0, -1.0]])
  target = jnp.array([[0.0, 0.0], [1.0, 1.0]])
  # squared errors 1, 4, 1, 4 -> mean 2.5; absolute 1, 2, 1, 2 -> mean 1.5
  teacher = losses.TeacherTargets(target)
  assert float(losses.DISTILL["mse"](mean, None, teacher, None, 0.2)) == pytest.approx(2.5)
  assert float(losses.DISTILL["l1"](mean, None, teacher, None, 0.2)) == pytest.approx(1.5)


def test_distill_bc_by_hand():
  # One 1-d sample, student N(0, e^0), teacher action 1: -log p = 0.5 + 0.5 log(2 pi).
  got = losses.distill_bc(jnp.zeros((1, 1)), jnp.zeros(1),
                          losses.TeacherTargets(jnp.ones((1, 1))), None, 0.2)
  assert float(got) == pytest.approx(0.5 + 0.5 * np.log(2 * np.pi), rel=1e-6)


def test_gaussian_kl_by_hand_and_ppd_weighting():
  # KL(N(1, 2^2) || N(0, 1)) = log(1/2) + (4 + 1) / 2 - 1/2 = 2 - log 2
  kl = gaussian.kl(jnp.array([1.0]), jnp.array([2.0]), jnp.array([0.0]), jnp.array([0.0]))
  assert float(kl) == pytest.approx(2.0 - np.log(2.0), rel=1e-6)
  # PPD weights the KL by max(ratio, 1 - eps): ratios 0.5 -> 0.8 (eps 0.2), 1.5 -> 1.5.
  teacher = losses.TeacherTargets(jnp.ones((2, 1)), jnp.ones((2, 1)), jnp.full((2, 1), 2.0))
  ppd = losses.distill_ppd(jnp.zeros((2, 1)), jnp.zeros(1), teacher, jnp.array([0.5, 1.5]), 0.2)
  assert float(ppd) == pytest.approx((0.8 + 1.5) / 2 * (2.0 - np.log(2.0)), rel=1e-6)


def test_fit_gaussian_floors_std():
  samples = jnp.ones((4, 3, 7))  # a deterministic teacher: sample std 0
  mean, std = gaussian.fit(samples, 0.05)
  np.testing.assert_allclose(mean, 1.0)
  np.testing.assert_allclose(std, 0.05)


COEFS = dict(clip_coef=0.2, vf_coef=0.5, ent_coef=0.0, clip_vloss=False, norm_adv=False)


def test_ppo_loss_by_hand():
  # Same policy as the data: ratio 1, so the clip loss is -mean(adv) and KL is 0.
  mean, log_std = jnp.zeros((2, 1)), jnp.zeros(1)
  actions = jnp.array([[0.5], [-0.5]])
  mb = losses.Minibatch(obs=None, actions=actions,
                        log_probs=gaussian.log_prob(actions, mean, log_std),
                        values=jnp.zeros(2), advantages=jnp.array([1.0, 3.0]),
                        returns=jnp.array([2.0, 2.0]))
  loss, aux = losses.ppo_loss(mean, log_std, jnp.array([1.0, 0.0]), mb, **COEFS)
  # pg = -(1 + 3) / 2 = -2; v = 0.5 * ((1-2)^2 + (0-2)^2) / 2 = 1.25; total -2 + 0.5 * 1.25
  assert float(aux["pg_loss"]) == pytest.approx(-2.0)
  assert float(aux["v_loss"]) == pytest.approx(1.25)
  assert float(loss) == pytest.approx(-2.0 + 0.625)
  assert float(aux["approx_kl"]) == pytest.approx(0.0, abs=1e-7)
  # Normalised advantages (1, 3) -> (-1, 1): pg = -(-1 + 1) / 2 = 0.
  _, aux = losses.ppo_loss(mean, log_std, jnp.array([1.0, 0.0]), mb,
                           **{**COEFS, "norm_adv": True})
  assert float(aux["pg_loss"]) == pytest.approx(0.0, abs=1e-6)


def test_ppo_clip_by_hand():
  # ratio e^1 > 1.2 with positive advantage: the clipped term 1.2 * adv is used.
  mean, log_std = jnp.zeros((1, 1)), jnp.zeros(1)
  actions = jnp.zeros((1, 1))
  mb = losses.Minibatch(obs=None, actions=actions,
                        log_probs=gaussian.log_prob(actions, mean, log_std) - 1.0,
                        values=jnp.zeros(1), advantages=jnp.array([2.0]), returns=jnp.zeros(1))
  _, aux = losses.ppo_loss(mean, log_std, jnp.zeros(1), mb, **COEFS)
  assert float(aux["pg_loss"]) == pytest.approx(-2.4)
  assert float(aux["clipfrac"]) == 1.0


@pytest.mark.parametrize("name", list(losses.DISTILL))
def test_no_gradient_reaches_the_teacher(name):
  mean, log_std, ratio = jnp.array([[0.3, -0.2]]), jnp.zeros(2), jnp.ones(1)
  teacher = losses.TeacherTargets(jnp.array([[1.0, 1.0]]), jnp.array([[1.0, 1.0]]),
                                  jnp.ones((1, 2)))
  fn = lambda m, t: losses.DISTILL[name](m, log_std, t, ratio, 0.2)
  for g in jax.tree.leaves(jax.grad(lambda t: fn(mean, t))(teacher)):
    np.testing.assert_array_equal(g, 0.0)
  assert np.any(jax.grad(lambda m: fn(m, teacher))(mean) != 0)


@pytest.mark.parametrize("mode,want", [("always", [5.0, 7.0, 8.0]),
                                       ("truncated", [5.0, 0.0, 8.0])])
def test_bootstrap_values(mode, want):
  # One env, 3 steps: goes on (V(obs[1]) = 5), terminates (V(final) = 7, or 0 for "truncated"),
  # is truncated (V(final) = 8, not last_value 9).
  got = losses.bootstrap_values(
      values=jnp.array([[4.0], [5.0], [6.0]]), last_value=jnp.array([9.0]),
      final_values=jnp.array([[-1.0], [7.0], [8.0]]), terminated=jnp.array([[0], [1], [0]], bool),
      truncated=jnp.array([[0], [0], [1]], bool), mode=mode)
  np.testing.assert_array_equal(np.asarray(got)[:, 0], want)


@pytest.mark.parametrize("schedule,step,want", [
    ("constant", 500, 2.0), ("linear", 0, 2.0), ("linear", 250, 1.5), ("linear", 1000, 0.0),
    ("linear", 5000, 0.0), ("cosine", 0, 2.0), ("cosine", 500, 1.0), ("cosine", 1000, 0.0)])
def test_schedules(schedule, step, want):
  got = losses.distill_coef(jnp.asarray(step), 2.0, schedule, 1000)
  assert float(got) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("step,surpassed_at,decay,want", [
    (5000, losses.NEVER, 1000, 2.0),  # not passed its teacher yet: constant
    (3000, 3000, 1000, 2.0), (3250, 3000, 1000, 1.5), (4000, 3000, 1000, 0.0),
    (9000, 3000, 1000, 0.0),  # then linear to 0 over decay_steps
    (2999, 3000, 0, 2.0), (3000, 3000, 0, 0.0)])  # decay_steps 0: off at once
def test_the_surpass_schedule(step, surpassed_at, decay, want):
  got = losses.distill_coef(jnp.asarray(step, jnp.int32), 2.0, "surpass", decay,
                            jnp.asarray(surpassed_at, jnp.int32))
  assert float(got) == pytest.approx(want, abs=1e-6)


def test_labelled_mean_by_hand():
  x = jnp.array([[1.0, 3.0], [5.0, 7.0], [100.0, 100.0]])  # rows' means: 2, 6, 100
  assert float(losses.labelled_mean(x, jnp.array([1.0, 1.0, 0.0]))) == pytest.approx(4.0)
  assert float(losses.labelled_mean(x, jnp.zeros(3))) == 0.0  # no labels: no distillation
  assert float(losses.labelled_mean(x, None)) == pytest.approx(36.0)
