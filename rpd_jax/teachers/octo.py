"""Octo as an in-process RPD teacher: the adapter between ManiSkill observations and Octo.

One teacher call, inside the jitted PPO update, for a batch of B observations:

1. images ``obs["rgb"]`` uint8 [B, H, W, 3] of any size -> the checkpoint's primary-camera size
   (read from its example batch), resized on device as Octo's data pipeline and gym wrapper do
   (lanczos3 with antialiasing, rounded and clipped to uint8), optionally after a centre crop;
2. a window of W frames (W = 1 or 2): with W = 2 the previous frame comes from ``prev_obs``;
   at an episode start (``is_first``) the current frame is repeated and the first timestep is
   padded out, as Octo's ``HistoryWrapper`` does after a reset;
3. the task: the instruction's T5 embedding, computed once at construction and stored in the
   teacher's params (an argument of the jitted update, not a constant baked into it);
4. Octo's diffusion head samples a chunk [B, 4, 7] (N chunks for PPD), unnormalised with the
   checkpoint's action statistics;
5. the gripper, Octo's 1 = open in [0, 1], is mapped to ManiSkill's pd_ee_delta_pose gripper
   action in [-1, 1] (+1 = open: the Panda's finger target goes from -0.01 m at -1 to 0.04 m at
   +1), all dims are clipped to the env's [-1, 1], and the chunk's first action is returned.

Shapes are fixed by the observation batch, so the teacher compiles once per batch size.
``TemporalEnsemble`` averages overlapping chunks (``teacher.apply_fn.chunks``) when a teacher
drives an env on its own.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rpd_jax import octo
from rpd_jax.envs.base import Observation
from rpd_jax.errors import ConfigError
from rpd_jax.octo import text
from rpd_jax.octo.transformer import ATTENTIONS
from rpd_jax.teachers import records
from rpd_jax.teachers.base import Teacher, TeacherOutput

GRIPPER_MODES = ("maniskill", "raw")


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
    frame, prev_frame: [B, H, W, 3] the current and the previous frame of each env.
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


def gripper_to_maniskill(actions: jax.Array) -> jax.Array:
  """Octo's gripper (last dim, 1 = open, in [0, 1]) -> ManiSkill's (+1 = open, in [-1, 1])."""
  gripper = 2.0 * jnp.clip(actions[..., -1:], 0.0, 1.0) - 1.0
  return jnp.concatenate([actions[..., :-1], gripper], axis=-1)


def action_statistics(dataset_statistics: Optional[Mapping[str, Any]],
                      dataset_name: Optional[str] = None) -> Optional[dict[str, np.ndarray]]:
  """The ``action`` statistics to unnormalise with, as arrays (mask bool, the rest float32).

  Fine-tuned checkpoints carry one statistics dict; pretrained ones one per dataset name, of
  which ``dataset_name`` picks one. Randomly initialised models have none (None: the actions
  stay normalised).
  """
  if dataset_statistics is None:
    return None
  if "action" in dataset_statistics:
    if dataset_name is not None:
      raise ValueError(f"dataset_name={dataset_name!r} was given, but this checkpoint has a "
                       "single statistics dict (a fine-tuned checkpoint); drop dataset_name")
    stats = dataset_statistics["action"]
  else:
    if dataset_name not in dataset_statistics:
      raise ValueError(
          f"dataset_name={dataset_name!r}: this checkpoint has action statistics per dataset; "
          f"pass one of {', '.join(sorted(dataset_statistics))}")
    stats = dataset_statistics[dataset_name]["action"]
  out = {}
  for key, value in stats.items():
    value = np.asarray(value)
    if value.ndim == 1:  # mean, std, min, max, p01, p99, mask (counts are scalars)
      out[key] = value.astype(bool if key == "mask" else np.float32)
  return out


def teacher_from_model(model: Any, language_embedding: Optional[jax.Array], *,
                       window: int = 1,
                       dataset_name: Optional[str] = None,
                       center_crop: Optional[float] = None,
                       gripper: str = "maniskill",
                       image_key: str = "rgb",
                       dtype: Optional[str] = None,
                       transformer_batch: Optional[int] = None,
                       attention: str = "flax",
                       name: str = "octo") -> Teacher:
  """An Octo teacher from a loaded model and its instruction's embedding.

  Args:
    model: an ``rpd_jax.octo`` model (a pytree: params and statistics are leaves).
    language_embedding: float [16, D], the instruction's T5 last hidden state
      (``model.embed_instructions``); None for a model without language input (a single-task
      policy, e.g. the small teachers ``rpd_jax.pipeline.finetune`` trains from scratch).
    window: frames per query, 1 (the published RPD setting) or 2 (uses ``prev_obs``); at most
      the checkpoint's training window.
    dataset_name: which dataset's action statistics to unnormalise with, for pretrained
      checkpoints that carry several; None for fine-tuned ones.
    center_crop: area fraction of a centre crop before resizing (None: no crop; 0.9 keeps the
      mean area of the 0.8-1.0 random crops Octo's training applied to the primary camera).
    gripper: "maniskill" maps Octo's gripper (1 = open, [0, 1]) to ManiSkill's (+1 = open) and
      clips every dim to [-1, 1]; "raw" returns Octo's unnormalised actions untouched.
    image_key: the observation key holding the teacher's camera, uint8 [B, H, W, 3].
    dtype: compute dtype of the transformer and tokenizers, e.g. "bfloat16" for accelerators
      (the diffusion head and the parameters stay float32); None keeps the model's.
    transformer_batch: examples per transformer slice inside a call (``OctoModel.
      readout_embedding``); None: 8 on a CPU, the whole batch on accelerators; 0: whole.
    attention: the transformer's attention kernel: "flax" (the parity reference), or
      ``jax.nn.dot_product_attention`` with "xla", "cudnn" or "auto" (cuDNN where it applies,
      fused: no [B, H, N, N] logits in memory; ``rpd_jax.octo.transformer.fused_attention``).

  Returns:
    A ``Teacher`` whose apply_fn gives the first action of each sampled chunk, [B, 7], and N
    samples [N, B, 7] when asked.
  """
  if gripper not in GRIPPER_MODES:
    raise ConfigError(f"config.teacher.kwargs.gripper={gripper!r}; use one of "
                      f"{', '.join(GRIPPER_MODES)}")
  example = model.example_batch["observation"]["image_primary"]
  trained_window, size = example.shape[1], tuple(example.shape[2:4])
  if not 1 <= window <= trained_window:
    raise ConfigError(f"config.teacher.kwargs.window={window}: this checkpoint was trained with "
                      f"a window of {trained_window}; use 1..{trained_window}")
  if attention not in ATTENTIONS:
    raise ConfigError(f"config.teacher.kwargs.attention={attention!r}; use one of "
                      f"{', '.join(ATTENTIONS)}")
  if dtype is not None:
    model = model.replace(module=model.module.clone(dtype=jnp.dtype(dtype)))
  if attention != "flax":
    model = model.replace(module=model.module.clone(attention=attention))
  # The task (zero goal images padded out, the instruction's embedding) is built once for a
  # batch of one, concretely, and broadcast to the batch inside the call.
  if language_embedding is None:
    if model.spec.task_tokenizers:
      raise ValueError("this Octo model takes a language instruction: pass its T5 embedding "
                       "(model.embed_instructions)")
    task = model.create_tasks()
  else:
    embedding = jnp.asarray(language_embedding, jnp.float32)[None]
    task = model.create_tasks(language_embeddings=embedding)
  params = {
      "model": model,
      "task": jax.tree.map(jnp.asarray, task),
      "action_stats": action_statistics(model.dataset_statistics, dataset_name),
  }
  apply_fn = OctoApply(size, window, center_crop, gripper, image_key, transformer_batch)
  return Teacher(params=params, apply_fn=apply_fn, name=name, window=window)


@dataclasses.dataclass(frozen=True)
class OctoApply:
  """The teacher's pure function; static and hashable (teachers with equal settings share
  compilations).

  ``__call__`` is the teacher protocol's ``apply_fn`` (the first action of each chunk);
  ``chunks`` returns whole chunks, for temporal ensembling when the teacher acts alone:
  ``teacher.apply_fn.chunks(teacher.params, obs, prev_obs, is_first, key)``.
  """

  size: tuple[int, int]  # the checkpoint's primary camera (H, W)
  window: int
  center_crop: Optional[float]
  gripper: str
  image_key: str = "rgb"
  transformer_batch: Optional[int] = None

  def chunks(self, params, obs: Observation, prev_obs: Observation, is_first: jax.Array,
             key: jax.Array, num_samples: int = 1) -> jax.Array:
    """float32 [num_samples, B, 4, 7]: unnormalised (gripper-mapped) action chunks."""
    model = params["model"]
    frame = resize_images(obs[self.image_key], self.size, self.center_crop)
    prev_frame = frame
    if self.window > 1:
      prev_frame = resize_images(prev_obs[self.image_key], self.size, self.center_crop)
    frames, pad_mask = history_window(frame, prev_frame, is_first, self.window)
    batch = frames.shape[0]
    observations = {"image_primary": frames, "timestep_pad_mask": pad_mask}
    tasks = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape[1:]), params["task"])
    chunks = model.sample_actions(observations, tasks, key,
                                  unnormalization_statistics=params["action_stats"],
                                  num_samples=num_samples,
                                  transformer_batch=self.transformer_batch).astype(jnp.float32)
    if self.gripper == "maniskill":
      chunks = jnp.clip(gripper_to_maniskill(chunks), -1.0, 1.0)
    return chunks

  def __call__(self, params, obs: Observation, prev_obs: Observation, is_first: jax.Array,
               key: jax.Array, num_samples: int) -> TeacherOutput:
    """action [B, 7]: each chunk's first action; samples [N, B, 7] when num_samples = N > 0."""
    chunks = self.chunks(params, obs, prev_obs, is_first, key, max(num_samples, 1))
    samples = chunks[:, :, 0] if num_samples else None
    return TeacherOutput(action=chunks[0, :, 0], samples=samples)


