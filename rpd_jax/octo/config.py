"""Parsing an Octo checkpoint's ``config.json`` model section into a static, hashable spec.

The official config builds every part from a module spec ``{module, name, args, kwargs}``. The
specs this implementation understands are listed in ``SUPPORTED``; anything else raises one
error that names the spec, so that an unsupported checkpoint fails before anything is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from rpd_jax.octo.t5 import T5Config, resolve_t5_config

_TOKENIZERS = "octo.model.components.tokenizers"
_ENCODERS = "octo.model.components.vit_encoders"
_HEADS = "octo.model.components.action_heads"
SUPPORTED = (f"{_TOKENIZERS}.ImageTokenizer", f"{_TOKENIZERS}.LanguageTokenizer",
             f"{_ENCODERS}.SmallStem16", f"{_ENCODERS}.SmallStem32", f"{_ENCODERS}.SmallStem",
             f"{_HEADS}.DiffusionActionHead")


class UnsupportedConfigError(ValueError):
  """A config names a module spec or a setting this implementation does not have."""


@dataclasses.dataclass(frozen=True)
class StemSpec:
  name: str = "SmallStem16"  # the class name; the checkpoint scope is "<name>_0"
  patch_size: int = 16
  kernel_sizes: tuple[int, ...] = (3, 3, 3, 3)
  strides: tuple[int, ...] = (2, 2, 2, 2)
  features: tuple[int, ...] = (32, 96, 192, 384)
  padding: tuple[int, ...] = (1, 1, 1, 1)
  num_features: int = 512


@dataclasses.dataclass(frozen=True)
class ImageTokenizerSpec:
  obs_stack_keys: tuple[str, ...]
  task_stack_keys: tuple[str, ...]
  stem: StemSpec


@dataclasses.dataclass(frozen=True)
class LanguageTokenizerSpec:
  encoder: str
  t5: T5Config


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  readout_key: str = "readout_action"
  action_horizon: int = 1
  action_dim: int = 7
  max_action: float = 5.0
  time_dim: int = 32
  num_blocks: int = 3
  hidden_dim: int = 256
  use_layer_norm: bool = True
  diffusion_steps: int = 20


@dataclasses.dataclass(frozen=True)
class OctoSpec:
  """Everything static about an Octo model. Mappings are tuples of (name, value) pairs."""

  observation_tokenizers: tuple[tuple[str, ImageTokenizerSpec], ...]
  task_tokenizers: tuple[tuple[str, LanguageTokenizerSpec], ...]
  heads: tuple[tuple[str, HeadSpec], ...]
  readouts: tuple[tuple[str, int], ...]
  token_embedding_size: int
  num_layers: int
  mlp_dim: int
  num_attention_heads: int
  max_horizon: int = 10
  # Octo 1.5 fixed an off-by-one in token group membership; 1.0 checkpoints need it.
  use_correct_attention: bool = False
  # Octo 1.5 repeats the projected task tokens into every timestep as "obs_task_*" groups.
  repeat_task_tokens: bool = False


def _check_spec(spec: Any, where: str) -> tuple[str, Mapping[str, Any]]:
  if not isinstance(spec, Mapping) or "module" not in spec or "name" not in spec:
    raise UnsupportedConfigError(
        f"config model.{where} is not a module spec {{module, name, args, kwargs}}: {spec!r}")
  full = f"{spec['module']}.{spec['name']}"
  if full not in SUPPORTED:
    raise UnsupportedConfigError(
        f"config model.{where} names module spec {full!r}, which rpd_jax's Octo does not "
        f"implement; supported: {', '.join(SUPPORTED)}")
  if spec.get("args"):
    raise UnsupportedConfigError(
        f"config model.{where} ({full}) has positional args {spec['args']!r}; only kwargs are "
        "supported")
  return spec["name"], dict(spec.get("kwargs") or {})


# Marks a kwarg that may take any value (others must equal the one value supported).
_ANY = object()


def _take(kwargs: dict, where: str, allowed: Mapping[str, Any]) -> dict:
  """Checks kwargs: every key known, and those with a required value set to it."""
  out = {}
  for key, value in kwargs.items():
    if key not in allowed:
      raise UnsupportedConfigError(
          f"config model.{where} has kwarg {key}={value!r}, which rpd_jax's Octo does not "
          f"support; known kwargs: {sorted(allowed)}")
    required = allowed[key]
    if required is not _ANY and value != required:
      raise UnsupportedConfigError(
          f"config model.{where} sets {key}={value!r}; rpd_jax's Octo supports only "
          f"{key}={required!r}")
    out[key] = value
  return out


def _stem(spec: Any, where: str) -> StemSpec:
  name, kwargs = _check_spec(spec, where)
  if not name.startswith("SmallStem"):
    raise UnsupportedConfigError(f"config model.{where} must be a SmallStem, got {name!r}")
  kw = _take(kwargs, where, {"patch_size": _ANY, "kernel_sizes": _ANY, "strides": _ANY,
                             "features": _ANY, "padding": _ANY, "num_features": _ANY,
                             "img_norm_type": "default", "use_film": False})
  patch = {"SmallStem16": 16, "SmallStem32": 32, "SmallStem": 32}[name]
  return StemSpec(
      name=name,
      patch_size=int(kw.get("patch_size", patch)),
      kernel_sizes=tuple(kw.get("kernel_sizes", StemSpec.kernel_sizes)),
      strides=tuple(kw.get("strides", StemSpec.strides)),
      features=tuple(kw.get("features", StemSpec.features)),
      padding=tuple(kw.get("padding", StemSpec.padding)),
      num_features=int(kw.get("num_features", StemSpec.num_features)))


def _as_tuple(x) -> tuple[str, ...]:
  return (x,) if isinstance(x, str) else tuple(x)


def parse_model_config(model: Mapping[str, Any], t5_search_dirs=(),
                       t5_config: Optional[T5Config] = None) -> OctoSpec:
  """``config["model"]`` of an Octo checkpoint -> OctoSpec.

  Args:
    model: the dict of module specs and settings.
    t5_search_dirs: folders searched for ``<encoder name>/config.json`` when the language
      encoder is not t5-base.
    t5_config: overrides the language encoder config.
  """
  obs = []
  for key, spec in model.get("observation_tokenizers", {}).items():
    where = f"observation_tokenizers.{key}"
    name, kwargs = _check_spec(spec, where)
    if name != "ImageTokenizer":
      raise UnsupportedConfigError(
          f"config model.{where} is a {name}; only ImageTokenizer observation tokenizers are "
          "supported")
    kw = _take(kwargs, where, {"encoder": _ANY, "obs_stack_keys": _ANY,
                               "task_stack_keys": _ANY, "use_token_learner": False,
                               "conditioning_type": "none", "task_film_keys": _ANY,
                               "proper_pad_mask": True, "num_tokens": _ANY})
    if kw.get("task_film_keys"):
      raise UnsupportedConfigError(f"config model.{where} uses FiLM (task_film_keys); "
                                   "not supported")
    if "encoder" not in kw:
      raise UnsupportedConfigError(f"config model.{where} has no encoder spec")
    obs.append((key, ImageTokenizerSpec(
        obs_stack_keys=_as_tuple(kw.get("obs_stack_keys", ("image_.*", "depth_.*"))),
        task_stack_keys=_as_tuple(kw.get("task_stack_keys", ())),
        stem=_stem(kw["encoder"], f"{where}.kwargs.encoder"))))

  tasks = []
  for key, spec in model.get("task_tokenizers", {}).items():
    where = f"task_tokenizers.{key}"
    name, kwargs = _check_spec(spec, where)
    if name != "LanguageTokenizer":
      raise UnsupportedConfigError(
          f"config model.{where} is a {name}; only LanguageTokenizer task tokenizers are "
          "supported")
    kw = _take(kwargs, where, {"encoder": _ANY, "finetune_encoder": _ANY,
                               "proper_pad_mask": True, "num_tokens": _ANY})
    encoder = kw.get("encoder")
    if not encoder or "t5" not in encoder:
      raise UnsupportedConfigError(
          f"config model.{where} uses language encoder {encoder!r}; only T5 encoders are "
          "supported")
    cfg = t5_config or resolve_t5_config(encoder, t5_search_dirs)
    tasks.append((key, LanguageTokenizerSpec(encoder, cfg)))

  heads = []
  for key, spec in model.get("heads", {}).items():
    where = f"heads.{key}"
    name, kwargs = _check_spec(spec, where)
    kwargs = dict(kwargs)
    # Octo 1.0 named the chunk length pred_horizon; the 1.5 loader renames it the same way.
    if "pred_horizon" in kwargs:
      kwargs["action_horizon"] = kwargs.pop("pred_horizon")
    kw = _take(kwargs, where, {"readout_key": _ANY, "use_map": False, "action_horizon": _ANY,
                               "action_dim": _ANY, "max_action": _ANY, "loss_type": _ANY,
                               "time_dim": _ANY, "num_blocks": _ANY, "dropout_rate": _ANY,
                               "hidden_dim": _ANY, "use_layer_norm": _ANY,
                               "diffusion_steps": _ANY, "n_diffusion_samples": _ANY})
    # Dropout, loss type and the number of training noise samples only matter for training.
    for unused in ("dropout_rate", "loss_type", "n_diffusion_samples", "use_map"):
      kw.pop(unused, None)
    heads.append((key, HeadSpec(**kw)))
  if [k for k, _ in heads] != ["action"]:
    raise UnsupportedConfigError(
        f"config model.heads has {[k for k, _ in heads]}; exactly one head named 'action' is "
        "supported")

  tk = dict(model.get("transformer_kwargs", {}))
  if tk.get("add_position_embedding", False):
    raise UnsupportedConfigError(
        "config model.transformer_kwargs.add_position_embedding must be false (Octo adds its "
        "own position embeddings per token group)")
  for key in ("num_layers", "mlp_dim", "num_attention_heads"):
    if key not in tk:
      raise UnsupportedConfigError(f"config model.transformer_kwargs lacks {key!r}")
  readouts = model.get("readouts", model.get("readout_tokenizers"))
  if not readouts:
    raise UnsupportedConfigError("config model has no 'readouts'")
  for key in ("token_embedding_size",):
    if key not in model:
      raise UnsupportedConfigError(f"config model lacks {key!r}")
  return OctoSpec(
      observation_tokenizers=tuple(obs),
      task_tokenizers=tuple(tasks),
      heads=tuple(heads),
      readouts=tuple((k, int(v)) for k, v in readouts.items()),
      token_embedding_size=int(model["token_embedding_size"]),
      num_layers=int(tk["num_layers"]),
      mlp_dim=int(tk["mlp_dim"]),
      num_attention_heads=int(tk["num_attention_heads"]),
      max_horizon=int(model.get("max_horizon", 10)),
      use_correct_attention=bool(model.get("use_correct_attention", False)),
      repeat_task_tokens=bool(model.get("repeat_task_tokens", False)))
