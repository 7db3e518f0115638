"""Seeds as a vmap axis: ``config.num_seeds = K`` trains K independent students in one process.

Student k is what a run of its own with ``seed = config.seed + k`` would be: its init, rollout
and update keys come from that seed, and on an env that hands out its state (the pure-JAX env)
its N envs start as that run's would. All K x N envs step as one batch of one simulator (one
ManiSkill GPU simulation; student k acts on rows [k N, (k + 1) N)), the K students act through
``rollout.SeedStack``, and one jitted update vmaps over them: params, optimizer state and keys
carry a leading K axis, the teacher is shared (``config.seeds_vmapped`` students side by side,
groups of them one after another: ``side_by_side``). Metrics are logged per seed
(``seed<k>/...``), with their mean under the usual names and ``.../std`` across seeds.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rpd_jax import rollout
from rpd_jax.envs.base import VecEnv


def run_keys(seed: int, num_seeds: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init, loop, eval) keys of the run with ``seed``; with K seeds, [K] each, student k's
  those of the run with ``seed + k``."""
  if num_seeds == 1:
    return tuple(jax.random.split(jax.random.key(seed), 3))
  keys = jnp.stack([jax.random.split(jax.random.key(seed + k), 3) for k in range(num_seeds)])
  return keys[:, 0], keys[:, 1], keys[:, 2]


def iteration_keys(loop_key: jax.Array, iteration: int) -> tuple[jax.Array, jax.Array]:
  """(rollout, update) keys of an iteration, per student where ``loop_key`` is [K]."""
  split = lambda k: tuple(jax.random.split(jax.random.fold_in(k, iteration)))
  if loop_key.ndim:
    return jax.vmap(split)(loop_key)
  return split(loop_key)


def reset(env: VecEnv, make_env: Callable[[int], VecEnv], seed: int,
          num_seeds: int) -> rollout.Carry:
  """Fresh episodes for K x N envs. Where the env hands out its state, student k's N envs are
  reset exactly as a run of N envs with ``seed + k`` resets them; else env i gets
  ``seed + i``."""
  if num_seeds == 1 or not env.holds_state:
    return rollout.reset(env, seed)
  carries, states = [], []
  for k in range(num_seeds):
    part = make_env(seed + k)
    carries.append(rollout.reset(part, seed + k))
    states.append(part.get_state())
    part.close()
  env.set_state(jax.tree.map(lambda *x: jnp.concatenate(x), *states))
  return jax.tree.map(lambda *x: jnp.concatenate(x), *carries)


def split_rollout(data: rollout.Rollout, num_seeds: int) -> rollout.Rollout:
  """[T, K * N, ...] (and [K * N, ...]) -> [K, T, N, ...] (and [K, N, ...]): student k's
  rollout along the leading axis, as the vmapped update takes it."""
  def split(x, time_major):
    if time_major:
      x = x.reshape((x.shape[0], num_seeds, -1) + x.shape[2:])
      return jnp.moveaxis(x, 1, 0)
    return x.reshape((num_seeds, -1) + x.shape[1:])
  fields = {}
  for name, value in data._asdict().items():
    time_major = name not in ("prev_obs0", "last_value")
    fields[name] = jax.tree.map(lambda x, t=time_major: split(x, t), value)
  return rollout.Rollout(**fields)


def side_by_side(config) -> int:
  """How many students update side by side: ``config.seeds_vmapped``, or where it is None,
  all K for an MLP student and 1 for an image student (whose vmapped convolution weight
  gradients XLA runs as one slow grouped convolution; config.py has the numbers)."""
  if config.get("seeds_vmapped") is not None:
    return config.seeds_vmapped
  return config.num_seeds if config.network.encoder == "mlp" else 1


def vmap_update(update: Callable, num_seeds: int, vmapped: int) -> Callable:
  """The update of one student -> the jitted update of K: ``(states [K], teacher, rollout
  (split_rollout), keys [K])``; the teacher is shared. ``vmapped`` students update side by
  side (vmap), groups of them one after another in the same program (``lax.map``; see
  ``side_by_side``). Either way student k gets what its own run would."""
  if num_seeds == 1:
    return update
  if vmapped >= num_seeds:
    return jax.jit(jax.vmap(update, in_axes=(0, None, 0, 0)))

  def grouped(states, teacher, data, keys):
    return jax.lax.map(lambda x: update(x[0], teacher, x[1], x[2]), (states, data, keys),
                       batch_size=vmapped)
  return jax.jit(grouped)


def init_train_state(init: Callable[[Any, jax.Array], Any], obs: Any, key: jax.Array,
                     num_seeds: int):
  """``init(obs, key)`` of one student -> K stacked ones (each on its N envs' observations)."""
  if num_seeds == 1:
    return init(obs, key)
  obs = jax.tree.map(lambda x: x.reshape((num_seeds, -1) + x.shape[1:]), obs)
  return jax.vmap(init)(obs, key)


def per_seed(metrics: dict[str, jax.Array], num_seeds: int) -> dict[str, jax.Array]:
  """[K] metrics -> their mean (the usual names), ``<name>/std`` and ``seed<k>/<name>``."""
  if num_seeds == 1:
    return metrics
  out = {}
  for name, value in metrics.items():
    out[name] = jnp.mean(value)
    out[f"{name}/std"] = jnp.std(value)
    out.update({f"seed{k}/{name}": value[k] for k in range(num_seeds)})
  return out


def seeds_summary(evaluation: dict[str, float], num_seeds: int) -> dict[str, float]:
  """The spread of the students' own evaluations: ``eval/<metric>/std`` across seeds."""
  if num_seeds == 1:
    return {}
  out = {}
  for name in [n for n in evaluation if n.startswith("eval/")]:
    values = [evaluation[f"seed{k}/{name}"] for k in range(num_seeds)]
    out[f"{name}/std"] = float(np.std(values))
  return out
