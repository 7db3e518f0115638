r"""Steps/s of the ManiSkill3 bridge against raw ManiSkill on the same settings.

  python -m rpd_jax.bench.env [--env_id=PushCube-v1] [--num_envs=1,2,4] \
      [--obs=state,rgb64,rgb128,rgb256] [--steps=300] [--sim_backend=auto]

raw: what one writes without the bridge. On the CPU (``physx_cpu``), gymnasium's AsyncVectorEnv
(forkserver, SAME_STEP auto-reset) over ManiSkill's own CPUGymWrapper, numpy actions in, numpy
observations out; on the GPU (``physx_cuda``), ManiSkill's ManiSkillVectorEnv over one batched
env, CUDA torch actions in, CUDA torch observations out. bridge: ``ManiSkillVecEnv`` on the same
backend, JAX actions in, a dict of JAX arrays out (DLPack), plus ``final_obs`` and
``privileged``. Images come from ManiSkill's sensor camera in both (``camera="sensor"``,
obs_mode "rgb" raw); the bridge's default human camera renders the same amount. Raw and bridge
run side by side in alternating blocks (a drifting machine load slows both alike). Random
actions; episodes auto-reset at the time limit or on success. Prints a markdown table; the
overhead column is 1 - bridge/raw.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import time

import gymnasium as gym
import jax
import numpy as np
import torch
from absl import flags
from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper
from mani_skill.vector.wrappers.gymnasium import ManiSkillVectorEnv

from rpd_jax import cli
from rpd_jax.envs import maniskill, tasks
from rpd_jax.errors import ConfigError

_ENV_ID = flags.DEFINE_string("env_id", "PushCube-v1", "ManiSkill3 task")
_NUM_ENVS = flags.DEFINE_list("num_envs", ["1", "2", "4"], "env counts (CPU worker processes)")
_OBS = flags.DEFINE_list("obs", ["state", "rgb64", "rgb128", "rgb256"],
                         "observations: state, or rgb<size> (uint8 images of size x size)")
_STEPS = flags.DEFINE_integer("steps", 300, "timed steps per setting and side (raw, bridge)")
_SIM_BACKEND = flags.DEFINE_enum("sim_backend", "auto", list(maniskill.SIM_BACKENDS),
                                 "auto: physx_cuda where torch sees a GPU, else physx_cpu")


def _raw_worker(env_id: str, obs_mode: str, image_size: int) -> gym.Env:
  torch.set_num_threads(1)  # as the bridge's workers
  size = dict(width=image_size, height=image_size)
  return CPUGymWrapper(gym.make(
      env_id, num_envs=1, sim_backend="physx_cpu", render_backend="cpu", obs_mode=obs_mode,
      control_mode="pd_ee_delta_pose", reward_mode="normalized_dense", sensor_configs=size,
      human_render_camera_configs=size))


def _raw(env_id: str, num_envs: int, obs_mode: str, image_size: int):
  """Raw ManiSkill CPU workers and their step function on numpy actions [B, A]."""
  fns = [functools.partial(_raw_worker, env_id, obs_mode, image_size)] * num_envs
  envs = gym.vector.AsyncVectorEnv(fns, context="forkserver",
                                   autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
  envs.reset(seed=0)
  rng = np.random.default_rng(0)
  return envs, lambda: envs.step(rng.uniform(-1, 1, (num_envs, 7)).astype(np.float32))


def _raw_gpu(env_id: str, num_envs: int, obs_mode: str, image_size: int):
  """Raw batched ManiSkill on the GPU and its step function on CUDA torch actions [B, A]."""
  size = dict(width=image_size, height=image_size)
  env = ManiSkillVectorEnv(
      gym.make(env_id, num_envs=num_envs, sim_backend="physx_cuda", obs_mode=obs_mode,
               control_mode="pd_ee_delta_pose", reward_mode="normalized_dense",
               sensor_configs=size, human_render_camera_configs=size),
      num_envs, auto_reset=True, ignore_terminations=False, record_metrics=False)
  env.reset(seed=0)
  generator = torch.Generator(device=env.device).manual_seed(0)

  def step():
    action = torch.rand((num_envs, 7), device=env.device, generator=generator) * 2 - 1
    out = env.step(action)
    torch.cuda.synchronize(env.device)
    return out

  return env, step


def _bridge(env_id: str, num_envs: int, obs_mode: str, image_size: int, sim_backend: str):
  """The bridge and its step function on JAX actions [B, A], waited for."""
  env = maniskill.ManiSkillVecEnv(num_envs=num_envs, seed=0, env_id=env_id, obs_mode=obs_mode,
                                  image_size=image_size, camera="sensor",
                                  sim_backend=sim_backend)
  keys = iter(jax.random.split(jax.random.key(0), 100_000))
  sample = jax.jit(lambda k: jax.random.uniform(k, (num_envs, env.action_dim), minval=-1,
                                                maxval=1))
  return env, lambda: jax.block_until_ready(env.step(sample(next(keys))))


def bench(env_id: str, num_envs: int, obs_mode: str, image_size: int, steps: int,
          sim_backend: str = "physx_cpu") -> tuple[float, float]:
  """Steps/s (summed over envs) of raw ManiSkill and of the bridge on one setting.

  Both run at the same time, alternating blocks of 25 steps, so that a machine whose load
  drifts (other jobs) slows both alike; 25 warm-up steps each are not timed.
  """
  sim_backend = maniskill.resolve_backend(sim_backend)
  if sim_backend == "physx_cuda":
    raw_env, raw_step = _raw_gpu(env_id, num_envs, obs_mode, image_size)
  else:
    multiprocessing.set_forkserver_preload(["rpd_jax.envs.maniskill", "mani_skill.envs"])
    raw_env, raw_step = _raw(env_id, num_envs, obs_mode, image_size)
  bridge_env, bridge_step = _bridge(env_id, num_envs, obs_mode, image_size, sim_backend)
  try:
    times = {"raw": 0.0, "bridge": 0.0}
    for block in range(steps // 25 + 1):
      for name, step in (("raw", raw_step), ("bridge", bridge_step)):
        start = time.perf_counter()
        for _ in range(25):
          step()
        if block:
          times[name] += time.perf_counter() - start
    done = (steps // 25) * 25 * num_envs
    return done / times["raw"], done / times["bridge"]
  finally:
    raw_env.close()
    bridge_env.close()


def main() -> None:
  tasks.task_info(_ENV_ID.value)
  counts = cli.integers(_NUM_ENVS.value, "num_envs")
  bad = [o for o in _OBS.value if o != "state" and not re.fullmatch(r"rgb\d+", o)]
  if bad or min(counts) < 1 or _STEPS.value < 25:
    raise ConfigError(f"--obs={','.join(_OBS.value)} --num_envs={','.join(_NUM_ENVS.value)} "
                      f"--steps={_STEPS.value}: observations are state or rgb<size> (e.g. "
                      "rgb128), env counts >= 1, steps >= 25")
  backend = maniskill.resolve_backend(_SIM_BACKEND.value)
  print(f"{_ENV_ID.value}, {_STEPS.value} steps per setting, {backend}\n")
  print("| envs | obs | raw steps/s | bridge steps/s | overhead |")
  print("|---|---|---|---|---|")
  for obs in _OBS.value:
    size = int(obs[3:]) if obs.startswith("rgb") else 64
    mode = "rgb" if obs.startswith("rgb") else "state"
    for n in counts:
      raw, bridge = bench(_ENV_ID.value, n, mode, size, _STEPS.value, backend)
      print(f"| {n} | {obs} | {raw:.0f} | {bridge:.0f} | {1 - bridge / raw:+.1%} |", flush=True)


if __name__ == "__main__":
  cli.run(main)
