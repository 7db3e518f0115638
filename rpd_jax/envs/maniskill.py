"""ManiSkill3 tasks behind the VecEnv contract, with torch <-> JAX through DLPack.

One interface, one set of semantics, two simulation backends:

- ``physx_cuda`` (GPU): N envs in one process, partial auto-resets by ManiSkill's own
  ``ManiSkillVectorEnv``; tensors stay on the GPU and reach JAX without a copy.
- ``physx_cpu`` (CPU): ManiSkill allows one env per process, so N worker processes run under
  gymnasium's ``AsyncVectorEnv`` (``forkserver``: ``fork`` hangs once rendering is on) with
  ``SAME_STEP`` auto-reset, which hands back the last observation of an ended episode.

Both backends run ManiSkill with the full state observation, which becomes ``privileged`` (for
scripted teachers) whatever the student sees, and apply the same observation wrapper
(``_Observation``) to the batched torch env, so keys, dtypes and reset semantics are identical:

- ``state``: float32 [B, D]. With ``obs_mode="state"`` the full state (== ``privileged``); with
  ``"state_rgb"`` only the robot's proprioception (joint positions and velocities), as a camera
  policy would get on a real robot.
- ``rgb``: uint8 [B, H, W, 3] from the ``human`` render camera (the paper's 256x256 view, which
  shows goal markers such as PickCube's hidden goal sphere) or ManiSkill's ``sensor`` camera.
- ``privileged``: float32 [B, P], ManiSkill's flat ``state`` observation.
- ``qpos``, ``qvel``: float32 [B, J], the robot's joint positions and velocities (ManiSkill's
  joint order; the Panda's 7 arm joints and 2 fingers), and ``tcp_pose``: float32 [B, 7], the
  tool centre point's position and wxyz quaternion in the world frame: what an Octo
  checkpoint's ``proprio`` is made of (``config.teacher.kwargs.proprio``).
- ``rgb_wrist``: uint8 [B, S, S, 3], only with ``wrist_image_size=S``: the Panda's hand camera
  (ManiSkill's ``panda_wristcam`` robot, whose ``hand_camera`` sensor sits on the hand; objects
  ManiSkill hides from sensors, such as goal markers, stay hidden), rendered only then.

Episodes end on success (``terminated``, ManiSkill's partial-reset convention, as in its PPO
baseline and the RPD runs) or at the task's time limit (``truncated``).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
from typing import Any, Optional

import gymnasium as gym
import jax
import jax.numpy as jnp
import mani_skill.envs  # noqa: F401  (registers the tasks with gymnasium)
import numpy as np
import sapien
import torch
from mani_skill.utils import sapien_utils
from mani_skill.utils.registration import REGISTERED_ENVS
from gymnasium.vector.async_vector_env import AsyncState
from mani_skill.vector.wrappers.gymnasium import ManiSkillVectorEnv

from rpd_jax.envs import base
from rpd_jax.envs import vulkan
from rpd_jax.errors import RunError

OBS_MODES = ("state", "rgb", "state_rgb")
CAMERAS = ("human", "sensor")
SIM_BACKENDS = ("auto", "physx_cuda", "physx_cpu")
REWARD_MODES = ("normalized_dense", "dense", "sparse")

# Camera poses as (eye, target) for sapien_utils.look_at, replacing the pose of the camera the
# student sees. "moved": PushCube's default human camera looks from (0.6, 0.7, 0.6) at
# (0, 0, 0.35), i.e. from the robot's left and above; this one looks from its right side, lower
# and closer, so the view of the robot, cube and goal changes in azimuth, elevation and scale.
CAMERA_VARIANTS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "moved": ((0.5, -0.6, 0.35), (0.0, 0.0, 0.1)),
}


def to_jax(x: torch.Tensor | np.ndarray) -> jax.Array:
  """A torch tensor (any device) or numpy array as a JAX array, zero-copy where possible.

  ``.contiguous()`` first: DLPack of a strided tensor is copied silently (and older JAX
  versions misread transposed tensors).
  """
  if isinstance(x, np.ndarray):
    x = torch.from_numpy(x)
  return jax.dlpack.from_dlpack(x.contiguous())


def to_torch(x: jax.Array, device: torch.device) -> torch.Tensor:
  """A JAX array as a torch tensor on ``device``, zero-copy where the devices match."""
  return torch.from_dlpack(x).to(device)


def resolve_backend(sim_backend: str) -> str:
  """"auto" -> "physx_cuda" where torch sees a GPU, else "physx_cpu"; checks the name."""
  if sim_backend not in SIM_BACKENDS:
    raise ValueError(
        f"sim_backend={sim_backend!r} is unknown; use one of {', '.join(SIM_BACKENDS)}")
  if sim_backend == "auto":
    return "physx_cuda" if torch.cuda.is_available() else "physx_cpu"
  return sim_backend


class PhysXGpuUnavailableError(RunError):
  """ManiSkill's GPU simulation cannot load SAPIEN's PhysX GPU library; the message says how
  to get it."""


def require_physx_gpu() -> None:
  """Loads SAPIEN's PhysX GPU library, or raises PhysXGpuUnavailableError naming the fix.

  The library is not in SAPIEN's wheel: ``sapien.physx.enable_gpu()`` downloads it from GitHub
  into ``~/.sapien/physx/<version>/`` on first use. A machine without access to GitHub (many
  clusters) fails there with a network error deep inside the first ``gym.make``.
  """
  import sapien.physx  # pylint: disable=g-import-not-at-top
  try:
    sapien.physx.enable_gpu()
  except Exception as e:  # pylint: disable=broad-except  (requests, zipfile, ctypes errors)
    version = sapien.physx.version()
    folder = os.path.join(os.path.expanduser("~"), ".sapien", "physx", version)
    url = ("https://github.com/sapien-sim/physx-precompiled/releases/download/"
           f"{version}/linux-so.zip")
    raise PhysXGpuUnavailableError(
        "ManiSkill's GPU simulation (sim_backend='physx_cuda') needs SAPIEN's PhysX GPU "
        f"library, which SAPIEN downloads on first use, and loading it failed "
        f"({type(e).__name__}: {e}). Fix: download {url} on a machine with internet and unzip "
        f"it into {folder} (it holds libPhysXGpu_64.so), or simulate on the CPU with "
        "--config.env.sim_backend=physx_cpu") from e


# The robot ManiSkill mounts a camera on the hand of (the Panda otherwise), and that camera.
WRIST_ROBOT, WRIST_CAMERA = "panda_wristcam", "hand_camera"


def robot_state(env: gym.Env) -> dict[str, torch.Tensor]:
  """The robot's own state as separate keys: qpos, qvel float32 [n, J], tcp_pose [n, 7]."""
  agent = env.unwrapped.agent
  return {"qpos": agent.robot.get_qpos().float().contiguous(),
          "qvel": agent.robot.get_qvel().float().contiguous(),
          "tcp_pose": agent.tcp.pose.raw_pose.float().contiguous()}