def make_teacher(checkpoint: str, *, instruction: Optional[str] = None,
                 step: Optional[int] = None, tokenizer_dir: Optional[str] = None,
                 window: int = 1, dataset_name: Optional[str] = None,
                 center_crop: Optional[float] = None, gripper: str = "maniskill",
                 image_key: str = "rgb", dtype: Optional[str] = None,
                 transformer_batch: Optional[int] = None, attention: str = "flax") -> Teacher:
  """The Octo teacher of ``config.teacher.kwargs``: load, embed the instruction, adapt.

  Args:
    checkpoint: a checkpoint folder, a shipped teacher's or released checkpoint's name
      (``rpd_jax.octo.hub.resolve_checkpoint``).
    instruction: the task's language instruction (``rpd_jax.envs.tasks.TASKS`` has the
      paper's); required by language-conditioned models (every released checkpoint), unused
      by models without language input.
    step: the checkpoint step to load (None: the latest).
    tokenizer_dir: folder with the t5-base ``spiece.model`` (None: ``T5Tokenizer.find()``).
    window, dataset_name, center_crop, gripper, image_key, dtype, transformer_batch,
      attention: ``teacher_from_model``'s.
  """
  folder = octo.hub.resolve_checkpoint(checkpoint)
  # Loaded in float32: the instruction is embedded once, at full precision, whatever the
  # teacher's compute dtype.
  try:
    model = octo.load_pretrained(folder, step=step)
  except FileNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (any damage: truncated, not Octo's)
    raise ConfigError(
        f"the Octo checkpoint {folder} cannot be loaded ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200] if str(e) else ''}); it is damaged or not an Octo "
        "checkpoint: download it again, or set config.teacher.kwargs.checkpoint to another") from e
  embedding = None
  if model.spec.task_tokenizers:  # a language-conditioned model
    if not instruction:
      raise ConfigError(
          f"the Octo checkpoint {checkpoint!r} takes a language instruction: set "
          f"config.teacher.kwargs.instruction (rpd_jax.envs.tasks.TASKS has the paper's)")
    tokenizer = text.T5Tokenizer.find(tokenizer_dir)
    embedding = model.embed_instructions([instruction], tokenizer)[0]
  teacher = teacher_from_model(model, embedding, window=window, dataset_name=dataset_name,
                               center_crop=center_crop, gripper=gripper, image_key=image_key,
                               dtype=dtype, transformer_batch=transformer_batch,
                               attention=attention, name=f"octo:{pathlib.Path(folder).name}")
  return teacher.replace(made_on=records.made_on(folder))


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
