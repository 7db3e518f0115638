"""Demonstrations for fine-tuning Octo teachers: record them, store them, stream them into JAX.

Recording (``python -m rpd_jax.pipeline.demos --env_id=PushCube-v1 --episodes=200
--out=demos/pushcube``; any task with ``--controller`` naming the paper task whose controller
solves it and ``--instruction``)
runs a scripted controller (``rpd_jax.teachers.maniskill_scripted``, which reads the privileged
state) on ManiSkill's CPU simulation and keeps the successful episodes no longer than
``--max_length`` steps. Episode ``k`` of a folder is the env reset with seed ``seed + k``, so
every kept episode can be replayed.

On-disk format (one folder per task and recording; ``FORMAT_VERSION`` below):

  <out>/metadata.json           env_id, instruction, image_size, camera, control_mode,
                                controller, noise, max_length, attempts, kept, seconds, ...
  <out>/episode_<seed>.npz      one successful episode of T steps (numpy, compressed):
      image   uint8 [T, S, S, 3]  the human camera at S x S, the frame the action was taken on
      action  float32 [T, 7]      pd_ee_delta_pose actions as executed, in [-1, 1]
                                  (gripper: -1 closes, +1 opens, ManiSkill's convention)
      state   float32 [T, P]      ManiSkill's flat state (privileged), for analysis and replay
      reward  float32 [T]         normalized dense reward received after each action
      seed    int64 []            the env seed of the episode's reset
      env_id, instruction  str []
  metadata.json may also name ``gripper``: the convention of the actions' last dimension,
  ``maniskill`` (the default: -1 closes, +1 opens) or ``octo`` (0 closed, 1 open), for
  demonstrations written by other tools in this layout.

Demonstrations in ManiSkill's own trajectory format (``<name>.h5`` + ``<name>.json``, what its
``RecordEpisode`` and ``replay_trajectory`` write) load too, named by their ``.h5`` path
(``rpd_jax.pipeline.maniskill_demos``): the rgb of one of their cameras and the controller's
actions, in ManiSkill's gripper convention.

Loading: ``load(folders)`` reads one or more folders into a ``Demos`` (every episode's steps
concatenated, with episode boundaries), and ``batches(...)`` streams random training windows
into JAX (Octo's layout: a window of W frames per sample, each with an action chunk of H steps,
and the pad masks where a window or chunk runs over the episode's start or end), prefetching on
a background thread.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import queue
import threading
import time
from typing import Iterator, Optional, Sequence

import jax
import numpy as np

from rpd_jax.errors import ConfigError
from rpd_jax.pipeline import maniskill_demos

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Demos:
  """Episodes of one or more folders, concatenated along time.

  Attributes:
    image: uint8 [N, S, S, 3], every step of every episode.
    action: float32 [N, A].
    episode_start: int64 [N], the index of the first step of each step's episode.
    episode_end: int64 [N], one past the index of its last step.
    task: int32 [N], the index of each step's task in ``instructions``.
    instructions: the instruction of each task, in the order the folders were given.
    episodes: the number of episodes.
  """

  image: np.ndarray
  action: np.ndarray
  episode_start: np.ndarray
  episode_end: np.ndarray
  task: np.ndarray
  instructions: tuple[str, ...]
  episodes: int

  def __len__(self) -> int:
    return int(self.action.shape[0])


def episode_files(folder: str) -> list[str]:
  return sorted(glob.glob(os.path.join(folder, "episode_*.npz")))


def read_metadata(folder: str) -> dict:
  path = os.path.join(folder, "metadata.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: {folder!r} is not a demonstration folder "
                            "(record one with `python -m rpd_jax.pipeline.demos`)")
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format_version") != FORMAT_VERSION:
    raise ConfigError(f"{path}: format_version {meta.get('format_version')!r}, this rpd_jax "
                      f"reads {FORMAT_VERSION}; record the demonstrations again")
  return meta


GRIPPERS = ("maniskill", "octo")


def source_info(source: str) -> dict:
  """What a demonstration source says of itself: a folder's metadata.json, or a ManiSkill
  trajectory's ``env_info`` (its ``env_kwargs`` merged in)."""
  if source.endswith(".h5"):
    env_info = maniskill_demos.read_info(source).get("env_info") or {}
    return {**env_info.get("env_kwargs", {}), **env_info}
  return read_metadata(source)


