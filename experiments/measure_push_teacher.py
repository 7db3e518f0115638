r"""Measures the scripted push teacher alone, over a grid of (noise, bias), and the env's speed.

The teacher's ``action`` (one noisy sample) is executed for one episode per env, from the same
initial states for every setting (``rpd_jax.evaluate``); an episode succeeds if the block
reaches the goal at any step. Prints a markdown table of success rate and
mean return per setting, then (with --speed) env steps/s of the jitted batched step.

  python experiments/measure_push_teacher.py --episodes=512 --speed
"""

from __future__ import annotations

import itertools
import time

import jax
from absl import flags

from rpd_jax import cli, evaluate, rollout
from rpd_jax.envs import jax_push
from rpd_jax.teachers import scripted

_EPISODES = flags.DEFINE_integer("episodes", 512, "episodes per (noise, bias) setting")
_NOISES = flags.DEFINE_list("noises", ["0", "0.5", "0.75", "1.0", "1.25"], "teacher noise grid")
_BIASES = flags.DEFINE_list("biases", ["0", "0.25", "0.5", "0.75"], "teacher bias grid")
_REWARD = flags.DEFINE_enum("reward_mode", "normalized_dense", list(jax_push.REWARD_MODES),
                            "reward whose mean episode return is reported")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the env resets and the teacher's noise")
_SPEED = flags.DEFINE_bool("speed", False, "also time the batched step for 64 and 1024 envs")


def steps_per_second(num_envs: int, obs_mode: str, num_steps: int = 200) -> float:
  env = jax_push.JaxPushVecEnv(num_envs=num_envs, seed=0, obs_mode=obs_mode)
  action = jax.random.uniform(jax.random.key(0), (num_envs, env.action_dim), minval=-1, maxval=1)
  jax.block_until_ready(env.step(action))  # compile
  start = time.perf_counter()
  for _ in range(num_steps):
    result = env.step(action)
  jax.block_until_ready(result)
  return num_envs * num_steps / (time.perf_counter() - start)


def main() -> None:
  print(f"{_EPISODES.value} episodes per setting, return = sum of {_REWARD.value} rewards\n")
  print("| noise | bias | success | mean return |\n|---|---|---|---|")
  env = jax_push.JaxPushVecEnv(_EPISODES.value, seed=_SEED.value, reward_mode=_REWARD.value)
  for noise, bias in itertools.product(map(float, _NOISES.value), map(float, _BIASES.value)):
    teacher = scripted.make_push_teacher(noise=noise, bias=bias)
    result = evaluate.evaluate(env, rollout.teacher_policy(teacher), _EPISODES.value,
                               seed=_SEED.value, key=jax.random.key(_SEED.value))
    print(f"| {noise:g} | {bias:g} | {result['eval/success_rate']:.1%} | "
          f"{result['eval/return']:.2f} |")
  if _SPEED.value:
    print(f"\non {jax.devices()[0].device_kind}\n\n| obs_mode | envs | steps/s |\n|---|---|---|")
    for obs_mode, num_envs in itertools.product(("state", "rgb"), (64, 1024)):
      print(f"| {obs_mode} | {num_envs} | {steps_per_second(num_envs, obs_mode):,.0f} |")


if __name__ == "__main__":
  cli.run(main)
