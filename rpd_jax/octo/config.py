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
# What each part of ``config["model"]`` may be: (module, class names). Anything else is refused.
OBSERVATION_TOKENIZERS = (_TOKENIZERS, ("ImageTokenizer", "LowdimObsTokenizer"))
TASK_TOKENIZERS = (_TOKENIZERS, ("LanguageTokenizer",))
ENCODERS = (_ENCODERS, ("SmallStem16", "SmallStem32", "SmallStem"))
HEADS = (_HEADS, ("DiffusionActionHead", "L1ActionHead", "MSEActionHead",
                  "ContinuousActionHead"))
SUPPORTED = tuple(f"{module}.{name}" for module, names in
                  (OBSERVATION_TOKENIZERS, TASK_TOKENIZERS, ENCODERS, HEADS) for name in names)
# The deterministic heads (ContinuousActionHead and its L1/MSE subclasses) predict one chunk;
# DiffusionActionHead samples. Official defaults of use_map per class.
CONTINUOUS_HEADS = {"L1ActionHead": True, "MSEActionHead": True, "ContinuousActionHead": False}


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
class LowdimTokenizerSpec:
  """LowdimObsTokenizer without discretisation: one token (feature size 1) per dimension of
  the observations matching ``obs_keys`` (regexes, each in turn, over the sorted keys)."""
  obs_keys: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LanguageTokenizerSpec:
  encoder: str
  t5: T5Config


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """An action head. ``kind``: "diffusion" (DiffusionActionHead, samples chunks) or
  "continuous" (ContinuousActionHead, L1ActionHead, MSEActionHead: one deterministic chunk).
  ``use_map``: pool the readout tokens with a MAP head (attention) instead of their mean."""
  readout_key: str = "readout_action"
  action_horizon: int = 1
  action_dim: int = 7
  max_action: float = 5.0
  time_dim: int = 32
  num_blocks: int = 3
  hidden_dim: int = 256
  use_layer_norm: bool = True
  diffusion_steps: int = 20
  kind: str = "diffusion"
  use_map: bool = False
  name: str = "DiffusionActionHead"  # the official class

  @property
  def deterministic(self) -> bool:
    return self.kind == "continuous"


@dataclasses.dataclass(frozen=True)
class OctoSpec:
  """Everything static about an Octo model. Mappings are tuples of (name, value) pairs."""

  observation_tokenizers: tuple[tuple[str, ImageTokenizerSpec | LowdimTokenizerSpec], ...]
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


def _check_spec(spec: Any, where: str, kind: str,
                supported: tuple[str, tuple[str, ...]]) -> tuple[str, Mapping[str, Any]]:
  """(class name, kwargs) of a module spec, if it names a class of ``supported``; else one
  error naming the piece and what is supported."""
  if not isinstance(spec, Mapping) or "module" not in spec or "name" not in spec:
    raise UnsupportedConfigError(
        f"config model.{where} is not a module spec {{module, name, args, kwargs}}: {spec!r}")
  module, names = supported
  if spec["module"] != module or spec["name"] not in names:
    raise UnsupportedConfigError(
        f"config model.{where} is {spec['module']}.{spec['name']}, which rpd_jax's Octo does "
        f"not implement; supported {kind}s: {', '.join(names)} (from {module})")
  if spec.get("args"):
    raise UnsupportedConfigError(
        f"config model.{where} ({spec['name']}) has positional args {spec['args']!r}; only "
        "kwargs are supported")
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
          f"support; known kwargs: {', '.join(sorted(allowed))}")
    required = allowed[key]
    if required is not _ANY and value != required:
      raise UnsupportedConfigError(
          f"config model.{where} sets {key}={value!r}; rpd_jax's Octo supports only "
          f"{key}={required!r}")
    out[key] = value
  return out


def _stem(spec: Any, where: str) -> StemSpec:
  name, kwargs = _check_spec(spec, where, "image encoder", ENCODERS)
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


