r"""Steps/s of the ManiSkill3 bridge against raw ManiSkill on the same settings (CPU simulation).

  python -m rpd_jax.bench.env [--env_id=PushCube-v1] [--num_envs=1,2,4] \
      [--obs=state,rgb64,rgb128,rgb256] [--steps=300]

raw: gymnasium's AsyncVectorEnv (forkserver, SAME_STEP auto-reset) over ManiSkill's own
CPUGymWrapper, numpy actions in, numpy observations out: what one writes without the bridge.
bridge: ``ManiSkillVecEnv`` (the same worker setup), JAX actions in, a dict of JAX arrays out
(DLPack), plus ``final_obs`` and ``privileged``. Images come from ManiSkill's sensor camera in
both (``camera="sensor"``, obs_mode "rgb" raw); the bridge's default human camera renders the
same amount. Random actions; episodes auto-reset at the time limit or on success. Prints a
markdown table; the overhead column is 1 - bridge/raw.
"""

from __future__ import annotations

import functools
import multiprocessing
import time

import gymnasium as gym
import jax
import numpy as np
import torch
from absl import app
from absl import flags

from rpd_jax.envs import maniskill

_ENV_ID = flags.DEFINE_string("env_id", "PushCube-v1", "ManiSkill3 task")
_NUM_ENVS = flags.DEFINE_list("num_envs", ["1", "2", "4"], "env counts (CPU worker processes)")
_OBS = flags.DEFINE_list("obs", ["state", "rgb64", "rgb128", "rgb256"],
                         "observations: state, or rgb<size> (uint8 images of size x size)")
_STEPS = flags.DEFINE_integer("steps", 300, "timed steps per setting (after 30 warm-up steps)")


def _raw_worker(env_id: str, obs_mode: str, image_size: int) -> gym.Env:
  import mani_skill.envs  # pylint: disable=g-import-not-at-top,unused-import
  from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)  # as the bridge's workers
  size = dict(width=image_size, height=image_size)
  return CPUGymWrapper(gym.make(
      env_id, num_envs=1, sim_backend="physx_cpu", render_backend="cpu", obs_mode=obs_mode,
      control_mode="pd_ee_delta_pose", reward_mode="normalized_dense", sensor_configs=size,
      human_render_camera_configs=size))


def _time(step, actions) -> float:
  """Steps/s (summed over envs) of ``step`` over ``actions`` [steps, B, A] after a warm-up."""
  for a in actions[:30]:
    step(a)
  start = time.perf_counter()
  for a in actions[30:]:
    step(a)
  return (len(actions) - 30) * len(actions[0]) / (time.perf_counter() - start)


def bench_raw(env_id: str, num_envs: int, obs_mode: str, image_size: int, steps: int) -> float:
  multiprocessing.set_forkserver_preload(["rpd_jax.envs.maniskill", "mani_skill.envs"])
  fns = [functools.partial(_raw_worker, env_id, obs_mode, image_size)] * num_envs
  envs = gym.vector.AsyncVectorEnv(fns, context="forkserver",
                                   autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
  try:
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps + 30, num_envs, 7)).astype(np.float32)
    return _time(envs.step, actions)
  finally:
    envs.close()


def bench_bridge(env_id: str, num_envs: int, obs_mode: str, image_size: int,
                 steps: int) -> float:
  env = maniskill.ManiSkillVecEnv(num_envs=num_envs, seed=0, env_id=env_id, obs_mode=obs_mode,
                                  image_size=image_size, camera="sensor",
                                  sim_backend="physx_cpu")
  try:
    actions = jax.random.uniform(jax.random.key(0), (steps + 30, num_envs, env.action_dim),
                                 minval=-1, maxval=1)
    actions = list(actions)  # per-step arrays made before timing, as a policy would hand them

    def step(a):
      jax.block_until_ready(env.step(a))

    return _time(step, actions)
  finally:
    env.close()


def main(argv):
  del argv
  print(f"{_ENV_ID.value}, {_STEPS.value} steps per setting, CPU simulation\n")
  print("| envs | obs | raw steps/s | bridge steps/s | overhead |")
  print("|---|---|---|---|---|")
  for obs in _OBS.value:
    size = int(obs[3:]) if obs.startswith("rgb") else 64
    mode = "rgb" if obs.startswith("rgb") else "state"
    for n in map(int, _NUM_ENVS.value):
      raw = bench_raw(_ENV_ID.value, n, mode, size, _STEPS.value)
      bridge = bench_bridge(_ENV_ID.value, n, mode, size, _STEPS.value)
      print(f"| {n} | {obs} | {raw:.0f} | {bridge:.0f} | {1 - bridge / raw:+.1%} |", flush=True)


if __name__ == "__main__":
  app.run(main)
