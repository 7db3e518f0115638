"""The teacher protocol: a params pytree plus a pure function of a batch of observations.

A teacher is queried exactly once per collected transition, inside the jitted PPO update, with
its params passed as an argument (never a closure constant, never in the optimizer, never in the
student checkpoint). Teachers that look at two frames (Octo with window 2) get the previous
observation of each env and a flag that marks episode starts (where the previous frame belongs
to another episode and must be padded out).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
from flax import struct

from rpd_jax.envs.base import Observation


class TeacherOutput(NamedTuple):
  """A teacher's answer for a batch of B observations."""

  # float32 [B, A]: the teacher's action, the distillation target (an estimate of E[a]; for a
  # stochastic teacher such as Octo's diffusion head, one sample).
  action: jax.Array
  # float32 [N, B, A]: N independent samples, for PPD's fitted Gaussian; None when N == 0.
  samples: Optional[jax.Array]


# (params, obs [B,...], prev_obs [B,...], is_first bool [B], key, num_samples) -> TeacherOutput
TeacherFn = Callable[[Any, Observation, Observation, jax.Array, jax.Array, int], TeacherOutput]


@struct.dataclass
class Teacher:
  """A teacher: ``params`` is a pytree of arrays; everything else is static."""

  params: Any
  apply_fn: TeacherFn = struct.field(pytree_node=False)
  name: str = struct.field(pytree_node=False, default="teacher")
  # Observations of a batch the teacher sees in one call at most; the update maps over chunks of
  # this size to bound memory (a large vision model on 6,400 images at once would not fit).
  chunk_size: int = struct.field(pytree_node=False, default=4096)


def noisy_samples(mean: jax.Array, noise: jax.Array, key: jax.Array,
                  num_samples: int) -> TeacherOutput:
  """A stochastic teacher around a controller's action: clip(mean + noise * N(0, 1), -1, 1).

  ``action`` is one such sample (what a diffusion teacher such as Octo gives per call) and
  ``samples`` N more [N, B, A] (None when num_samples == 0). mean [B, A], noise a scalar std.
  """
  def sample(k):
    return jnp.clip(mean + noise * jax.random.normal(k, mean.shape), -1.0, 1.0)

  k_action, k_samples = jax.random.split(key)
  samples = None
  if num_samples:
    samples = jax.vmap(sample)(jax.random.split(k_samples, num_samples))
  return TeacherOutput(action=sample(k_action), samples=samples)


def query(teacher: Teacher, obs: Observation, prev_obs: Observation, is_first: jax.Array,
          key: jax.Array, num_samples: int = 0) -> TeacherOutput:
  """One teacher call on a flat batch [B, ...], in chunks of at most ``teacher.chunk_size``.

  Pure and jittable. Returns action [B, A] and samples [N, B, A] (None when num_samples == 0).
  """
  batch = is_first.shape[0]
  num_chunks = -(-batch // teacher.chunk_size)
  if batch % num_chunks:
    raise ValueError(
        f"a teacher batch of {batch} does not split into {num_chunks} equal chunks of at most "
        f"teacher chunk_size={teacher.chunk_size}; choose a chunk_size that divides "
        f"num_envs * num_steps = {batch}")
  to_chunks = lambda x: x.reshape((num_chunks, batch // num_chunks) + x.shape[1:])
  inputs = jax.tree.map(to_chunks, (obs, prev_obs, is_first))
  keys = jax.random.split(key, num_chunks)

  def one_chunk(args):
    (o, p, f), k = args
    return teacher.apply_fn(teacher.params, o, p, f, k, num_samples)

  out = jax.lax.map(one_chunk, (inputs, keys))
  action = out.action.reshape((batch,) + out.action.shape[2:])
  samples = None
  if out.samples is not None:  # [chunks, N, b, A] -> [N, B, A]
    samples = jnp.moveaxis(out.samples, 1, 0).reshape((num_samples, batch, -1))
  chex.assert_shape(action, (batch, None))
  return TeacherOutput(action, samples)
