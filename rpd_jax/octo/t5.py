"""The T5 encoder Octo uses to embed language, as Hugging Face's Flax T5 (v1.0) computes it.

Octo checkpoints carry the frozen encoder weights under
``octo_transformer/task_tokenizers_language/hf_model``; the module names below reproduce that
tree (``shared/embedding``, ``encoder/block/<i>/layer/{0,1}/...``,
``encoder/final_layer_norm/weight``). Architecture: RMS layer norm without bias or mean
subtraction, attention without biases and without 1/sqrt(d_kv) scaling, a relative position
bias computed in block 0 and reused by every block, ReLU feed forward.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class T5Config:
  """The fields of a Hugging Face ``T5Config`` that the encoder needs."""

  vocab_size: int = 32128
  d_model: int = 768
  d_kv: int = 64
  d_ff: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "T5Config":
    """Builds a config from a Hugging Face ``config.json`` dict; extra keys are ignored."""
    act = d.get("feed_forward_proj", "relu")
    if act != "relu":
      raise ValueError(
          f"T5 feed_forward_proj={act!r} is not supported; Octo's encoders (t5-base) use "
          "'relu' (T5 v1.0)")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})

  @classmethod
  def from_json(cls, path: str) -> "T5Config":
    with open(path) as f:
      return cls.from_dict(json.load(f))


# "t5-base" is the encoder every released Octo checkpoint names. "rpd-t5-tiny" is this
# project's tiny random encoder for fast tests and benchmarks (t5-base's vocabulary, so real
# token ids fit). Other names are looked up as a Hugging Face-style config folder.
KNOWN_T5_CONFIGS = {
    "t5-base": T5Config(),
    "rpd-t5-tiny": T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
}


def resolve_t5_config(name: str, search_dirs=()) -> T5Config:
  """The config of the T5 encoder called ``name`` in an Octo config.

  ``t5-base`` is built in. Any other name is read from ``<dir>/<name>/config.json`` for the
  first of ``search_dirs`` (then the working directory) that has it, the way Hugging Face
  resolves a local model name.
  """
  if name in KNOWN_T5_CONFIGS:
    return KNOWN_T5_CONFIGS[name]
  candidates = [os.path.join(d, name, "config.json") for d in (*search_dirs, os.getcwd())]
  for path in candidates:
    if os.path.isfile(path):
      return T5Config.from_json(path)
  raise FileNotFoundError(
      f"unknown language encoder {name!r}: it is not one of {sorted(KNOWN_T5_CONFIGS)} and no "
      f"Hugging Face config folder was found at any of {candidates}; put the encoder's "
      f"config.json in a folder named {name!r} next to the checkpoint, or pass t5_config=")


def relative_position_bucket(relative_position: jax.Array, num_buckets: int = 32,
                             max_distance: int = 128) -> jax.Array:
  """Bidirectional T5 bucket of ``key_pos - query_pos`` (int32, any shape).

  Half of the buckets per direction; distances below num_buckets // 4 are exact, larger ones
  share log-spaced buckets up to max_distance. The float32 arithmetic follows Hugging Face's
  Flax code operation by operation, so that boundary cases (e.g. distance 16) truncate alike.
  """
  num_buckets //= 2
  buckets = (relative_position > 0) * num_buckets
  relative_position = jnp.abs(relative_position)
  max_exact = num_buckets // 2
  is_small = relative_position < max_exact
  if_large = max_exact + (
      jnp.log(relative_position / max_exact) / jnp.log(max_distance / max_exact)
      * (num_buckets - max_exact))
  if_large = jnp.clip(if_large, max=num_buckets - 1)
  buckets = buckets + jnp.where(is_small, relative_position, if_large)
  return buckets.astype(jnp.int32)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, no bias."""

  eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    variance = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    x = x / jnp.sqrt(variance + self.eps)
    return (weight * x).astype(self.dtype)


class T5PositionBias(nn.Module):
  """The relative position bias table (``relative_attention_bias/embedding``) of block 0."""

  config: T5Config

  @nn.compact
  def __call__(self, length: int):
    """Returns the bias [1, heads, L, L] indexed [query, key]."""
    c = self.config
    table = self.param("embedding", nn.initializers.normal(1.0),
                       (c.relative_attention_num_buckets, c.num_heads), jnp.float32)
    pos = jnp.arange(length, dtype=jnp.int32)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None],
                                       c.relative_attention_num_buckets,
                                       c.relative_attention_max_distance)
    return jnp.transpose(table[buckets], (2, 0, 1))[None]


