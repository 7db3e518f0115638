"""Loading official Octo checkpoints (folder or Hugging Face cache) without TensorFlow.

Layout: ``config.json``, ``example_batch.msgpack``, ``dataset_statistics.json`` and the
parameters of each saved step in ``<step>/default/``, in one of orbax's formats:

* ``checkpoint``: one flax-msgpack blob of the parameter tree (the released checkpoints, and
  what Octo's pinned orbax 0.4.4 writes: ``flax.serialization.msgpack_restore`` reads it as is);
* an orbax PyTree (``_METADATA`` with ``manifest.ocdbt`` and ``d/``, or one folder per array):
  what current orbax writes when Octo's ``save_pretrained`` runs on a newer stack; read with
  orbax-checkpoint.

``read_checkpoint`` reads everything but the parameters (cheap: what a config check needs).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

import flax
import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from rpd_jax.octo.config import OctoSpec, parse_model_config
from rpd_jax.octo.hub import resolve_checkpoint
from rpd_jax.octo.model import OctoModel, freeze_config
from rpd_jax.octo.module import OctoModule
from rpd_jax.octo.t5 import T5Config

_FILES = ("config.json", "example_batch.msgpack", "dataset_statistics.json")


# Files that mark a step's parameters: the msgpack blob, or an orbax PyTree's metadata.
_PARAM_FILES = ("checkpoint", "_METADATA")


def _steps(folder: str) -> list[int]:
  """Steps with parameters in ``<step>/default`` (either format)."""
  return sorted(int(n) for n in os.listdir(folder)
                if n.isdigit() and any(os.path.isfile(os.path.join(folder, n, "default", f))
                                       for f in _PARAM_FILES))


class CheckpointReadError(ValueError):
  """A checkpoint's files are there but cannot be read: truncated, damaged, or not Octo's."""


def read_params(step_dir: str) -> Any:
  """The parameter tree (numpy arrays) saved in ``<step>/default``, in either format."""
  blob = os.path.join(step_dir, "checkpoint")
  try:
    if os.path.isfile(blob):
      with open(blob, "rb") as f:
        return flax.serialization.msgpack_restore(f.read())
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (only for this format)
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(step_dir).item_metadata
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(step_dir, restore_args=restore_args)
  except Exception as e:  # pylint: disable=broad-except  (msgpack, orbax, tensorstore errors)
    message = str(e).splitlines()[0] if str(e) else ""
    raise CheckpointReadError(
        f"the parameters in {step_dir} cannot be read ({type(e).__name__}: {message}); the "
        "files are incomplete or damaged: download or copy them again") from e


def _to_numpy(tree):
  """JSON statistics -> numpy arrays at every non-dict leaf."""
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def read_example_batch(path: str) -> dict[str, Any]:
  """example_batch.msgpack, with Octo 1.0 names mapped to 1.5 ones as the official loader does."""
  with open(path, "rb") as f:
    batch = flax.serialization.msgpack_restore(f.read())
  if "tasks" in batch:
    batch["task"] = batch.pop("tasks")
  obs = batch["observation"]
  if "timestep_pad_mask" not in obs and "pad_mask" in obs:
    obs["timestep_pad_mask"] = obs["pad_mask"]
  return _numeric(batch)


def _numeric(tree):
  """Drops string leaves (e.g. dataset names): the batch is a pytree of arrays passed to jit."""
  if isinstance(tree, dict):
    return {k: v for k, v in ((k, _numeric(v)) for k, v in tree.items()) if v is not None}
  array = np.asarray(tree)
  return array if array.dtype.kind in "biuf" else None


def param_shapes(module: OctoModule, example_batch) -> Any:
  """The parameter tree of ``module`` as ShapeDtypeStructs (nothing is allocated)."""
  obs, task = example_batch["observation"], example_batch["task"]
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), obs, task,
                             obs["timestep_pad_mask"])
  return variables["params"]


def _compare(params, expected, source: str):
  got = flax.traverse_util.flatten_dict(params, sep="/")
  want = flax.traverse_util.flatten_dict(expected, sep="/")
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(got) & set(want)
                 if tuple(np.shape(got[k])) != tuple(want[k].shape))
  if not (missing or extra or wrong):
    return
  parts = []
  if missing:
    parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
  if extra:
    parts.append(f"{len(extra)} unexpected (e.g. {extra[:3]})")
  if wrong:
    parts.append(f"{len(wrong)} with other shapes (e.g. " + ", ".join(
        f"{k}: stored {tuple(np.shape(got[k]))}, config needs {tuple(want[k].shape)}"
        for k in wrong[:3]) + ")")
  raise CheckpointReadError(
      f"parameters in {source} do not match the model its config.json describes: "
      + "; ".join(parts) + ". The config and the parameter blob must come from the same "
      "checkpoint")


@dataclasses.dataclass(frozen=True)
class CheckpointFiles:
  """Everything of a checkpoint but its parameters.

  folder: the resolved checkpoint folder; config: config.json; example_batch: numeric arrays
  of example_batch.msgpack (1.5 key names); dataset_statistics: dataset_statistics.json as
  numpy arrays; steps: the saved steps, oldest first.
  """

  folder: str
  config: dict[str, Any]
  example_batch: dict[str, Any]
  dataset_statistics: dict[str, Any]
  steps: tuple[int, ...]


def read_checkpoint(path_or_hub_id: str) -> CheckpointFiles:
  """Reads a checkpoint's config, example batch, statistics and step list (not parameters).

  Raises FileNotFoundError naming a missing file (or the missing parameters).
  """
  folder = resolve_checkpoint(path_or_hub_id)
  for name in _FILES:
    if not os.path.isfile(os.path.join(folder, name)):
      raise FileNotFoundError(
          f"{os.path.join(folder, name)} is missing; an Octo checkpoint folder holds "
          f"{', '.join(_FILES)} and <step>/default/ with the parameters")
  steps = _steps(folder)
  if not steps:
    raise FileNotFoundError(
        f"no parameters in {folder}: no <step>/default/ holds a msgpack 'checkpoint' blob or "
        "an orbax '_METADATA'; the checkpoint is incomplete (download all of its files)")
  with open(os.path.join(folder, "config.json")) as f:
    config = json.load(f)
  if "model" not in config:
    raise FileNotFoundError(f"{os.path.join(folder, 'config.json')} has no 'model' section; "
                            "it is not an Octo checkpoint's config")
  example_batch = read_example_batch(os.path.join(folder, "example_batch.msgpack"))
  with open(os.path.join(folder, "dataset_statistics.json")) as f:
    dataset_statistics = _to_numpy(json.load(f))
  return CheckpointFiles(folder, config, example_batch, dataset_statistics, tuple(steps))


def model_spec(files: CheckpointFiles, t5_config: Optional[T5Config] = None) -> OctoSpec:
  """The checkpoint's parsed model config; a non-t5-base language encoder's config is looked
  up in a folder named after it inside or next to the checkpoint folder."""
  folder = files.folder
  return parse_model_config(
      files.config["model"], t5_search_dirs=(folder, os.path.dirname(os.path.abspath(folder))),
      t5_config=t5_config)


def load_pretrained(path_or_hub_id: str, step: Optional[int] = None,
                    t5_config: Optional[T5Config] = None, dtype=jnp.float32) -> OctoModel:
  """Loads an official Octo checkpoint.

  Args:
    path_or_hub_id: a checkpoint folder, a shipped teacher's or released checkpoint's name, or a
      hub id ("rail-berkeley/octo-small-1.5", optionally "hf://"-prefixed) already downloaded
      (``rpd_jax.octo.hub.resolve_checkpoint``).
    step: which ``<step>/default``; the newest by default.
    t5_config: the language encoder's config when it is neither t5-base nor a folder named
      after the encoder next to the checkpoint.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.

  Returns:
    An OctoModel with float32 parameters on the default device.

  Raises:
    FileNotFoundError: a file or the step is missing.
    UnsupportedConfigError: the config names a piece this implementation does not have.
    CheckpointReadError: the parameters cannot be read, or do not match the config.
  """
  files = read_checkpoint(path_or_hub_id)
  folder = files.folder
  if step is None:
    step = files.steps[-1]
  elif step not in files.steps:
    raise FileNotFoundError(f"step {step} is not in {folder}; available steps: "
                            f"{list(files.steps)}")
  module = OctoModule(model_spec(files, t5_config), dtype)
  step_dir = os.path.join(folder, str(step), "default")
  params = read_params(step_dir)
  _compare(params, param_shapes(module, files.example_batch), step_dir)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  return OctoModel(params=params, example_batch=files.example_batch,
                   dataset_statistics=files.dataset_statistics, module=module,
                   config=freeze_config(files.config))


def _jsonable(tree):
  """Frozen config / numpy statistics -> plain JSON types."""
  if isinstance(tree, Mapping):
    return {k: _jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_jsonable(v) for v in tree]
  if isinstance(tree, (np.ndarray, jax.Array, np.generic)):
    return np.asarray(tree).tolist()
  return tree


def save_pretrained(model: OctoModel, folder: str, step: int) -> str:
  """Writes ``model`` in the official layout, so that ``load_pretrained(folder)`` reads it.

  ``config.json``, ``example_batch.msgpack`` and ``dataset_statistics.json`` are (re)written;
  the parameters go to ``<step>/default/checkpoint`` as one flax-msgpack blob, written to a
  temporary file and renamed, so a crash never leaves a half-written step.

  Returns:
    The parameter blob's path.
  """
  os.makedirs(folder, exist_ok=True)

  def write(name: str, data: bytes):
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
      f.write(data)
    os.replace(path + ".tmp", path)
    return path

  write("config.json", json.dumps(_jsonable(model.config), indent=2).encode())
  write("dataset_statistics.json",
        json.dumps(_jsonable(model.dataset_statistics), indent=2).encode())
  to_numpy = lambda tree: jax.tree.map(np.asarray, flax.core.unfreeze(tree))
  write("example_batch.msgpack", flax.serialization.msgpack_serialize(
      to_numpy(model.example_batch)))
  return write(os.path.join(str(step), "default", "checkpoint"),
               flax.serialization.msgpack_serialize(to_numpy(model.params)))
