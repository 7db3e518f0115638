"""The Octo network as one Flax module whose parameter tree matches official checkpoints.

Tree: ``octo_transformer/{observation_tokenizers_<k>/SmallStem16_0, task_tokenizers_<k>/hf_model,
<group>_projection, <group>_pos_embedding, BlockTransformer_0/Transformer_0}`` and
``heads_<k>/{diffusion_model | mean_proj}`` (plus ``map_head`` for heads that pool with one).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rpd_jax.octo.config import (ImageTokenizerSpec, LanguageTokenizerSpec,
                                 LowdimTokenizerSpec, OctoSpec)
from rpd_jax.octo.heads import make_head
from rpd_jax.octo.t5 import T5Encoder
from rpd_jax.octo.transformer import GroupLayout, Transformer, rule_mask
from rpd_jax.octo.vision import SmallStem

Data = Mapping[str, Any]


class TokenGroup(NamedTuple):
  """tokens [B, n, D] (prefix) or [B, W, n, D] (timestep); mask: tokens.shape[:-1]."""

  tokens: jax.Array
  mask: jax.Array


def _matching(patterns, keys):
  """Keys (sorted) that match any regex pattern at their start, like the official filter."""
  return [k for k in sorted(keys) if any(re.match(p, k) for p in patterns)]


def _pad_mask(shape, pad_mask_dict: Optional[Data], keys) -> jax.Array:
  """OR over ``keys`` of the per-key validity, broadcast to ``shape``; all valid if unknown."""
  if pad_mask_dict is None or not all(k in pad_mask_dict for k in keys):
    return jnp.ones(shape, bool)
  valid = jnp.any(jnp.stack([pad_mask_dict[k] for k in keys], axis=-1), axis=-1)
  return jnp.broadcast_to(valid[..., None], shape)


class ImageTokenizer(nn.Module):
  """Stacks each observation image with its task (goal) image on channels, runs the stem.

  Returns None when no observation key matches (the group is then left out of the sequence).
  """

  spec: ImageTokenizerSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, observations: Data, tasks: Data) -> Optional[TokenGroup]:
    obs_keys = _matching(self.spec.obs_stack_keys, observations.keys())
    if not obs_keys:
      return None
    x = jnp.concatenate([observations[k] for k in obs_keys], axis=-1)
    if self.spec.task_stack_keys:
      tasks = dict(tasks)
      # A task without the goal image of an observed camera gets zeros there (-1 after
      # normalisation), as language-conditioned tasks do.
      for k in _matching(self.spec.task_stack_keys, observations.keys()):
        if k not in tasks:
          tasks[k] = jnp.zeros_like(observations[k][:, 0])
      task_keys = _matching(self.spec.task_stack_keys, tasks.keys())
      if not task_keys:
        raise ValueError(f"no task inputs match {self.spec.task_stack_keys}")
      goal = jnp.concatenate([tasks[k] for k in task_keys], axis=-1)
      goal = jnp.broadcast_to(goal[:, None], x.shape[:2] + goal.shape[1:])
      x = jnp.concatenate([x, goal.astype(x.dtype)], axis=-1)
    b, w = x.shape[:2]
    s = self.spec.stem
    tokens = SmallStem(s.patch_size, s.kernel_sizes, s.strides, s.features, s.padding,
                       s.num_features, self.dtype, name=f"{s.name}_0")(
                           x.reshape((b * w,) + x.shape[2:]))
    tokens = tokens.reshape((b, w, -1, tokens.shape[-1]))
    mask = _pad_mask(tokens.shape[:-1], observations.get("pad_mask_dict"), obs_keys)
    return TokenGroup(tokens, mask)


class LowdimObsTokenizer(nn.Module):
  """Low-dimensional observations (e.g. ``proprio`` [B, W, P]) as one token per dimension.

  As Octo's LowdimObsTokenizer without discretisation: the inputs of every key matching
  ``obs_keys`` (each pattern in turn, over the sorted keys) are concatenated on the last axis
  and become tokens [B, W, P, 1] as given (the data pipeline normalised them); the mask is all
  ones (``pad_mask_dict`` is not read). Returns None when no key matches. No parameters.
  """

  spec: LowdimTokenizerSpec

  def __call__(self, observations: Data, tasks: Data) -> Optional[TokenGroup]:
    del tasks
    keys = [k for pattern in self.spec.obs_keys for k in sorted(observations)
            if re.match(pattern, k)]
    if not keys:
      return None
    inputs = jnp.concatenate([observations[k] for k in keys], axis=-1)
    tokens = inputs[..., None]
    return TokenGroup(tokens, jnp.ones(tokens.shape[:-1], jnp.float32))


class LanguageTokenizer(nn.Module):
  """T5 embeddings of the instruction, or precomputed ones passed as an array.

  ``tasks["language_instruction"]`` is either dict(input_ids, attention_mask) [B, L] or
  embeddings [B, L, d_model]. All L tokens share the task's language validity flag
  (``pad_mask_dict["language_instruction"]``); the attention mask only acts inside T5.
  """

  spec: LanguageTokenizerSpec
  dtype: Any = jnp.float32

  def setup(self):
    self.hf_model = T5Encoder(self.spec.t5, self.dtype)

  def __call__(self, tasks: Data) -> Optional[TokenGroup]:
    if "language_instruction" not in tasks:
      return None
    lang = tasks["language_instruction"]
    if isinstance(lang, Mapping):
      tokens = self.hf_model(lang["input_ids"], lang["attention_mask"])
    else:
      tokens = lang if lang.ndim == 3 else lang[:, None, :]
    # The encoder is frozen in every released checkpoint.
    tokens = jax.lax.stop_gradient(tokens)
    mask = _pad_mask(tokens.shape[:-1], tasks.get("pad_mask_dict"), ("language_instruction",))
    return TokenGroup(tokens, mask)


_TASK_RULES = ("task_*",)
_OBS_RULES = ("task_*", "obs_*")


class OctoTransformer(nn.Module):
  """Tokenizers, projections, position embeddings and the block transformer.

  Sequence: the task groups (prefix), then per timestep the observation groups in config order,
  the repeated task groups (Octo 1.5), and the readouts. Intermediate values are sown into the
  "intermediates" collection under tokenizer/*, pre/*, attention_mask.
  """

  spec: OctoSpec
  dtype: Any = jnp.float32
  attention: str = "flax"

  def _pos_embedding(self, name: str, tokens: jax.Array) -> jax.Array:
    if tokens.ndim == 3:
      shape = (1,) + tokens.shape[-2:]
    else:
      shape = (1, self.spec.max_horizon) + tokens.shape[-2:]
    embedding = self.param(f"{name}_pos_embedding", nn.initializers.normal(0.02), shape,
                           jnp.float32)
    if tokens.ndim == 4:
      embedding = embedding[:, :tokens.shape[1]]
    return jnp.broadcast_to(embedding, tokens.shape)

  def _project(self, name: str, tokens: jax.Array) -> jax.Array:
    x = nn.Dense(self.spec.token_embedding_size, dtype=self.dtype, name=f"{name}_projection")(
        tokens)
    return x + self._pos_embedding(name, x).astype(x.dtype)

  @nn.compact
  def __call__(self, observations: Data, tasks: Data, timestep_pad_mask: jax.Array,
               readouts_only: bool = False) -> dict[str, TokenGroup]:
    """Runs the transformer.

    Args:
      observations: image_<k> [B, W, H, W', 3] uint8, optional proprio [B, W, P] float32,
        optional pad_mask_dict {key: [B, W]}.
      tasks: language_instruction (token dict or embeddings), optional goal images [B, H, W', 3],
        optional pad_mask_dict {key: [B]}.
      timestep_pad_mask: [B, W] bool, False at padded timesteps.
      readouts_only: return only the readout groups; the last layer then computes only their
        rows (a readout is read by nothing but later readouts, so the values are the same).

    Returns:
      {group name: TokenGroup} of transformer outputs after the final LayerNorm.
    """
    spec = self.spec
    batch, horizon = timestep_pad_mask.shape
    if horizon > spec.max_horizon:
      raise ValueError(f"window {horizon} exceeds the model's max_horizon {spec.max_horizon}")
    prefix, steps = [], []

    for name, tok_spec in spec.task_tokenizers:
      out = LanguageTokenizer(tok_spec, self.dtype, name=f"task_tokenizers_{name}")(tasks)
      if out is None:
        continue
      self.sow("intermediates", f"tokenizer/{name}", out)
      group = f"task_{name}"
      prefix.append((GroupLayout(group, out.tokens.shape[1], True, _TASK_RULES),
                     TokenGroup(self._project(group, out.tokens), out.mask)))

    for name, tok_spec in spec.observation_tokenizers:
      tokenizer = (LowdimObsTokenizer(tok_spec, name=f"observation_tokenizers_{name}")
                   if isinstance(tok_spec, LowdimTokenizerSpec) else
                   ImageTokenizer(tok_spec, self.dtype, name=f"observation_tokenizers_{name}"))
      out = tokenizer(observations, tasks)
      if out is None:
        continue
      self.sow("intermediates", f"tokenizer/{name}", out)
      group = f"obs_{name}"
      mask = jnp.logical_and(timestep_pad_mask[:, :, None], out.mask)
      steps.append((GroupLayout(group, out.tokens.shape[2], False, _OBS_RULES),
                     TokenGroup(self._project(group, out.tokens), mask)))

    if spec.repeat_task_tokens:
      # Octo 1.5 shows the task to every timestep again; these copies carry only the task's own
      # validity (not the timestep's), exactly as the released 1.5 models were trained.
      repeat = lambda x: jnp.broadcast_to(x[:, None], (batch, horizon) + x.shape[1:])
      for layout, group in prefix:
        steps.append((GroupLayout(f"obs_{layout.name}", layout.num_tokens, False, _OBS_RULES),
                      TokenGroup(repeat(group.tokens), repeat(group.mask))))

    for name, n in spec.readouts:
      group = f"readout_{name}"
      tokens = jnp.zeros((batch, horizon, n, spec.token_embedding_size), self.dtype)
      tokens = tokens + self._pos_embedding(group, tokens).astype(self.dtype)
      steps.append((GroupLayout(group, n, False, _OBS_RULES + (group,)),
                    TokenGroup(tokens, jnp.ones((batch, horizon, n), jnp.float32))))

    for layout, group in prefix + steps:
      self.sow("intermediates", f"pre/{layout.name}", group)

    layouts = [g for g, _ in prefix + steps]
    rules = rule_mask(layouts, horizon, spec.use_correct_attention)
    prefix_tokens = [g.tokens for _, g in prefix]
    step_tokens = jnp.concatenate([g.tokens for _, g in steps], axis=2)
    x = jnp.concatenate(prefix_tokens + [step_tokens.reshape((batch, -1, step_tokens.shape[-1]))],
                        axis=1)
    step_valid = jnp.concatenate([g.mask.astype(bool) for _, g in steps], axis=2)
    valid = jnp.concatenate([g.mask.astype(bool) for _, g in prefix]
                            + [step_valid.reshape((batch, -1))], axis=1)
    # Padding masks keys only: rule[i, j] AND valid[b, j]. The blocks take the two parts.
    self.sow("intermediates", "transformer_input", x)
    self.sow("intermediates", "attention_mask",
             jnp.logical_and(rules[None, None], valid[:, None, None, :]))

    block = _BlockTransformer(spec, self.dtype, self.attention, name="BlockTransformer_0")
    n_prefix = sum(layout.num_tokens for layout, _ in prefix)
    if readouts_only:
      # Nothing reads a readout but later readouts, so the last layer only needs their rows.
      readouts, offset, rows = [], 0, []
      for layout, group in steps:
        if layout.name.startswith("readout_"):
          readouts.append((layout, group))
          rows.append(np.arange(offset, offset + layout.num_tokens))
        offset += layout.num_tokens
      per_step = np.concatenate(rows)
      rows = np.concatenate([n_prefix + t * offset + per_step for t in range(horizon)])
      prefix, steps = [], readouts
      y_steps = block(x, rules, valid, rows).reshape((batch, horizon, per_step.size, -1))
    else:
      y = block(x, rules, valid)
      y_steps = y[:, n_prefix:].reshape((batch, horizon, -1, y.shape[-1]))

    outputs = {}
    start = 0
    for layout, group in prefix:
      outputs[layout.name] = TokenGroup(y[:, start:start + layout.num_tokens], group.mask)
      start += layout.num_tokens
    start = 0
    for layout, group in steps:
      outputs[layout.name] = TokenGroup(y_steps[:, :, start:start + layout.num_tokens],
                                        group.mask)
      start += layout.num_tokens
    return outputs


class _BlockTransformer(nn.Module):
  """Holds ``Transformer_0`` (the checkpoint's ``BlockTransformer_0/Transformer_0``)."""

  spec: OctoSpec
  dtype: Any = jnp.float32
  attention: str = "flax"

  @nn.compact
  def __call__(self, x, rule, valid, output_rows=None):
    return Transformer(self.spec.num_layers, self.spec.mlp_dim, self.spec.num_attention_heads,
                       self.dtype, self.attention, name="Transformer_0")(
                           x, rule, valid, output_rows)


class OctoModule(nn.Module):
  """``octo_transformer`` plus the heads (``heads_<name>``).

  ``dtype`` is the compute dtype of the transformer, tokenizers and T5 (parameters stay
  float32); the heads always run in float32. ``attention``: the transformer's attention kernel
  (``transformer.ATTENTIONS``; "flax", the parity reference, by default).
  """

  spec: OctoSpec
  dtype: Any = jnp.float32
  attention: str = "flax"

  def setup(self):
    self.octo_transformer = OctoTransformer(self.spec, self.dtype, self.attention)
    self.heads = {name: make_head(h) for name, h in self.spec.heads}

  def __call__(self, observations: Data, tasks: Data, timestep_pad_mask: jax.Array):
    """The transformer and every head (diffusion heads' eps at zero inputs); creates the
    parameters."""
    outputs = self.octo_transformer(observations, tasks, timestep_pad_mask)
    return {name: head(*outputs[head.spec.readout_key]) for name, head in self.heads.items()}

  def transformer(self, observations: Data, tasks: Data, timestep_pad_mask: jax.Array,
                  readouts_only: bool = False):
    return self.octo_transformer(observations, tasks, timestep_pad_mask, readouts_only)

  def head_embedding(self, head: str, readouts: TokenGroup) -> jax.Array:
    """Head ``head``'s pooled embedding [B, W, D] float32 of its readout group [B, W, n, D]."""
    return self.heads[head].pool(readouts.tokens, readouts.mask)

  def head_eps(self, head: str, embedding, noisy_actions, time):
    """eps of diffusion head ``head`` for a pooled readout embedding [..., D]."""
    return self.heads[head].eps(embedding, noisy_actions, time)

  def head_predict(self, head: str, embedding) -> jax.Array:
    """Normalised chunks [B, W, horizon, dim] of deterministic head ``head`` from a pooled
    embedding [B, W, D]."""
    return self.heads[head].predict(embedding)
