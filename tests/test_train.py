"""End to end on the pure-JAX env: smoke training, crash and resume, the CLI's errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rpd_jax import config as config_lib
from rpd_jax import losses, students, trainer
from rpd_jax.errors import ConfigError


def load_config(repo_root, arg):
  return config_lib.load(os.path.join(repo_root, "experiments", f"jax_push.py:{arg}"))


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  # Wall-clock timings differ between runs; everything else must not.
  return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def test_smoke_training_writes_everything(repo_root, tmp_path):
  config = load_config(repo_root, "ppd,smoke")
  final = trainer.train_and_evaluate(config, str(tmp_path))
  assert set(final) >= {"eval/success_rate", "eval/return"}
  rows = read_metrics(tmp_path)
  assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
  assert all(r["teacher/calls_per_step"] == 1.0 for r in rows)
  assert "eval/success_rate" in rows[1] and "eval/success_rate" in rows[3]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  assert os.listdir(tmp_path / "tensorboard")
  assert json.load(open(tmp_path / "config.json"))["distill"]["loss"] == "ppd"


def test_a_budget_labels_a_fraction_and_a_student_past_its_teacher_stops_asking(
    repo_root, tmp_path, monkeypatch):
  config = load_config(repo_root, "smoke")  # 4 iterations of 16 steps, evaluations at 2 and 4
  config.num_seeds = 2
  config.teacher.query_fraction = 0.25  # 4 of 16 steps
  config.distill.schedule = "surpass"  # at once: decay_steps 0; the teacher's 0.445 (records)
  evaluate = trainer.evaluate

  def student_1_passes(run, eval_env, state, iteration):
    out = evaluate(run, eval_env, state, iteration)
    return {**out, "seed1/eval/success_rate": 0.5}

  monkeypatch.setattr(trainer, "evaluate", student_1_passes)
  trainer.train_and_evaluate(config, str(tmp_path))
  rows = read_metrics(tmp_path)
  assert [r["seed0/teacher/calls_per_step"] for r in rows] == [0.25] * 4
  assert [r["seed1/teacher/calls_per_step"] for r in rows] == [0.25, 0.25, 0.0, 0.0]
  assert [r["seed1/loss/distill_coef"] for r in rows] == [1.0, 1.0, 0.0, 0.0]
  assert json.load(open(tmp_path / "config.json"))["distill"]["teacher_success"] == 0.445
  from rpd_jax.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  ckpt = Checkpointer(str(tmp_path), 3)
  _, tree = ckpt.restore_latest(None)
  ckpt.close()  # student 1 passed at the evaluation after iteration 2: 2 x 128 env steps
  assert np.asarray(tree["state"]["surpassed_at"]).tolist() == [losses.NEVER, 256]


def test_a_bad_budget_is_one_config_error(repo_root):
  def error(**fields):
    c = load_config(repo_root, "smoke")  # 16 steps per rollout
    for name, value in fields.items():
      section, key = name.split("__")
      c[section][key] = value
    with pytest.raises(ConfigError) as e:
      config_lib.validate(c)
    return str(e.value)

  assert "config.teacher.query_fraction=0.02 must be in (0, 1] and label at least one of the " \
         "config.ppo.num_steps=16 steps" in error(teacher__query_fraction=0.02)
  # A teacher noise without a record: "surpass" has nothing to compare with.
  c = load_config(repo_root, "smoke")
  c.distill.schedule, c.teacher.kwargs.noise = "surpass", 0.3
  with pytest.raises(ConfigError, match="records of the 'scripted_push' teacher have none"):
    config_lib.validate(c)
  assert "config.distill.teacher_success=1.0 must be in [0, 1)" in error(
      distill__schedule="surpass", distill__teacher_success=1.0)


def test_crash_and_resume_continue_identically(repo_root, tmp_path, monkeypatch):
  config = load_config(repo_root, "smoke")
  config.total_env_steps *= 2  # 8 iterations, checkpoints every 2
  trainer.train_and_evaluate(config, str(tmp_path / "straight"))

  # Crash in the middle of iteration 5: after the checkpoint at 4, with 5's rollout under way.
  make_update = students.Students.make_update

  def crashing_make_update(self, update_one):
    update = make_update(self, update_one)
    def wrapped(states, *rest):
      if int(states.iteration[0]) == 4:
        raise KeyboardInterrupt("simulated kill")
      return update(states, *rest)
    return wrapped

  monkeypatch.setattr(students.Students, "make_update", crashing_make_update)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert [r["iteration"] for r in read_metrics(tmp_path / "resumed")] == [1, 2, 3, 4]
  monkeypatch.setattr(students.Students, "make_update", make_update)
  trainer.train_and_evaluate(config, str(tmp_path / "resumed"))

  straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
  assert [r["iteration"] for r in resumed] == list(range(1, 9))
  assert resumed == straight


def run_cli(repo_root, *args):
  return subprocess.run([sys.executable, "-m", "rpd_jax.train", *args], cwd=repo_root,
                         capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["--config=experiments/jax_push.py:smoke", "--config.distill.loss=kl"],
     "config.distill.loss='kl' is unknown; use one of none, mse, l1, bc, ppd"),
    (["--config=experiments/jax_push.py:smoke", "--config.ppo.learning_rate=-1"],
     "config.ppo.learning_rate=-1.0 is negative"),
    (["--config=experiments/jax_push.py:smoke", "--config.ppo.num_minibatches=3"],
     "config.ppo.num_minibatches=3 does not divide the batch"),
    (["--config=experiments/jax_push.py:smoke", "--config.distill.schedule=cosine"],
     "config.distill.decay_steps=0 must be > 0 for the 'cosine' schedule"),
    (["--config=experiments/jax_push.py:nosuch"],
     "unknown config variant 'nosuch'; choose from"),
    (["--config=experiments/nosuch.py"], "config file 'experiments/nosuch.py' not found"),
    (["--config=experiments/jax_push.py:smoke", "--config.ppo.no_such_field=1"],
     "the config has no field"),
    (["--config=experiments/jax_push.py:smoke", "--config.env.name=mujoco"],
     "config.env.name='mujoco' is unknown; use one of jax_push, maniskill"),
    (["--config=experiments/jax_push.py:smoke", "--config.teacher.name=gpt"],
     "config.teacher.name='gpt' is unknown; use one of none, scripted_push"),
    (["--config=experiments/jax_push.py:smoke", "--config.network.obs_keys=('rgb',)"],
     "config.network.obs_keys has 'rgb', which the jax_push env does not give"),
    (["--config=experiments/jax_push.py:rgb,smoke", "--config.env.kwargs.obs_mode=depth"],
     "config.env.kwargs.obs_mode='depth' is unknown for the jax_push env"),
    (["--config=experiments/jax_push.py:smoke", "--config.network.encoder=cnn"],
     "config.network.encoder='cnn' encodes images"),
    (["--config=experiments/jax_push.py:smoke", "stray"], "unexpected arguments: stray"),
])
def test_cli_rejects_bad_configs_before_compiling(repo_root, tmp_path, args, message):
  result = run_cli(repo_root, *args, f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "checkpoints")  # nothing was built


def test_every_variant_combines_with_smoke(repo_root):
  for variant in ("ppo", "rpd_mse", "rpd_l1", "rpd_bc", "ppd", "sparse", "rgb"):
    config = load_config(repo_root, f"{variant},smoke")
    config_lib.validate(config)
    assert config.env.num_envs == 8
  assert load_config(repo_root, "rpd_l1,smoke").distill.loss == "l1"
  assert load_config(repo_root, "sparse,smoke").env.reward_mode == "sparse"
  assert load_config(repo_root, "sparse,smoke").ppo.gamma == 0.99


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(repo_root, tmp_path,
                                                               monkeypatch):
  config = load_config(repo_root, "smoke")
  make_update = students.Students.make_update

  def poisoning_make_update(self, update_one):
    update = make_update(self, update_one)
    def wrapped(states, *rest):
      states, metrics = update(states, *rest)
      if int(states.iteration[0]) == 3:  # the third update diverges
        params = jax.tree.map(lambda x: x * np.nan, states.params)
        states = states.replace(params=params)
        metrics["train/finite"] = np.zeros(1, bool)
      return states, metrics
    return wrapped

  monkeypatch.setattr(students.Students, "make_update", poisoning_make_update)
  with pytest.raises(trainer.NonFiniteError, match="non-finite parameters or loss at iteration 3"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2]


def test_a_teacher_of_another_action_size_is_refused_before_training():
  import jax
  import jax.numpy as jnp
  from rpd_jax.errors import ConfigError
  from rpd_jax.teachers.base import Teacher, TeacherOutput, check_action_dim
  spec = {"state": jax.ShapeDtypeStruct((10,), jnp.float32)}
  wrong = Teacher(params={}, name="two-dims", apply_fn=lambda p, o, q, f, k, n: TeacherOutput(
      jnp.zeros((o["state"].shape[0], 2)), None))
  with pytest.raises(ConfigError, match=r"'two-dims' teacher answers actions of shape \(2,\) "
                                        r"per observation, but the jax_push env takes 7 dims"):
    check_action_dim(wrong, spec, 7, "jax_push")
  right = wrong.replace(apply_fn=lambda p, o, q, f, k, n: TeacherOutput(
      jnp.zeros((o["state"].shape[0], 7)), None))
  check_action_dim(right, spec, 7, "jax_push")
