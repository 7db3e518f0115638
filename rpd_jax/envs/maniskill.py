"""ManiSkill3 tasks behind the VecEnv contract, with torch <-> JAX through DLPack.

One set of semantics (``_Sim``), two ways to run it:

- in process: one batched ManiSkill env of all B envs. ``physx_cuda`` (the GPU simulation; its
  tensors reach JAX without a copy), and ``physx_cpu`` with one env (``in_process=True``).
- in workers: ``physx_cpu`` allows one env per process, so B worker processes each run a
  ``_Sim`` of one env under gymnasium's ``AsyncVectorEnv`` (``forkserver``: ``fork`` hangs once
  rendering is on). The trainer's own process never builds a CPU PhysX scene (the workers'
  spaces come from a short-lived child), because SAPIEN refuses a GPU simulation in a process
  that ran a CPU one.

ManiSkill always runs with its flat ``state`` observation, which becomes ``privileged`` (for
scripted teachers) whatever the student sees, and ``_Sim`` adds the camera itself:

- ``state``: float32 [B, D]. With ``obs_mode="state"`` the full state (== ``privileged``); with
  ``"state_rgb"`` only the robot's proprioception (joint positions and velocities), as a camera
  policy would get on a real robot.
- ``rgb``: uint8 [B, H, W, 3] from the ``human`` render camera (the paper's 256x256 view, which
  shows goal markers such as PickCube's hidden goal sphere) or ManiSkill's ``sensor`` camera,
  rendered ONCE per step, after ended episodes were reset; where ``rgb`` is an on-demand key
  (the teacher's camera under a teacher budget, ``base``'s module doc), only on the steps where
  some env asks for it (the GPU batch renders whole, zeroing the envs that did not ask; a CPU
  worker renders only when its env asks).
- ``privileged``: float32 [B, P], ManiSkill's flat ``state`` observation.
- ``qpos``, ``qvel``: float32 [B, J], the robot's joint positions and velocities (ManiSkill's
  joint order; the Panda's 7 arm joints and 2 fingers), and ``tcp_pose``: float32 [B, 7], the
  tool centre point's position and wxyz quaternion in the world frame: what an Octo
  checkpoint's ``proprio`` is made of (``config.teacher.kwargs.proprio``).
- ``rgb_wrist``: uint8 [B, S, S, 3], only with ``wrist_image_size=S``: the Panda's hand camera
  (ManiSkill's ``panda_wristcam`` robot, whose ``hand_camera`` sensor sits on the hand; objects
  ManiSkill hides from sensors, such as goal markers, stay hidden), rendered only then.

Episodes end on success (``terminated``, ManiSkill's partial-reset convention, as in its PPO
baseline and the RPD runs) or at the task's time limit (``truncated``); they are reset inside
the step. ``final_obs`` holds only ``final_obs_keys`` (the student's, which bootstrap ended
episodes): an image there costs a second render on the steps where episodes end, so it is
rendered only where something reads it.

Seeds: ``reset(seed)`` seeds env i with ``seed + i``, and env i's episode depends on that seed
alone, not on the batch size or its position: the GPU simulation is reset env by env (ManiSkill
draws a batched reset's initial states from one generator seeded with the first seed). The two
backends draw from different generators (torch's CPU and CUDA ones), so the same seed gives a
different (equally distributed) episode on the CPU and on the GPU.

Arrays land on ``devices.default_device()`` (the train state's device): a CPU simulation beside
a GPU JAX hands its observations over with one host-to-device copy, the GPU simulation runs on
that same GPU (``physx_cuda:N``) and hands them over without one.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import sys
from typing import Any, Optional, Sequence

import gymnasium as gym
import jax
import jax.numpy as jnp
import mani_skill.envs  # noqa: F401  (registers the tasks with gymnasium)
import numpy as np
import sapien
import torch
from gymnasium.vector.async_vector_env import AsyncState
from mani_skill.utils import sapien_utils

from rpd_jax import quiet
from rpd_jax.envs import base
from rpd_jax.envs import devices
from rpd_jax.envs import tasks
from rpd_jax.envs import vulkan
from rpd_jax.errors import RunError

OBS_MODES = ("state", "rgb", "state_rgb")
CAMERAS = ("human", "sensor")
SIM_BACKENDS = devices.SIM_BACKENDS
REWARD_MODES = ("normalized_dense", "dense", "sparse")

# Camera poses as (eye, target) for sapien_utils.look_at, replacing the pose of the camera the
# student sees. "moved": PushCube's default human camera looks from (0.6, 0.7, 0.6) at
# (0, 0, 0.35), i.e. from the robot's left and above; this one looks from its right side, lower
# and closer, so the view of the robot, cube and goal changes in azimuth, elevation and scale.
CAMERA_VARIANTS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "moved": ((0.5, -0.6, 0.35), (0.0, 0.0, 0.1)),
}

# The modules a worker process needs: preloaded once by the forkserver, so that a worker starts
# in about a second instead of importing torch and ManiSkill again (seconds each). A task of
# the user's adds the module that registers it.
_PRELOAD = ["rpd_jax.envs.maniskill", "mani_skill.envs"]


def to_jax(x: torch.Tensor | np.ndarray, device: Optional[jax.Device] = None) -> jax.Array:
  """A torch tensor (any device) or numpy array as a JAX array on ``device`` (default: where
  DLPack puts it), zero-copy where the devices agree.

  ``.contiguous()`` first: DLPack of a strided tensor is copied silently (and older JAX
  versions misread transposed tensors).
  """
  if isinstance(x, np.ndarray):
    x = torch.from_numpy(x)
  array = jax.dlpack.from_dlpack(x.contiguous())
  if device is not None and array.devices() != {device}:
    array = jax.device_put(array, device)
  return array


def to_torch(x: jax.Array, device: torch.device) -> torch.Tensor:
  """A JAX array as a torch tensor on ``device``: zero-copy where the devices match, through
  the host otherwise (torch need not know JAX's device, e.g. a CPU torch beside a GPU JAX)."""
  if {d.platform for d in x.devices()} == {"cpu" if device.type == "cpu" else "gpu"}:
    return torch.from_dlpack(x).to(device)
  return torch.from_numpy(np.asarray(jax.device_get(x))).to(device)


def resolve_backend(sim_backend: str) -> str:
  """"auto" -> "physx_cuda" where torch and JAX both see a GPU, else "physx_cpu"; an explicit
  backend that cannot run is a ConfigError (``devices.resolve_sim_backend``)."""
  return devices.resolve_sim_backend(sim_backend)


class PhysXGpuUnavailableError(RunError):
  """ManiSkill's GPU simulation cannot start in this process; the message says why and how."""


def require_physx_gpu() -> None:
  """Loads SAPIEN's PhysX GPU library, or raises PhysXGpuUnavailableError naming the fix.

  The library is not in SAPIEN's wheel: ``sapien.physx.enable_gpu()`` downloads it from GitHub
  into ``~/.sapien/physx/<version>/`` on first use. A machine without access to GitHub (many
  clusters) fails there with a network error deep inside the first ``gym.make``. SAPIEN also
  refuses GPU PhysX in a process that already ran CPU PhysX.
  """
  import sapien.physx  # pylint: disable=g-import-not-at-top
  if sapien.physx.is_gpu_enabled():
    return
  try:
    sapien.physx.enable_gpu()
  except Exception as e:  # pylint: disable=broad-except  (requests, zipfile, ctypes errors)
    if "only be enabled once" in str(e):
      raise PhysXGpuUnavailableError(
          "ManiSkill's GPU simulation (sim_backend='physx_cuda') cannot start in this process: "
          "a CPU simulation (physx_cpu) ran in it first, and SAPIEN enables GPU PhysX only in "
          f"a process that has run no CPU PhysX ({e}). Run GPU and CPU simulations in separate "
          "processes") from e
    version = sapien.physx.version()
    folder = os.path.join(os.path.expanduser("~"), ".sapien", "physx", version)
    url = ("https://github.com/sapien-sim/physx-precompiled/releases/download/"
           f"{version}/linux-so.zip")
    raise PhysXGpuUnavailableError(
        "ManiSkill's GPU simulation (sim_backend='physx_cuda') needs SAPIEN's PhysX GPU "
        f"library, which SAPIEN downloads on first use, and loading it failed "
        f"({type(e).__name__}: {e}). Fix: download {url} on a machine with internet and unzip "
        f"it into {folder} (it holds libPhysXGpu_64.so), or simulate on the CPU with "
        "--config.env.kwargs.sim_backend=physx_cpu") from e


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


def _observation_spaces(obs_mode: str, image_size: int, full_dim: int, proprio_dim: int,
                        joints: int, wrist_image_size: Optional[int]) -> gym.spaces.Dict:
  """The per-env observation spaces of the project's obs dict (see the module doc): the
  obs_mode's keys, robot_state's, and rgb_wrist with a wrist camera."""
  box = lambda dim: gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
  image = lambda size: gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
  spaces = {"privileged": box(full_dim)}
  if obs_mode == "state":
    spaces["state"] = box(full_dim)
  elif obs_mode == "state_rgb":
    spaces["state"] = box(proprio_dim)
  if obs_mode != "state":
    spaces["rgb"] = image(image_size)
  spaces.update(qpos=box(joints), qvel=box(joints), tcp_pose=box(7))
  if wrist_image_size:
    spaces["rgb_wrist"] = image(wrist_image_size)
  return gym.spaces.Dict(spaces)


class _Sim:
  """A batched ManiSkill env (torch in, torch out) with the project's semantics (module doc):
  partial auto-reset inside ``step``, one camera image per step, ``final_obs`` of the asked keys
  only, and per-env seeds. Runs all B envs in process, or one env inside a CPU worker."""

  def __init__(self, env: gym.Env, obs_mode: str, camera: str, image_size: int,
               final_obs_keys: Optional[Sequence[str]], ignore_terminations: bool,
               wrist_image_size: Optional[int] = None,
               on_demand_keys: Sequence[str] = ()):
    self.env, self.base = env, env.unwrapped
    self.num_envs = self.base.num_envs
    self.device = self.base.device
    self._obs_mode, self._camera = obs_mode, camera
    self._ignore_terminations = ignore_terminations
    proprio = self.base.agent.get_proprioception()
    # ManiSkill flattens {agent: proprioception, extra: task state} in that order, so the
    # robot's own state is the leading slice of the flat state.
    proprio_dim = sum(int(np.prod(v.shape[1:])) for v in proprio.values())
    space = self.base.single_observation_space
    full_dim = (space["state"] if isinstance(space, gym.spaces.Dict) else space).shape[0]
    joints = int(self.base.agent.robot.get_qpos().shape[-1])
    self.observation_space = _observation_spaces(obs_mode, image_size, full_dim, proprio_dim,
                                                 joints, wrist_image_size)
    self.action_space = self.base.single_action_space
    self._proprio_dim = proprio_dim
    keys = tuple(self.observation_space.spaces)
    self.final_obs_keys = base.final_keys(keys, final_obs_keys)
    unknown = sorted(set(on_demand_keys) - set(keys))
    if unknown:
      raise ValueError(f"on_demand_keys has {unknown[0]!r}, which obs_mode={obs_mode!r} does "
                       f"not give (it gives {', '.join(keys)})")
    self.on_demand_keys = tuple(on_demand_keys)

  def frames(self) -> torch.Tensor:
    """uint8 [B, H, W, 3]: the camera's view of the current state (one render)."""
    if self._camera == "human":
      return self.env.render()
    # The sensor camera, rendered on demand (ManiSkill hides its hidden objects from it).
    return self.base.get_sensor_images()["base_camera"]["rgb"]

  def observe(self, state: torch.Tensor, keys: Sequence[str],
              on_demand: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """The obs dict restricted to ``keys`` from ManiSkill's flat state [B, D]; renders the
    camera only where ``keys`` has ``rgb``. ``on_demand`` bool [B] (None: all): the envs
    whose ``on_demand_keys`` are observed, zeros elsewhere (no render where none is)."""
    privileged = state.float().contiguous()
    # An image only the teacher reads, asked by no env this step: zeros instead of a render.
    skip = lambda key: (on_demand is not None and key in self.on_demand_keys
                        and not bool(on_demand.any()))
    blank = lambda key: torch.zeros((self.num_envs,) + self.observation_space[key].shape,
                                    dtype=torch.uint8, device=self.device)
    out = {}
    if "privileged" in keys:
      out["privileged"] = privileged
    if "state" in keys:
      out["state"] = (privileged if self._obs_mode == "state"
                      else privileged[:, :self._proprio_dim].contiguous())
    if "rgb" in keys:
      out["rgb"] = blank("rgb") if skip("rgb") else self.frames().contiguous()
    out.update({k: v for k, v in robot_state(self.env).items() if k in keys})
    if "rgb_wrist" in keys:
      out["rgb_wrist"] = (blank("rgb_wrist") if skip("rgb_wrist")
                          else wrist_image(self.env).contiguous())
    if on_demand is not None:
      for key in self.on_demand_keys:
        if key in out:
          rows = on_demand.reshape((-1,) + (1,) * (out[key].ndim - 1))
          out[key] = torch.where(rows, out[key], torch.zeros_like(out[key]))
    return out

  def reset(self, seeds: Sequence[int]) -> dict[str, torch.Tensor]:
    """Every env afresh, env i from ``seeds[i]`` alone: a batched reset, then (B > 1) each env
    again on its own, since ManiSkill draws a batched reset's initial states from one generator
    seeded with ``seeds[0]``. B + 1 resets: seconds for thousands of GPU envs."""
    state, _ = self.env.reset(seed=list(seeds))
    if self.num_envs > 1:
      for i, seed in enumerate(seeds):
        # The seed repeated: both the torch generator (seeded with the first) and the numpy
        # generator of env i (ManiSkill's batched RNG, the i-th) start from ``seed``.
        state, _ = self.env.reset(seed=[seed] * self.num_envs, options={
            "env_idx": torch.tensor([i], device=self.device)})
    return self.observe(state, tuple(self.observation_space.spaces))

  def step(self, action: torch.Tensor, on_demand: Optional[torch.Tensor] = None):
    """(obs, reward float32 [B], terminated, truncated, success bool [B], final_obs);
    ``on_demand`` bool [B]: see ``observe``."""
    state, reward, terminated, truncated, info = self.env.step(action)
    success = info.get("success", torch.zeros_like(truncated)).bool()
    terminated = terminated.bool() & (not self._ignore_terminations)
    done = terminated | truncated.bool()
    final = None
    if done.any():
      final = self.observe(state, self.final_obs_keys)  # before the reset overwrites it
      state, _ = self.env.reset(options={"env_idx": torch.nonzero(done).flatten()})
    obs = self.observe(state, tuple(self.observation_space.spaces), on_demand)
    if final is None:
      final_obs = {k: obs[k] for k in self.final_obs_keys}
    else:
      final_obs = {k: torch.where(done.reshape((-1,) + (1,) * (v.ndim - 1)), v, obs[k])
                   for k, v in final.items()}
    return obs, reward.float(), terminated, truncated.bool(), success, final_obs

  def close(self) -> None:
    self.env.close()


def _make_sim(env_id: str, num_envs: int, sim_backend: str, obs_mode: str, reward_mode: str,
              control_mode: str, image_size: int, camera: str, camera_variant: Optional[str],
              max_episode_steps: Optional[int], final_obs_keys: Optional[Sequence[str]],
              ignore_terminations: bool, wrist_image_size: Optional[int] = None,
              render: bool = True, on_demand_keys: Sequence[str] = ()) -> _Sim:
  """The batched ManiSkill env behind ``_Sim``. ``sim_backend`` may name a GPU
  (``physx_cuda:N``; its renderer then runs on the same GPU). ``render=False``: no renderer at
  all (for the spaces alone, 20x faster to build)."""
  size = dict(width=image_size, height=image_size)
  human, sensor = dict(size), dict(size)
  if camera_variant is not None:
    eye, target = CAMERA_VARIANTS[camera_variant]
    (human if camera == "human" else sensor)["pose"] = sapien_utils.look_at(eye, target)
  kwargs = dict(num_envs=num_envs, sim_backend=sim_backend, obs_mode="state",
                reward_mode=reward_mode, control_mode=control_mode,
                render_mode="rgb_array" if render else None,
                human_render_camera_configs=human, sensor_configs=sensor)
  if not render:
    kwargs["render_backend"] = "none"
  elif sim_backend == "physx_cpu":
    kwargs["render_backend"] = "cpu"  # without it SAPIEN first tries CUDA and warns
  else:
    kwargs["render_backend"] = "cuda" + sim_backend[len("physx_cuda"):]  # the same GPU
  if max_episode_steps is not None:
    kwargs["max_episode_steps"] = max_episode_steps
  if wrist_image_size:
    kwargs.update(_wrist_kwargs(sensor, wrist_image_size))
  env = gym.make(env_id, **kwargs)
  return _Sim(env, obs_mode, camera, image_size, final_obs_keys, ignore_terminations,
              wrist_image_size, on_demand_keys)


def _wrist_kwargs(sensor: dict, size: int) -> dict:
  """gym.make kwargs for the Panda with ManiSkill's hand camera at ``size`` x ``size``.

  Settings of ``sensor`` without a camera name apply to every sensor camera, a moved sensor
  camera's pose included: the hand camera's own entry keeps it at its mount, as
  ``panda_wristcam`` defines it.
  """
  return dict(robot_uids=WRIST_ROBOT, sensor_configs={
      **sensor, WRIST_CAMERA: dict(width=size, height=size, pose=sapien.Pose())})


class _Worker(gym.Env):
  """One CPU env (a ``_Sim`` of one) as a plain gymnasium env for AsyncVectorEnv: numpy in and
  out, no batch dim. It resets its own ended episodes (the vector env's autoreset is off) and
  passes the final observation in ``info["final_obs"]``, only on steps that end an episode.
  Its steps observe the on-demand keys while ``on_demand`` is True (set through the vector
  env's ``set_attr``, where it changes)."""

  metadata = {"render_modes": ["rgb_array"]}
  render_mode = "rgb_array"

  def __init__(self, sim: _Sim):
    self._sim = sim
    self.observation_space = sim.observation_space
    self.action_space = sim.action_space
    self.on_demand = True

  @staticmethod
  def _unbatch(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v[0].numpy() for k, v in obs.items()}

  @torch.inference_mode()
  def step(self, action: np.ndarray):
    obs, reward, terminated, truncated, success, final_obs = self._sim.step(
        torch.from_numpy(action)[None], torch.tensor([self.on_demand]))
    info = {"success": bool(success[0])}
    if bool(terminated[0] | truncated[0]):
      info["final_obs"] = self._unbatch(final_obs)
    return (self._unbatch(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]),
            info)

  @torch.inference_mode()
  def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
    return self._unbatch(self._sim.reset([seed])), {}

  @torch.inference_mode()
  def render(self) -> np.ndarray:
    return self._sim.frames()[0].numpy()

  def close(self) -> None:
    self._sim.close()


class _Spaces(gym.Env):
  """What AsyncVectorEnv builds in the trainer's process for the spaces alone: no simulator
  (a CPU PhysX scene there would rule out GPU simulation in that process)."""

  metadata = {"render_modes": ["rgb_array"]}
  render_mode = "rgb_array"

  def __init__(self, observation_space: gym.Space, action_space: gym.Space):
    self.observation_space, self.action_space = observation_space, action_space


def _quiet_worker() -> None:
  # Each worker is one process on a small machine: torch's intra-op threads would only compete
  # with the other workers. Ctrl-C reaches the whole process group: the trainer handles it and
  # closes the workers, which would otherwise raise KeyboardInterrupt mid-step and print
  # tracebacks of their own (SIGTERM stays fatal and quiet: it is how the trainer stops them).
  torch.set_num_threads(1)
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_path(paths: Sequence[str]) -> None:
  """Adds the trainer's import path to a worker's: the forkserver kept the path it started with,
  which may predate where the user's task module was found."""
  sys.path.extend(p for p in paths if p not in sys.path)


def _probe_spaces(connection: Any, paths: Sequence[str], **kwargs) -> None:
  """Sends (observation space, action space) of one CPU env, or the error that building it
  raised, through ``connection``; runs in a child process."""
  _quiet_worker()
  _worker_path(paths)
  try:
    sim = _make_sim(num_envs=1, sim_backend="physx_cpu", render=False, **kwargs)
    connection.send((sim.observation_space, sim.action_space))
    sim.close()
  except Exception as e:  # pylint: disable=broad-except  (re-raised in the parent)
    connection.send(e)


def _exit_status(code: Optional[int]) -> str:
  return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def _cpu_spaces(env_id: str, make_kwargs: dict[str, Any]) -> tuple[gym.Space, gym.Space]:
  """The workers' spaces, read from a short-lived child process (see the module doc)."""
  context = multiprocessing.get_context("forkserver")
  receive, send = context.Pipe(duplex=False)
  child = context.Process(target=_probe_spaces, args=(send, list(sys.path)), kwargs=make_kwargs,
                          daemon=True)
  child.start()
  send.close()
  try:
    answer = receive.recv()
  except EOFError:
    child.join()
    raise base.EnvWorkerError(
        f"ManiSkill {env_id}: the process building one env for its spaces (pid {child.pid}) "
        f"stopped ({_exit_status(child.exitcode)}) before answering: out of memory, or "
        "killed") from None
  child.join()
  if isinstance(answer, Exception):
    raise answer
  return answer


def _make_worker(spaces: tuple[gym.Space, gym.Space], paths: Sequence[str], **kwargs) -> gym.Env:
  if multiprocessing.parent_process() is None:  # AsyncVectorEnv asking for the spaces
    return _Spaces(*spaces)
  _quiet_worker()
  _worker_path(paths)
  return _Worker(_make_sim(num_envs=1, sim_backend="physx_cpu", **kwargs))


def _start_forkserver(task_module: Optional[str]) -> None:
  """Starts this process's forkserver, with the workers' modules (and ``task_module``, the
  user's task's) preloaded, and its resource tracker, where they are not running: each by
  fork + exec (``quiet.fork_exec``). A forkserver already running imports ``task_module`` in
  each worker instead (``gym.make`` of ``package.module:EnvId``)."""
  from multiprocessing import forkserver, resource_tracker  # pylint: disable=g-import-not-at-top
  multiprocessing.set_forkserver_preload(_PRELOAD + ([task_module] if task_module else []))
  with quiet.fork_exec():
    resource_tracker.ensure_running()  # for the workers' shared memory
    forkserver.ensure_running()


class ManiSkillVecEnv:
  """``num_envs`` ManiSkill3 envs of one task behind the VecEnv contract (see module doc).

  Args:
    num_envs: B, the batch size of every array in and out.
    seed: seed of the first reset (env i gets seed + i); ``reset(seed)`` reseeds.
    reward_mode: "normalized_dense", "dense" or "sparse" (success as float32).
    env_id: a ManiSkill3 task id, e.g. "PushCube-v1" (``rpd_jax.envs.tasks.TASKS`` lists the
      paper's eight), or a task of yours as "package.module:EnvId" (``tasks.resolve``).
    obs_mode: what the student sees: "state", "rgb" or "state_rgb".
    image_size: H = W of ``rgb`` and of ``render()`` frames.
    camera: "human" (the paper's view, shows goal markers) or "sensor" (ManiSkill's base camera).
    camera_variant: None, or a key of CAMERA_VARIANTS that moves the camera named by ``camera``.
    control_mode: ManiSkill controller; actions are float32 [B, A] in [-1, 1].
    sim_backend: "auto" (physx_cuda where torch and JAX both see a GPU, else physx_cpu), or
      either one (``devices.resolve_sim_backend``).
    max_episode_steps: None for the task's own time limit (ValueError for a task without one).
    ignore_terminations: success does not end an episode (``terminated`` stays False); the
      published evaluation's fixed-step protocol.
    final_obs_keys: the keys ``StepResult.final_obs`` holds (None: all); the trainer passes the
      student's, evaluation none.
    on_demand_keys: keys observed only for the envs a step asks for (``step(action,
      on_demand)``; ``base``'s module doc): the teacher's camera beside a state student, under a
      teacher budget.
    in_process: None: the GPU simulation in process, the CPU one in worker processes. True runs
      a CPU simulation of one env in this process (no worker).
    wrist_image_size: S, to render the Panda's hand camera as ``rgb_wrist`` [B, S, S, 3] (an
      Octo teacher whose checkpoint reads a wrist camera); None renders none.
  """

  holds_state = False  # re-seeded on resume (base.VecEnv)
  jax_native = False  # a simulator outside JAX: one per process under a mesh

  def __init__(self, num_envs: int, seed: int, reward_mode: str = "normalized_dense",
               env_id: str = "PushCube-v1", obs_mode: str = "state", image_size: int = 256,
               camera: str = "human", camera_variant: Optional[str] = None,
               control_mode: str = "pd_ee_delta_pose", sim_backend: str = "auto",
               max_episode_steps: Optional[int] = None, ignore_terminations: bool = False,
               final_obs_keys: Optional[Sequence[str]] = None,
               on_demand_keys: Sequence[str] = (), in_process: Optional[bool] = None,
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
    self.sim_backend = resolve_backend(sim_backend)
    if in_process is None:
      in_process = self.sim_backend == "physx_cuda"
    if self.sim_backend == "physx_cpu" and in_process and num_envs != 1:
      raise ValueError(f"in_process=True with physx_cpu runs one env (ManiSkill allows one CPU "
                       f"env per process), not num_envs={num_envs}")
    if self.sim_backend == "physx_cuda" and not in_process:
      raise ValueError("physx_cuda runs in process (in_process=None or True)")
    task = tasks.resolve(env_id, where="env_id")
    if max_episode_steps is None and task.max_episode_steps is None:
      raise ValueError(f"env_id={env_id!r} registers no time limit; give max_episode_steps")
    if wrist_image_size is not None and wrist_image_size < 1:
      raise ValueError(f"wrist_image_size={wrist_image_size} must be >= 1 (or None: no wrist "
                       "camera)")
    vulkan.require_vulkan()
    self.num_envs = num_envs
    self.env_id = env_id
    self._device = devices.default_device()  # where every array lands
    # gymnasium imports the task's module first, in whichever process makes the env.
    make_kwargs = dict(env_id=task.make_id, obs_mode=obs_mode, reward_mode=reward_mode,
                       control_mode=control_mode, image_size=image_size, camera=camera,
                       camera_variant=camera_variant, max_episode_steps=max_episode_steps,
                       final_obs_keys=final_obs_keys, ignore_terminations=ignore_terminations,
                       wrist_image_size=wrist_image_size,
                       on_demand_keys=tuple(on_demand_keys))
    self.on_demand_keys = tuple(on_demand_keys)
    self._workers_on_demand = np.ones(num_envs, bool)  # what the CPU workers observe now
    self._sim, self._cpu = None, None
    if in_process:
      backend = self.sim_backend
      if backend == "physx_cuda":
        require_physx_gpu()
        backend = f"physx_cuda:{devices.cuda_ordinal(self._device)}"  # JAX's own GPU
      self._sim = _make_sim(num_envs=num_envs, sim_backend=backend, **make_kwargs)
      self._torch_device = self._sim.device
      self.action_dim = int(np.prod(self._sim.action_space.shape))
      self.final_obs_keys = self._sim.final_obs_keys
    else:
      self._torch_device = torch.device("cpu")
      _start_forkserver(task.module)
      spaces = _cpu_spaces(env_id, make_kwargs)
      fns = [functools.partial(_make_worker, spaces, list(sys.path), **make_kwargs)
             for _ in range(num_envs)]
      self._cpu = gym.vector.AsyncVectorEnv(
          fns, copy=False, context="forkserver",
          autoreset_mode=gym.vector.AutoresetMode.DISABLED)
      self.action_dim = int(np.prod(spaces[1].shape))
      self.final_obs_keys = base.final_keys(tuple(spaces[0].spaces), final_obs_keys)
    # ManiSkill applies its own time limit (gym's env.spec.max_episode_steps is None).
    self.max_episode_steps = int(max_episode_steps or task.max_episode_steps)
    self.observation_spec = base.spec_of(self.reset(seed))

  def _jax(self, x: torch.Tensor | np.ndarray) -> jax.Array:
    return to_jax(x, self._device)

  def reset(self, seed: int) -> base.Observation:
    """Resets every env; env i is seeded with ``seed + i`` (see the module doc). Returns
    obs [B, ...]."""
    seeds = [seed + i for i in range(self.num_envs)]
    if self._sim is not None:
      with torch.inference_mode():
        obs = self._sim.reset(seeds)
      self._settle()
    else:
      try:
        obs = self._own(self._cpu.reset(seed=seeds)[0])
      except (BrokenPipeError, EOFError, ConnectionError) as e:
        raise self._worker_error() from e
    return {k: self._jax(v) for k, v in obs.items()}

  def step(self, action: jax.Array, on_demand: Optional[np.ndarray] = None) -> base.StepResult:
    """Steps every env with float32 action [B, A]; ended episodes are reset inside the step.
    ``on_demand`` bool [B] (None: all): the envs whose observation holds the on-demand keys."""
    if action.shape != (self.num_envs, self.action_dim):
      raise ValueError(f"action has shape {action.shape}; expected (num_envs, action_dim) = "
                       f"{(self.num_envs, self.action_dim)}")
    act = to_torch(jnp.asarray(action, jnp.float32), self._torch_device)
    asked = None
    if on_demand is not None and self.on_demand_keys:
      asked = np.asarray(on_demand, bool).reshape(self.num_envs)
    if self._sim is not None:
      rows = None if asked is None else torch.from_numpy(asked).to(self._torch_device)
      with torch.inference_mode():
        out = self._sim.step(act, rows)
      self._settle()
      return self._result(*out)
    self._tell_workers(np.ones(self.num_envs, bool) if asked is None else asked)
    return self._step_cpu(act.numpy())

  def _tell_workers(self, asked: np.ndarray) -> None:
    """Sets each CPU worker's ``on_demand`` for the coming steps, where it changed (one round
    trip to the workers)."""
    if np.array_equal(asked, self._workers_on_demand):
      return
    try:
      self._cpu.set_attr("on_demand", [bool(a) for a in asked])
    except (BrokenPipeError, EOFError, ConnectionError) as e:
      raise self._worker_error() from e
    self._workers_on_demand = asked.copy()

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
    if self._torch_device.type == "cuda":
      torch.cuda.synchronize(self._torch_device)

  def _step_cpu(self, act: np.ndarray) -> base.StepResult:
    try:
      obs, reward, terminated, truncated, info = self._cpu.step(act)
    except (BrokenPipeError, EOFError, ConnectionError) as e:
      raise self._worker_error() from e
    obs = self._own(obs)
    no = np.zeros(self.num_envs, bool)
    success = info.get("success", no) & info.get("_success", no)
    ended = info.get("final_obs")  # object array: an ended episode's last obs dict, else None
    final_obs = {k: obs[k] for k in self.final_obs_keys}
    if ended is not None:
      final_obs = {k: torch.stack([v[i] if f is None else torch.from_numpy(f[k])
                                   for i, f in enumerate(ended)])
                   for k, v in final_obs.items()}
    return self._result(obs, reward, terminated, truncated, success, final_obs)

  @staticmethod
  def _own(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    # AsyncVectorEnv (copy=False) hands out views of its shared memory, which the next step
    # overwrites: copy them once, into torch's 64-byte aligned memory that JAX's CPU client then
    # aliases (numpy's 16-byte aligned arrays would be copied a second time by DLPack).
    return {k: torch.from_numpy(v).clone() for k, v in obs.items()}

  def _result(self, obs, reward, terminated, truncated, success, final_obs) -> base.StepResult:
    # The CPU workers' reward/flags are small numpy arrays (DLPack copies them, see _own); in
    # process they already are torch tensors on the simulator's device and stay there.
    device = self._torch_device
    as_bool = lambda x: self._jax(torch.as_tensor(x, dtype=torch.bool, device=device))
    return base.StepResult(
        obs={k: self._jax(v) for k, v in obs.items()},
        reward=self._jax(torch.as_tensor(reward, dtype=torch.float32, device=device)),
        terminated=as_bool(terminated),
        truncated=as_bool(truncated),
        success=as_bool(success),
        final_obs={k: self._jax(v) for k, v in final_obs.items()},
    )

  def render(self) -> jax.Array:
    """uint8 [B, H, W, 3] frames of the current state from the camera, for videos."""
    if self._sim is not None:
      with torch.inference_mode():
        frames = self._sim.frames()
      self._settle()
      return self._jax(frames)
    try:
      return self._jax(np.stack(self._cpu.render()))
    except (BrokenPipeError, EOFError, ConnectionError) as e:
      raise self._worker_error() from e

  def _worker_error(self) -> base.EnvWorkerError:
    """The error for a CPU worker process that is gone, naming it and how it ended."""
    dead = [(i, p) for i, p in enumerate(self._cpu.processes) if not p.is_alive()]
    names = "; ".join(f"worker {i} (pid {p.pid}, {_exit_status(p.exitcode)})" for i, p in dead)
    return base.EnvWorkerError(
        f"ManiSkill {self.env_id}: {names or 'a worker'} of {self.num_envs} stopped answering "
        "(out of memory, or killed); the simulation cannot go on")

  def close(self, terminate: bool = False) -> None:
    """Closes the simulation; ``terminate`` (or a dead worker) stops CPU workers at once,
    without waiting for a step in flight."""
    if self._sim is not None:
      self._sim.close()
      return
    terminate = terminate or not all(p.is_alive() for p in self._cpu.processes)
    if terminate:
      # A step in flight is abandoned: without this, gymnasium's close first waits for it,
      # reading pipes of workers that may already be gone.
      self._cpu._state = AsyncState.DEFAULT  # pylint: disable=protected-access
    self._cpu.close(terminate=terminate)
