"""A trained student outside the trainer: the folder ``python -m rpd_jax.export`` writes, loaded.

  from rpd_jax import student
  policy = student.load("students/pushcube")
  policy.observation_spec        # {"privileged": ((35,), "float32")}: key -> (shape, dtype)
  actions = policy({"privileged": obs})   # numpy [B, 35] in, numpy float32 [B, 7] out

The action is the student's deterministic one, as evaluation takes it: the mean of its
Gaussian, clipped to [-1, 1] (what the env executes: ManiSkill clips, and for
``pd_ee_delta_pose`` the gripper's -1 closes and +1 opens). Loading imports JAX, Flax and the
network definition (``rpd_jax.networks``), not the trainer, PPO, ManiSkill or torch.

The folder (``FORMAT_VERSION``):

  student.json    ``format_version``; ``network``: the fields of ``networks.ActorCritic``
                  (action_dim, encoder, obs_keys, hidden, cnn_features, log_std_init and its
                  bounds); ``observation_spec``: key -> {shape, dtype}, per env (no batch axis);
                  ``action``: its size, range and meaning (the env, task, control mode);
                  ``source``: the run (workdir, checkpoint, env steps, student index, config)
  params.msgpack  the network's parameters (``flax.serialization``), one student's
  student.onnx    the same policy for ONNX runtimes: one input per observation key, named as
                  the key (batch axis "B", the key's dtype), one output "action" float32 [B, A]
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from rpd_jax.networks import ActorCritic

FORMAT_VERSION = 1
SPEC_FILE = "student.json"
PARAMS_FILE = "params.msgpack"
ONNX_FILE = "student.onnx"
ONNX_OUTPUT = "action"


def network_fields(network: ActorCritic) -> dict[str, Any]:
  """What rebuilds ``network``: its fields, as JSON values."""
  return {"action_dim": network.action_dim, "encoder": network.encoder,
          "obs_keys": list(network.obs_keys), "hidden": list(network.hidden),
          "cnn_features": network.cnn_features, "log_std_init": network.log_std_init,
          "log_std_min": network.log_std_min, "log_std_max": network.log_std_max}


def deterministic_action(network: ActorCritic, params, obs: Mapping[str, jax.Array]
                         ) -> jax.Array:
  """float32 [B, A]: the mean action of the student clipped to [-1, 1] (module doc)."""
  return jnp.clip(network.apply(params, dict(obs))[0], -1.0, 1.0)


class Policy:
  """A loaded student: ``policy(obs)`` -> numpy float32 [B, A] (the module doc)."""

  def __init__(self, network: ActorCritic, params: Any,
               observation_spec: Mapping[str, tuple[tuple[int, ...], str]],
               info: Mapping[str, Any]):
    self.network, self.params = network, params
    self.observation_spec = {k: (tuple(shape), str(dtype))
                             for k, (shape, dtype) in observation_spec.items()}
    self.info = dict(info)  # student.json as written
    self._act = jax.jit(lambda p, o: deterministic_action(network, p, o))

  @property
  def action_dim(self) -> int:
    return self.network.action_dim

  def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
    """obs: key -> array [B, *shape] for every key of ``observation_spec`` (others are
    ignored); returns float32 [B, A]. ValueError naming a missing or misshapen key."""
    batch = None
    arrays = {}
    for key, (shape, dtype) in self.observation_spec.items():
      if key not in obs:
        raise ValueError(f"the observation has no {key!r}; the student reads "
                         f"{', '.join(self.observation_spec)}")
      x = np.asarray(obs[key])
      if x.shape[1:] != shape or (batch is not None and x.shape[0] != batch):
        raise ValueError(f"observation {key!r} has shape {x.shape}; the student takes "
                         f"[B, {', '.join(map(str, shape))}] (one batch size for all keys)")
      batch = x.shape[0]
      arrays[key] = x.astype(dtype, copy=False)
    return np.asarray(self._act(self.params, arrays))


def read_spec(folder: str) -> dict[str, Any]:
  """``student.json`` of an exported student; FileNotFoundError / ValueError saying what is
  wrong with the folder."""
  path = os.path.join(folder, SPEC_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: {folder!r} is not an exported student (write "
                            "one with `python -m rpd_jax.export --workdir=<run> --out=<folder>`)")
  with open(path) as f:
    spec = json.load(f)
  if spec.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path}: format_version {spec.get('format_version')!r}; this rpd_jax "
                     f"reads {FORMAT_VERSION}: export the student again")
  return spec


def make_network(fields: Mapping[str, Any]) -> ActorCritic:
  """The network ``network_fields`` describes."""
  return ActorCritic(**{**fields, "obs_keys": tuple(fields["obs_keys"]),
                        "hidden": tuple(fields["hidden"])})


def load(folder: str) -> Policy:
  """The student exported into ``folder`` (module doc)."""
  spec = read_spec(folder)
  network = make_network(spec["network"])
  observation_spec = {k: (tuple(v["shape"]), v["dtype"])
                      for k, v in spec["observation_spec"].items()}
  example = {k: jnp.zeros((1,) + shape, dtype) for k, (shape, dtype) in observation_spec.items()}
  target = jax.eval_shape(lambda: network.init(jax.random.key(0), example))
  with open(os.path.join(folder, PARAMS_FILE), "rb") as f:
    params = flax.serialization.from_bytes(
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target), f.read())
  return Policy(network, params, observation_spec, spec)