def _episodes(source: str, max_episodes: Optional[int], camera: Optional[str]
              ) -> tuple[list[tuple[np.ndarray, np.ndarray]], Optional[str], str]:
  """([(image, action in ManiSkill's gripper convention)], its instruction or None, where)."""
  if source.endswith(".h5"):
    episodes, _ = maniskill_demos.read(source, camera, max_episodes)
    return episodes, None, source
  meta = read_metadata(source)
  gripper = meta.get("gripper", "maniskill")
  if gripper not in GRIPPERS:
    raise ConfigError(f"{source}/metadata.json: gripper={gripper!r}; use one of "
                      f"{', '.join(GRIPPERS)}")
  files = episode_files(source)[:max_episodes]
  if not files:
    raise FileNotFoundError(f"no episode_*.npz in {source}")
  episodes = []
  for path in files:
    with np.load(path) as ep:
      action = ep["action"].astype(np.float32)
      if gripper == "octo":  # 0 closed, 1 open -> -1 closes, +1 opens
        action[..., -1] = 2.0 * action[..., -1] - 1.0
      episodes.append((ep["image"], action))
  return episodes, meta["instruction"], f"{source}/metadata.json"


def load(folders: str | Sequence[str], max_episodes: Optional[int] = None,
         instructions: Optional[Sequence[Optional[str]]] = None,
         camera: Optional[str] = None) -> Demos:
  """Reads the episodes of ``folders`` (one task per folder or ManiSkill ``.h5`` file) into
  memory, their actions in ManiSkill's gripper convention.

  ``max_episodes``: only the first N episodes of each source (by seed), e.g. to train a
  teacher on little data. ``instructions``: one per source, None keeping a folder's own (a
  ``.h5`` file has none: ""). ``camera``: which camera of a ``.h5`` file.
  """
  if isinstance(folders, str):
    folders = [folders]
  if instructions is not None and len(instructions) != len(folders):
    raise ConfigError(f"{len(instructions)} instructions for {len(folders)} demonstration "
                      "sources; give one per source (None keeps a folder's own)")
  images, actions, starts, ends, tasks, texts = [], [], [], [], [], []
  offset, episodes, size = 0, 0, None
  for task_index, source in enumerate(folders):
    played, instruction, where = _episodes(source, max_episodes, camera)
    given = instructions[task_index] if instructions is not None else None
    texts.append(given if given is not None else instruction or "")
    for image, action in played:
      if size is not None and image.shape[1] != size:
        raise ConfigError(f"{where}: image_size {image.shape[1]} differs from the other "
                          f"sources' {size}; record all tasks at the teacher's resolution")
      size, n = image.shape[1], action.shape[0]
      images.append(image)
      actions.append(action)
      starts.append(np.full(n, offset, np.int64))
      ends.append(np.full(n, offset + n, np.int64))
      tasks.append(np.full(n, task_index, np.int32))
      offset += n
      episodes += 1
  return Demos(image=np.concatenate(images), action=np.concatenate(actions),
               episode_start=np.concatenate(starts), episode_end=np.concatenate(ends),
               task=np.concatenate(tasks), instructions=tuple(texts), episodes=episodes)