def wrist_image(env: gym.Env) -> torch.Tensor:
  """uint8 [n, S, S, 3] from the hand camera, rendered alone, as ManiSkill renders sensors:
  the objects it hides from them (goal markers) hidden first."""
  base = env.unwrapped
  for obj in base._hidden_objects:  # pylint: disable=protected-access  (ManiSkill's own list)
    obj.hide_visual()
  base.scene.update_render(update_sensors=True, update_human_render_cameras=False)
  camera = base.scene.sensors[WRIST_CAMERA]
  camera.capture()
  return camera.get_obs(rgb=True, depth=False, position=False, segmentation=False)["rgb"]


def _extra_spaces(env: gym.Env, wrist_image_size: Optional[int]) -> dict[str, gym.Space]:
  """The spaces of robot_state's keys and, with a wrist camera, of rgb_wrist."""
  box = lambda dim: gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
  joints = int(env.unwrapped.agent.robot.get_qpos().shape[-1])
  spaces = {"qpos": box(joints), "qvel": box(joints), "tcp_pose": box(7)}
  if wrist_image_size:
    spaces["rgb_wrist"] = gym.spaces.Box(0, 255, (wrist_image_size, wrist_image_size, 3),
                                         np.uint8)
  return spaces


class _Observation(gym.ObservationWrapper):
  """ManiSkill's batched torch observation -> the project's obs dict of torch tensors [n, ...].

  Applied to the batched ManiSkill env on both backends (inside ``ManiSkillVectorEnv`` on the
  GPU, so that the final observation of an auto-reset episode carries its image too).
  """

  def __init__(self, env: gym.Env, obs_mode: str, camera: str, image_size: int,
               wrist_image_size: Optional[int] = None):
    super().__init__(env)
    self._obs_mode = obs_mode
    self._camera = camera
    self._wrist_image_size = wrist_image_size
    proprio = env.unwrapped.agent.get_proprioception()
    # ManiSkill flattens {agent: proprioception, extra: task state} in that order, so the
    # robot's own state is the leading slice of the flat state.
    self._proprio_dim = sum(int(np.prod(v.shape[1:])) for v in proprio.values())
    # Spaces from ManiSkill's (computed when it was built) and the image size, not from a
    # rendered observation: the first image of a process costs seconds on a CPU (lavapipe
    # compiles its shaders), and AsyncVectorEnv builds one throwaway env just for the spaces.
    space = env.unwrapped.single_observation_space
    full_dim = (space["state"] if isinstance(space, gym.spaces.Dict) else space).shape[0]
    box = lambda dim: gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
    spaces = {"privileged": box(full_dim)}
    if obs_mode == "state":
      spaces["state"] = box(full_dim)
    elif obs_mode == "state_rgb":
      spaces["state"] = box(self._proprio_dim)
    if obs_mode != "state":
      spaces["rgb"] = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
    spaces.update(_extra_spaces(env, wrist_image_size))
    self.single_observation_space = gym.spaces.Dict(spaces)

  def observation(self, obs: Any) -> dict[str, torch.Tensor]:
    if isinstance(obs, dict):  # ManiSkill obs_mode "state+rgb": the sensor camera's image
      privileged, rgb = obs["state"], obs["sensor_data"]["base_camera"]["rgb"]
    else:
      privileged, rgb = obs, None
    out = {"privileged": privileged.float().contiguous()}
    if self._obs_mode == "state":
      out["state"] = out["privileged"]
    elif self._obs_mode == "state_rgb":
      out["state"] = out["privileged"][:, :self._proprio_dim].contiguous()
    if self._obs_mode != "state":
      if self._camera == "human":
        rgb = self.env.render()
      out["rgb"] = rgb.contiguous()
    out.update(robot_state(self.env))
    if self._wrist_image_size:
      out["rgb_wrist"] = wrist_image(self.env).contiguous()
    return out


