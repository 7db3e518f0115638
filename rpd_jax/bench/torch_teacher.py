r"""Throughput of a torch policy called from inside jit (``rpd_jax.teachers.torch_policy``).

    python -m rpd_jax.bench.torch_teacher --batch=1,8,32
    python -m rpd_jax.bench.torch_teacher --batch=1,32 --models=octo_like --callbacks=buffer \
        --noocto --repeats=50 --json=torch_teacher.json

For each torch model and batch, samples/s of:

- ``torch``: the policy called directly in torch (``policy(images, seed)`` under
  ``torch.inference_mode()``, images already torch tensors): what the model costs;
- ``jit+buffer`` / ``jit+pure``: the same policy through the adapter, in a jitted function of
  the observation and a key (``teacher.apply_fn``: seeds drawn in the graph, the callback,
  torch's RNG seeded and restored, the answer written back); the difference to ``torch`` is
  the adapter's overhead per call (the ``overhead ms`` column);
- ``jax``: the in-graph Octo teacher at the same batch and resolution
  (``rpd_jax.bench.teacher.build_teacher(size="tiny", image_size=...)``, ``InProcess``), random
  weights, 20 diffusion steps; ``--noocto`` skips it.

Models (``--models``):

- ``cnn``: a tiny CNN (one 3x3 conv, mean pool, linear): next to no compute, so its
  ``jit+*`` rows are the adapter's fixed cost;
- ``octo_like``: a torch model of about octo-tiny's FLOPs at 64x64: a conv stem
  (32, 64, 96, 64 channels, stride 2) to 16 tokens of 128 features, projected to 64 and run
  through 2 pre-norm transformer layers (2 heads, MLP 128), mean pooled, a 256-unit MLP head.
  ``GFLOP/sample`` is ``torch.utils.flop_counter`` for torch (matmuls and convolutions) and
  XLA's cost analysis for Octo (all ops, and the diffusion head's 20-step loop counted once):
  comparable in size, not equal in meaning.

Calls are compiled first (jit ``lower().compile()``), then all rows of one batch take turns
(``rpd_jax.bench.teacher.interleaved_ms``: one untimed round, then ``--repeats`` rounds), so a
drifting machine load slows them alike; medians of wall and process CPU time are reported.
On a CPU shared with other work, torch's thread pool is the most sensitive to the load
(``--torch_threads=1`` steadies it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import flags

from rpd_jax import cli
from rpd_jax.bench import Table
from rpd_jax.bench import teacher as octo_bench
from rpd_jax.errors import ConfigError
from rpd_jax.teachers import torch_policy
from rpd_jax.teachers.base import Teacher

ACTION_DIM = 7
MODELS = ("cnn", "octo_like")


class TinyCNN(torch.nn.Module):
  """uint8 [B, H, W, 3] -> [B, 7]: one conv, mean pool, linear (next to no compute)."""

  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
    self.head = torch.nn.Linear(8, ACTION_DIM)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = images.permute(0, 3, 1, 2).float() / 255.0
    return torch.tanh(self.head(torch.relu(self.conv(x)).mean(dim=(2, 3))))


class OctoLike(torch.nn.Module):
  """uint8 [B, H, W, 3] -> [B, 7], about octo-tiny's FLOPs at 64x64 (see the module doc)."""

  def __init__(self, stem=(32, 64, 96, 64), token_features=128, width=64, layers=2, heads=2,
               mlp=128):
    super().__init__()
    convs, channels = [], 3
    for features in stem:
      convs += [torch.nn.Conv2d(channels, features, 3, stride=2, padding=1),
                torch.nn.GroupNorm(min(32, features), features), torch.nn.ReLU()]
      channels = features
    self.stem = torch.nn.Sequential(*convs, torch.nn.Conv2d(channels, token_features, 1))
    self.proj = torch.nn.Linear(token_features, width)
    layer = torch.nn.TransformerEncoderLayer(width, heads, mlp, dropout=0.0, batch_first=True,
                                             norm_first=True)
    self.transformer = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    self.head = torch.nn.Sequential(torch.nn.Linear(width, 256), torch.nn.ReLU(),
                                    torch.nn.Linear(256, ACTION_DIM))

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = images.permute(0, 3, 1, 2).float() / 255.0
    tokens = self.stem(x).flatten(2).transpose(1, 2)  # [B, (H/16) * (W/16), features]
    x = self.transformer(self.proj(tokens))
    return torch.tanh(self.head(x.mean(dim=1)))