def _observation_tokenizer(spec: Any, where: str):
  name, kwargs = _check_spec(spec, where, "observation tokenizer", OBSERVATION_TOKENIZERS)
  if name == "LowdimObsTokenizer":
    # n_bins, bin_type, low and high only matter with discretize=True (one-hot bins).
    kw = _take(kwargs, where, {"obs_keys": _ANY, "discretize": False, "proper_pad_mask": True,
                               "n_bins": _ANY, "bin_type": _ANY, "low": _ANY, "high": _ANY})
    if not kw.get("obs_keys"):
      raise UnsupportedConfigError(f"config model.{where} (LowdimObsTokenizer) has no obs_keys")
    return LowdimTokenizerSpec(_as_tuple(kw["obs_keys"]))
  kw = _take(kwargs, where, {"encoder": _ANY, "obs_stack_keys": _ANY,
                             "task_stack_keys": _ANY, "use_token_learner": False,
                             "conditioning_type": "none", "task_film_keys": _ANY,
                             "proper_pad_mask": True, "num_tokens": _ANY})
  if kw.get("task_film_keys"):
    raise UnsupportedConfigError(f"config model.{where} uses FiLM (task_film_keys), which "
                                 "rpd_jax's Octo does not implement; supported: "
                                 "task_film_keys=[]")
  if "encoder" not in kw:
    raise UnsupportedConfigError(f"config model.{where} has no encoder spec")
  return ImageTokenizerSpec(
      obs_stack_keys=_as_tuple(kw.get("obs_stack_keys", ("image_.*", "depth_.*"))),
      task_stack_keys=_as_tuple(kw.get("task_stack_keys", ())),
      stem=_stem(kw["encoder"], f"{where}.kwargs.encoder"))


def _head(spec: Any, where: str) -> HeadSpec:
  name, kwargs = _check_spec(spec, where, "action head", HEADS)
  # Octo 1.0 named the chunk length pred_horizon; the 1.5 loader renames it the same way.
  if "pred_horizon" in kwargs:
    kwargs["action_horizon"] = kwargs.pop("pred_horizon")
  common = {"readout_key": _ANY, "use_map": _ANY, "action_horizon": _ANY, "action_dim": _ANY,
            "max_action": _ANY, "loss_type": _ANY}
  if name in CONTINUOUS_HEADS:
    kw = _take(kwargs, where, common)
    use_map = bool(kw.pop("use_map", CONTINUOUS_HEADS[name]))
    kind = "continuous"
  else:
    kw = _take(kwargs, where, {**common, "time_dim": _ANY, "num_blocks": _ANY,
                               "dropout_rate": _ANY, "hidden_dim": _ANY,
                               "use_layer_norm": _ANY, "diffusion_steps": _ANY,
                               "n_diffusion_samples": _ANY})
    use_map = bool(kw.pop("use_map", False))
    kind = "diffusion"
  # Dropout, loss type and the number of training noise samples only matter for training.
  for unused in ("dropout_rate", "loss_type", "n_diffusion_samples"):
    kw.pop(unused, None)
  return HeadSpec(**kw, kind=kind, use_map=use_map, name=name)


def parse_model_config(model: Mapping[str, Any], t5_search_dirs=(),
                       t5_config: Optional[T5Config] = None) -> OctoSpec:
  """``config["model"]`` of an Octo checkpoint -> OctoSpec.

  Args:
    model: the dict of module specs and settings.
    t5_search_dirs: folders searched for ``<encoder name>/config.json`` when the language
      encoder is not t5-base.
    t5_config: overrides the language encoder config.

  Raises:
    UnsupportedConfigError naming the first piece (tokenizer, encoder, head, kwarg, setting)
    this implementation does not have, and what it supports instead.
  """
  obs = [(key, _observation_tokenizer(spec, f"observation_tokenizers.{key}"))
         for key, spec in model.get("observation_tokenizers", {}).items()]

  tasks = []
  for key, spec in model.get("task_tokenizers", {}).items():
    where = f"task_tokenizers.{key}"
    _, kwargs = _check_spec(spec, where, "task tokenizer", TASK_TOKENIZERS)
    kw = _take(kwargs, where, {"encoder": _ANY, "finetune_encoder": _ANY,
                               "proper_pad_mask": True, "num_tokens": _ANY})
    encoder = kw.get("encoder")
    if not encoder or "t5" not in encoder:
      raise UnsupportedConfigError(
          f"config model.{where} uses language encoder {encoder!r}; rpd_jax's Octo supports "
          "T5 encoders only (t5-base, or a T5 config folder named after the encoder)")
    cfg = t5_config or resolve_t5_config(encoder, t5_search_dirs)
    tasks.append((key, LanguageTokenizerSpec(encoder, cfg)))

  heads = [(key, _head(spec, f"heads.{key}")) for key, spec in model.get("heads", {}).items()]
  if [k for k, _ in heads] != ["action"]:
    raise UnsupportedConfigError(
        f"config model.heads has {[k for k, _ in heads]}; rpd_jax's Octo supports exactly one "
        "head, named 'action'")

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
