"""Octo (octo-models/octo, v1.0 and v1.5) in Flax, loading the official checkpoints.

Loading and building:

  model = load_pretrained("rail-berkeley/octo-small-1.5")  # or a checkpoint folder; step=None
  model = init_random("small", window=2)                   # random weights: "tiny"/"small"/"base"

``load_pretrained(name_or_folder, step=None, t5_config=None, dtype=jnp.float32)`` reads
config.json, example_batch.msgpack, dataset_statistics.json and the parameters of
``<step>/default`` (newest step by default; a flax-msgpack ``checkpoint`` blob as released, or
an orbax PyTree as current orbax writes it) from a folder, ``third_party/downloads`` or the
local Hugging Face cache (``resolve_checkpoint``: folders, shipped teachers, released names, hub
ids), without TensorFlow, and checks every parameter's path and shape against the config.
``read_checkpoint`` reads all of that but the parameters. ``init_random(size, window=1,
wrist=False, primary_size=256, wrist_size=128, seed=0, dtype=jnp.float32)`` builds an Octo 1.5
model of a named size with random weights and identity action statistics. ``dtype`` is the
compute dtype (e.g. jnp.bfloat16); parameters stay float32 and the heads run in float32.
``model.replace(module=model.module.clone(dtype=...))`` switches it on a loaded model.

Supported pieces (``config.SUPPORTED``; anything else raises UnsupportedConfigError naming
it): ImageTokenizer (SmallStem16/32 encoders, goal images stacked on channels),
LowdimObsTokenizer (proprio, not discretised), LanguageTokenizer (T5), DiffusionActionHead and
the deterministic L1ActionHead / MSEActionHead / ContinuousActionHead (mean or MAP pooling).

The model (``OctoModel``) is a pytree: ``params``, ``example_batch`` and ``dataset_statistics``
are leaves, ``module`` (the Flax ``OctoModule``) and ``config`` (config.json, frozen) are static.

  emb = model.embed_instructions(["pick up the cube"], tokenizer)  # [B, 16, d_model], once
  emb = model.encode_language(input_ids, attention_mask)       # [B, 16] -> [B, 16, d_model]
  tasks = model.create_tasks(language_embeddings=emb)           # T5 skipped at every call
  tasks = model.create_tasks(texts=["pick up the cube"], tokenize=T5Tokenizer.from_folder(d))
  tasks = model.create_tasks(goals={"image_primary": goal_images})
  actions = model.sample_actions(observations, tasks, rng,
                                 unnormalization_statistics=model.dataset_statistics["action"],
                                 normalization_type="normal",   # or "bounds"
                                 num_samples=None)              # [B, 4, 7] ([N, B, 4, 7])

``observations``: ``image_primary`` [B, W, H, W', 3] uint8 (optionally ``image_wrist``) with
the image size of ``model.example_batch["observation"]`` (the model does not resize), optional
``proprio`` [B, W, P] (normalised with ``normalize_proprio``, as Octo's data pipeline does),
``timestep_pad_mask`` [B, W] bool (False: padded timestep), optional ``pad_mask_dict``.
``sample_actions`` is jitted and pure in (model, observations, tasks, rng); keep shapes fixed
to compile once. With the same key under ``jax_threefry_partitionable=False`` it reproduces the
official model's samples; a deterministic head ignores the key. ``model.run_transformer``
returns the transformer's token groups.

Training: ``normalize`` (the inverse of ``unnormalize``) and ``diffusion_loss``, Octo's
noise-prediction loss on action chunks (``rpd_jax.pipeline.finetune`` trains with it).
"""

from rpd_jax.octo.checkpoint import CheckpointFiles
from rpd_jax.octo.checkpoint import CheckpointReadError
from rpd_jax.octo.checkpoint import load_pretrained
from rpd_jax.octo.checkpoint import model_spec
from rpd_jax.octo.checkpoint import param_shapes
from rpd_jax.octo.checkpoint import read_checkpoint
from rpd_jax.octo.checkpoint import save_pretrained
from rpd_jax.octo.config import OctoSpec
from rpd_jax.octo.config import UnsupportedConfigError
from rpd_jax.octo.config import parse_model_config
from rpd_jax.octo.hub import resolve_checkpoint
from rpd_jax.octo.model import OctoModel
from rpd_jax.octo.model import diffusion_loss
from rpd_jax.octo.model import normalize
from rpd_jax.octo.model import normalize_proprio
from rpd_jax.octo.model import unnormalize
from rpd_jax.octo.module import OctoModule
from rpd_jax.octo.module import TokenGroup
from rpd_jax.octo.sizes import SIZES
from rpd_jax.octo.sizes import init_random
from rpd_jax.octo.sizes import model_config
from rpd_jax.octo.t5 import T5Config

__all__ = ["CheckpointFiles", "CheckpointReadError", "OctoModel", "OctoModule", "OctoSpec",
           "SIZES", "T5Config", "TokenGroup", "UnsupportedConfigError", "diffusion_loss",
           "init_random", "load_pretrained", "model_config", "model_spec", "normalize",
           "normalize_proprio", "param_shapes", "parse_model_config", "read_checkpoint",
           "resolve_checkpoint", "save_pretrained", "unnormalize"]
