"""Octo's action heads: the diffusion head (a score network on the readout embedding, and its
sampler) and the deterministic continuous heads (L1ActionHead, MSEActionHead), with the
readout pooling they share (mean, or a MAP head)."""

from __future__ import annotations

import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from rpd_jax.octo.config import HeadSpec
from rpd_jax.octo.transformer import MlpBlock


def cosine_beta_schedule(steps: int, s: float = 0.008) -> jax.Array:
  """Betas [steps] of the cosine schedule (Nichol & Dhariwal), clipped to [0, 0.999], float32.

  Computed with the same float32 operations as the official head: the sampler divides by
  sqrt(alpha) (about 0.032 at the last step), so the schedule's rounding matters.
  """
  t = jnp.linspace(0, steps, steps + 1) / steps
  alphas_cumprod = jnp.cos((t + s) / (1 + s) * jnp.pi * 0.5) ** 2
  alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
  betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
  return jnp.clip(betas, 0, 0.999)


@functools.partial(jax.jit, static_argnums=0)
def schedule(steps: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(betas, alphas, alpha_hats), each [steps] float32; alpha_hat is the product of prefixes.

  Jitted because the official head computes it inside its jitted sampler: XLA's compiled cos
  differs from eager evaluation by up to 1e-6 here.
  """
  betas = cosine_beta_schedule(steps)
  alphas = 1 - betas
  alpha_hats = jnp.stack([jnp.prod(alphas[:i + 1]) for i in range(steps)])
  return betas, alphas, alpha_hats


class FourierFeatures(nn.Module):
  """Learnable Fourier features [cos, sin](2 pi t w) of the diffusion step, w [out // 2, 1]."""

  output_size: int

  @nn.compact
  def __call__(self, t):
    w = self.param("kernel", nn.initializers.normal(0.2), (self.output_size // 2, t.shape[-1]),
                   jnp.float32)
    f = 2 * jnp.pi * t @ w.T
    return jnp.concatenate([jnp.cos(f), jnp.sin(f)], axis=-1)


class MLP(nn.Module):
  """Dense layers with swish between them (not after the last)."""

  hidden_dims: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    for i, size in enumerate(self.hidden_dims):
      x = nn.Dense(size, name=f"Dense_{i}")(x)
      if i + 1 < len(self.hidden_dims):
        x = nn.swish(x)
    return x


class MLPResNetBlock(nn.Module):
  features: int
  use_layer_norm: bool = True

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(name="LayerNorm_0")(x) if self.use_layer_norm else x
    y = nn.Dense(self.features * 4, name="Dense_0")(y)
    y = nn.Dense(self.features, name="Dense_1")(nn.swish(y))
    return x + y


class MLPResNet(nn.Module):
  """Dense(hidden) -> num_blocks residual blocks -> swish -> Dense(out)."""

  num_blocks: int
  out_dim: int
  hidden_dim: int = 256
  use_layer_norm: bool = True

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.hidden_dim, name="Dense_0")(x)
    for i in range(self.num_blocks):
      x = MLPResNetBlock(self.hidden_dim, self.use_layer_norm, name=f"MLPResNetBlock_{i}")(x)
    return nn.Dense(self.out_dim, name="Dense_1")(nn.swish(x))


class ScoreActor(nn.Module):
  """eps(readout embedding, noisy action, step): the ``diffusion_model`` of the head."""

  out_dim: int
  time_dim: int = 32
  num_blocks: int = 3
  hidden_dim: int = 256
  use_layer_norm: bool = True

  @nn.compact
  def __call__(self, embedding, noisy_actions, time):
    """embedding [..., D] (broadcast to the batch dims), noisy_actions [..., A], time [..., 1].

    Returns eps [..., A].
    """
    t_ff = FourierFeatures(self.time_dim, name="time_preprocess")(time)
    self.sow("intermediates", "time_features", t_ff)
    cond = MLP((2 * self.time_dim, self.time_dim), name="cond_encoder")(t_ff)
    self.sow("intermediates", "cond_enc", cond)
    embedding = jnp.broadcast_to(embedding, cond.shape[:-1] + embedding.shape[-1:])
    x = jnp.concatenate([cond, embedding, noisy_actions], axis=-1)
    self.sow("intermediates", "reverse_input", x)
    return MLPResNet(self.num_blocks, self.out_dim, self.hidden_dim, self.use_layer_norm,
                     name="reverse_network")(x)


class MAPHead(nn.Module):
  """Multi-head attention pooling: a learned probe attends to the readout tokens.

  As Octo's ``MAPHead`` (8 heads, one probe, MLP 4 x D): out = MHA(probe, tokens, mask), then
  out + MLP(LayerNorm(out)); no residual from the probe.
  """

  num_heads: int = 8
  num_readouts: int = 1

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """tokens [..., n, D], mask [..., n] (True/nonzero: attend) -> [..., num_readouts, D]."""
    *batch_dims, n, d = tokens.shape
    x = tokens.reshape((-1, n, d))
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, self.num_readouts, d),
                       x.dtype)
    probe = jnp.tile(probe, (x.shape[0], 1, 1))
    mask = jnp.asarray(mask, bool).reshape((-1, n))[:, None, None, :]
    mask = jnp.broadcast_to(mask, (x.shape[0], 1, self.num_readouts, n))
    out = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, deterministic=True,
                                          name="MultiHeadDotProductAttention_0")(
                                              probe, x, mask=mask)
    y = nn.LayerNorm(epsilon=1e-6, name="LayerNorm_0")(out)
    out = out + MlpBlock(4 * d, name="MlpBlock_0")(y)
    return out.reshape(tuple(batch_dims) + (self.num_readouts, d))


