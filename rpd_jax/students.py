"""The student axis: K independent students (``config.num_seeds``) as one layer; K >= 1 always.

Student k is what a run of its own with ``seed = config.seed + k`` would be: its init, rollout
and update keys come from that seed, and on an env that holds its state (the pure-JAX env) its
N envs start as that run's would. All K x N envs step as one batch of one simulator (student k
acts on rows [k N, (k + 1) N)), and one jitted update maps over the K students. Params,
optimizer state, counters and keys always carry a leading K axis: one student is a stack of
one. The teacher is shared.

``side_by_side`` students update at once (vmap); groups of that many go one after another in
the same program (``lax.map``). None (the default) means all K for an MLP student and 1 for an
image student, whose vmapped convolution weight gradients XLA runs as one slow grouped
convolution (config.py has the numbers). The teacher calls of students updating side by side
run one after another (``ppo.teacher_targets``): a call never holds more than
``config.teacher.max_batch`` observations, whatever K.

Nothing outside this module branches on K: it hands the trainer keys, the first state, the
acting network (``apply``), the update, and the metrics and evaluation named per student.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rpd_jax import evaluate as evaluate_lib
from rpd_jax import rollout
from rpd_jax.envs.base import Observation, VecEnv
from rpd_jax.networks import ActorCritic


def side_by_side(config: ml_collections.ConfigDict) -> int:
  """How many students update at once: ``config.seeds_vmapped``, or where it is None all K
  for an MLP student and 1 for an image student (module doc)."""
  if config.seeds_vmapped is not None:
    return min(config.seeds_vmapped, config.num_seeds)
  return config.num_seeds if config.network.encoder == "mlp" else 1


@dataclasses.dataclass(frozen=True)
class Students:
  """K students of one network over one batch of K x N envs (module doc).

  ``apply`` has the network's signature on the whole batch (mean [K N, A], log-std [K N, A],
  value [K N]), so the step loop, the value bootstraps and evaluation run K students as they
  would run one; their keys, a batch of K (``gaussian.sample``), keep each one's noise its own.
  """
  network: ActorCritic
  num: int  # K
  side_by_side: int  # students updated at once

  @classmethod
  def from_config(cls, network: ActorCritic, config: ml_collections.ConfigDict) -> "Students":
    return cls(network, config.num_seeds, side_by_side(config))

  # ---- keys and the first state

  def run_keys(self, seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init, loop, eval) keys [K]: student k's those of the run with ``seed + k``."""
    keys = jnp.stack([jax.random.split(jax.random.key(seed + k), 3) for k in range(self.num)])
    return keys[:, 0], keys[:, 1], keys[:, 2]

  @staticmethod
  def iteration_keys(loop_keys: jax.Array, iteration: int) -> tuple[jax.Array, jax.Array]:
    """(rollout, update) keys [K] of an iteration."""
    return jax.vmap(lambda k: tuple(jax.random.split(jax.random.fold_in(k, iteration))))(
        loop_keys)

  def reset(self, env: VecEnv, make_env: Callable[[int], VecEnv], seed: int) -> rollout.Carry:
    """Fresh episodes for the K x N envs. Where the env holds its state, student k's N envs are
    reset exactly as a run of N envs with ``seed + k`` resets them; else env i gets
    ``seed + i``."""
    if self.num == 1 or not env.holds_state:
      return rollout.reset(env, seed)
    carries, states = [], []
    for k in range(self.num):
      part = make_env(seed + k)
      carries.append(rollout.reset(part, seed + k))
      states.append(part.get_state())
      part.close()
    env.set_state(jax.tree.map(lambda *x: jnp.concatenate(x), *states))
    return jax.tree.map(lambda *x: jnp.concatenate(x), *carries)

  def init(self, init_one: Callable[[Observation, jax.Array], Any], obs: Observation,
           keys: jax.Array) -> Any:
    """``init_one(obs, key)`` of one student -> K stacked ones, each on its N envs' obs."""
    return jax.vmap(init_one)(jax.tree.map(self._split, obs), keys)

  def _split(self, x: jax.Array) -> jax.Array:
    """[K N, ...] -> [K, N, ...]."""
    return x.reshape((self.num, -1) + x.shape[1:])

  # ---- acting

  def apply(self, params, obs: Observation):
    """(mean [K N, A], log-std [K N, A], value [K N]) of the K students on their rows."""
    mean, log_std, value = jax.vmap(self.network.apply)(params, jax.tree.map(self._split, obs))
    rows = mean.shape[1]
    return (mean.reshape((-1,) + mean.shape[2:]), jnp.repeat(log_std, rows, axis=0),
            value.reshape(-1))

  def ensemble(self, params, obs: Observation) -> jax.Array:
    """The K students' mean action on the same observations [B, ...]: one policy."""
    return jax.vmap(lambda p: self.network.apply(p, obs)[0])(params).mean(axis=0)

  # ---- the update

  def make_update(self, update_one: Callable) -> Callable:
    """One student's ``update(state, teacher, rollout, key)`` -> the jitted update of K:
    ``(states [K], teacher, rollout [T, K N] as collected, keys [K]) -> (states, metrics
    [K])``. Student k gets what its own run would (module doc)."""
    if self.side_by_side >= self.num:
      mapped = jax.vmap(update_one, in_axes=(0, None, 0, 0))
    else:
      def mapped(states, teacher, data, keys):
        return jax.lax.map(lambda x: update_one(x[0], teacher, x[1], x[2]),
                           (states, data, keys), batch_size=self.side_by_side)
    return jax.jit(lambda states, teacher, data, keys: mapped(
        states, teacher, self._split_rollout(data), keys))

  def _split_rollout(self, data: rollout.Rollout) -> rollout.Rollout:
    """[T, K N, ...] (and [K N, ...]) -> [K, T, N, ...] (and [K, N, ...])."""
    def split(x, time_major):
      if time_major:
        return jnp.moveaxis(x.reshape((x.shape[0], self.num, -1) + x.shape[2:]), 1, 0)
      return self._split(x)
    fields = {}
    for name, value in data._asdict().items():
      time_major = name not in ("prev_obs0", "last_value")
      fields[name] = jax.tree.map(lambda x, t=time_major: split(x, t), value)
    return rollout.Rollout(**fields)

  # ---- what is logged

  def metrics(self, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """[K] metrics -> one student's under their names; for K > 1 their mean under those
    names, ``<name>/std`` across students and ``seed<k>/<name>``."""
    if self.num == 1:
      return {name: value[0] for name, value in metrics.items()}
    out = {}
    for name, value in metrics.items():
      out[name] = jnp.mean(value)
      out[f"{name}/std"] = jnp.std(value)
      out.update({f"seed{k}/{name}": value[k] for k in range(self.num)})
    return out

  def each(self, summary: dict[str, float], name: str) -> np.ndarray:
    """[K]: each student's ``name`` in a summary of ``metrics`` or ``evaluate``."""
    if self.num == 1:
      return np.asarray([summary[name]])
    return np.asarray([summary[f"seed{k}/{name}"] for k in range(self.num)])

  def evaluate(self, episodes: Callable[..., evaluate_lib.Episodes], params,
               protocol: str) -> dict[str, float]:
    """The students' evaluation: ``episodes(policy, videos=...)`` runs K x E episodes, the
    first E on student 0's envs, and so on. One student's metrics under their names; for
    K > 1 also each student's (``seed<k>/eval/...``), their spread (``eval/<m>/std``), and the
    K students as one policy, their mean action, on the same episodes (``ensemble/eval/...``).
    """
    played = episodes(rollout.student_policy(self, params, deterministic=True), videos=True)
    out = evaluate_lib.summary(played, protocol)
    if self.num == 1:
      return out
    for k, part in enumerate(played.groups(self.num)):
      out.update({f"seed{k}/{name}": v
                  for name, v in evaluate_lib.summary(part, protocol).items()})
    for name in [n for n in list(out) if n.startswith("eval/")]:
      out[f"{name}/std"] = float(np.std([out[f"seed{k}/{name}"] for k in range(self.num)]))
    ensemble = episodes(rollout.ensemble_policy(self, params), videos=False)
    out.update({f"ensemble/{k}": v for k, v in evaluate_lib.summary(ensemble, protocol).items()})
    return out

  # ---- checkpoints

  def legacy_checkpoints(self, tree: dict[str, Any]) -> list[tuple[Any, Callable]]:
    """(target, convert) per earlier layout of a run's checkpoint ``tree``: the train state
    without ``surpassed_at`` (written before the teacher budget; a student that has not
    passed its teacher, as none had been marked then), and for one student also without the
    leading K axis (written before the student axis, which was before that)."""
    full = flax.serialization.to_state_dict(tree)
    never = full["state"]["surpassed_at"]  # the fresh state's: losses.NEVER per student
    old = {**full, "state": {k: v for k, v in full["state"].items() if k != "surpassed_at"}}

    def add_field(restored):
      return flax.serialization.from_state_dict(
          tree, {**restored, "state": {**restored["state"], "surpassed_at": never}})

    layouts = [(old, add_field)]
    if self.num == 1:
      unstacked = {**old, "state": jax.tree.map(lambda x: x[0], old["state"])}
      layouts.append((unstacked, lambda restored: add_field(
          {**restored, "state": jax.tree.map(lambda x: x[None], restored["state"])})))
    return layouts
