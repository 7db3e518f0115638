"""The student axis: K students in one process learn exactly as K runs of their own."""

import json
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpd_jax import config as config_lib
from rpd_jax import gaussian, losses, ppo, rollout, students, trainer
from rpd_jax.teachers.base import Teacher, TeacherOutput
from rpd_jax.errors import ConfigError
from rpd_jax.networks import make_network

SMOKE = "experiments/jax_push.py:smoke"  # 8 envs, 4 iterations of 128 steps


def _run(repo_root, workdir, **overrides):
  config = config_lib.load(os.path.join(repo_root, SMOKE))
  for name, value in overrides.items():
    config[name] = value
  final = trainer.train_and_evaluate(config, str(workdir))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f], final


def test_two_vmapped_students_learn_as_two_runs_of_their_own(repo_root, tmp_path):
  together, final = _run(repo_root, tmp_path / "k2", num_seeds=2)
  for k in range(2):
    alone, _ = _run(repo_root, tmp_path / f"seed{k}", seed=k)
    assert [r["iteration"] for r in alone] == [r["iteration"] for r in together]
    for mine, theirs in zip(together, alone):
      losses = [name for name in theirs if name.startswith("loss/")]
      assert len(losses) >= 10
      for name in losses:  # the same rollouts and updates: every loss, KL and grad norm
        assert mine[f"seed{k}/{name}"] == pytest.approx(theirs[name], rel=1e-5, abs=1e-7), (
            k, mine["iteration"], name)
  last = together[-1]
  for name in ("loss/total", "loss/approx_kl"):  # mean and spread across the two
    values = [last[f"seed{k}/{name}"] for k in range(2)]
    assert last[name] == pytest.approx(np.mean(values), rel=1e-5)
    assert last[f"{name}/std"] == pytest.approx(np.std(values), rel=1e-4, abs=1e-9)
  # Each student evaluated on its own envs, and the two as one ensemble policy.
  for key in ("seed0/eval/success_rate", "seed1/eval/return", "eval/return/std",
              "ensemble/eval/success_rate", "ensemble/eval/return"):
    assert key in final and np.isfinite(final[key])
  assert final["eval/episodes"] == 8 and final["seed1/eval/episodes"] == 4


def test_students_in_groups_learn_as_students_side_by_side(repo_root, tmp_path):
  # seeds_vmapped=2 of 3: a group of two, then the third alone (lax.map's remainder), in one
  # program; each student's every loss metric as with all three vmapped.
  side_by_side, _ = _run(repo_root, tmp_path / "vmap", num_seeds=3)
  grouped, _ = _run(repo_root, tmp_path / "groups", num_seeds=3, seeds_vmapped=2)
  assert len(grouped) == len(side_by_side) >= 4
  for mine, theirs in zip(grouped, side_by_side):
    names = [n for n in theirs if n.startswith("seed") and "/loss/" in n]
    assert len(names) >= 30
    for name in names:
      assert mine[name] == pytest.approx(theirs[name], rel=1e-5, abs=1e-7), (
          mine["iteration"], name)


def test_mlp_students_update_side_by_side_and_image_students_one_by_one():
  config = config_lib.load(SMOKE)
  config.num_seeds = 5
  assert students.side_by_side(config) == 5
  config.network.encoder = "cnn"
  assert students.side_by_side(config) == 1
  config.seeds_vmapped = 2
  assert students.side_by_side(config) == 2
  config.seeds_vmapped = 9
  assert students.side_by_side(config) == 5
  config.network.encoder = "mlp"
  config.seeds_vmapped = 0
  with pytest.raises(ConfigError, match="seeds_vmapped=0 must be >= 1"):
    config_lib.validate(config)


def test_the_students_apply_each_to_its_own_rows():
  c = config_lib.base_config()
  c.network.hidden = (8,)
  network = make_network(c.network, 3)
  obs = {"state": jax.random.normal(jax.random.key(0), (6, 10))}  # K = 2 students x N = 3
  params = jax.vmap(lambda k: network.init(k, obs))(jax.random.split(jax.random.key(1), 2))
  stack = students.Students(network, 2, 2)
  mean, log_std, value = stack.apply(params, obs)
  for k in range(2):
    rows = slice(3 * k, 3 * k + 3)
    p = jax.tree.map(lambda x: x[k], params)
    m, s, v = network.apply(p, {"state": obs["state"][rows]})
    np.testing.assert_allclose(mean[rows], m, rtol=1e-6)
    np.testing.assert_allclose(value[rows], v, rtol=1e-6)
    np.testing.assert_allclose(log_std[rows], jnp.broadcast_to(s, (3, 3)))
  ensemble = stack.ensemble(params, obs)
  student = lambda k: network.apply(jax.tree.map(lambda x: x[k], params), obs)[0]
  np.testing.assert_allclose(ensemble, (student(0) + student(1)) / 2, rtol=1e-5, atol=1e-7)
  # Student k's noise comes from key k alone, as in a run of its own.
  keys = jax.random.split(jax.random.key(2), 2)
  sample = gaussian.sample(mean, log_std, keys)
  np.testing.assert_allclose(sample[3:], gaussian.sample(mean[3:], log_std[3:], keys[1]),
                             rtol=1e-6)