def _make_maniskill(env_id: str, num_envs: int, sim_backend: str, obs_mode: str,
                    reward_mode: str, control_mode: str, image_size: int, camera: str,
                    camera_variant: Optional[str],
                    max_episode_steps: Optional[int],
                    wrist_image_size: Optional[int] = None) -> gym.Env:
  """The batched ManiSkill env (torch in, torch out) with the project's observation dict."""
  size = dict(width=image_size, height=image_size)
  human, sensor = dict(size), dict(size)
  if camera_variant is not None:
    eye, target = CAMERA_VARIANTS[camera_variant]
    (human if camera == "human" else sensor)["pose"] = sapien_utils.look_at(eye, target)
  use_sensor = obs_mode != "state" and camera == "sensor"
  kwargs = dict(
      num_envs=num_envs,
      sim_backend=sim_backend,
      obs_mode="state+rgb" if use_sensor else "state",
      reward_mode=reward_mode,
      control_mode=control_mode,
      render_mode="rgb_array",
      human_render_camera_configs=human,
      sensor_configs=sensor,
  )
  if sim_backend == "physx_cpu":
    kwargs["render_backend"] = "cpu"  # without it SAPIEN first tries CUDA and warns
  if max_episode_steps is not None:
    kwargs["max_episode_steps"] = max_episode_steps
  if wrist_image_size:
    kwargs.update(_wrist_kwargs(sensor, wrist_image_size))
  env = gym.make(env_id, **kwargs)
  return _Observation(env, obs_mode, camera, image_size, wrist_image_size)


def _wrist_kwargs(sensor: dict, size: int) -> dict:
  """gym.make kwargs for the Panda with ManiSkill's hand camera at ``size`` x ``size``.

  Settings of ``sensor`` without a camera name apply to every sensor camera, a moved sensor
  camera's pose included: the hand camera's own entry keeps it at its mount, as
  ``panda_wristcam`` defines it.
  """
  return dict(robot_uids=WRIST_ROBOT, sensor_configs={
      **sensor, WRIST_CAMERA: dict(width=size, height=size, pose=sapien.Pose())})


