"""Any ManiSkill task: ids resolved (the paper's, ManiSkill's own, one registered in a module of
the user's), the generic experiment (experiments/maniskill.py), and a user's task simulated in
CPU worker processes (which must import the module that registers it)."""

import os
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from rpd_jax import config as config_lib
from rpd_jax.envs import tasks
from rpd_jax.errors import ConfigError

MODULE = "user_tasks_of_a_test"
# A PushCube with a wider goal and a shorter time limit, registered under an id of its own.
SOURCE = textwrap.dedent('''
    from mani_skill.envs.tasks.tabletop.push_cube import PushCubeEnv
    from mani_skill.utils.registration import register_env

    @register_env("PushCubeWideTest-v1", max_episode_steps=12)
    class PushCubeWideEnv(PushCubeEnv):
      goal_radius = 0.15
''')
TASK = f"{MODULE}:PushCubeWideTest-v1"


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
  """The module on sys.path, as a user's would be on PYTHONPATH (workers inherit sys.path)."""
  folder = tmp_path_factory.mktemp("user_tasks")
  (folder / f"{MODULE}.py").write_text(SOURCE)
  sys.path.insert(0, str(folder))
  yield MODULE
  sys.path.remove(str(folder))


def generic(arg="", **overrides):
  root = os.path.join(os.path.dirname(__file__), "..")
  c = config_lib.load(os.path.join(root, "experiments", f"maniskill.py:{arg}"))
  for path, value in overrides.items():
    section, key = path.rsplit(".", 1)
    node = c
    for part in section.split("."):
      node = node[part]
    node[key] = value
  return c


def test_the_papers_tasks_resolve_from_the_table():
  ref = tasks.resolve("PushCube-v1")
  assert (ref.name, ref.module, ref.make_id, ref.max_episode_steps) == (
      "PushCube-v1", None, "PushCube-v1", 50)
  assert ref.info is tasks.TASKS["PushCube-v1"]


def test_maniskills_own_and_a_users_task_resolve(user_module):
  own = tasks.resolve("PegInsertionSide-v1")
  assert own.module is None and own.info is None and own.max_episode_steps == 100
  ref = tasks.resolve(TASK)
  assert (ref.name, ref.module, ref.make_id, ref.max_episode_steps) == (
      "PushCubeWideTest-v1", MODULE, TASK, 12)
  # Once its module was imported, the plain id finds it, and its module for the workers.
  assert tasks.resolve("PushCubeWideTest-v1").make_id == TASK


@pytest.mark.parametrize("env_id,message", [
    ("PushCub-v1", "no ManiSkill task 'PushCub-v1' is registered (did you mean PushCube-v1"),
    ("CartPole-v1", "a gymnasium env but not a ManiSkill task; run it as an env of your own"),
    ("no_such_module:PushCube-v1", "module 'no_such_module' cannot be imported"),
    (None, "config.env.kwargs.env_id is not set"),
])
def test_a_task_that_cannot_run_is_named(env_id, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
    tasks.resolve(env_id)


def test_the_generic_experiment_takes_its_task_and_teacher_from_overrides(user_module):
  c = generic(**{"env.kwargs.env_id": TASK, "teacher.kwargs.checkpoint": "octo-tiny-pushcube"})
  assert c.ppo.num_steps is None  # the task's time limit, filled in by validation
  config_lib.validate(c)
  assert c.ppo.num_steps == 12 and c.teacher.name == "octo" and c.distill.loss == "mse"
  assert c.network.obs_keys == ("privileged",) and c.env.kwargs.obs_mode == "rgb"
  ppo = generic("ppo,smoke", **{"env.kwargs.env_id": "PegInsertionSide-v1"})
  config_lib.validate(ppo)
  assert ppo.distill.loss == "none" and ppo.ppo.num_steps == 8
  with pytest.raises(ConfigError, match="env_id is not set"):
    config_lib.validate(generic("smoke"))


@pytest.mark.maniskill
@pytest.mark.usefixtures("vulkan_device")
def test_a_users_task_runs_in_cpu_workers(user_module):
  from rpd_jax.envs import maniskill  # pylint: disable=g-import-not-at-top
  env = maniskill.ManiSkillVecEnv(num_envs=1, seed=0, env_id=TASK, sim_backend="physx_cpu")
  try:
    assert env.max_episode_steps == 12
    for _ in range(12):
      result = env.step(jnp.zeros((1, env.action_dim)))
    assert bool(result.truncated[0]) or bool(result.terminated[0])  # the task's own limit
    assert np.isfinite(np.asarray(result.reward)).all()
  finally:
    env.close()