def window_indices(demos: Demos, steps: np.ndarray, window: int, horizon: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Gather indices of Octo training samples that end their window at ``steps`` [B].

  Returns:
    frame_index [B, W]: frames t-W+1 .. t, clamped to the episode's first frame;
    timestep_pad_mask bool [B, W]: False for window slots before the episode's start;
    action_index [B, W, H]: actions s .. s+H-1 for every window slot s, clamped to the
      episode's last action;
    action_pad_mask bool [B, W, H]: False for chunk steps past the episode's end.
  """
  start = demos.episode_start[steps][:, None]
  end = demos.episode_end[steps][:, None]
  slots = steps[:, None] + np.arange(-window + 1, 1)[None]  # [B, W]
  pad_mask = slots >= start
  frame_index = np.maximum(slots, start)
  chunk = frame_index[..., None] + np.arange(horizon)  # [B, W, H]
  action_pad_mask = chunk < end[..., None]
  action_index = np.minimum(chunk, end[..., None] - 1)
  return frame_index, pad_mask, action_index, action_pad_mask


def sample_batch(demos: Demos, rng: np.random.Generator, batch_size: int, window: int,
                 horizon: int) -> dict[str, np.ndarray]:
  """A random batch of training windows (numpy), uniform over all steps.

  Returns {image [B, W, S, S, 3] uint8, timestep_pad_mask [B, W], action [B, W, H, A],
  action_pad_mask [B, W, H], task [B] int32}.
  """
  steps = rng.integers(0, len(demos), batch_size)
  frames, pad, actions, action_pad = window_indices(demos, steps, window, horizon)
  return {"image": demos.image[frames], "timestep_pad_mask": pad,
          "action": demos.action[actions], "action_pad_mask": action_pad,
          "task": demos.task[steps]}


def batches(demos: Demos, batch_size: int, window: int, horizon: int, seed: int,
            prefetch: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Endless random batches (``sample_batch``) as JAX arrays, gathered on a background thread."""
  out: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
  stop = threading.Event()

  def produce():
    rng = np.random.default_rng(seed)
    while not stop.is_set():
      batch = jax.device_put(sample_batch(demos, rng, batch_size, window, horizon))
      while not stop.is_set():
        try:
          out.put(batch, timeout=0.1)
          break
        except queue.Full:
          continue

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      yield out.get()
  finally:
    stop.set()


def action_statistics(actions: np.ndarray, mask: Optional[np.ndarray] = None) -> dict:
  """Octo's ``dataset_statistics["action"]`` of actions [N, A] (mask: dims to normalise)."""
  if mask is None:
    mask = np.ones(actions.shape[1], bool)
  return {"mean": actions.mean(0), "std": actions.std(0), "min": actions.min(0),
          "max": actions.max(0), "p01": np.percentile(actions, 1, axis=0),
          "p99": np.percentile(actions, 99, axis=0), "mask": np.asarray(mask, bool)}


def _save_episode(out: str, seed: int, env_id: str, instruction: str, image: np.ndarray,
                  action: np.ndarray, state: np.ndarray, reward: np.ndarray) -> None:
  """One kept episode [T, ...] as ``out/episode_<seed>.npz``, written whole or not at all."""
  path = os.path.join(out, f"episode_{seed:07d}.npz")
  np.savez_compressed(path + ".tmp.npz", image=image.astype(np.uint8),
                      action=action.astype(np.float32), state=state.astype(np.float32),
                      reward=reward.astype(np.float32), seed=np.int64(seed),
                      env_id=np.str_(env_id), instruction=np.str_(instruction))
  os.replace(path + ".tmp.npz", path)


def record(env_id: str, episodes: int, out: str, *, image_size: int = 64,
           camera: str = "human", camera_variant: Optional[str] = None,
           noise: float = 0.0, max_length: Optional[int] = None, num_envs: int = 2,
           seed: int = 0, instruction: Optional[str] = None, controller: Optional[str] = None,
           progress: bool = True) -> dict:
  """Records ``episodes`` successful scripted episodes of ``env_id`` into ``out``.

  Episodes are attempted in rounds of ``num_envs`` envs reset with consecutive seeds; failed
  ones and ones longer than ``max_length`` (default: the task's time limit) are dropped and
  attempts continue until ``episodes`` are kept (or 4x as many attempts fail to yield them).
  Existing episodes in ``out`` count: an interrupted recording resumes where it stopped.

  Args:
    env_id: any ManiSkill task (``tasks.resolve``: yours as "package.module:EnvId") that a
      scripted controller solves: its own (``maniskill_scripted.CONTROLLERS``) or
      ``controller``'s.
    episodes: successful episodes to keep.
    out: the output folder (created).
    image_size: S, the frames' resolution: the teacher's input size (no resize later).
    camera, camera_variant: as ``ManiSkillVecEnv``'s.
    noise: std of Gaussian noise added to the controller's actions before execution (the
      executed action is recorded), for more varied demonstrations.
    max_length: the longest episode kept, in steps.
    num_envs: parallel CPU envs (worker processes).
    seed: seed of the first attempt; attempt k uses seed + k.
    instruction: the episodes' language instruction (default: the paper's, for its tasks;
      else none, "").
    controller: whose scripted controller to run (default: the task's own), e.g.
      "PushCube-v1" for a variant of PushCube with the same state layout.
    progress: show a progress bar.

  Returns:
    The metadata written to ``out/metadata.json``.
  """
  import tqdm  # pylint: disable=g-import-not-at-top
  from rpd_jax import rollout  # pylint: disable=g-import-not-at-top
  from rpd_jax.envs import tasks  # pylint: disable=g-import-not-at-top
  from rpd_jax.teachers import maniskill_scripted  # pylint: disable=g-import-not-at-top

  task = tasks.resolve(env_id, where="--env_id")
  controller = controller or task.name
  if controller not in maniskill_scripted.CONTROLLERS:
    raise ConfigError(f"--env_id={env_id!r} has no scripted controller to record; use one of "
                      f"{', '.join(maniskill_scripted.CONTROLLERS)}, or name the one that "
                      "solves it with --controller")
  if instruction is None:
    instruction = task.info.instruction if task.info else ""
  for name, value, least in (("episodes", episodes, 1), ("image_size", image_size, 16),
                             ("num_envs", num_envs, 1), ("max_length", max_length or 1, 1)):
    if value < least:
      raise ConfigError(f"--{name}={value} must be >= {least}")
  if noise < 0:
    raise ConfigError(f"--noise={noise} is a standard deviation; use >= 0")
  max_length = max_length or task.max_episode_steps
  teacher = maniskill_scripted.make_teacher(task=controller, noise=noise)
  policy = rollout.teacher_policy(teacher)
  os.makedirs(out, exist_ok=True)
  kept = len(episode_files(out))
  meta_path = os.path.join(out, "metadata.json")
  meta = {}
  if os.path.isfile(meta_path):
    meta = read_metadata(out)
    for key, value in (("env_id", env_id), ("image_size", image_size), ("camera", camera),
                       ("camera_variant", camera_variant), ("noise", noise)):
      if meta[key] != value:
        raise ConfigError(f"{out} holds demonstrations with {key}={meta[key]!r}, not "
                          f"{value!r}; use another folder")
  attempts, seconds = meta.get("attempts", 0), meta.get("seconds", 0.0)
  from rpd_jax.envs import maniskill  # pylint: disable=g-import-not-at-top  (after the checks)
  env = maniskill.ManiSkillVecEnv(num_envs=num_envs, seed=seed + attempts,
                                  reward_mode="normalized_dense", env_id=env_id,
                                  obs_mode="state_rgb", image_size=image_size, camera=camera,
                                  camera_variant=camera_variant, sim_backend="physx_cpu")

  def write_meta():
    meta.update(format_version=FORMAT_VERSION, env_id=env_id, instruction=instruction,
                image_size=image_size, camera=camera, camera_variant=camera_variant,
                control_mode="pd_ee_delta_pose", sim_backend=env.sim_backend,
                controller=teacher.name, noise=noise,
                max_length=max_length, first_seed=seed, attempts=attempts, kept=kept,
                success_rate=kept / max(attempts, 1), seconds=round(seconds, 1),
                episodes_per_minute=round(60 * kept / max(seconds, 1e-9), 1))
    with open(meta_path + ".tmp", "w") as f:
      json.dump(meta, f, indent=2)
    os.replace(meta_path + ".tmp", meta_path)

  bar = tqdm.tqdm(total=episodes, initial=kept, unit="episode", disable=not progress,
                  desc=f"demos {env_id}")
  key = jax.random.key(seed)
  try:
    while kept < episodes:
      if attempts >= 4 * episodes + 4 * num_envs:
        raise ConfigError(f"{env_id}: only {kept} of {attempts} attempts succeeded within "
                          f"{max_length} steps; the controller is too weak at noise={noise}: "
                          "lower --noise or raise --max_length")
      started = time.perf_counter()
      seeds = [seed + attempts + i for i in range(num_envs)]
      steps, alive = rollout.first_episodes(
          env, policy, seeds[0], jax.random.fold_in(key, attempts),
          keep=lambda t: (t.obs["rgb"], t.obs["privileged"], t.action, t.reward, t.success))
      image, state, action, reward, success = jax.device_get(steps)
      success = np.any(success & alive, axis=0)
      for i in range(num_envs):
        length = int(alive[:, i].sum())
        if kept < episodes and success[i] and length <= max_length:
          _save_episode(out, seeds[i], env_id, instruction, image[:length, i],
                        action[:length, i], state[:length, i], reward[:length, i])
          kept += 1
          bar.update(1)
      attempts += num_envs
      seconds += time.perf_counter() - started
      bar.set_postfix(success=f"{kept / attempts:.2f}",
                      per_min=f"{60 * kept / max(seconds, 1e-9):.1f}")
      write_meta()
  finally:
    bar.close()
    env.close()
  write_meta()
  return meta


def main() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  meta = record(f.env_id, f.episodes, f.out, image_size=f.image_size, camera=f.camera,
                camera_variant=f.camera_variant, noise=f.noise, max_length=f.max_length,
                num_envs=f.num_envs, seed=f.seed, instruction=f.instruction,
                controller=f.controller)
  print(f"{meta['env_id']}: {meta['kept']} episodes in {f.out} ({meta['attempts']} attempts, "
        f"success {meta['success_rate']:.2f}, {meta['episodes_per_minute']} episodes/min)")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  from rpd_jax import cli  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("env_id", "PushCube-v1", "a ManiSkill task (yours: package.module:EnvId) "
                      "that a scripted controller solves")
  flags.DEFINE_string("instruction", None, "the episodes' instruction (default: the paper's, "
                      "for its tasks)")
  flags.DEFINE_string("controller", None, "whose scripted controller (default: the task's "
                      "own), e.g. PushCube-v1 for a variant of PushCube")
  flags.DEFINE_integer("episodes", 200, "successful episodes to keep")
  flags.DEFINE_string("out", None, "output folder", required=True)
  flags.DEFINE_integer("image_size", 64, "frame resolution: the teacher's input size")
  flags.DEFINE_enum("camera", "human", ["human", "sensor"], "which camera to record")
  flags.DEFINE_string("camera_variant", None, "a moved camera (envs.maniskill.CAMERA_VARIANTS)")
  flags.DEFINE_float("noise", 0.0, "std of noise added to the executed actions")
  flags.DEFINE_integer("max_length", None, "drop episodes longer than this (default: the "
                       "task's time limit)")
  flags.DEFINE_integer("num_envs", 2, "parallel CPU envs")
  flags.DEFINE_integer("seed", 0, "seed of the first attempt")
  cli.run(main)
