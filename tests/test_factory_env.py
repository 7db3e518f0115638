"""An env of the user's own by path (config.env.name = "factory"): a small gymnasium vector env
written here, checked, wrapped (rpd_jax.envs.gymnasium_vector) and trained on end to end."""

import os
import sys
import textwrap

import numpy as np
import pytest

from rpd_jax import config as config_lib
from rpd_jax import envs, trainer
from rpd_jax.errors import ConfigError

# A point on a line that should reach 0: obs [position, velocity], action [-2, 2] (scaled from
# [-1, 1]); success within 0.1 of 0; 20 steps.
MODULE = textwrap.dedent('''
    import gymnasium as gym
    import numpy as np
    from rpd_jax.envs.gymnasium_vector import GymnasiumVecEnv

    class Point(gym.Env):
      observation_space = gym.spaces.Box(-10, 10, (2,), np.float32)
      action_space = gym.spaces.Box(-2, 2, (1,), np.float32)

      def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.v, self.t = self.np_random.uniform(-1, 1), 0.0, 0
        return self._obs(), {}

      def _obs(self):
        return np.array([self.x, self.v], np.float32)

      def step(self, action):
        self.v = 0.5 * self.v + 0.1 * float(action[0])
        self.x, self.t = self.x + self.v, self.t + 1
        success = abs(self.x) < 0.1
        return self._obs(), -abs(self.x), bool(success), self.t >= 20, {"success": success}

    def make(num_envs, seed, reward_mode, final_obs_keys, scale=1.0):
      vector_env = gym.vector.SyncVectorEnv(
          [Point for _ in range(num_envs)],
          autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
      assert scale == 2.0  # an option of the factory, from config.env.kwargs
      return GymnasiumVecEnv(vector_env, reward_mode, final_obs_keys, max_episode_steps=20)

    def not_an_env(num_envs, seed, reward_mode, final_obs_keys):
      return object()
''')


@pytest.fixture(scope="module")
def factory_module(tmp_path_factory):
  folder = tmp_path_factory.mktemp("user_env")
  (folder / "point_env.py").write_text(MODULE)
  sys.path.insert(0, str(folder))
  yield "point_env"
  sys.path.remove(str(folder))
  sys.modules.pop("point_env", None)


def factory_config(factory, **kwargs):
  root = os.path.join(os.path.dirname(__file__), "..")
  c = config_lib.load(os.path.join(root, "experiments", "jax_push.py:ppo,smoke"))
  c.env.name = "factory"
  c.env.kwargs = {"factory": factory, **kwargs}
  c.network.obs_keys = ("state",)
  c.ppo.num_steps = 20
  c.total_env_steps = 2 * c.env.num_envs * c.ppo.num_steps
  c.eval_videos = 0
  return c


def test_the_wrapped_gymnasium_env_keeps_the_contract(factory_module):
  env = envs.make_env(factory_config(f"{factory_module}:make", scale=2.0).env, 3, seed=5,
                      final_obs_keys=("state",))
  try:
    assert isinstance(env, envs.base.VecEnv)
    assert (env.num_envs, env.action_dim, env.max_episode_steps) == (3, 1, 20)
    assert {k: (v.shape, v.dtype) for k, v in env.observation_spec.items()} == {
        "state": ((2,), np.float32)}
    first = np.asarray(env.reset(5)["state"])
    assert np.array_equal(first, np.asarray(env.reset(5)["state"]))  # env i: seed 5 + i
    ended = np.zeros(3, bool)
    for _ in range(20):
      result = env.step(np.zeros((3, 1), np.float32))
      done = np.asarray(result.terminated) | np.asarray(result.truncated)
      # An ended episode: final_obs is its last observation, obs the new episode's first.
      moved = np.asarray(result.final_obs["state"]) != np.asarray(result.obs["state"])
      assert np.array_equal(moved.any(axis=1), done)
      ended |= done
    assert ended.all()  # the time limit
  finally:
    env.close()


@pytest.mark.parametrize("kwargs,message", [
    ({"factory": "no_such_module:make"}, "module 'no_such_module' cannot be imported"),
    ({"factory": "point_env:missing"}, "module 'point_env' has no 'missing'"),
    ({"factory": "point_env"}, "must be 'package.module:function'"),
    ({"factory": "point_env:make", "colour": 1}, "config.env.kwargs.colour is not an option"),
])
def test_a_bad_factory_is_refused_when_the_config_is_checked(factory_module, kwargs, message):
  c = factory_config(**kwargs)
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(c)


def test_what_a_factory_builds_is_checked(factory_module):
  c = factory_config(f"{factory_module}:not_an_env")
  config_lib.validate(c)
  with pytest.raises(ConfigError, match="returned a object without num_envs"):
    envs.make_env(c.env, 2, seed=0)


def test_training_on_a_factory_env_end_to_end(factory_module, tmp_path):
  c = factory_config(f"{factory_module}:make", scale=2.0)
  config_lib.validate(c)
  final = trainer.train_and_evaluate(c, str(tmp_path))
  assert 0.0 <= final["eval/success_rate"] <= 1.0
  assert final["eval/episode_length"] <= 20
  c.network.obs_keys = ("rgb",)
  with pytest.raises(ConfigError, match="config.network.obs_keys has 'rgb', which the factory env"):
    trainer.train_and_evaluate(c, str(tmp_path / "other"))