def build_model(name: str) -> torch.nn.Module:
  torch.manual_seed(0)
  return {"cnn": TinyCNN, "octo_like": OctoLike}[name]().eval()


def torch_gflop_per_sample(model: torch.nn.Module, image_size: int, batch: int = 8) -> float:
  """torch.utils.flop_counter's count (matmuls, convolutions) of one call, per sample."""
  from torch.utils.flop_counter import FlopCounterMode
  images = torch.zeros((batch, image_size, image_size, 3), dtype=torch.uint8)
  with FlopCounterMode(display=False) as counter, torch.inference_mode():
    model(images)
  return counter.get_total_flops() / batch / 1e9


def as_policy(model: torch.nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
  return lambda images, seed: model(images)


def _images(batch: int, image_size: int) -> np.ndarray:
  return octo_bench._inputs(batch, image_size)[0]["rgb"]  # pylint: disable=protected-access


class Direct:
  """The policy called directly in torch on torch images (under inference_mode)."""

  def __init__(self, policy, batch: int, image_size: int):
    self._policy = policy
    self._images = torch.from_numpy(_images(batch, image_size))

  def __call__(self, seed: int) -> np.ndarray:
    with torch.inference_mode():
      return self._policy(self._images, seed).numpy()


class Adapted:
  """The policy through the adapter, inside a compiled jitted function."""

  def __init__(self, teacher: Teacher, batch: int, image_size: int):
    obs = {"rgb": jax.device_put(_images(batch, image_size))}
    first = jnp.zeros(batch, bool)
    fn = jax.jit(lambda o, k: teacher.apply_fn(teacher.params, o, o, first, k, 0).action)
    self._compiled = fn.lower(obs, jax.random.key(0)).compile()
    self._obs = obs

  def __call__(self, seed: int) -> np.ndarray:
    return np.asarray(jax.block_until_ready(self._compiled(self._obs, jax.random.key(seed))))


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one run measures (the flags, see the module doc)."""
  batch: tuple[int, ...] = (1, 8, 32)
  models: tuple[str, ...] = MODELS
  callbacks: tuple[str, ...] = torch_policy.CALLBACKS
  octo: bool = True
  image_size: int = 64
  repeats: int = 50
  torch_threads: int = 0  # 0: torch's default

  def __post_init__(self):
    if not self.batch or any(b < 1 for b in self.batch):
      raise ConfigError(f"--batch={','.join(map(str, self.batch))}: batch sizes must be >= 1")
    bad = [m for m in self.models if m not in MODELS]
    if bad:
      raise ConfigError(f"--models={','.join(self.models)}: use some of {', '.join(MODELS)}")
    bad = [c for c in self.callbacks if c not in torch_policy.CALLBACKS]
    if bad:
      raise ConfigError(f"--callbacks={','.join(self.callbacks)}: use some of "
                        f"{', '.join(torch_policy.CALLBACKS)}")
    if self.image_size < 16:
      raise ConfigError(f"--image_size={self.image_size}: use at least 16")
    if self.repeats < 1:
      raise ConfigError(f"--repeats={self.repeats} must be >= 1")
    if self.torch_threads < 0:
      raise ConfigError(f"--torch_threads={self.torch_threads} must be >= 0 (0: torch's "
                        "default)")


def run(args: Settings) -> list[dict[str, Any]]:
  """All rows: per batch, each model directly and through each callback, then Octo."""
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  models = {name: build_model(name) for name in args.models}
  flops = {name: torch_gflop_per_sample(m, args.image_size) for name, m in models.items()}
  octo_teacher, octo_flops = None, None
  if args.octo:
    octo_teacher = octo_bench.build_teacher(size="tiny", image_size=args.image_size)
    octo_flops = octo_bench.flops_per_sample(octo_teacher, args.image_size)
  rows = []
  for batch in args.batch:
    cases, batch_rows = [], []
    for name, model in models.items():
      policy = as_policy(model)
      cases.append(Direct(policy, batch, args.image_size))
      batch_rows.append({"model": f"torch {name}", "path": "torch", "batch": batch,
                         "gflop_per_sample": flops[name]})
      for callback in args.callbacks:
        teacher = torch_policy.teacher_from_torch(policy, action_dim=ACTION_DIM,
                                                  callback=callback)
        cases.append(Adapted(teacher, batch, args.image_size))
        batch_rows.append({"model": f"torch {name}", "path": f"jit+{callback}", "batch": batch,
                           "gflop_per_sample": flops[name]})
    if octo_teacher is not None:
      cases.append(octo_bench.InProcess(octo_teacher, batch, args.image_size))
      batch_rows.append({"model": "octo-tiny", "path": "jax", "batch": batch,
                         "gflop_per_sample": None if octo_flops is None else octo_flops / 1e9})
    for row, (ms, cpu_ms) in zip(batch_rows, octo_bench.interleaved_ms(cases, args.repeats)):
      row.update(ms_per_call=ms, samples_per_s=batch / ms * 1e3, cpu_ms=cpu_ms)
    direct = {r["model"]: r["ms_per_call"] for r in batch_rows if r["path"] == "torch"}
    for row in batch_rows:
      if row["path"].startswith("jit+"):
        row["overhead_ms"] = row["ms_per_call"] - direct[row["model"]]
      print(TABLE.row(row), file=sys.stderr, flush=True)
    rows += batch_rows
  return rows


COLUMNS = ("model", "path", "batch", "gflop_per_sample", "ms_per_call", "samples_per_s",
           "cpu_ms", "overhead_ms")
HEADERS = ("model", "path", "batch", "GFLOP/sample", "ms/call (median)", "samples/s",
           "CPU ms/call", "overhead ms/call vs torch")


TABLE = Table(COLUMNS, HEADERS, {
    "gflop_per_sample": "{:.4f}",
    "samples_per_s": lambda v: f"{v:.0f}" if v >= 100 else f"{v:.2f}"})


def markdown(rows: list[dict[str, Any]]) -> str:
  return TABLE.markdown(rows)


def setup() -> dict[str, Any]:
  return {"jax": jax.__version__, "torch": torch.__version__, "device": str(jax.devices()[0]),
          "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
          "cpu_count": os.cpu_count()}


def main() -> None:
  f = flags.FLAGS
  settings = Settings(batch=cli.integers(f.batch, "batch"), models=tuple(f.models),
                      callbacks=tuple(f.callbacks), octo=f.octo, image_size=f.image_size,
                      repeats=f.repeats, torch_threads=f.torch_threads)
  rows = run(settings)
  print(markdown(rows))
  info = setup()
  print(f"\n{info['device']}, jax {info['jax']}, torch {info['torch']} "
        f"({info['torch_threads']} threads), {info['cpu_count']} CPUs")
  if f.json:
    with open(f.json, "w") as out:
      json.dump({"setup": {**info, "settings": dataclasses.asdict(settings)}, "rows": rows},
                out, indent=1)


if __name__ == "__main__":
  flags.DEFINE_list("batch", ["1", "8", "32"], "batch sizes")
  flags.DEFINE_list("models", list(MODELS), "torch models: cnn and/or octo_like")
  flags.DEFINE_list("callbacks", list(torch_policy.CALLBACKS), "adapter callbacks: buffer "
                    "(jax.experimental.buffer_callback, zero copy) and/or pure "
                    "(jax.pure_callback, copies)")
  flags.DEFINE_bool("octo", True, "also time the in-graph octo-tiny teacher")
  flags.DEFINE_integer("image_size", 64, "camera resolution, H = W")
  flags.DEFINE_integer("repeats", 50, "timed rounds (after one untimed round)")
  flags.DEFINE_integer("torch_threads", 0, "torch's intra-op threads (0: its default)")
  flags.DEFINE_string("json", None, "also write the rows (and the setup) to this JSON file")
  cli.run(main)
