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
from rpd_jax.errors import ConfigError


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
  # The simulation backend the teacher was made and measured on (teachers.records), or None.
  made_on: Optional[str] = struct.field(pytree_node=False, default=None)
  # Frames per query: 1, or 2 where ``apply_fn`` also reads ``prev_obs`` (a teacher budget then
  # observes the step before each labelled one too, rpd_jax/budget.py).
  window: int = struct.field(pytree_node=False, default=1)


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
          key: jax.Array, num_samples: int = 0, max_batch: int = 4096) -> TeacherOutput:
  """One teacher call on a flat batch [B, ...], in chunks of at most ``max_batch``.

  A large vision model on thousands of images at once would not fit in memory, so the batch is
  mapped over in equal chunks (``lax.map``); where ``max_batch`` does not divide it, the last
  chunk is padded with copies of the last observation, whose answers are dropped. Pure and
  jittable. Returns action [B, A] and samples [N, B, A] (None when num_samples == 0).
  """
  batch = is_first.shape[0]
  num_chunks = -(-batch // max_batch)
  size = -(-batch // num_chunks)  # the smallest equal chunks: at most num_chunks - 1 padded rows
  pad = num_chunks * size - batch

  def to_chunks(x):
    x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x
    return x.reshape((num_chunks, size) + x.shape[1:])

  inputs = jax.tree.map(to_chunks, (obs, prev_obs, is_first))
  keys = jax.random.split(key, num_chunks)

  def one_chunk(args):
    (o, p, f), k = args
    return teacher.apply_fn(teacher.params, o, p, f, k, num_samples)

  out = jax.lax.map(one_chunk, (inputs, keys))
  action = out.action.reshape((num_chunks * size,) + out.action.shape[2:])[:batch]
  samples = None
  if out.samples is not None:  # [chunks, N, size, A] -> [N, B, A]
    samples = jnp.moveaxis(out.samples, 1, 0).reshape((num_samples, num_chunks * size, -1))
    samples = samples[:, :batch]
  chex.assert_shape(action, (batch, None))
  return TeacherOutput(action, samples)


def memory_budget(fraction: float = 0.25) -> int:
  """Bytes a teacher call inside the update may use: ``fraction`` of the device's memory where
  the device reports it (a GPU, shared with the simulator, the renderer and the student), else
  2 GiB (a CPU, where large calls are slow anyway)."""
  stats = jax.devices()[0].memory_stats() or {}
  return int(fraction * stats["bytes_limit"]) if "bytes_limit" in stats else 2 << 30


def check_action_dim(teacher: Teacher, observation_spec: dict[str, jax.ShapeDtypeStruct],
                     action_dim: int, env_name: str) -> None:
  """ConfigError when the teacher's actions are not the env's size (else the first update
  would fail deep inside a loss with a broadcasting error). Traces the teacher once, runs
  nothing."""
  obs = {k: jax.ShapeDtypeStruct((1,) + v.shape, v.dtype) for k, v in observation_spec.items()}
  first = jax.ShapeDtypeStruct((1,), jnp.bool_)
  out = jax.eval_shape(lambda p, o, f: teacher.apply_fn(p, o, o, f, jax.random.key(0), 0),
                       teacher.params, obs, first)
  if out.action.shape != (1, action_dim):
    raise ConfigError(
        f"the {teacher.name!r} teacher answers actions of shape {out.action.shape[1:]} per "
        f"observation, but the {env_name} env takes {action_dim} dims; use a teacher made for "
        f"this robot and controller (config.teacher.kwargs)")


def auto_max_batch(teacher: Teacher, observation_spec: dict[str, jax.ShapeDtypeStruct],
                   batch: int, num_samples: int = 0, budget: Optional[int] = None,
                   probes: tuple[int, int] = (8, 16)) -> int:
  """The most observations, at most ``batch``, that one teacher call can take within
  ``budget`` bytes (``memory_budget()`` by default).

  The memory of one call is modelled as fixed + per-sample bytes from XLA's memory analysis of
  the compiled call at two probe sizes; nothing runs. A large GPU thus queries octo-base in
  chunks of hundreds to thousands, a CPU in small ones, a scripted teacher all at once.
  """
  budget = memory_budget() if budget is None else budget
  fn = jax.jit(lambda p, o, q, f, k: teacher.apply_fn(p, o, q, f, k, num_samples))

  def bytes_at(size: int) -> int:
    obs = {k: jax.ShapeDtypeStruct((size,) + v.shape, v.dtype)
           for k, v in observation_spec.items()}
    first = jax.ShapeDtypeStruct((size,), jnp.bool_)
    memory = fn.lower(teacher.params, obs, obs, first, jax.random.key(0)).compile()
    memory = memory.memory_analysis()
    if memory is None:  # the backend does not say: fall back to one chunk per call
      return 0
    return memory.temp_size_in_bytes + memory.output_size_in_bytes

  small, large = probes
  per_sample = max(bytes_at(large) - bytes_at(small), 0) / (large - small)
  if per_sample == 0:
    return batch
  fixed = max(bytes_at(small) - small * per_sample, 0)
  return int(min(batch, max(1, (budget - fixed) // per_sample)))


# How a teacher's gripper dimension is mapped to the env's (map_gripper): the Octo adapter's and
# the torch-policy adapter's ``gripper`` kwarg.
GRIPPER_MODES = ("maniskill", "clip", "raw")


def gripper_to_maniskill(actions: jax.Array) -> jax.Array:
  """Octo's gripper (last dim, 1 = open, in [0, 1]) -> ManiSkill's (+1 = open, in [-1, 1])."""
  gripper = 2.0 * jnp.clip(actions[..., -1:], 0.0, 1.0) - 1.0
  return jnp.concatenate([actions[..., :-1], gripper], axis=-1)


def map_gripper(actions: jax.Array, mode: str) -> jax.Array:
  """Actions [..., A] in the checkpoint's gripper convention -> what the env is given.

  "maniskill": the last dim from Octo's [0, 1] (1 = open) to ManiSkill's [-1, 1] (+1 = open),
  then every dim clipped to [-1, 1]; "clip": only the clipping (the checkpoint already speaks
  ManiSkill's [-1, 1]); "raw": unchanged.
  """
  if mode == "maniskill":
    return jnp.clip(gripper_to_maniskill(actions), -1.0, 1.0)
  if mode == "clip":
    return jnp.clip(actions, -1.0, 1.0)
  if mode == "raw":
    return actions
  raise ValueError(f"gripper mode {mode!r}; use one of {', '.join(GRIPPER_MODES)}")