def pool_readouts(head: nn.Module, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """The head's embedding of its readout tokens [B, W, n, D] (mask [B, W, n]) -> [B, W, D]
  float32: the MAP head's first output with ``use_map``, else the mean over the n tokens."""
  tokens = tokens.astype(jnp.float32)
  if head.spec.use_map:
    return head.map_head(tokens, mask)[..., 0, :]
  return tokens.mean(axis=-2)


class DiffusionActionHead(nn.Module):
  """Pools the readout tokens and predicts the noise of a flattened action chunk.

  The chunk is action_horizon x action_dim, flattened horizon-major to A = horizon * dim.
  """

  spec: HeadSpec

  def setup(self):
    s = self.spec
    if s.use_map:
      self.map_head = MAPHead()
    self.diffusion_model = ScoreActor(s.action_horizon * s.action_dim, s.time_dim, s.num_blocks,
                                      s.hidden_dim, s.use_layer_norm)

  def __call__(self, readout_tokens, readout_mask, noisy_actions=None, time=None):
    """readout_tokens [B, W, n, D] -> eps [..., B, W, A] (zeros inputs at init)."""
    embedding = self.pool(readout_tokens, readout_mask)
    if noisy_actions is None:
      noisy_actions = jnp.zeros(embedding.shape[:2] +
                                (self.spec.action_horizon * self.spec.action_dim,))
      time = jnp.zeros(embedding.shape[:2] + (1,), jnp.int32)
    return self.diffusion_model(embedding, noisy_actions, time)

  def pool(self, readout_tokens, readout_mask):
    """[B, W, n, D] -> [B, W, D] float32 (``pool_readouts``)."""
    return pool_readouts(self, readout_tokens, readout_mask)

  def eps(self, embedding, noisy_actions, time):
    """The score network on an already pooled embedding [B, W, D]."""
    return self.diffusion_model(embedding, noisy_actions, time)


class ContinuousActionHead(nn.Module):
  """Octo's deterministic head (ContinuousActionHead; L1ActionHead and MSEActionHead differ
  only in their training loss and in pooling with a MAP head by default).

  The pooled embedding is projected to a chunk and squashed: tanh(x / max_action) * max_action.
  """

  spec: HeadSpec

  def setup(self):
    if self.spec.use_map:
      self.map_head = MAPHead()
    self.mean_proj = nn.Dense(self.spec.action_horizon * self.spec.action_dim)

  def __call__(self, readout_tokens, readout_mask):
    """readout_tokens [B, W, n, D] -> normalised chunks [B, W, horizon, dim]."""
    return self.predict(self.pool(readout_tokens, readout_mask))

  def pool(self, readout_tokens, readout_mask):
    """[B, W, n, D] -> [B, W, D] float32 (``pool_readouts``)."""
    return pool_readouts(self, readout_tokens, readout_mask)

  def predict(self, embedding):
    """A pooled embedding [B, W, D] -> normalised chunks [B, W, horizon, dim]."""
    s = self.spec
    mean = self.mean_proj(embedding)
    mean = mean.reshape(mean.shape[:-1] + (s.action_horizon, s.action_dim))
    return jnp.tanh(mean / s.max_action) * s.max_action


def make_head(spec: HeadSpec) -> nn.Module:
  return ContinuousActionHead(spec) if spec.deterministic else DiffusionActionHead(spec)


def ddpm_step(x, eps, z, t, betas, alphas, alpha_hats, max_action: float,
              action_mask: Optional[jax.Array] = None):
  """One ancestral DDPM step x_t -> x_{t-1} with epsilon prediction, then clipping.

  x, eps, z: [..., A]; t: int scalar. Dimensions where ``action_mask`` is False are replaced by
  the noise a training sample would have had there, sqrt(1 - alpha_hat_t) * z.
  """
  alpha_1 = 1 / jnp.sqrt(alphas[t])
  alpha_2 = (1 - alphas[t]) / jnp.sqrt(1 - alpha_hats[t])
  x = alpha_1 * (x - alpha_2 * eps)
  x = x + (t > 0) * (jnp.sqrt(betas[t]) * z)
  x = jnp.clip(x, -max_action, max_action)
  if action_mask is not None:
    x = jnp.where(action_mask, x, jnp.sqrt(1 - alpha_hats[t]) * z)
  return x


def sample_chunks(eps_fn: Callable[[jax.Array, jax.Array], jax.Array], shape: tuple[int, ...],
                  rng: jax.Array, head: HeadSpec,
                  embodiment_action_dim: Optional[int] = None,
                  skip_first_step: bool = False) -> jax.Array:
  """DDPM ancestral sampling of flattened action chunks for every window timestep.

  Args:
    eps_fn: (x [*shape], t [*shape[:-1], 1] int32) -> eps [*shape].
    shape: (*sample_shape, B, W, A).
    rng: split once for the initial noise, then once per step (the official stream).
    head: supplies the schedule, step count and max_action.
    embodiment_action_dim: action dims beyond it are kept at training-like noise.
    skip_first_step: start from noise at t = T-2 instead of T-1. The cosine schedule clips the
      last beta to 0.999, so the official first step divides by sqrt(0.001): it multiplies the
      model's eps error by about 32, and what it should return (for an exact model) is almost
      pure noise again, x_{T-2} = sqrt(abar_{T-2}) x_0 + noise with sqrt(abar_{T-2}) about
      0.08. Released Octo models predict eps there precisely enough; small models trained for
      minutes do not (measured: sample error 14x the data variance with the step, 1.4x
      without). Off by default: on, samples differ from the official sampler's.

  Returns:
    x_0 [*shape] after diffusion_steps steps (one fewer with skip_first_step).
  """
  betas, alphas, alpha_hats = schedule(head.diffusion_steps)
  action_mask = None
  if embodiment_action_dim is not None:
    dims = jnp.arange(head.action_horizon * head.action_dim) % head.action_dim
    action_mask = dims < embodiment_action_dim

  def step(carry, t):
    x, rng = carry
    eps = eps_fn(x, jnp.broadcast_to(t, x.shape[:-1] + (1,)))
    rng, key = jax.random.split(rng)
    z = jax.random.normal(key, x.shape)
    x = ddpm_step(x, eps, z, t, betas, alphas, alpha_hats, head.max_action, action_mask)
    return (x, rng), None

  rng, key = jax.random.split(rng)
  noise = jax.random.normal(key, shape)
  first = head.diffusion_steps - (2 if skip_first_step else 1)
  (x, _), _ = jax.lax.scan(step, (noise, rng), jnp.arange(first, -1, -1))
  return x