class T5Attention(nn.Module):
  """Self-attention without biases or logit scaling."""

  config: T5Config
  has_relative_attention_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias, position_bias):
    """One attention sublayer.

    Args:
      x: [B, L, d_model].
      mask_bias: [B, 1, 1, L] float32, 0 for valid keys and float32's minimum for padding.
      position_bias: [B, heads, L, L] from block 0 (mask included), or None in block 0.

    Returns:
      ([B, L, d_model], the position bias for the next blocks).
    """
    c = self.config
    inner = c.num_heads * c.d_kv
    if position_bias is None:
      position_bias = T5PositionBias(c, name="relative_attention_bias")(x.shape[1]) + mask_bias
    dense = lambda n, f: nn.Dense(f, use_bias=False, dtype=self.dtype, name=n)
    split = lambda t: t.reshape(t.shape[:2] + (c.num_heads, c.d_kv))
    q, k, v = (split(dense(n, inner)(x)) for n in ("q", "k", "v"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    weights = jax.nn.softmax(logits + position_bias, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(x.shape[:2] + (inner,))
    return dense("o", c.d_model)(out), position_bias


class _SelfAttentionLayer(nn.Module):
  config: T5Config
  has_relative_attention_bias: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias, position_bias):
    y = RMSNorm(self.config.layer_norm_epsilon, self.dtype, name="layer_norm")(x)
    y, position_bias = T5Attention(self.config, self.has_relative_attention_bias, self.dtype,
                                   name="SelfAttention")(y, mask_bias, position_bias)
    return x + y, position_bias


class _DenseReluDense(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.config.d_ff, use_bias=False, dtype=self.dtype, name="wi")(x)
    return nn.Dense(self.config.d_model, use_bias=False, dtype=self.dtype, name="wo")(
        nn.relu(x))


class _FeedForwardLayer(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = RMSNorm(self.config.layer_norm_epsilon, self.dtype, name="layer_norm")(x)
    return x + _DenseReluDense(self.config, self.dtype, name="DenseReluDense")(y)


class _Sublayers(nn.Module):
  """``block/<i>/layer``: attention sublayer "0", feed-forward sublayer "1"."""

  config: T5Config
  has_relative_attention_bias: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias, position_bias):
    x, position_bias = _SelfAttentionLayer(self.config, self.has_relative_attention_bias,
                                           self.dtype, name="0")(x, mask_bias, position_bias)
    return _FeedForwardLayer(self.config, self.dtype, name="1")(x), position_bias


class _Block(nn.Module):
  config: T5Config
  has_relative_attention_bias: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias, position_bias):
    return _Sublayers(self.config, self.has_relative_attention_bias, self.dtype,
                      name="layer")(x, mask_bias, position_bias)


class _Blocks(nn.Module):
  """``encoder/block``: the blocks "0", "1", ..."""

  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias):
    position_bias = None
    for i in range(self.config.num_layers):
      x, position_bias = _Block(self.config, i == 0, self.dtype, name=str(i))(
          x, mask_bias, position_bias)
    return x


class _Stack(nn.Module):
  """``encoder``: the blocks and the final RMS norm."""

  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias):
    x = _Blocks(self.config, self.dtype, name="block")(x, mask_bias)
    return RMSNorm(self.config.layer_norm_epsilon, jnp.float32, name="final_layer_norm")(x)


class T5Encoder(nn.Module):
  """Hugging Face's ``FlaxT5EncoderModel`` module (inference: no dropout)."""

  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """input_ids, attention_mask [B, L] int -> last hidden state [B, L, d_model] float32.

    Padded positions get outputs too (Octo feeds them on); they are only hidden as keys.
    """
    c = self.config
    x = nn.Embed(c.vocab_size, c.d_model, embedding_init=nn.initializers.normal(1.0),
                 name="shared")(input_ids).astype(self.dtype)
    # Masked keys get float32's minimum added (not -inf), as in Hugging Face's Flax T5, so a
    # query whose keys are all padding stays finite.
    mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0,
                          jnp.finfo(jnp.float32).min).astype(jnp.float32)
    return _Stack(c, self.dtype, name="encoder")(x, mask_bias)
