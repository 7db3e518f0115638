"""Octo's block transformer: a pre-LayerNorm ViT encoder and its group attention mask."""

from __future__ import annotations

import dataclasses
import fnmatch
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


class EncoderBlock(nn.Module):
  """x + MHA(LN(x)), then x + MLP(LN(x))."""

  mlp_dim: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, rows: Optional[np.ndarray] = None):
    """x [B, N, D], mask [B, 1, N, N]; ``rows`` (static) computes only those query tokens.

    Returns [B, N, D], or [B, len(rows), D] when rows are given.
    """
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_0")(x)
    queries = y
    if rows is not None:
      x, queries, mask = x[:, rows], y[:, rows], mask[:, :, rows]
    # Masked logits become float32's minimum inside Flax attention (not -inf), so a query row
    # with no valid key averages all values instead of turning NaN, as in the official model.
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                        deterministic=True,
                                        name="MultiHeadDotProductAttention_0")(
                                            queries, y, mask=mask)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="LayerNorm_1")(x)
    return x + MlpBlock(self.mlp_dim, self.dtype, name="MlpBlock_0")(y)


class Transformer(nn.Module):
  """``num_layers`` encoder blocks and a final LayerNorm; no position embedding of its own."""

  num_layers: int
  mlp_dim: int
  num_attention_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array,
               output_rows: Optional[np.ndarray] = None) -> jax.Array:
    """x [B, N, D], mask [B, 1, N, N] bool (True: query may attend key) -> [B, N, D].

    With ``output_rows`` (static token indices) the last block computes only those queries and
    [B, len(output_rows), D] is returned: the same values for a fraction of the last layer.
    """
    for i in range(self.num_layers):
      rows = output_rows if i == self.num_layers - 1 else None
      x = EncoderBlock(self.mlp_dim, self.num_attention_heads, self.dtype,
                       name=f"encoderblock_{i}")(x, mask, rows)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x)
