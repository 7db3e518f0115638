"""Data parallelism with JAX's own machinery: a mesh, shardings, and the multi-process runtime.

``config.mesh.data = D`` splits the N envs evenly over D devices along a ``data`` mesh axis.
The env state and the rollout carry are sharded along their env axis, the student's train state
is replicated, and every jitted function (the env step, the policy, the update with its teacher
query) then runs as ONE SPMD program over the mesh: XLA partitions it from its inputs'
shardings (GSPMD) and inserts the collectives, so the minibatch gradients are averaged across
devices by an all-reduce. The update's math is the single-device one (the same minibatches, the
same permutation of all N x T transitions), so D devices give the same metrics as one, up to the
order of float reductions (``tests/test_parallel.py``).

Across hosts, one process per device (or per node) calls ``initialize`` first (it wraps
``jax.distributed.initialize``); ``jax.devices()`` then lists every process's devices and the
same mesh spans them. Every process computes the same full arrays (the env's reset from the same
seed, the same initial params) and keeps the shards its devices own (``jax.make_array_from
_callback``), so there is no scatter from a coordinator.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rpd_jax.envs import devices
from rpd_jax.errors import ConfigError

AXIS = "data"


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Joins the multi-process runtime before any JAX computation; a no-op for one process.

  Without arguments it reads ``RPD_JAX_COORDINATOR`` (host:port of process 0),
  ``RPD_JAX_NUM_PROCESSES`` and ``RPD_JAX_PROCESS_ID``; where none is set, JAX's own detection
  applies (SLURM's ``srun``, Open MPI) when ``RPD_JAX_DISTRIBUTED=auto``. On CPUs the
  collectives run over gloo.
  """
  coordinator = coordinator or os.environ.get("RPD_JAX_COORDINATOR")
  if num_processes is None and "RPD_JAX_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["RPD_JAX_NUM_PROCESSES"])
  if process_id is None and "RPD_JAX_PROCESS_ID" in os.environ:
    process_id = int(os.environ["RPD_JAX_PROCESS_ID"])
  auto = os.environ.get("RPD_JAX_DISTRIBUTED") == "auto"
  if coordinator is None and not auto:
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)


def make_mesh(data: int) -> Optional[Mesh]:
  """The ``data`` mesh over the first D devices (of all processes); None for D = 1, where
  nothing is sharded and every array stays on the default device."""
  if data == 1 and jax.process_count() == 1:
    return None
  visible = jax.devices()
  if data > len(visible):
    raise ConfigError(
        f"config.mesh.data={data} needs {data} devices, but JAX sees {len(visible)} "
        f"({visible[0].platform}); lower it, or on a CPU simulate devices with "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={data}")
  if jax.process_count() > 1 and data != len(visible):
    raise ConfigError(
        f"config.mesh.data={data}, but the {jax.process_count()} processes have "
        f"{len(visible)} devices in all; a multi-process run uses every device: set "
        f"--config.mesh.data={len(visible)}")
  return Mesh(np.asarray(visible[:data]), (AXIS,))


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
  """A global array of the full value ``x`` (the same in every process), each process keeping
  the shards its devices own."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return x  # already a global array (ProcessEnvs' observations): each process has its rows
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding))
  value = np.asarray(x)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def replicate(tree: Any, mesh: Optional[Mesh]) -> Any:
  """Every leaf whole on every device of the mesh (params, optimizer state, counters)."""
  if mesh is None:
    # Committed, as a jit's outputs are, to the device the envs' arrays land on.
    return jax.device_put(tree, devices.default_device())
  return jax.tree.map(lambda x: _put(x, NamedSharding(mesh, P())), tree)


def shard_envs(tree: Any, mesh: Optional[Mesh], axis: int = 0) -> Any:
  """Every leaf split along its env axis ``axis`` over the mesh's devices."""
  if mesh is None:
    return tree
  spec = P(*([None] * axis), AXIS)
  return jax.tree.map(lambda x: _put(x, NamedSharding(mesh, spec)), tree)


def fetch(tree: Any) -> Any:
  """Host copies (numpy) of a pytree of arrays that may span other processes' devices: a
  replicated or fully local leaf is read in place, a sharded one is gathered from all."""
  def get(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return jax.device_get(x)
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(get, tree)


def local_copy(tree: Any, mesh: Optional[Mesh]) -> Any:
  """The tree whole on this process's default device, for work outside the mesh (evaluation):
  as it is without a mesh, else gathered and copied there once (not uploaded again at every
  step of an evaluation)."""
  if mesh is None:
    return tree
  return jax.device_put(fetch(tree), devices.default_device())


def check_same_config(config_json: str) -> None:
  """Raises ConfigError in every process when the processes were given different configs."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  digest = np.frombuffer(hashlib.sha256(config_json.encode()).digest(), np.uint8)
  digests = np.asarray(multihost_utils.process_allgather(digest))  # [processes, 32]
  differ = [i for i, d in enumerate(digests) if not np.array_equal(d, digests[0])]
  if differ:
    raise ConfigError(
        f"the processes of this run were given different configs: process(es) "
        f"{', '.join(map(str, differ))} differ from process 0 (this is process "
        f"{jax.process_index()}); start every process with the same --config and overrides")


def is_main_process() -> bool:
  """Process 0 writes metrics, videos and logs; every process takes part in computations."""
  return jax.process_index() == 0


class ProcessEnvs:
  """One simulator per process behind the VecEnv contract, its arrays global over the mesh.

  For simulators that live outside JAX (ManiSkill): process p runs ``local`` with its N / P of
  the envs (env i of process p seeded ``seed + p * N / P + i``, as env ``p * N / P + i`` of a
  one-process run), and this wrapper turns its process-local observations into global arrays
  sharded over the mesh (``jax.make_array_from_process_local_data``) and hands each process the
  rows of the global action its devices hold. With one process and D devices the same code
  splits one simulator's batch over the D devices. Observations and actions move between the
  simulator's device and the mesh's devices device to device, never through the host.
  """

  holds_state = False  # a simulator outside JAX: re-seeded on resume
  jax_native = False

  def __init__(self, local: Any, mesh: Mesh):
    self._local, self._mesh = local, mesh
    self._sharding = NamedSharding(mesh, P(AXIS))
    self.num_envs = local.num_envs * jax.process_count()
    self.action_dim = local.action_dim
    self.max_episode_steps = local.max_episode_steps
    self.observation_spec = local.observation_spec
    self.sim_backend = local.sim_backend
    self.final_obs_keys = local.final_obs_keys
    self.on_demand_keys = local.on_demand_keys

  def _global(self, tree: Any) -> Any:
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self._sharding, x), tree)

  def _local_rows(self, x: jax.Array) -> jax.Array:
    """This process's rows of a global [N, ...] array, on the local simulator's device."""
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    device = devices.default_device()
    return jax.numpy.concatenate([jax.device_put(s.data, device) for s in shards])

  def reset(self, seed: int):
    return self._global(self._local.reset(seed + jax.process_index() * self._local.num_envs))

  def step(self, action: jax.Array, on_demand: Optional[np.ndarray] = None):
    """``on_demand`` bool [N] (numpy, the same in every process): this process's rows go to
    its simulator."""
    if on_demand is not None:
      n = self._local.num_envs
      on_demand = np.asarray(on_demand)[jax.process_index() * n:(jax.process_index() + 1) * n]
    return self._global(self._local.step(self._local_rows(action), on_demand))

  def render(self) -> jax.Array:
    return self._local.render()

  def close(self, terminate: bool = False) -> None:
    self._local.close(terminate)