class _Worker(gym.Wrapper):
  """One CPU env as a plain gymnasium env: numpy in and out, no batch dim, for AsyncVectorEnv."""

  def __init__(self, env: gym.Env, ignore_terminations: bool = False):
    super().__init__(env)
    self.observation_space = env.get_wrapper_attr("single_observation_space")
    self.action_space = env.unwrapped.single_action_space
    self._ignore_terminations = ignore_terminations

  def _unbatch(self, obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v[0].numpy() for k, v in obs.items()}

  @torch.inference_mode()
  def step(self, action: np.ndarray):
    obs, reward, terminated, truncated, info = self.env.step(torch.from_numpy(action)[None])
    terminated = bool(terminated[0]) and not self._ignore_terminations
    return (self._unbatch(obs), float(reward[0]), terminated, bool(truncated[0]),
            {"success": bool(info["success"][0])})

  @torch.inference_mode()
  def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
    obs, _ = self.env.reset(seed=seed, options=options)
    return self._unbatch(obs), {}

  @torch.inference_mode()
  def render(self) -> np.ndarray:
    return self.env.render()[0].numpy()


def _make_worker(ignore_terminations: bool = False, **kwargs) -> _Worker:
  # Each worker is one process on a small machine: torch's intra-op threads would only compete
  # with the other workers.
  torch.set_num_threads(1)
  # Ctrl-C reaches the whole process group: the trainer handles it and closes the workers,
  # which would otherwise raise KeyboardInterrupt mid-step and print tracebacks of their own.
  # (SIGTERM stays fatal and quiet: it is how the trainer stops them. Only in a worker:
  # AsyncVectorEnv also calls this in the trainer's process, for the spaces.)
  if multiprocessing.parent_process() is not None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
  return _Worker(_make_maniskill(num_envs=1, sim_backend="physx_cpu", **kwargs),
                 ignore_terminations)


