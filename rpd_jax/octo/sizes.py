"""Random Octo models of a named size, for benchmarks and tests (Octo 1.5 semantics).

| size  | D   | layers/heads/MLP | stem widths, features   | language encoder |
|-------|-----|------------------|-------------------------|------------------|
| tiny  | 64  | 2 / 2 / 128      | 32,32,64,64 -> 128      | rpd-t5-tiny      |
| small | 384 | 12 / 6 / 1536    | 32,96,192,384 -> 512    | t5-base          |
| base  | 768 | 12 / 12 / 3072   | 32,96,192,384 -> 512    | t5-base          |

"small" and "base" are octo-small-1.5 and octo-base-1.5 (same config, parameter tree and
compute); "tiny" keeps the architecture with narrow widths.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import flax
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from rpd_jax.octo.config import parse_model_config
from rpd_jax.octo.model import OctoModel, freeze_config
from rpd_jax.octo.module import OctoModule

_SIZES = {
    "tiny": dict(token_embedding_size=64, num_layers=2, num_attention_heads=2, mlp_dim=128,
                 stem={"features": [32, 32, 64, 64], "num_features": 128},
                 encoder="rpd-t5-tiny"),
    "small": dict(token_embedding_size=384, num_layers=12, num_attention_heads=6, mlp_dim=1536,
                  stem={}, encoder="t5-base"),
    "base": dict(token_embedding_size=768, num_layers=12, num_attention_heads=12, mlp_dim=3072,
                 stem={}, encoder="t5-base"),
}
SIZES = tuple(_SIZES)
_TOKENIZERS = "octo.model.components.tokenizers"


def _image_tokenizer(key: str, stem: dict, goal_images: bool) -> dict[str, Any]:
  return {"module": _TOKENIZERS, "name": "ImageTokenizer", "args": [],
          "kwargs": {"obs_stack_keys": [f"image_{key}"],
                     "task_stack_keys": [f"image_{key}"] if goal_images else [],
                     "encoder": {"module": "octo.model.components.vit_encoders",
                                 "name": "SmallStem16", "args": [],
                                 "kwargs": copy.deepcopy(stem)}}}


def model_config(size: str = "small", wrist: bool = False, language: bool = True,
                 goal_images: bool = True, action_horizon: int = 4,
                 action_dim: int = 7) -> dict[str, Any]:
  """The ``config["model"]`` dict (official module-spec format) of a named size.

  ``language=False`` and ``goal_images=False`` drop the task inputs: a single-task policy
  with no T5 encoder and no goal-image channels (small teachers trained from scratch).
  """
  if size not in _SIZES:
    raise ValueError(f"unknown Octo size {size!r}; choose one of {SIZES}")
  s = _SIZES[size]
  obs = {"primary": _image_tokenizer("primary", s["stem"], goal_images)}
  if wrist:
    obs["wrist"] = _image_tokenizer("wrist", s["stem"], goal_images)
  task_tokenizers = {}
  if language:
    task_tokenizers["language"] = {
        "module": _TOKENIZERS, "name": "LanguageTokenizer", "args": [],
        "kwargs": {"encoder": s["encoder"], "finetune_encoder": False}}
  return {
      "observation_tokenizers": obs,
      "task_tokenizers": task_tokenizers,
      "heads": {"action": {
          "module": "octo.model.components.action_heads", "name": "DiffusionActionHead",
          "args": [], "kwargs": {"readout_key": "readout_action", "use_map": False,
                                 "action_horizon": action_horizon, "action_dim": action_dim,
                                 "n_diffusion_samples": 1, "dropout_rate": 0.0}}},
      "readouts": {"action": 1},
      "token_embedding_size": s["token_embedding_size"],
      "transformer_kwargs": {"attention_dropout_rate": 0.0, "add_position_embedding": False,
                             "num_layers": s["num_layers"], "mlp_dim": s["mlp_dim"],
                             "num_attention_heads": s["num_attention_heads"],
                             "dropout_rate": 0.0},
      "max_horizon": 10,
      "use_correct_attention": True,
      "repeat_task_tokens": True,
  }


def example_batch(window: int = 1, primary_size: int = 256,
                  wrist_size: Optional[int] = None, language_length: int = 16) -> dict:
  """A batch-1 example batch (zeros) fixing input shapes, in the 1.5 layout."""
  keys = {"primary": primary_size}
  if wrist_size is not None:
    keys["wrist"] = wrist_size
  obs = {f"image_{k}": np.zeros((1, window, n, n, 3), np.uint8) for k, n in keys.items()}
  obs["timestep_pad_mask"] = np.ones((1, window), bool)
  obs["pad_mask_dict"] = {f"image_{k}": np.ones((1, window), bool) for k in keys}
  task = {f"image_{k}": np.zeros((1, n, n, 3), np.uint8) for k, n in keys.items()}
  task["language_instruction"] = {"input_ids": np.zeros((1, language_length), np.int32),
                                  "attention_mask": np.zeros((1, language_length), np.int32)}
  task["pad_mask_dict"] = {**{f"image_{k}": np.ones((1,), bool) for k in keys},
                           "language_instruction": np.ones((1,), bool)}
  return {"observation": obs, "task": task}


def identity_statistics(action_dim: int = 7) -> dict[str, Any]:
  """Action statistics under which unnormalisation changes nothing (for random models)."""
  zeros, ones = np.zeros(action_dim, np.float32), np.ones(action_dim, np.float32)
  return {"action": {"mean": zeros, "std": ones, "p01": -ones, "p99": ones, "min": -ones,
                     "max": ones, "mask": np.ones(action_dim, bool)}}


def _leaf_std(path: tuple[str, ...], shape: tuple[int, ...]) -> float:
  """Init scale of one parameter; 0 means zeros (biases), and norm scales are ones."""
  name = path[-1]
  if name == "bias":
    return 0.0
  if name.endswith("pos_embedding"):
    return 0.02
  if name == "embedding" and len(shape) == 2:  # T5 token and relative-position tables
    return 1.0
  if path[-2:] == ("time_preprocess", "kernel"):
    return 0.2
  if len(path) > 1 and path[-2] in ("query", "key", "value"):
    fan_in = shape[0]
  else:
    fan_in = int(np.prod(shape[:-1]))
  return 1.0 / np.sqrt(fan_in)


def random_params(shapes: Any, seed: int = 0) -> Any:
  """Random float32 parameters for a tree of ShapeDtypeStructs.

  Fan-in scaled normal kernels, zero biases, unit norm scales, N(0, 0.02) position
  embeddings, drawn with numpy: jitting the Flax initializers of a full Octo takes about a
  minute to compile on a small CPU, while this takes about a second, and benchmarks need only
  realistic magnitudes.
  """
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  out = {}
  for path, s in sorted(flat.items()):
    if path[-1] in ("scale", "weight"):
      out[path] = jnp.ones(s.shape, jnp.float32)
      continue
    std = _leaf_std(path, s.shape)
    value = rng.standard_normal(s.shape, np.float32) * np.float32(std)
    out[path] = jnp.asarray(value)
  return flax.traverse_util.unflatten_dict(out)


def init_random(size: str = "small", window: int = 1, wrist: bool = False,
                primary_size: int = 256, wrist_size: int = 128, seed: int = 0,
                dtype=jnp.float32, **config_kwargs) -> OctoModel:
  """A randomly initialised Octo 1.5 model of a named size ("tiny", "small", "base").

  Args:
    size: see the table in this module's docstring.
    window: observation window W of the example batch (released models: 1 or 2).
    wrist: add a wrist camera tokenizer (wrist_size x wrist_size) after the primary one.
    primary_size: primary camera resolution (256 gives 256 tokens per frame).
    seed: parameter seed (see `random_params`).
    dtype: compute dtype; parameters are float32.
    **config_kwargs: ``model_config``'s language, goal_images, action_horizon, action_dim.

  Returns:
    An OctoModel with identity action statistics (``dataset_statistics["action"]``).
  """
  config = {"model": model_config(size, wrist, **config_kwargs), "window_size": window}
  spec = parse_model_config(config["model"])
  module = OctoModule(spec, dtype)
  batch = example_batch(window, primary_size, wrist_size if wrist else None)
  obs, task = batch["observation"], batch["task"]
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), obs, task,
                          obs["timestep_pad_mask"])["params"]
  params = random_params(shapes, seed)
  return OctoModel(params=params, example_batch=batch,
                   dataset_statistics=identity_statistics(spec.heads[0][1].action_dim),
                   module=module, config=freeze_config(config))
