"""Octo's block transformer: a pre-LayerNorm ViT encoder and its group attention mask."""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GroupLayout:
  """Where a token group sits in the sequence and which groups it reads.

  name: e.g. "task_language", "obs_primary", "readout_action".
  num_tokens: tokens per timestep (or in the prefix).
  is_prefix: prefix groups come once, before all timesteps, at timestep -1.
  attends_to: fnmatch patterns of group names this group attends to, causally (the key's
    timestep <= the query's timestep); all of Octo's rules are of this kind.
  """

  name: str
  num_tokens: int
  is_prefix: bool
  attends_to: tuple[str, ...]


def rule_mask(groups: Sequence[GroupLayout], horizon: int,
              correct_attention: bool = True) -> np.ndarray:
  """The attention rules as a static bool matrix [N, N], indexed [query, key].

  Prefix groups come first, then for each of the ``horizon`` timesteps the timestep groups in
  order. With ``correct_attention=False`` token group membership is looked up with a left-sided
  search over the cumulative group sizes of a block, as Octo 1.0 checkpoints were trained: the
  first token of every group but the block's first counts as a token of the preceding group.
  """
  prefix = [g for g in groups if g.is_prefix]
  steps = [g for g in groups if not g.is_prefix]
  side = "right" if correct_attention else "left"

  def members(block):
    sizes = [g.num_tokens for g in block]
    idx = np.searchsorted(np.cumsum(sizes), np.arange(sum(sizes)), side=side)
    return idx

  group_of = [members(prefix)]
  timestep = [np.full(sum(g.num_tokens for g in prefix), -1)]
  per_step = members(steps) + len(prefix)
  for t in range(horizon):
    group_of.append(per_step)
    timestep.append(np.full(per_step.shape, t))
  group_of = np.concatenate(group_of)
  timestep = np.concatenate(timestep)

  everything = prefix + steps
  reads = np.array([[any(fnmatch.fnmatch(other.name, p) for p in g.attends_to)
                     for other in everything] for g in everything], dtype=bool)
  return reads[group_of[:, None], group_of[None, :]] & (timestep[None, :] <= timestep[:, None])


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0")(x)
    # Flax's default gelu is the tanh approximation, which Octo was trained with.
    y = nn.gelu(y, approximate=True)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="Dense_1")(y)


ATTENTIONS = ("flax", "xla", "cudnn", "auto")


def fused_attention(query, key, value, mask=None, *, rule: np.ndarray, implementation: str):
  """``jax.nn.dot_product_attention`` with Octo's masking, for Flax's ``attention_fn``.

  query [B, T, H, D], key / value [B, S, H, D]; ``mask`` [B, 1, 1, S] bool, the keys' validity;
  ``rule`` [T, S] bool, the batch-independent attention rules, passed as one [1, 1, T, S]
  additive bias. Logits a rule forbids get -0.7 x float32's maximum, as masked ones do inside
  jax, so a query row with no valid key averages all values (the official model's behaviour,
  where Flax uses float32's minimum) and never turns NaN. ``implementation``: "xla", "cudnn",
  or "auto" (cuDNN where it applies, else XLA). Softmax runs in float32.
  """
  bias = np.where(rule, 0.0, -0.7 * np.finfo(np.float32).max)[None, None]
  return jax.nn.dot_product_attention(
      query, key, value, bias=jnp.asarray(bias, query.dtype), mask=mask,
      implementation=None if implementation == "auto" else implementation)


class EncoderBlock(nn.Module):
  """x + MHA(LN(x)), then x + MLP(LN(x))."""

  mlp_dim: int
  num_heads: int
  dtype: Any = jnp.float32
  attention: str = "flax"  # one of ATTENTIONS (see Transformer)

  @nn.compact
  def __call__(self, x, rule: np.ndarray, valid: jax.Array, rows: Optional[np.ndarray] = None):
    """x [B, N, D]; rule [N, N] bool (static), valid [B, N] bool (which keys are real);
    ``rows`` (static) computes only those query tokens.

    Returns [B, N, D], or [B, len(rows), D] when rows are given.
    """
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(x)
    queries = y
    if rows is not None:
      x, queries, rule = x[:, rows], y[:, rows], rule[rows]
    keys_valid = valid[:, None, None, :]
    if self.attention == "flax":
      # Masked logits become float32's minimum inside Flax attention (not -inf), so a query row
      # with no valid key averages all values instead of turning NaN, as in the official model.
      mask, attention_fn = jnp.logical_and(rule[None, None], keys_valid), nn.dot_product_attention
    else:
      mask = keys_valid
      attention_fn = functools.partial(fused_attention, rule=rule,
                                       implementation=self.attention)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                        deterministic=True, force_fp32_for_softmax=True,
                                        attention_fn=attention_fn,
                                        name="MultiHeadDotProductAttention_0")(
                                            queries, y, mask=mask)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_1")(x)
    return x + MlpBlock(self.mlp_dim, self.dtype, name="MlpBlock_0")(y)


class Transformer(nn.Module):
  """``num_layers`` encoder blocks and a final LayerNorm; no position embedding of its own.

  ``attention`` picks the attention kernel: "flax" (Flax's, the parity reference), or
  ``jax.nn.dot_product_attention`` with "xla", "cudnn" or "auto" (cuDNN where it applies: a
  fused kernel that never writes the [B, H, N, N] logits). All compute softmax in float32.
  """

  num_layers: int
  mlp_dim: int
  num_attention_heads: int
  dtype: Any = jnp.float32
  attention: str = "flax"

  @nn.compact
  def __call__(self, x: jax.Array, rule: np.ndarray, valid: jax.Array,
               output_rows: Optional[np.ndarray] = None) -> jax.Array:
    """x [B, N, D], rule [N, N] bool (static: query may attend key), valid [B, N] bool (the
    keys that are not padding) -> [B, N, D].

    With ``output_rows`` (static token indices) the last block computes only those queries and
    [B, len(output_rows), D] is returned: the same values for a fraction of the last layer.
    """
    if self.attention not in ATTENTIONS:
      raise ValueError(f"attention={self.attention!r}; use one of {', '.join(ATTENTIONS)}")
    for i in range(self.num_layers):
      rows = output_rows if i == self.num_layers - 1 else None
      x = EncoderBlock(self.mlp_dim, self.num_attention_heads, self.dtype, self.attention,
                       name=f"encoderblock_{i}")(x, rule, valid, rows)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x)
