"""OctoModel: an Octo checkpoint as a pytree, with the official inference API.

``params``, ``example_batch`` and ``dataset_statistics`` are pytree leaves; the Flax module and
the config are static. ``sample_actions`` is jitted and pure in (model, observations, tasks,
rng), so a caller can also pass the model through its own ``jax.jit``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import flax
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rpd_jax.octo import heads as heads_lib
from rpd_jax.octo.config import OctoSpec
from rpd_jax.octo.module import OctoModule, TokenGroup
from rpd_jax.octo.t5 import T5Encoder

Data = Mapping[str, Any]
# texts -> dict(input_ids [B, L] int32, attention_mask [B, L] int32), e.g. rpd_jax.octo.text's
# T5Tokenizer (t5-base SentencePiece, L = 16, padded and truncated).
Tokenize = Callable[[Sequence[str]], Mapping[str, Any]]

# T5's end-of-sequence id: the tokenisation of "" is [EOS, pad, ...] with attention [1, 0, ...].
_EOS_ID = 1


def freeze_config(x):
  """JSON-like config -> hashable FrozenDict/tuple tree (static pytree metadata must hash)."""
  if isinstance(x, Mapping):
    return flax.core.FrozenDict({k: freeze_config(v) for k, v in x.items()})
  if isinstance(x, (list, tuple)):
    return tuple(freeze_config(v) for v in x)
  return x


def _check_shapes(tree: Data, example: Data, name: str, skip_dims: int):
  """Raises if an array in ``tree`` differs in shape from the example beyond ``skip_dims``."""
  flat = flax.traverse_util.flatten_dict(dict(tree), sep="/")
  ref = flax.traverse_util.flatten_dict(dict(example), sep="/")
  bad = {k: (tuple(np.shape(v)), tuple(np.shape(ref[k]))) for k, v in flat.items()
         if k in ref and np.shape(v)[skip_dims:] != np.shape(ref[k])[skip_dims:]}
  if bad:
    lines = ", ".join(f"{name}/{k}: {got} (expected [..., {', '.join(map(str, exp[skip_dims:]))}])"
                      for k, (got, exp) in sorted(bad.items()))
    raise ValueError(
        f"input shapes do not match the checkpoint's example batch: {lines}. The model does not "
        "resize: resize images (lanczos3, antialias) to the example batch's size first")


@struct.dataclass
class OctoModel:
  """An Octo policy: parameters, example batch and dataset statistics, plus the static module.

  Attributes:
    params: the official parameter tree {octo_transformer, heads_action}.
    example_batch: {observation, task, ...} of the checkpoint; fixes input shapes and window.
    dataset_statistics: {"action": {mean, std, mask, ...}, ...} for a fine-tuned checkpoint, or
      {dataset name: {...}} for a pretrained one; identity statistics for init_random models.
    module: the OctoModule.
    config: the checkpoint's config.json (frozen: read it like a dict).
  """

  params: Any
  example_batch: Any
  dataset_statistics: Any
  module: OctoModule = struct.field(pytree_node=False)
  config: Any = struct.field(pytree_node=False)

  @property
  def spec(self) -> OctoSpec:
    return self.module.spec

  @property
  def window_size(self) -> int:
    """Timesteps per observation window in the example batch (1 or 2 for released models)."""
    return int(np.shape(self.example_batch["observation"]["timestep_pad_mask"])[1])

  @property
  def skip_first_step(self) -> bool:
    """The checkpoint's sampler setting (config.json ``sampling``; official ones have none)."""
    return bool(self.config.get("sampling", {}).get("skip_first_step", False))

  def _language_length(self) -> int:
    lang = self.example_batch["task"].get("language_instruction")
    if isinstance(lang, Mapping):
      return int(np.shape(lang["input_ids"])[1])
    return 16

  def encode_language(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """T5 embeddings [B, L, d_model] float32 of token ids [B, L] (mask [B, L], 1 = token).

    Pass the result as ``create_tasks(language_embeddings=...)``: an instruction is fixed per
    task, so the encoder need not run on every action query. Jittable.
    """
    name, spec = self.spec.task_tokenizers[0]
    t5_params = self.params["octo_transformer"][f"task_tokenizers_{name}"]["hf_model"]
    return T5Encoder(spec.t5, self.module.dtype).apply(
        {"params": t5_params}, jnp.asarray(input_ids), jnp.asarray(attention_mask))

  def embed_instructions(self, texts: Sequence[str], tokenize: Tokenize) -> jax.Array:
    """T5 embeddings [B, L, d_model] float32 of B instructions: ``create_tasks``'s
    ``language_embeddings``, computed once per instruction instead of at every query."""
    tokens = tokenize(list(texts))
    hidden = jax.jit(type(self).encode_language)(self, jnp.asarray(tokens["input_ids"]),
                                                 jnp.asarray(tokens["attention_mask"]))
    return hidden.astype(jnp.float32)

  def create_tasks(self, texts: Optional[Sequence[str]] = None, goals: Optional[Data] = None,
                   language_embeddings: Optional[jax.Array] = None,
                   tokenize: Optional[Tokenize] = None) -> dict[str, Any]:
    """Builds a task dict of batch B, as the official ``create_tasks`` does.

    Args:
      texts: B instructions; tokenised with ``tokenize``, and T5 then runs inside every
        ``sample_actions`` call (as in the official code).
      goals: goal images {image_<k>: [B, H, W, 3] uint8}.
      language_embeddings: [B, L, d_model] precomputed T5 embeddings (see ``encode_language``);
        T5 is then skipped, with identical results.
      tokenize: texts -> dict(input_ids, attention_mask) [B, L] int32; needed with ``texts``.

    A model without task tokenizers (a single-task policy) takes ``create_tasks()`` with no
    arguments: a batch of 1 with every task input padded out.

    Returns:
      {image_<k> (goal or zeros), language_instruction (token dict or embeddings),
       pad_mask_dict {key: [B] bool}}. Without language, the task gets the tokens of the empty
      string with its language flag False, as the official goal-conditioned tasks do.
    """
    if texts is not None and language_embeddings is not None:
      raise ValueError("pass either texts or language_embeddings, not both")
    if (texts is None and goals is None and language_embeddings is None
        and self.spec.task_tokenizers):
      raise ValueError("create_tasks needs texts, goals or language_embeddings")
    if texts is not None:
      if tokenize is None:
        raise ValueError(
            "create_tasks(texts=...) needs tokenize= (e.g. rpd_jax.octo.text.T5Tokenizer); or "
            "pass language_embeddings= computed once with encode_language")
      batch = len(texts)
    elif language_embeddings is not None:
      batch = int(np.shape(language_embeddings)[0])
    elif goals is not None:
      batch = int(np.shape(jax.tree.leaves(goals)[0])[0])
    else:
      batch = 1

    tasks: dict[str, Any] = {}
    pad_mask_dict: dict[str, Any] = {}
    if goals is not None:
      tasks.update(goals)
      pad_mask_dict.update({k: np.ones(batch, bool) for k in goals})
    else:
      for k, v in self.example_batch["task"].items():
        if k not in ("pad_mask_dict", "language_instruction"):
          tasks[k] = np.zeros((batch,) + np.shape(v)[1:], np.asarray(v).dtype)
          pad_mask_dict[k] = np.zeros(batch, bool)

    if texts is not None:
      lang = tokenize(list(texts))
      tasks["language_instruction"] = {
          "input_ids": np.asarray(lang["input_ids"], np.int32),
          "attention_mask": np.asarray(lang["attention_mask"], np.int32)}
      pad_mask_dict["language_instruction"] = np.ones(batch, bool)
    elif language_embeddings is not None:
      tasks["language_instruction"] = language_embeddings
      pad_mask_dict["language_instruction"] = np.ones(batch, bool)
    else:
      length = self._language_length()
      ids = np.zeros((batch, length), np.int32)
      ids[:, 0] = _EOS_ID
      tasks["language_instruction"] = {"input_ids": ids, "attention_mask": ids.copy()}
      pad_mask_dict["language_instruction"] = np.zeros(batch, bool)
    tasks["pad_mask_dict"] = pad_mask_dict
    self._check_tasks(tasks)
    return tasks

  def _check_tasks(self, tasks: Data):
    example = {k: v for k, v in self.example_batch["task"].items()
               if not (k == "language_instruction" and not isinstance(
                   tasks.get(k), Mapping))}
    _check_shapes(tasks, example, "tasks", 1)

  def run_transformer(self, observations: Data, tasks: Data,
                      timestep_pad_mask: Optional[jax.Array] = None,
                      readouts_only: bool = False) -> dict[str, TokenGroup]:
    """Transformer outputs {group: TokenGroup(tokens, mask)}; see OctoTransformer.

    ``readouts_only`` returns only the readout groups, and skips the other rows of the last
    layer (what sample_actions needs; the values are the same).
    """
    _check_shapes({k: v for k, v in observations.items() if k.startswith("image_")},
                  self.example_batch["observation"], "observations", 2)
    self._check_tasks(tasks)
    if timestep_pad_mask is None:
      timestep_pad_mask = _timestep_pad_mask(observations)
    return self.module.apply({"params": self.params}, observations, tasks,
                             jnp.asarray(timestep_pad_mask, bool), readouts_only,
                             method=OctoModule.transformer)

  def readout_embedding(self, observations: Data, tasks: Data, timestep_pad_mask: jax.Array,
                        transformer_batch: Optional[int] = None) -> jax.Array:
    """The action head's input: its readout tokens pooled (averaged, or by the head's MAP
    head), float32 [B, W, D].

    ``transformer_batch`` runs the tokenizers and the transformer over slices of that many
    examples (``lax.map``; the last slice padded with copies of the last example) instead of
    the whole batch at once: the same values, and on CPUs a cost per sample that stays flat in
    the batch (XLA:CPU allocates a call's large intermediates afresh, and past glibc's mmap
    threshold each call maps and zeroes them anew). None picks ``default_transformer_batch()``;
    0 turns slicing off.
    """
    head = dict(self.spec.heads)["action"]

    def embed(obs, task, mask):
      outputs = self.run_transformer(obs, task, mask, readouts_only=True)
      return self.module.apply({"params": self.params}, "action", outputs[head.readout_key],
                               method=OctoModule.head_embedding)

    size = default_transformer_batch() if transformer_batch is None else transformer_batch
    batch = timestep_pad_mask.shape[0]
    if not size or batch <= size:
      return embed(observations, tasks, timestep_pad_mask)
    slices = -(-batch // size)

    def split(x):
      x = jnp.asarray(x)
      pad = slices * size - batch
      x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x
      return x.reshape((slices, size) + x.shape[1:])

    inputs = jax.tree.map(split, (observations, tasks, jnp.asarray(timestep_pad_mask, bool)))
    out = jax.lax.map(lambda args: embed(*args), inputs)
    return out.reshape((slices * size,) + out.shape[2:])[:batch]

  @functools.partial(jax.jit, static_argnames=("num_samples", "normalization_type",
                                                "skip_first_step", "transformer_batch"))
  def sample_actions(self, observations: Data, tasks: Data, rng: jax.Array,
                     unnormalization_statistics: Optional[Data] = None,
                     num_samples: Optional[int] = None,
                     timestep_pad_mask: Optional[jax.Array] = None,
                     normalization_type: str = "normal",
                     skip_first_step: Optional[bool] = None,
                     transformer_batch: Optional[int] = None) -> jax.Array:
    """Action chunks for the last timestep of each observation window.

    A diffusion head samples them; a deterministic head (L1ActionHead, MSEActionHead,
    ContinuousActionHead) predicts one chunk and ignores ``rng``: every sample is that chunk.

    Args:
      observations: image_<k> [B, W, H, W', 3] uint8 (shapes of the example batch; W may be
        smaller than the checkpoint's window), optional proprio [B, W, P] float32 (normalised
        as in training), timestep_pad_mask [B, W] bool (v1.0: pad_mask), optional
        pad_mask_dict {key: [B, W] bool}.
      tasks: from ``create_tasks``.
      rng: PRNG key; the same key gives the official model's samples (legacy threefry).
      unnormalization_statistics: {mean, std, mask} ("normal") or {p01, p99, mask} ("bounds"),
        e.g. ``model.dataset_statistics["action"]``; None returns normalised actions.
      num_samples: None for one sample, else N independent samples.
      timestep_pad_mask: overrides ``observations["timestep_pad_mask"]``.
      normalization_type: "normal" or "bounds" (Octo's ``NormalizationType`` members are these
        strings): how the statistics unnormalise, as the official ``sample_actions`` does.
        Octo's checkpoints do not record it for the loader; the training config's
        ``dataset_kwargs.action_proprio_normalization_type`` says which was used.
      skip_first_step: see ``heads.sample_chunks``; None takes the checkpoint's own setting
        (``config.json``'s ``sampling.skip_first_step``, which rpd_jax.pipeline.finetune writes as
        True), else False: the official sampler.
      transformer_batch: examples per transformer slice (``readout_embedding``); None: 8 on a
        CPU, the whole batch on accelerators; 0: the whole batch. The diffusion head always
        samples the whole batch at once.

    Returns:
      [B, action_horizon, action_dim] float32, or [N, B, horizon, dim] with num_samples=N;
      truncated to len(mask) dims when statistics are given.
    """
    if timestep_pad_mask is None:
      timestep_pad_mask = _timestep_pad_mask(observations)
    head = dict(self.spec.heads)["action"]
    embedding = self.readout_embedding(observations, tasks, timestep_pad_mask, transformer_batch)
    sample_shape = () if num_samples is None else (num_samples,)
    variables = {"params": self.params}
    stats = unnormalization_statistics
    if head.deterministic:
      chunks = self.module.apply(variables, "action", embedding, method=OctoModule.head_predict)
      actions = jnp.broadcast_to(chunks[:, -1], sample_shape + chunks[:, -1].shape)
    else:
      batch, window = embedding.shape[:2]
      shape = sample_shape + (batch, window, head.action_horizon * head.action_dim)

      def eps_fn(x, t):
        return self.module.apply(variables, "action", embedding, x, t,
                                 method=OctoModule.head_eps)

      # As the official code: the statistics' own action size (len of "mean"), whatever the
      # normalisation type; dims beyond it stay noise.
      embodiment_dim = None
      if stats is not None:
        embodiment_dim = int(np.shape(stats["mean" if "mean" in stats else "p01"])[0])
      if skip_first_step is None:
        skip_first_step = self.skip_first_step
      x = heads_lib.sample_chunks(eps_fn, shape, rng, head,
                                  embodiment_action_dim=embodiment_dim,
                                  skip_first_step=skip_first_step)
      actions = x.reshape(x.shape[:-1] + (head.action_horizon, head.action_dim))[..., -1, :, :]
    if stats is not None:
      actions = unnormalize(actions, stats, normalization_type)
    return actions


def diffusion_loss(module: OctoModule, params: Any, observations: Data, tasks: Data,
                   actions: jax.Array, action_pad_mask: jax.Array, statistics: Data,
                   key: jax.Array) -> jax.Array:
  """Octo's training loss: MSE of the diffusion head's noise prediction on normalised chunks.

  observations: image_<k> [B, W, H, W', 3] and timestep_pad_mask [B, W]; actions
  [B, W, horizon, dim] in environment units, ``normalize``d with ``statistics``;
  action_pad_mask bool [B, W, horizon] (False past an episode's end). Padded timesteps and
  chunk steps do not count. A diffusion step t and noise are drawn per (sample, timestep).
  """
  head = dict(module.spec.heads)["action"]
  if head.deterministic:
    raise ValueError(f"diffusion_loss trains a DiffusionActionHead; this model's head is a "
                     f"{head.name}")
  pad_mask = observations["timestep_pad_mask"]
  outputs = module.apply({"params": params}, observations, tasks, pad_mask, True,
                         method=OctoModule.transformer)
  embedding = module.apply({"params": params}, "action", outputs[head.readout_key],
                           method=OctoModule.head_embedding)  # [B, W, D]
  actions = normalize(actions, statistics, head.max_action)
  b, w, h, a = actions.shape
  x0 = actions.reshape((b, w, h * a))
  k_time, k_noise = jax.random.split(key)
  _, _, alpha_hats = heads_lib.schedule(head.diffusion_steps)
  t = jax.random.randint(k_time, (b, w, 1), 0, head.diffusion_steps)
  noise = jax.random.normal(k_noise, x0.shape)
  alpha_hat = alpha_hats[t]
  noisy = jnp.sqrt(alpha_hat) * x0 + jnp.sqrt(1 - alpha_hat) * noise
  eps = module.apply({"params": params}, "action", embedding, noisy, t,
                     method=OctoModule.head_eps)
  mask = pad_mask[:, :, None, None] & action_pad_mask[..., None]
  mask = jnp.broadcast_to(mask, (b, w, h, a)).reshape((b, w, h * a)).astype(jnp.float32)
  return jnp.sum(jnp.square(eps - noise) * mask) / jnp.maximum(mask.sum(), 1.0)


def default_transformer_batch() -> int:
  """Examples per transformer slice when sampling: 8 on a CPU (measured flat per sample from
  batch 8 to 128 on octo-small), 0 (the whole batch) on accelerators, whose allocator pools
  memory and whose throughput grows with the batch."""
  return 8 if jax.default_backend() == "cpu" else 0


def _timestep_pad_mask(observations: Data) -> jax.Array:
  for key in ("timestep_pad_mask", "pad_mask"):
    if key in observations:
      return jnp.asarray(observations[key], bool)
  raise ValueError("observations need timestep_pad_mask [B, W] bool (True = real timestep)")


def normalize(actions: jax.Array, statistics: Data, max_action: float) -> jax.Array:
  """Environment units -> Octo's training targets: (a - mean) / std where ``mask``, clipped to
  +-max_action (the head's ``max_action``); masked-out dims (the gripper) stay raw."""
  normed = (actions - statistics["mean"]) / (statistics["std"] + 1e-8)
  return jnp.clip(jnp.where(statistics["mask"], normed, actions), -max_action, max_action)


def _mask(statistics: Data, ref: Any) -> jax.Array:
  """bool [D]: the statistics' optional ``mask`` (dims normalised), all True where absent;
  ``ref``: one of the statistics, for the shape."""
  mask = statistics.get("mask")
  return jnp.ones(np.shape(ref), bool) if mask is None else jnp.asarray(mask, bool)


def unnormalize(actions: jax.Array, statistics: Data, normalization_type: str = "normal"):
  """Normalised actions [..., dim] -> environment units, on the dims where ``mask`` is True.

  "normal": a * std + mean; "bounds": (a + 1) * (p99 - p01) / 2 + p01. Actions are first
  truncated to len(mask); masked-out dims (e.g. the gripper of EEF datasets) stay as they are.
  """
  if normalization_type == "normal":
    ref = statistics["mean"]
  elif normalization_type == "bounds":
    ref = statistics["p01"]
  else:
    raise ValueError(f"normalization_type must be 'normal' or 'bounds', got "
                     f"{normalization_type!r}")
  mask = _mask(statistics, ref)
  actions = actions[..., :mask.shape[0]]
  if normalization_type == "normal":
    raw = actions * statistics["std"] + statistics["mean"]
  else:
    raw = (actions + 1) * (statistics["p99"] - statistics["p01"]) / 2 + statistics["p01"]
  return jnp.where(mask, raw, actions)


def normalize_proprio(proprio: jax.Array, statistics: Data,
                      normalization_type: str = "normal") -> jax.Array:
  """Raw proprioception [..., P] -> what the model was trained on, as Octo's data pipeline
  normalises it: "normal": (x - mean) / (std + 1e-8); "bounds": 2 (x - p01) / (p99 - p01 +
  1e-8) - 1, clipped to [-1, 1]; dims where the statistics' optional ``mask`` is False stay."""
  if normalization_type == "normal":
    normed = (proprio - statistics["mean"]) / (statistics["std"] + 1e-8)
    ref = statistics["mean"]
  elif normalization_type == "bounds":
    span = statistics["p99"] - statistics["p01"] + 1e-8
    normed = jnp.clip(2 * (proprio - statistics["p01"]) / span - 1, -1, 1)
    ref = statistics["p01"]
  else:
    raise ValueError(f"normalization_type must be 'normal' or 'bounds', got "
                     f"{normalization_type!r}")
  mask = _mask(statistics, ref)
  return jnp.where(mask, normed, proprio)
