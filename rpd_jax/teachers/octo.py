"""Octo as an in-process RPD teacher: the adapter between ManiSkill observations and Octo.

What a checkpoint reads is decided once, from its files (``plan_feed``), before anything is
built: every camera its image tokenizers read (``image_primary`` from ``obs["rgb"]``,
``image_wrist`` from ``obs["rgb_wrist"]``), its ``proprio`` (the env observations named by
``config.teacher.kwargs.proprio``), its window, head, action normalisation and statistics, its
task (instruction, or goal image). Anything the adapter cannot feed exactly is refused with one
ConfigError naming the piece; nothing is dropped or adapted silently, and ``describe`` says how
the checkpoint is fed (the trainer logs it; ``python -m rpd_jax.pipeline.inspect`` prints it).

One teacher call, inside the jitted PPO update, for a batch of B observations:

1. each camera's images uint8 [B, H, W, 3] of any size -> the checkpoint's size for that camera
   (read from its example batch), resized on device as Octo's data pipeline and gym wrapper do
   (lanczos3 with antialiasing, rounded and clipped to uint8), the primary camera optionally
   after a centre crop; proprio: the named observations concatenated [B, P] and normalised with
   the checkpoint's proprio statistics, as Octo's data pipeline does;
2. a window of W frames (W = 1 or 2, the checkpoint's by default): with W = 2 the previous
   frame comes from ``prev_obs``; at an episode start (``is_first``) the current frame is
   repeated and the first timestep is padded out, as Octo's ``HistoryWrapper`` does after a
   reset;
3. the task: the instruction's T5 embedding (computed once at construction), or a goal image
   read from a file, stored in the teacher's params (an argument of the jitted update, not a
   constant baked into it);
4. the head gives chunks [B, 4, 7]: Octo's diffusion head samples them (N chunks for PPD), a
   deterministic head (L1ActionHead, MSEActionHead) predicts one (every sample is that chunk);
   they are unnormalised with the checkpoint's action statistics and normalisation type
   ("normal" or "bounds");
5. the gripper (``gripper``): "maniskill" maps Octo's 1 = open in [0, 1] to ManiSkill's
   pd_ee_delta_pose gripper action in [-1, 1] (+1 = open: the Panda's finger target goes from
   -0.01 m at -1 to 0.04 m at +1) and clips every dim to the env's [-1, 1]; "clip" only clips
   (a checkpoint trained on ManiSkill's own [-1, 1] gripper); "raw" leaves the actions as the
   checkpoint gives them. The chunk's first action is returned.

Shapes are fixed by the observation batch, so the teacher compiles once per batch size.
``TemporalEnsemble`` averages overlapping chunks (``teacher.apply_fn.chunks``) when a teacher
drives an env on its own.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rpd_jax import octo
from rpd_jax.envs.base import Observation
from rpd_jax.errors import ConfigError
from rpd_jax.octo import text
from rpd_jax.octo.config import ImageTokenizerSpec, LowdimTokenizerSpec
from rpd_jax.octo.transformer import ATTENTIONS
from rpd_jax.teachers import records
from rpd_jax.teachers.base import GRIPPER_MODES, Teacher, TeacherOutput, map_gripper

NORMALIZATION_TYPES = ("normal", "bounds")
# The cameras a checkpoint may read, and the teacher kwarg naming the observation each comes
# from (with its default): the primary (third-person) camera and the wrist camera.
CAMERA_KWARGS = {"image_primary": ("image_key", "rgb"), "image_wrist": ("wrist_image_key",
                                                                         "rgb_wrist")}
# What Octo's fine-tuning pipeline calls the robot's low-dimensional state.
PROPRIO = "proprio"
# An observation key, optionally sliced on its last axis: "qpos", "qpos[:7]", "tcp_pose[0:3]".
_PROPRIO_SOURCE = re.compile(r"^(\w+)(?:\[(-?\d*):(-?\d*)\])?$")
_KWARGS = "config.teacher.kwargs"


def resize_images(images: jax.Array, size: tuple[int, int],
                  center_crop: Optional[float] = None) -> jax.Array:
  """uint8 [..., H, W, 3] -> uint8 [..., size[0], size[1], 3], as Octo's pipeline resizes.

  Lanczos3 with antialiasing, rounded and clipped, like the official ``ResizeImageWrapper``
  (``tf.image.resize(method="lanczos3", antialias=True)``). ``center_crop``, if set, first keeps
  the central fraction of the image's area (0.9: the mean of the random crops of 0.8-1.0 of the
  area that Octo's training augmentation applied to the primary camera), same aspect ratio.
  """
  height, width = images.shape[-3:-1]
  if center_crop is not None:
    if not 0.0 < center_crop <= 1.0:
      raise ValueError(f"center_crop={center_crop} must be an area fraction in (0, 1]")
    side = math.sqrt(center_crop)
    crop_h, crop_w = round(height * side), round(width * side)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    images = images[..., top:top + crop_h, left:left + crop_w, :]
    height, width = crop_h, crop_w
  if (height, width) == tuple(size):
    return images
  shape = images.shape[:-3] + tuple(size) + images.shape[-1:]
  resized = jax.image.resize(images.astype(jnp.float32), shape, method="lanczos3",
                             antialias=True)
  return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)


def history_window(frame: jax.Array, prev_frame: jax.Array, is_first: jax.Array,
                   window: int) -> tuple[jax.Array, jax.Array]:
  """Stacks Octo's observation window and its timestep pad mask.

  Args:
    frame, prev_frame: [B, ...] the current and the previous input of each env (an image
      [B, H, W, 3], or proprio [B, P]).
    is_first: bool [B], True where ``frame`` starts an episode (``prev_frame`` is another one's).
    window: 1 or 2.

  Returns:
    frames [B, window, H, W, 3] (oldest first) and timestep_pad_mask bool [B, window] (True =
    valid). At an episode start the current frame is repeated and the older timestep padded,
    as Octo's HistoryWrapper does after a reset.
  """
  batch = frame.shape[0]
  if window == 1:
    return frame[:, None], jnp.ones((batch, 1), bool)
  if window != 2:
    raise ValueError(f"window={window}: Octo's released models take a window of 1 or 2")
  first = is_first.reshape((batch,) + (1,) * (frame.ndim - 1))
  older = jnp.where(first, frame, prev_frame)
  mask = jnp.stack([~is_first, jnp.ones_like(is_first)], axis=1)
  return jnp.stack([older, frame], axis=1), mask


def dataset_statistics(statistics: Optional[Mapping[str, Any]], dataset_name: Optional[str] = None
                       ) -> Optional[Mapping[str, Any]]:
  """The one dataset's statistics {action, proprio?, ...} to use.

  Fine-tuned checkpoints carry one statistics dict; pretrained ones one per dataset name, of
  which ``dataset_name`` picks one. Randomly initialised models have none (None).
  """
  if statistics is None:
    return None
  if "action" in statistics:
    if dataset_name is not None:
      raise ConfigError(f"{_KWARGS}.dataset_name={dataset_name!r}, but this checkpoint has one "
                        "statistics dict (a fine-tuned checkpoint's); leave dataset_name unset")
    return statistics
  if dataset_name not in statistics:
    raise ConfigError(
        f"{_KWARGS}.dataset_name={dataset_name!r}: this checkpoint has statistics per dataset; "
        f"set it to one of {', '.join(sorted(statistics))}")
  return statistics[dataset_name]


def _arrays(stats: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Per-dim statistics as arrays (mask bool, the rest float32); counts (scalars) dropped."""
  out = {}
  for key, value in stats.items():
    value = np.asarray(value)
    if value.ndim == 1:  # mean, std, min, max, p01, p99, mask
      out[key] = value.astype(bool if key == "mask" else np.float32)
  return out


def action_statistics(statistics: Optional[Mapping[str, Any]],
                      dataset_name: Optional[str] = None) -> Optional[dict[str, np.ndarray]]:
  """The ``action`` statistics to unnormalise with, as arrays; None for a model without any
  (the actions stay normalised)."""
  chosen = dataset_statistics(statistics, dataset_name)
  return None if chosen is None else _arrays(chosen["action"])


@dataclasses.dataclass(frozen=True)
class Camera:
  """A camera the checkpoint reads: its key, the env observation it is fed from, its size."""

  key: str  # the checkpoint's, e.g. "image_primary"
  obs_key: str  # the env's, e.g. "rgb"
  size: tuple[int, int]  # (H, W) of the checkpoint's example batch
  center_crop: Optional[float] = None
  goal: bool = False  # its tokenizer stacks a goal image of this camera (task_stack_keys)


def _observation_keys(cameras, proprio) -> tuple[str, ...]:
  """The observation keys of ``cameras`` and ``proprio`` sources, in order, without repeats."""
  return tuple(dict.fromkeys([c.obs_key for c in cameras] + [key for key, _, _ in proprio]))


@dataclasses.dataclass(frozen=True)
class Feed:
  """How a checkpoint is fed: decided from its files and the teacher kwargs (``plan_feed``).

  ``proprio``: (observation key, start, stop) slices concatenated into the checkpoint's
  ``proprio`` of ``proprio_dim`` dims, or () when it reads none.
  """

  name: str
  folder: str
  step: int
  cameras: tuple[Camera, ...]
  proprio: tuple[tuple[str, Optional[int], Optional[int]], ...]
  proprio_dim: int
  window: int
  trained_window: int
  head: Any  # rpd_jax.octo.config.HeadSpec
  normalization_type: str
  normalization_source: str
  action_mask: tuple[bool, ...]
  language: Optional[str]  # the language encoder's name, None without language input
  instruction: Optional[str]
  goal_image: Optional[str]
  gripper: str
  dataset_name: Optional[str]

  @property
  def observation_keys(self) -> tuple[str, ...]:
    """The env observations the teacher reads, in order, without repeats."""
    return _observation_keys(self.cameras, self.proprio)


def parse_proprio(proprio: Optional[str | Sequence[str]]
                  ) -> tuple[tuple[str, Optional[int], Optional[int]], ...]:
  """"qpos,tcp_pose[:3]" (or a sequence of such items) -> ((key, start, stop), ...)."""
  if proprio is None:
    return ()
  items = proprio.split(",") if isinstance(proprio, str) else list(proprio)
  out = []
  for item in (i.strip() for i in items):
    match = _PROPRIO_SOURCE.match(item)
    if not match:
      raise ConfigError(
          f"{_KWARGS}.proprio has {item!r}; give observation keys, each optionally sliced on "
          "its last axis, comma-separated, e.g. proprio=qpos[:7],tcp_pose")
    key, start, stop = match.groups()
    out.append((key, int(start) if start else None, int(stop) if stop else None))
  return tuple(out)


def _configured_normalization(config: Mapping[str, Any]) -> Optional[str]:
  """The normalisation type the checkpoint's training config records, if it records one:
  ``dataset_kwargs.action_proprio_normalization_type`` (fine-tuning configs), or the one of
  every entry of ``dataset_kwargs.dataset_kwargs_list`` (pretraining mixes)."""
  kwargs = config.get("dataset_kwargs") or {}
  found = {kwargs.get("action_proprio_normalization_type")}
  found |= {d.get("action_proprio_normalization_type")
            for d in kwargs.get("dataset_kwargs_list") or ()}
  found.discard(None)
  if len(found) > 1:
    raise ConfigError(
        f"the checkpoint's config.json records several action normalisation types "
        f"({', '.join(sorted(found))}); set {_KWARGS}.normalization_type to the one of the "
        f"dataset its statistics come from ({', '.join(NORMALIZATION_TYPES)})")
  return found.pop() if found else None


def _refuse(files: octo.CheckpointFiles, message: str) -> ConfigError:
  return ConfigError(f"the Octo checkpoint {files.folder}: {message}")


def _cameras(files, spec, kwargs) -> tuple[Camera, ...]:
  """Every camera an image tokenizer reads; refuses one the adapter has no observation for."""
  obs = files.example_batch["observation"]
  cameras = []
  for name, tok in spec.observation_tokenizers:
    if not isinstance(tok, ImageTokenizerSpec):
      continue
    keys = [k for k in sorted(obs) if any(re.match(p, k) for p in tok.obs_stack_keys)]
    for key in keys:
      if key not in CAMERA_KWARGS:
        raise _refuse(files, (
            f"its observation tokenizer {name!r} reads {key!r}; rpd_jax feeds only "
            + " and ".join(f"{k} (from the observation {_KWARGS}.{kw} names)"
                           for k, (kw, _) in CAMERA_KWARGS.items())))
      kwarg, default = CAMERA_KWARGS[key]
      goal = any(re.match(p, key) for p in tok.task_stack_keys)
      crop = kwargs.get("center_crop") if key == "image_primary" else None
      cameras.append(Camera(key, kwargs.get(kwarg) or default, tuple(np.shape(obs[key])[2:4]),
                            crop, goal))
  if not cameras:
    raise _refuse(files, "its example batch has no camera an image tokenizer reads ("
                  f"{', '.join(CAMERA_KWARGS)}); rpd_jax's teacher needs at least one")
  return tuple(cameras)


def _proprio(files, spec, statistics, kwargs):
  """(sources, dims) of the checkpoint's proprio; refuses what cannot be fed exactly."""
  obs = files.example_batch["observation"]
  read = []
  for name, tok in spec.observation_tokenizers:
    if isinstance(tok, LowdimTokenizerSpec):
      keys = [k for p in tok.obs_keys for k in sorted(obs) if re.match(p, k)]
      unfed = [k for k in keys if k != PROPRIO]
      if unfed:
        raise _refuse(files, f"its LowdimObsTokenizer {name!r} reads {', '.join(unfed)}; "
                      f"rpd_jax feeds only {PROPRIO!r} (from {_KWARGS}.proprio)")
      read += keys
  sources = parse_proprio(kwargs.get("proprio"))
  if not read:
    if sources:
      raise _refuse(files, f"it reads no proprio (no LowdimObsTokenizer reads {PROPRIO!r}), "
                    f"but {_KWARGS}.proprio={kwargs.get('proprio')!r}: leave it unset")
    return (), 0
  dim = int(np.shape(obs[PROPRIO])[-1])
  if not sources:
    raise _refuse(files, (
        f"it reads {PROPRIO} ({dim} dims, LowdimObsTokenizer): set {_KWARGS}.proprio to the "
        "env observations that make it, in its training order, e.g. proprio=qpos (ManiSkill "
        "gives qpos, qvel and tcp_pose; slice with qpos[:7])"))
  stats = (statistics or {}).get(PROPRIO)
  need = ("mean", "std") if kwargs["normalization_type"] == "normal" else ("p01", "p99")
  if stats is None or any(k not in stats for k in need):
    raise _refuse(files, (
        f"it reads {PROPRIO}, which Octo's pipeline normalised ({kwargs['normalization_type']})"
        f" with statistics its dataset_statistics.json lacks ({PROPRIO}: {', '.join(need)}); "
        "add them from the fine-tuning data"))
  if np.shape(stats[need[0]])[-1] != dim:
    raise _refuse(files, f"its {PROPRIO} statistics have {np.shape(stats[need[0]])[-1]} dims, "
                  f"its example batch {dim}; the files do not belong together")
  return sources, dim


def _window(files, trained: int, window: Optional[int]) -> int:
  if window is None:
    if trained > 2:
      raise _refuse(files, (
          f"it was trained with a window of {trained} frames; rpd_jax's teacher feeds 1 or 2 "
          f"(the current and the previous observation): set {_KWARGS}.window=2 (or 1) to feed "
          "it fewer"))
    return trained
  if not 1 <= window <= min(trained, 2):
    raise _refuse(files, (
        f"{_KWARGS}.window={window}: it was trained with a window of {trained}, and the "
        f"teacher feeds at most 2 frames; use 1..{min(trained, 2)}"))
  return window


def checkpoint_spec(files: octo.CheckpointFiles) -> octo.OctoSpec:
  """The checkpoint's model spec; ConfigError naming the first piece rpd_jax's Octo does not
  implement (or a language encoder config that is missing)."""
  try:
    return octo.model_spec(files)
  except (octo.UnsupportedConfigError, FileNotFoundError) as e:
    raise _refuse(files, f"{e}") from None


def plan_feed(files: octo.CheckpointFiles, spec: octo.OctoSpec, *, step: Optional[int] = None,
              instruction: Optional[str] = None, window: Optional[int] = None,
              dataset_name: Optional[str] = None, normalization_type: Optional[str] = None,
              proprio: Optional[str | Sequence[str]] = None, goal_image: Optional[str] = None,
              center_crop: Optional[float] = None, gripper: str = "maniskill",
              image_key: str = "rgb", wrist_image_key: str = "rgb_wrist") -> Feed:
  """How the checkpoint in ``files`` (its model ``spec``) is fed, from its files and the
  teacher kwargs; no weights are read. Raises ConfigError, naming the piece and what is
  supported, for anything the teacher cannot feed exactly (``make_teacher`` has the
  arguments)."""
  if gripper not in GRIPPER_MODES:
    raise ConfigError(f"{_KWARGS}.gripper={gripper!r}; use one of {', '.join(GRIPPER_MODES)}")
  if center_crop is not None and not 0.0 < center_crop <= 1.0:
    raise ConfigError(f"{_KWARGS}.center_crop={center_crop} must be an area fraction in (0, 1]"
                      " (or unset: no crop)")
  configured = _configured_normalization(files.config)
  if normalization_type is not None:
    source = f"{_KWARGS}.normalization_type"
    if configured is not None and configured != normalization_type:
      source += f"; the checkpoint's config.json says {configured!r}"
  elif configured is not None:
    normalization_type = configured
    source = "the checkpoint's config.json, dataset_kwargs.action_proprio_normalization_type"
  else:
    normalization_type = "normal"
    source = ("Octo's default: the checkpoint's config.json does not record it; set "
              f"{_KWARGS}.normalization_type if its data used 'bounds'")
  if normalization_type not in NORMALIZATION_TYPES:
    raise _refuse(files, f"action normalisation {normalization_type!r} ({source}) is not "
                  f"supported; supported: {', '.join(NORMALIZATION_TYPES)}")
  statistics = dataset_statistics(files.dataset_statistics, dataset_name)
  action = (statistics or {}).get("action") or {}
  need = ("mean", "std") if normalization_type == "normal" else ("p01", "p99")
  if any(k not in action for k in need):
    raise _refuse(files, f"its action statistics lack {', '.join(need)}, which "
                  f"{normalization_type!r} unnormalisation needs")
  mask = np.asarray(action.get("mask", np.ones(np.shape(action[need[0]]), bool)), bool)

  cameras = _cameras(files, spec, dict(center_crop=center_crop, image_key=image_key,
                                       wrist_image_key=wrist_image_key))
  sources, proprio_dim = _proprio(files, spec, statistics,
                                  dict(proprio=proprio, normalization_type=normalization_type))
  trained = int(np.shape(files.example_batch["observation"]["timestep_pad_mask"])[1])
  head = dict(spec.heads)["action"]
  language = spec.task_tokenizers[0][1].encoder if spec.task_tokenizers else None
  if language is not None and not instruction:
    raise _refuse(files, (
        f"it takes a language instruction ({language}): set {_KWARGS}.instruction "
        "(rpd_jax.envs.tasks.TASKS has the paper's)"))
  goals = [c for c in cameras if c.goal]
  if goal_image is not None and not any(c.key == "image_primary" for c in goals):
    raise _refuse(files, f"its primary camera takes no goal image, but {_KWARGS}.goal_image="
                  f"{goal_image!r}: leave it unset")
  if language is None and goals and goal_image is None:
    raise _refuse(files, (
        f"it is conditioned on a goal image (no language input; its tokenizers stack a goal "
        f"on {', '.join(c.key for c in goals)}): set {_KWARGS}.goal_image to an image file of "
        "the goal as its primary camera sees it"))
  if goal_image is not None and not os.path.isfile(goal_image):
    raise ConfigError(f"{_KWARGS}.goal_image={goal_image!r} is not a file; give an image "
                      "(PNG, JPEG) of the goal as the primary camera sees it")
  steps = files.steps
  if step is not None and step not in steps:
    raise ConfigError(f"{_KWARGS}.step={step} is not in {files.folder}; available steps: "
                      f"{list(steps)}")
  return Feed(
      name=f"octo:{pathlib.Path(files.folder).name}", folder=files.folder,
      step=steps[-1] if step is None else step, cameras=cameras, proprio=sources,
      proprio_dim=proprio_dim, window=_window(files, trained, window), trained_window=trained,
      head=head, normalization_type=normalization_type, normalization_source=source,
      action_mask=tuple(bool(m) for m in mask), language=language,
      instruction=instruction, goal_image=goal_image, gripper=gripper,
      dataset_name=dataset_name)


def _size(size: Sequence[int]) -> str:
  return f"{size[0]}x{size[1]}"


def _resize_note(camera: Camera, frame: Optional[Sequence[int]]) -> str:
  """How env frames of size ``frame`` (H, W; None: not known here) reach the camera's size."""
  crop = (f"centre crop of {camera.center_crop:g} of the area, then " if camera.center_crop
          else "")
  how = "lanczos3 + antialias, as Octo's pipeline"
  if frame is None:
    return (f"{crop}resized from the env's frames ({how}; a frame of another aspect ratio is "
            "squashed, not cropped)")
  frame = tuple(frame)
  if camera.center_crop:
    side = math.sqrt(camera.center_crop)
    frame_in = (round(frame[0] * side), round(frame[1] * side))
  else:
    frame_in = frame
  if frame_in == camera.size:
    return f"env frames {_size(frame)}, {crop}no resize"
  verb = "downscaled" if frame_in[0] >= camera.size[0] else "upscaled"
  squash = ""
  if frame_in[0] * camera.size[1] != frame_in[1] * camera.size[0]:
    squash = (f"; squashed: aspect {frame_in[1] / frame_in[0]:.2f} -> "
              f"{camera.size[1] / camera.size[0]:.2f}, not cropped")
  return f"env frames {_size(frame)}: {crop}{verb} ({how}){squash}"


def _proprio_source(source: tuple[str, Optional[int], Optional[int]]) -> str:
  key, start, stop = source
  if start is None and stop is None:
    return key
  return f"{key}[{'' if start is None else start}:{'' if stop is None else stop}]"


def describe(feed: Feed, frame_sizes: Optional[Mapping[str, Sequence[int]]] = None
             ) -> list[str]:
  """Lines saying how the checkpoint is fed. ``frame_sizes``: the env's frame size (H, W) per
  observation key, where known (the inspect command reads them from the experiment config)."""
  frame_sizes = frame_sizes or {}
  lines = [f"Octo teacher {feed.name} (step {feed.step} of {feed.folder}) is fed:"]
  for c in feed.cameras:
    lines.append(f"  camera {c.key} {_size(c.size)} <- observation {c.obs_key!r}: "
                 f"{_resize_note(c, frame_sizes.get(c.obs_key))}")
  if feed.proprio:
    lines.append(
        f"  proprio {feed.proprio_dim} dims <- "
        f"{' + '.join(_proprio_source(s) for s in feed.proprio)}, normalised "
        f"({feed.normalization_type}) with the checkpoint's proprio statistics")
  else:
    lines.append("  proprio: none (the checkpoint reads none)")
  history = ("the previous observation too, its timestep padded out at episode starts"
             if feed.window == 2 else "the current observation only")
  trained = ("the checkpoint's" if feed.window == feed.trained_window
             else f"{_KWARGS}.window; the checkpoint was trained with {feed.trained_window}")
  lines.append(f"  window {feed.window} ({trained}): {history}")
  head = feed.head
  if head.deterministic:
    kind = ("deterministic: one chunk per observation; PPD's samples are all that chunk, so "
            "its fitted Gaussian has config.distill.ppd_min_std as std")
  else:
    kind = f"diffusion, {head.diffusion_steps} denoising steps: samples a chunk per call"
  pooling = "MAP pooling" if head.use_map else "mean pooling"
  lines.append(f"  head {head.name} ({pooling}; {kind}); chunk {head.action_horizon} x "
               f"{head.action_dim}, its first action is the target")
  raw = [str(i) for i, m in enumerate(feed.action_mask) if not m]
  kept = ""
  if raw:
    kept = f"; dim{'s' if len(raw) > 1 else ''} {', '.join(raw)} kept raw (the mask)"
  stats = f" of dataset {feed.dataset_name!r}" if feed.dataset_name else ""
  lines.append(f"  actions unnormalised {feed.normalization_type!r} ({feed.normalization_source})"
               f" with the action statistics{stats}{kept}")
  if feed.language is None:
    unused = (f"; {_KWARGS}.instruction {feed.instruction!r} is not used" if feed.instruction
              else "")
    lines.append(f"  instruction: none, the model takes no language input{unused}")
  else:
    lines.append(f"  instruction {feed.instruction!r} ({feed.language} T5 embedding, computed "
                 "once)")
  goals = [c.key for c in feed.cameras if c.goal]
  if feed.goal_image is not None:
    others = [k for k in goals if k != "image_primary"]
    zeros = f"; {', '.join(others)}: zeros" if others else ""
    lines.append(f"  goal image {feed.goal_image} -> image_primary (resized like the camera)"
                 f"{zeros}")
  elif goals:
    lines.append(f"  goal image: none; zeros, padded out, stacked on {', '.join(goals)}, as "
                 "for Octo's language tasks")
  gripper = {
      "maniskill": "Octo's [0, 1] (1 = open) mapped to ManiSkill's [-1, 1] (2g - 1), every dim "
                   "clipped to [-1, 1]",
      "clip": "the checkpoint's own [-1, 1] kept, every dim clipped to [-1, 1]",
      "raw": "the checkpoint's actions as they are (no mapping, no clipping)"}[feed.gripper]
  default = " (the default)" if feed.gripper == "maniskill" else ""
  lines.append(f"  gripper {feed.gripper!r}{default}: {gripper}; {_KWARGS}.gripper chooses "
               f"{', '.join(GRIPPER_MODES)}")
  return lines


def read_goal_image(path: str) -> np.ndarray:
  """An image file -> uint8 [H, W, 3] (RGB)."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top  (only for goal images)
  try:
    return np.asarray(iio.imread(path, mode="RGB"), np.uint8)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{_KWARGS}.goal_image={path!r} cannot be read as an image ({e}); give a "
                      "PNG or JPEG") from e


def teacher_from_model(model: Any, language_embedding: Optional[jax.Array], *,
                       window: Optional[int] = None,
                       dataset_name: Optional[str] = None,
                       normalization_type: Optional[str] = None,
                       proprio: Optional[str | Sequence[str]] = None,
                       goal_image: Optional[str] = None,
                       center_crop: Optional[float] = None,
                       gripper: str = "maniskill",
                       image_key: str = "rgb",
                       wrist_image_key: str = "rgb_wrist",
                       dtype: Optional[str] = None,
                       transformer_batch: Optional[int] = None,
                       attention: str = "flax",
                       name: Optional[str] = None,
                       folder: str = "(in memory)", step: int = 0) -> Teacher:
  """An Octo teacher from a loaded model and its instruction's embedding.

  Args:
    model: an ``rpd_jax.octo`` model (a pytree: params and statistics are leaves).
    language_embedding: float [16, D], the instruction's T5 last hidden state
      (``model.embed_instructions``); None for a model without language input (a single-task
      policy, e.g. the small teachers ``rpd_jax.pipeline.finetune`` trains from scratch).
    window: frames per query, 1 (the published RPD setting) or 2 (uses ``prev_obs``); at most
      the checkpoint's training window; None: the checkpoint's (refused above 2).
    dataset_name: which dataset's statistics to use, for pretrained checkpoints that carry
      several; None for fine-tuned ones.
    normalization_type: how the checkpoint's actions (and proprio) were normalised, "normal" or
      "bounds"; None: what its config.json records (``dataset_kwargs``), else "normal".
    proprio: env observation keys concatenated into the checkpoint's ``proprio``, e.g.
      "qpos" or "qpos[:7],tcp_pose"; required exactly when the checkpoint reads proprio.
    goal_image: an image file of the goal, for a goal-conditioned checkpoint (its primary
      camera's goal); required by one without language input.
    center_crop: area fraction of a centre crop of the primary camera before resizing (None: no
      crop; 0.9 keeps the mean area of the 0.8-1.0 random crops Octo's training applied).
    gripper: "maniskill" maps Octo's gripper (1 = open, [0, 1]) to ManiSkill's (+1 = open) and
      clips every dim to [-1, 1]; "clip" only clips; "raw" returns the unnormalised actions.
    image_key, wrist_image_key: the observation keys holding the cameras fed as
      ``image_primary`` and ``image_wrist``, uint8 [B, H, W, 3].
    dtype: compute dtype of the transformer and tokenizers, e.g. "bfloat16" for accelerators
      (the heads and the parameters stay float32); None keeps the model's.
    transformer_batch: examples per transformer slice inside a call (``OctoModel.
      readout_embedding``); None: 8 on a CPU, the whole batch on accelerators; 0: whole.
    attention: the transformer's attention kernel: "flax" (the parity reference), or
      ``jax.nn.dot_product_attention`` with "xla", "cudnn" or "auto" (cuDNN where it applies,
      fused: no [B, H, N, N] logits in memory; ``rpd_jax.octo.transformer.fused_attention``).
    name, folder, step: how the teacher and its checkpoint are named in errors and the log.

  Returns:
    A ``Teacher`` whose apply_fn gives the first action of each chunk, [B, A], and N
    samples [N, B, A] when asked.
  """
  if attention not in ATTENTIONS:
    raise ConfigError(f"{_KWARGS}.attention={attention!r}; use one of {', '.join(ATTENTIONS)}")
  files = octo.CheckpointFiles(folder, dict(model.config), model.example_batch,
                               model.dataset_statistics, (step,))
  # The instruction was embedded by the caller; the plan only needs to know there is one.
  feed = plan_feed(files, model.spec,
                   instruction=None if language_embedding is None else "(embedded)",
                   window=window, dataset_name=dataset_name,
                   normalization_type=normalization_type, proprio=proprio,
                   goal_image=goal_image, center_crop=center_crop, gripper=gripper,
                   image_key=image_key, wrist_image_key=wrist_image_key)
  if feed.language is None and language_embedding is not None:
    raise ValueError("this Octo model takes no language input: pass language_embedding=None")
  if dtype is not None:
    model = model.replace(module=model.module.clone(dtype=jnp.dtype(dtype)))
  if attention != "flax":
    model = model.replace(module=model.module.clone(attention=attention))
  # The task (the instruction's embedding or the goal image, other task inputs padded out) is
  # built once for a batch of one, concretely, and broadcast to the batch inside the call.
  goals = None
  if goal_image is not None:
    primary = next(c for c in feed.cameras if c.key == "image_primary")
    goal = resize_images(jnp.asarray(read_goal_image(goal_image)), primary.size,
                         primary.center_crop)
    goals = {"image_primary": np.asarray(goal)[None]}
  embedding = None
  if language_embedding is not None:
    embedding = jnp.asarray(language_embedding, jnp.float32)[None]
  if goals is None and embedding is None:
    task = model.create_tasks()
  else:
    task = model.create_tasks(goals=goals, language_embeddings=embedding)
  statistics = dataset_statistics(model.dataset_statistics, dataset_name)
  params = {
      "model": model,
      "task": jax.tree.map(jnp.asarray, task),
      "action_stats": None if statistics is None else _arrays(statistics["action"]),
      "proprio_stats": _arrays(statistics[PROPRIO]) if feed.proprio else None,
  }
  apply_fn = OctoApply(feed.cameras, feed.window, feed.gripper, feed.proprio,
                       feed.proprio_dim, feed.normalization_type, transformer_batch)
  return Teacher(params=params, apply_fn=apply_fn, name=name or feed.name,
                 window=feed.window)


@dataclasses.dataclass(frozen=True)
class OctoApply:
  """The teacher's pure function; static and hashable (teachers with equal settings share
  compilations).

  ``__call__`` is the teacher protocol's ``apply_fn`` (the first action of each chunk);
  ``chunks`` returns whole chunks, for temporal ensembling when the teacher acts alone:
  ``teacher.apply_fn.chunks(teacher.params, obs, prev_obs, is_first, key)``.
  """

  cameras: tuple[Camera, ...]
  window: int
  gripper: str
  proprio: tuple[tuple[str, Optional[int], Optional[int]], ...] = ()
  proprio_dim: int = 0
  normalization_type: str = "normal"
  transformer_batch: Optional[int] = None

  @property
  def observation_keys(self) -> tuple[str, ...]:
    return _observation_keys(self.cameras, self.proprio)

  @property
  def size(self) -> tuple[int, int]:
    """The first camera's size (H, W): the primary camera's where the checkpoint reads it."""
    return self.cameras[0].size

  def _proprio(self, params, obs: Observation) -> jax.Array:
    """The named observations, sliced and concatenated, normalised: float32 [B, P]."""
    parts = [jnp.asarray(obs[key], jnp.float32)[..., start:stop]
             for key, start, stop in self.proprio]
    proprio = jnp.concatenate(parts, axis=-1)
    if proprio.shape[-1] != self.proprio_dim:
      sources = " + ".join(_proprio_source(s) for s in self.proprio)
      raise ConfigError(
          f"{_KWARGS}.proprio={sources} gives {proprio.shape[-1]} dims, but the checkpoint's "
          f"proprio has {self.proprio_dim}; name (and slice) the observations it was trained "
          "on")
    return octo.normalize_proprio(proprio, params["proprio_stats"], self.normalization_type)

  def observations(self, params, obs: Observation, prev_obs: Observation,
                   is_first: jax.Array) -> dict[str, jax.Array]:
    """The model's observation window: each camera [B, W, H, W', 3], proprio [B, W, P],
    timestep_pad_mask [B, W]."""
    missing = [k for k in self.observation_keys if k not in obs]
    if missing:
      raise ConfigError(
          f"the Octo teacher reads observation {', '.join(map(repr, missing))}, which the "
          f"observations lack (they have {', '.join(obs)}); make the env give it (config."
          "validate names how)")
    def window(of):  # of: an observation dict -> this input's current value [B, ...]
      current = of(obs)
      previous = of(prev_obs) if self.window > 1 else current
      return history_window(current, previous, is_first, self.window)

    out, pad_mask = {}, None
    for camera in self.cameras:
      out[camera.key], pad_mask = window(
          lambda o, c=camera: resize_images(o[c.obs_key], c.size, c.center_crop))
    if self.proprio:
      out[PROPRIO], pad_mask = window(lambda o: self._proprio(params, o))
    out["timestep_pad_mask"] = pad_mask
    return out

  def chunks(self, params, obs: Observation, prev_obs: Observation, is_first: jax.Array,
             key: jax.Array, num_samples: int = 1) -> jax.Array:
    """float32 [num_samples, B, horizon, A]: unnormalised (gripper-mapped) action chunks."""
    model = params["model"]
    observations = self.observations(params, obs, prev_obs, is_first)
    batch = is_first.shape[0]
    tasks = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape[1:]), params["task"])
    chunks = model.sample_actions(observations, tasks, key,
                                  unnormalization_statistics=params["action_stats"],
                                  num_samples=num_samples,
                                  normalization_type=self.normalization_type,
                                  transformer_batch=self.transformer_batch).astype(jnp.float32)
    return map_gripper(chunks, self.gripper)

  def __call__(self, params, obs: Observation, prev_obs: Observation, is_first: jax.Array,
               key: jax.Array, num_samples: int) -> TeacherOutput:
    """action [B, A]: each chunk's first action; samples [N, B, A] when num_samples = N > 0."""
    chunks = self.chunks(params, obs, prev_obs, is_first, key, max(num_samples, 1))
    samples = chunks[:, :, 0] if num_samples else None
    return TeacherOutput(action=chunks[0, :, 0], samples=samples)


def read_files(checkpoint: str) -> octo.CheckpointFiles:
  """The checkpoint's files but its weights; ConfigError (saying what is missing) when it is
  not found or incomplete."""
  try:
    return octo.read_checkpoint(checkpoint)
  except FileNotFoundError as e:
    raise ConfigError(str(e)) from None


def tokenizer_path(tokenizer_dir: Optional[str]) -> str:
  """The t5-base ``spiece.model`` a language model's instruction is tokenised with:
  ``tokenizer_dir``'s, else the first ``text.find_t5_folders()`` has; ConfigError naming
  ``config.teacher.kwargs.tokenizer_dir`` when there is none."""
  if tokenizer_dir is not None:
    path = os.path.join(tokenizer_dir, text.SPIECE)
    if not os.path.isfile(path):
      raise ConfigError(f"{_KWARGS}.tokenizer_dir={tokenizer_dir!r} has no {text.SPIECE}; point "
                        "it at t5-base's tokenizer folder (third_party/README.md)")
    return path
  folders = text.find_t5_folders()
  if not folders:
    raise ConfigError(
        f"the checkpoint takes a language instruction, and no t5-base {text.SPIECE} is in "
        f"third_party/downloads/t5-base or the Hugging Face cache: set {_KWARGS}.tokenizer_dir "
        "to its folder, or download it as third_party/README.md says")
  return str(folders[0] / text.SPIECE)


def feed_of(files: octo.CheckpointFiles, teacher_kwargs: Mapping[str, Any]) -> Feed:
  """``plan_feed`` of the checkpoint in ``files`` for ``config.teacher.kwargs`` (the kwargs
  that do not decide the feed, and unset ones, are left out)."""
  kwargs = {k: v for k, v in teacher_kwargs.items() if k in _FEED_KWARGS and v is not None}
  return plan_feed(files, checkpoint_spec(files), **kwargs)


def observation_keys(teacher_kwargs: Mapping[str, Any]) -> tuple[str, ...]:
  """The env observations an Octo teacher of ``config.teacher.kwargs`` reads, from the
  checkpoint's files (no weights); ConfigError for a checkpoint it cannot feed. A checkpoint
  that is not there (yet) is answered with its primary camera: ``make_teacher`` then says what
  is missing."""
  if not teacher_kwargs.get("checkpoint"):  # make_teacher says what to set
    return (teacher_kwargs.get("image_key") or "rgb",)
  try:
    files = octo.read_checkpoint(teacher_kwargs["checkpoint"])
  except FileNotFoundError:
    return (teacher_kwargs.get("image_key") or "rgb",)
  return feed_of(files, teacher_kwargs).observation_keys


def make_teacher(checkpoint: Optional[str] = None, *, instruction: Optional[str] = None,
                 step: Optional[int] = None, tokenizer_dir: Optional[str] = None,
                 window: Optional[int] = None, dataset_name: Optional[str] = None,
                 normalization_type: Optional[str] = None,
                 proprio: Optional[str | Sequence[str]] = None,
                 goal_image: Optional[str] = None,
                 center_crop: Optional[float] = None, gripper: str = "maniskill",
                 image_key: str = "rgb", wrist_image_key: str = "rgb_wrist",
                 dtype: Optional[str] = None, transformer_batch: Optional[int] = None,
                 attention: str = "flax") -> Teacher:
  """The Octo teacher of ``config.teacher.kwargs``: check how the checkpoint is fed, load it,
  embed the instruction, adapt; logs how it is fed (``describe``).

  Args:
    checkpoint: a checkpoint folder, a shipped teacher's or released checkpoint's name
      (``rpd_jax.octo.hub.resolve_checkpoint``).
    instruction: the task's language instruction (``rpd_jax.envs.tasks.TASKS`` has the
      paper's); required by language-conditioned models (every released checkpoint), unused
      (and said so in the log) by models without language input.
    step: the checkpoint step to load (None: the latest).
    tokenizer_dir: folder with the t5-base ``spiece.model`` (None: ``tokenizer_path``'s search),
      for checkpoints with language input; looked up before the weights are read.
    window, dataset_name, normalization_type, proprio, goal_image, center_crop, gripper,
      image_key, wrist_image_key, dtype, transformer_batch, attention: ``teacher_from_model``'s.

  Raises:
    ConfigError (one line) for anything that cannot be fed exactly, a missing file, or a
    checkpoint whose files cannot be read.
  """
  if not checkpoint:
    raise ConfigError(
        "the Octo teacher needs config.teacher.kwargs.checkpoint: a checkpoint folder (e.g. "
        f"one rpd_jax.pipeline.finetune wrote), a shipped teacher ({', '.join(octo.hub.shipped())}"
        f"), a released checkpoint ({', '.join(octo.hub.RELEASED)}) or a hub id 'org/name'")
  files = read_files(checkpoint)
  feed = plan_feed(files, checkpoint_spec(files), step=step, instruction=instruction,
                   window=window, dataset_name=dataset_name,
                   normalization_type=normalization_type, proprio=proprio,
                   goal_image=goal_image, center_crop=center_crop, gripper=gripper,
                   image_key=image_key, wrist_image_key=wrist_image_key)
  tokenizer = None
  if feed.language is not None:
    path = tokenizer_path(tokenizer_dir)  # its own ConfigError names the kwarg
    try:
      tokenizer = text.T5Tokenizer.from_file(path)
    except ValueError as e:  # a SentencePiece model without T5's pad and eos ids
      raise ConfigError(f"{_KWARGS}.tokenizer_dir={tokenizer_dir!r}: {e}") from e
  # Loaded in float32: the instruction is embedded once, at full precision, whatever the
  # teacher's compute dtype.
  try:
    model = octo.load_pretrained(files.folder, step=feed.step)
  except octo.CheckpointReadError as e:
    raise ConfigError(f"the Octo checkpoint {files.folder}: {e}") from e
  embedding = None
  if tokenizer is not None:
    embedding = model.embed_instructions([instruction], tokenizer)[0]
  teacher = teacher_from_model(
      model, embedding, window=window, dataset_name=dataset_name,
      normalization_type=normalization_type, proprio=proprio, goal_image=goal_image,
      center_crop=center_crop, gripper=gripper, image_key=image_key,
      wrist_image_key=wrist_image_key, dtype=dtype, transformer_batch=transformer_batch,
      attention=attention, name=feed.name, folder=files.folder, step=feed.step)
  for line in describe(feed):
    logging.info("%s", line)
  return teacher.replace(made_on=records.made_on(files.folder))


# The kwargs of make_teacher that decide the feed (plan_feed's); the rest are about compute.
_FEED_KWARGS = ("step", "instruction", "window", "dataset_name", "normalization_type",
                "proprio", "goal_image", "center_crop", "gripper", "image_key",
                "wrist_image_key")


class TemporalEnsemble:
  """Temporal ensembling of action chunks for a teacher driving B envs on its own (evaluation).

  As Octo's ``TemporalEnsembleWrapper``: the action at step t averages the predictions for t
  made by the last ``horizon`` chunks, with weights ``exp(-exp_weight * i)``, i = 0 for the
  oldest prediction (exp_weight > 0 favours older predictions; 0: uniform). Each env keeps its
  own history, cleared where ``is_first``.
  """

  def __init__(self, horizon: int = 4, exp_weight: float = 0.0):
    self.horizon = horizon
    self.exp_weight = exp_weight
    self._chunks: Optional[np.ndarray] = None  # [horizon (oldest first), B, horizon, A]
    self._valid: Optional[np.ndarray] = None  # bool [horizon, B]

  def __call__(self, chunk: np.ndarray | jax.Array, is_first: np.ndarray | jax.Array
              ) -> np.ndarray:
    """chunk [B, >= horizon, A], is_first bool [B] -> the action to execute now, [B, A]."""
    chunk = np.asarray(chunk, np.float32)[:, :self.horizon]
    is_first = np.asarray(is_first, bool)
    if self._chunks is None or self._chunks.shape[1:] != chunk.shape:
      self._chunks = np.zeros((self.horizon,) + chunk.shape, np.float32)
      self._valid = np.zeros((self.horizon, chunk.shape[0]), bool)
    self._valid[:, is_first] = False
    self._chunks = np.concatenate([self._chunks[1:], chunk[None]])
    self._valid = np.concatenate([self._valid[1:], np.ones((1, chunk.shape[0]), bool)])
    ages = np.arange(self.horizon)[::-1]  # row k of the history was predicted `age` steps ago
    preds = self._chunks[np.arange(self.horizon), :, ages]  # [horizon, B, A]: for this step
    # i counts from the oldest valid prediction of each env (valid rows are the newest ones).
    i = np.cumsum(self._valid, axis=0) - 1
    weights = np.where(self._valid, np.exp(-self.exp_weight * i), 0.0)
    weights /= weights.sum(axis=0, keepdims=True)
    return np.einsum("hb,hba->ba", weights, preds)