def test_seeds_and_data_parallelism_do_not_combine_yet():
  c = config_lib.load(SMOKE)
  c.num_seeds, c.mesh.data = 2, 2
  with pytest.raises(ConfigError, match="seeds and data parallelism do not combine yet"):
    config_lib.validate(c)
  c.mesh.data, c.num_seeds = 1, 0
  with pytest.raises(ConfigError, match="config.num_seeds=0 must be >= 1"):
    config_lib.validate(c)


def test_one_student_is_a_stack_of_one(repo_root, tmp_path):
  """One student carries the K axis too (length 1), logs under plain names, and a checkpoint
  written before the axis (no leading K) still resumes."""
  c = config_lib.load(os.path.join(repo_root, SMOKE))
  c.total_env_steps = 2 * 128  # 2 iterations, a checkpoint at 2 (the last)
  trainer.train_and_evaluate(c, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert not [n for n in rows[-1] if n.startswith("seed") or n.endswith("/std")]
  from rpd_jax.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  ckpt = Checkpointer(str(tmp_path), 3)
  step, tree = ckpt.restore_latest(None)
  assert step == 2 and np.shape(tree["state"]["env_steps"]) == (1,)
  # The same checkpoint as the version before the axis wrote it: the train state unstacked
  # (and, older than the teacher budget, without surpassed_at).
  tree["state"] = {k: jax.tree.map(lambda x: x[0], v) for k, v in tree["state"].items()
                   if k != "surpassed_at"}
  ckpt.save(4, tree)
  ckpt.close()
  c.total_env_steps = 5 * 128
  trainer.train_and_evaluate(c, str(tmp_path))  # resumes at 4, converted
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["iteration"] for r in rows] == [1, 2, 5]


def test_a_checkpoint_from_before_the_teacher_budget_resumes(tmp_path):
  """Train states saved before ``surpassed_at`` existed restore with it unset (NEVER)."""
  from rpd_jax.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.network.hidden = (8,)
  network = make_network(c.network, 7)
  stack = students.Students(network, 2, 2)
  optimizer = ppo.make_optimizer(c.ppo, 1)
  states = stack.init(lambda o, k: ppo.init_train_state(network, optimizer, o, k),
                      {"state": jnp.zeros((4, 5))}, stack.run_keys(0)[0])
  states = states.replace(env_steps=jnp.array([7, 9], jnp.int32))
  ckpt = Checkpointer(str(tmp_path), 3)
  old = flax.serialization.to_state_dict({"state": states})
  del old["state"]["surpassed_at"]
  ckpt.save(3, old)
  target = {"state": states.replace(env_steps=jnp.zeros(2, jnp.int32))}  # a fresh run's
  step, tree = ckpt.restore_latest(target, legacy=stack.legacy_checkpoints(target))
  ckpt.close()
  assert step == 3 and isinstance(tree["state"], ppo.TrainState)
  np.testing.assert_array_equal(tree["state"].env_steps, [7, 9])
  np.testing.assert_array_equal(tree["state"].surpassed_at, [losses.NEVER] * 2)


def _update_memory(num_students: int, side_by_side: int) -> int:
  """Temporary bytes of the compiled update of K students whose teacher makes a big
  intermediate per observation (64 KiB), in calls of 64 observations."""
  t, n, d, a = 16, 8, 5, 7  # 128 transitions per student: 2 teacher calls each
  c = config_lib.base_config()
  c.env.num_envs, c.ppo.num_steps, c.ppo.num_minibatches, c.ppo.update_epochs = n, t, 2, 1
  c.network.hidden = (8,)

  def apply_fn(params, obs, prev_obs, is_first, key, num_samples):
    big = jnp.tanh(obs["state"] @ params["w"])  # [B, 16384]: the memory of a large model
    return TeacherOutput(big[:, :a] * jnp.mean(big, axis=1, keepdims=True), None)

  teacher = Teacher({"w": jnp.ones((d, 1 << 14))}, apply_fn)
  network = make_network(c.network, a)
  stack = students.Students(network, num_students, side_by_side)
  optimizer = ppo.make_optimizer(c.ppo, 1)
  obs = {"state": jnp.zeros((num_students * n, d))}
  states = stack.init(lambda o, k: ppo.init_train_state(network, optimizer, o, k), obs,
                      stack.run_keys(0)[0])
  update = stack.make_update(ppo.make_update(network, optimizer, c.ppo, c.distill, 64))
  shape = lambda *s, dtype=jnp.float32: jax.ShapeDtypeStruct(s, dtype)
  kn = num_students * n
  data = rollout.Rollout(
      obs={"state": shape(t, kn, d)}, prev_obs0={"state": shape(kn, d)},
      is_first=shape(t, kn, dtype=bool), actions=shape(t, kn, a), log_probs=shape(t, kn),
      values=shape(t, kn), rewards=shape(t, kn), terminated=shape(t, kn, dtype=bool),
      truncated=shape(t, kn, dtype=bool), final_values=shape(t, kn), last_value=shape(kn))
  compiled = update.lower(states, teacher, data, stack.run_keys(0)[1]).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_the_teacher_holds_one_students_observations_per_call():
  """Students updating side by side call the teacher one after another: a call's memory is one
  student's chunk, whatever K (vmapped, 4 students held 4 chunks at once)."""
  one, four = _update_memory(1, 1), _update_memory(4, 4)
  chunk = 64 * (1 << 14) * 4  # one call's intermediate: 4 MiB
  assert one > chunk
  assert four < one + chunk, (one, four)
