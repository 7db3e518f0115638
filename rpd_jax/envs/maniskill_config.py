"""ManiSkill's own word on a run's config, before anything is built (``envs.configure``).

- ``sim_backend`` "auto" is resolved in the config (``devices.resolve_sim_backend``: the GPU
  simulation only where torch and JAX both see a GPU), so ``config.json`` records what ran, and
  an explicit backend that cannot run is one ``error:`` line.
- The geometry fields left None (ManiSkill's experiment files leave them so) follow the backend:
  a CPU runs one worker process per env, a GPU thousands of envs in one process. Explicit values
  (``:smoke``, ``:paper``, command-line overrides) are kept.
- A CPU simulation is refused past ``CPU_MAX_PROCESSES`` env processes.
- The task (``env.kwargs.env_id``) must be one gymnasium can make (``tasks.resolve``); a rollout
  length left None (the generic experiment, ``experiments/maniskill.py``) becomes the task's time
  limit.

Light for the paper's eight tasks: imports neither ManiSkill nor SAPIEN (torch only to resolve
"auto"); any other task imports ManiSkill to find it.
"""

from __future__ import annotations

import ml_collections

from rpd_jax.envs import devices, tasks
from rpd_jax.errors import ConfigError

# About 600 MB of memory each: more would not fit a workstation.
CPU_MAX_PROCESSES = 64

# The defaults that follow the backend: (num_envs, eval_envs, eval_episodes, num_minibatches).
# On a CPU: two to four workers saturate two cores. On a GPU: ManiSkill's own PPO baselines
# (512 state envs; 128-256 image envs, the published RPD run's 128), 50-step rollouts cut into
# 32 minibatches, evaluation on 64 (state) or 32 (image) envs at once.
GEOMETRY = {
    ("physx_cpu", "state"): (4, 2, 16, 4),
    ("physx_cpu", "image"): (4, 2, 16, 4),
    ("physx_cuda", "state"): (512, 64, 128, 32),
    ("physx_cuda", "image"): (128, 32, 64, 32),
}


def configure(c: ml_collections.ConfigDict) -> None:
  """Resolves ``config.env.kwargs.sim_backend`` and fills the geometry left None, in place."""
  task = tasks.resolve(c.env.kwargs.get("env_id"))
  limit = c.env.kwargs.get("max_episode_steps") or task.max_episode_steps
  if limit is None:
    raise ConfigError(f"config.env.kwargs.env_id={task.env_id!r} registers no time limit; set "
                      "config.env.kwargs.max_episode_steps")
  if c.ppo.num_steps is None:  # one rollout of an episode's length
    c.ppo.num_steps = limit
  backend = devices.resolve_sim_backend(c.env.kwargs.get("sim_backend", "auto"))
  student = "image" if "rgb" in tuple(c.network.obs_keys) else "state"
  num_envs, eval_envs, eval_episodes, minibatches = GEOMETRY[(backend, student)]
  with c.unlocked():
    c.env.kwargs.sim_backend = backend
  if c.env.num_envs is None:
    c.env.num_envs = num_envs
  if c.eval_envs is None:
    c.eval_envs = eval_envs
  if c.eval_episodes is None:  # whole rounds of eval_envs
    c.eval_episodes = c.eval_envs * max(1, -(-eval_episodes // c.eval_envs))
  if c.ppo.num_minibatches is None:
    c.ppo.num_minibatches = minibatches
  many = c.num_seeds * max(c.env.num_envs, c.eval_envs)
  if backend == "physx_cpu" and many > CPU_MAX_PROCESSES:
    raise ConfigError(
        f"config.env.num_envs={c.env.num_envs} / config.eval_envs={c.eval_envs}"
        f"{f' x config.num_seeds={c.num_seeds}' if c.num_seeds > 1 else ''}: "
        f"ManiSkill on a CPU runs one process per env (about 600 MB each); {many} would not "
        f"fit. Use a GPU (sim_backend physx_cuda) or at most {CPU_MAX_PROCESSES}, e.g. "
        "--config.env.num_envs=4 --config.eval_envs=2")
