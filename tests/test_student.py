"""A finished run read back: evaluated again, exported, and the export loaded without the trainer
(rpd_jax.runs, rpd_jax.evaluate's command, rpd_jax.export, rpd_jax.student)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from rpd_jax import config as config_lib
from rpd_jax import export, runs, student, trainer
from rpd_jax.errors import ConfigError
from rpd_jax.evaluate import __main__ as evaluate_main


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished one-iteration PPO run of two students on the pure-JAX env (seconds)."""
  root = os.path.join(os.path.dirname(__file__), "..")
  c = config_lib.load(os.path.join(root, "experiments", "jax_push.py:ppo,smoke"))
  c.num_seeds = 2
  c.total_env_steps = c.env.num_envs * c.ppo.num_steps
  c.eval_every = c.checkpoint_every = 1
  c.eval_videos = 0
  workdir = str(tmp_path_factory.mktemp("run"))
  trainer.train_and_evaluate(c, workdir)
  return workdir


@pytest.fixture(scope="module")
def exported(finished_run, tmp_path_factory):
  config = config_lib.from_workdir(finished_run)
  step, tree = runs.read_checkpoint(finished_run)
  saved = runs.saved_student(config, (step, tree), 1)
  out = str(tmp_path_factory.mktemp("student"))
  export.write(saved, out, {"workdir": finished_run, "config": config.to_dict()})
  return saved, tree, out


def test_evaluate_reproduces_the_runs_last_evaluation(finished_run, tmp_path):
  with open(os.path.join(finished_run, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  first, _ = evaluate_main.evaluate_run(config_lib.from_workdir(finished_run), finished_run,
                                        out=str(tmp_path / "0"))
  assert (first["students"], first["student"], first["checkpoint"]) == (2, 0, 1)
  # Student 0 played the run's first envs on the same seeds (10,000 + iteration onwards).
  assert first["eval/return"] == pytest.approx(last["seed0/eval/return"], rel=1e-5)
  assert json.load(open(tmp_path / "0" / "metrics.json"))["eval/episodes"] == 4
  other, _ = evaluate_main.evaluate_run(config_lib.from_workdir(finished_run), finished_run,
                                        student=1, episodes=8, out=str(tmp_path / "1"))
  assert other["student"] == 1 and other["eval/episodes"] == 8

@pytest.mark.parametrize("kwargs,message", [
    ({"student": 2}, "--student=2: the run trained 2 student(s)"),
    ({"checkpoint": 7}, "--checkpoint=7: "),
    ({"episodes": 3}, "--episodes=3 must be a positive multiple"),
])
def test_evaluate_refuses_what_the_run_lacks(finished_run, kwargs, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    evaluate_main.evaluate_run(config_lib.from_workdir(finished_run), finished_run, **kwargs)


def test_a_folder_without_a_run_is_named():
  with pytest.raises(ConfigError, match="config.json is missing"):
    config_lib.from_workdir("/nonexistent/run")


def test_the_exported_student_acts_as_in_training_and_onnx_agrees(exported):
  saved, tree, out = exported
  assert sorted(os.listdir(out)) == ["params.msgpack", "student.json", "student.onnx"]
  policy = student.load(out)
  assert policy.observation_spec == {"state": ((10,), "float32")}
  obs = {k: np.asarray(v) for k, v in tree["carry"]["obs"].items()}  # 2 students x 8 envs
  actions = policy(obs)
  assert actions.shape == (16, 7) and actions.dtype == np.float32
  mean = saved.network.apply(saved.params, {"state": obs["state"]})[0]
  np.testing.assert_allclose(actions, np.clip(mean, -1, 1), atol=1e-6)
  random = export.check_observations(policy.observation_spec)
  assert export.onnx_difference(out, [obs, random]) < 1e-5
  with pytest.raises(ValueError, match="observation 'state' has shape"):
    policy({"state": obs["state"][:, :3]})


def test_loading_imports_neither_trainer_nor_simulator(exported):
  _, _, out = exported
  code = ("import sys, numpy as np; from rpd_jax import student; "
          f"p = student.load({out!r}); p({{'state': np.zeros((3, 10), np.float32)}}); "
          "print(sorted(m for m in ('rpd_jax.trainer', 'rpd_jax.ppo', 'rpd_jax.rollout', "
          "'rpd_jax.envs.maniskill', 'mani_skill', 'torch') if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
  assert result.stdout.strip() == "[]"