class ManiSkillVecEnv:
  """``num_envs`` ManiSkill3 envs of one task behind the VecEnv contract (see module doc).

  Args:
    num_envs: B, the batch size of every array in and out.
    seed: seed of the first reset (env i gets seed + i); ``reset(seed)`` reseeds.
    reward_mode: "normalized_dense", "dense" or "sparse" (success as float32).
    env_id: a ManiSkill3 task id, e.g. "PushCube-v1" (``rpd_jax.envs.tasks.TASKS`` lists the
      paper's eight).
    obs_mode: what the student sees: "state", "rgb" or "state_rgb".
    image_size: H = W of ``rgb`` and of ``render()`` frames.
    camera: "human" (the paper's view, shows goal markers) or "sensor" (ManiSkill's base camera).
    camera_variant: None, or a key of CAMERA_VARIANTS that moves the camera named by ``camera``.
    control_mode: ManiSkill controller; actions are float32 [B, A] in [-1, 1].
    sim_backend: "auto" (physx_cuda when torch sees a GPU, else physx_cpu), or either one.
    max_episode_steps: None for the task's own time limit.
    ignore_terminations: success does not end an episode (``terminated`` stays False); the
      published evaluation's fixed-step protocol.
    wrist_image_size: S, to render the Panda's hand camera as ``rgb_wrist`` [B, S, S, 3] (an
      Octo teacher whose checkpoint reads a wrist camera); None renders none.
  """

  def __init__(self, num_envs: int, seed: int, reward_mode: str = "normalized_dense",
               env_id: str = "PushCube-v1", obs_mode: str = "state", image_size: int = 256,
               camera: str = "human", camera_variant: Optional[str] = None,
               control_mode: str = "pd_ee_delta_pose", sim_backend: str = "auto",
               max_episode_steps: Optional[int] = None, ignore_terminations: bool = False,
               wrist_image_size: Optional[int] = None):
    for name, value, choices in (("obs_mode", obs_mode, OBS_MODES), ("camera", camera, CAMERAS),
                                 ("reward_mode", reward_mode, REWARD_MODES)):
      if value not in choices:
        raise ValueError(f"{name}={value!r} is unknown; use one of {', '.join(choices)}")
    if camera_variant is not None and camera_variant not in CAMERA_VARIANTS:
      raise ValueError(f"camera_variant={camera_variant!r} is unknown; use None or one of "
                       f"{', '.join(CAMERA_VARIANTS)}")
    if num_envs < 1:
      raise ValueError(f"num_envs={num_envs} must be >= 1")
    if wrist_image_size is not None and wrist_image_size < 1:
      raise ValueError(f"wrist_image_size={wrist_image_size} must be >= 1 (or None: no wrist "
                       "camera)")
    vulkan.require_vulkan()
    self.num_envs = num_envs
    self.env_id = env_id
    self.sim_backend = resolve_backend(sim_backend)
    make_kwargs = dict(env_id=env_id, obs_mode=obs_mode, reward_mode=reward_mode,
                       control_mode=control_mode, image_size=image_size, camera=camera,
                       camera_variant=camera_variant, max_episode_steps=max_episode_steps,
                       wrist_image_size=wrist_image_size)
    if self.sim_backend == "physx_cuda":
      require_physx_gpu()
      env = _make_maniskill(num_envs=num_envs, sim_backend="physx_cuda", **make_kwargs)
      self._gpu = ManiSkillVectorEnv(env, num_envs, auto_reset=True,
                                     ignore_terminations=ignore_terminations,
                                     record_metrics=False)
      self._device = self._gpu.device
      self.action_dim = int(np.prod(self._gpu.single_action_space.shape))
    else:
      self._gpu = None
      self._device = torch.device("cpu")
      # Workers fork from the forkserver process: with torch and ManiSkill imported there once,
      # a worker starts in about a second instead of importing them again (seconds each).
      multiprocessing.set_forkserver_preload(["rpd_jax.envs.maniskill", "mani_skill.envs"])
      fns = [functools.partial(_make_worker, ignore_terminations, **make_kwargs)
             for _ in range(num_envs)]
      self._cpu = gym.vector.AsyncVectorEnv(
          fns, copy=False, context="forkserver",
          autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
      self.action_dim = int(np.prod(self._cpu.single_action_space.shape))
    if max_episode_steps is None:
      # ManiSkill applies its own time limit (gym's env.spec.max_episode_steps is None).
      max_episode_steps = REGISTERED_ENVS[env_id].max_episode_steps
    self.max_episode_steps = int(max_episode_steps)
    self.observation_spec = base.spec_of(self.reset(seed))

  def reset(self, seed: int) -> base.Observation:
    """Resets every env; env i is seeded with ``seed + i``. Returns obs [B, ...]."""
    seeds = [seed + i for i in range(self.num_envs)]
    if self._gpu is not None:
      obs, _ = self._gpu.reset(seed=seeds)
      self._settle()
    else:
      obs = self._own(self._cpu.reset(seed=seeds)[0])
    return {k: to_jax(v) for k, v in obs.items()}

  def step(self, action: jax.Array) -> base.StepResult:
    """Steps every env with float32 action [B, A]; ended episodes are reset inside the step."""
    if action.shape != (self.num_envs, self.action_dim):
      raise ValueError(f"action has shape {action.shape}; expected (num_envs, action_dim) = "
                       f"{(self.num_envs, self.action_dim)}")
    if self._gpu is not None:
      return self._step_gpu(action)
    return self._step_cpu(action)

  def _step_gpu(self, action: jax.Array) -> base.StepResult:
    act = to_torch(jnp.asarray(action, jnp.float32), self._device)
    obs, reward, terminated, truncated, info = self._gpu.step(act)
    done = terminated | truncated
    final_obs, success = obs, info["success"]
    if "final_observation" in info:  # some episode ended: ManiSkillVectorEnv reset it
      success = info["final_info"]["success"]
      final_obs = {k: torch.where(done.reshape((-1,) + (1,) * (v.ndim - 1)),
                                  info["final_observation"][k], v)
                   for k, v in obs.items()}
    self._settle()
    return self._result(obs, reward, terminated, truncated, success, final_obs)

  def _settle(self) -> None:
    """Waits for the GPU simulator's and renderer's writes before JAX reads their tensors.

    DLPack orders torch's own stream before JAX's (``jax.dlpack.from_dlpack`` hands torch a
    stream to wait on), but PhysX and SAPIEN's renderer write through streams of their own that
    torch does not know; ManiSkill synchronises after sensor images, not after every state
    fetch or human-camera render. One device synchronisation per step makes every buffer
    complete; the step waited for the GPU anyway (its Python control flow reads results).
    Torch cannot reuse a buffer JAX still reads: the DLPack capsule holds a reference to the
    tensor until the JAX array is deleted.
    """
    torch.cuda.synchronize(self._device)

  def _step_cpu(self, action: jax.Array) -> base.StepResult:
    act = to_torch(jnp.asarray(action, jnp.float32), self._device).numpy()
    try:
      obs, reward, terminated, truncated, info = self._cpu.step(act)
    except (BrokenPipeError, EOFError, ConnectionError) as e:
      raise self._worker_error() from e
    obs = self._own(obs)
    no = np.zeros(self.num_envs, bool)
    success = info.get("success", no) & info.get("_success", no)
    final_obs = obs
    if "final_obs" in info:  # SAME_STEP: an object array of the ended episodes' last obs dicts
      ended = info["_final_obs"]
      final = info["final_info"]
      success = np.where(final.get("_success", no), final.get("success", no), success)
      final_obs = {k: torch.stack([torch.from_numpy(f[k]) if e else v[i]
                                   for i, (f, e) in enumerate(zip(info["final_obs"], ended))])
                   for k, v in obs.items()}
    return self._result(obs, reward, terminated, truncated, success, final_obs)

  @staticmethod
  def _own(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    # AsyncVectorEnv (copy=False) hands out views of its shared memory, which the next step
    # overwrites: copy them once, into torch's 64-byte aligned memory that JAX's CPU client then
    # aliases (numpy's 16-byte aligned arrays would be copied a second time by DLPack).
    return {k: torch.from_numpy(v).clone() for k, v in obs.items()}

  def _result(self, obs, reward, terminated, truncated, success, final_obs) -> base.StepResult:
    # The CPU backend's reward/flags are small numpy arrays (DLPack copies them, see _own); on
    # the GPU backend they already are torch tensors on the device and stay there.
    as_bool = lambda x: to_jax(torch.as_tensor(x, dtype=torch.bool, device=self._device))
    return base.StepResult(
        obs={k: to_jax(v) for k, v in obs.items()},
        reward=to_jax(torch.as_tensor(reward, dtype=torch.float32, device=self._device)),
        terminated=as_bool(terminated),
        truncated=as_bool(truncated),
        success=as_bool(success),
        final_obs={k: to_jax(v) for k, v in final_obs.items()},
    )

  def render(self) -> jax.Array:
    """uint8 [B, H, W, 3] frames of the current state from the human camera, for videos."""
    if self._gpu is not None:
      frames = self._gpu.render()
      self._settle()
      return to_jax(frames)
    try:
      return to_jax(np.stack(self._cpu.render()))
    except (BrokenPipeError, EOFError, ConnectionError) as e:
      raise self._worker_error() from e

  def _worker_error(self) -> base.EnvWorkerError:
    """The error for a CPU worker process that is gone, naming it and how it ended."""
    dead = [(i, p) for i, p in enumerate(self._cpu.processes) if not p.is_alive()]
    how = lambda code: (f"killed by signal {-code}" if code is not None and code < 0
                        else f"exit code {code}")
    names = "; ".join(f"worker {i} (pid {p.pid}, {how(p.exitcode)})" for i, p in dead)
    return base.EnvWorkerError(
        f"ManiSkill {self.env_id}: {names or 'a worker'} of {self.num_envs} stopped answering "
        "(out of memory, or killed); the simulation cannot go on")

  def close(self, terminate: bool = False) -> None:
    """Closes the simulation; ``terminate`` (or a dead worker) stops CPU workers at once,
    without waiting for a step in flight."""
    if self._gpu is not None:
      self._gpu.close()
      return
    terminate = terminate or not all(p.is_alive() for p in self._cpu.processes)
    if terminate:
      # A step in flight is abandoned: without this, gymnasium's close first waits for it,
      # reading pipes of workers that may already be gone.
      self._cpu._state = AsyncState.DEFAULT  # pylint: disable=protected-access
    self._cpu.close(terminate=terminate)
