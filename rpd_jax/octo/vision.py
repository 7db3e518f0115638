"""Octo's image tokenizer stem (SmallStem16): a weight-standardised conv stem, then patches."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def normalize_images(images: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [-1, 1] (Octo's "default" image normalisation)."""
  return images.astype(jnp.float32) / 127.5 - 1.0


class StdConv(nn.Module):
  """A conv whose stored kernel is standardised on every call.

  The kernel [kh, kw, in, out] becomes (w - mean) / (std + 1e-5) over (kh, kw, in), with the
  population std; the bias is left as is. Checkpoints store the raw kernel.
  """

  features: int
  kernel_size: int
  strides: int
  padding: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2))
    kernel = kernel / (jnp.std(kernel, axis=(0, 1, 2)) + 1e-5)
    pad = ((self.padding, self.padding),) * 2
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (self.strides, self.strides), pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


class SmallStem(nn.Module):
  """Light conv layers, then a patchifying conv ("Early convolutions help transformers see").

  Each layer: StdConv (kernel k, stride s, padding p) -> GroupNorm(32 groups, eps 1e-6) -> ReLU;
  then a conv named ``embedding`` with kernel = stride = patch_size // 16. With the defaults,
  [N, 256, 256, C] -> [N, 16, 16, 512].
  """

  patch_size: int = 16
  kernel_sizes: Sequence[int] = (3, 3, 3, 3)
  strides: Sequence[int] = (2, 2, 2, 2)
  features: Sequence[int] = (32, 96, 192, 384)
  padding: Sequence[int] = (1, 1, 1, 1)
  num_features: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images [N, H, W, C] uint8 or float in [0, 255] -> features [N, H', W', num_features]."""
    x = normalize_images(images).astype(self.dtype)
    for i, (k, s, f, p) in enumerate(zip(self.kernel_sizes, self.strides, self.features,
                                         self.padding)):
      x = StdConv(f, k, s, p, self.dtype, name=f"StdConv_{i}")(x)
      x = nn.GroupNorm(num_groups=32, epsilon=1e-6, dtype=self.dtype, name=f"GroupNorm_{i}")(x)
      x = nn.relu(x)
    patch = self.patch_size // 16
    return nn.Conv(self.num_features, (patch, patch), strides=(patch, patch), padding="VALID",
                   dtype=self.dtype, name="embedding")(x)
