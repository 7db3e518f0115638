r"""Octo teacher throughput: samples/s against batch size, in-process and behind a server.

    python -m rpd_jax.bench.teacher                       # short default: tiny, fp32, W=1
    python -m rpd_jax.bench.teacher --size=small --batch=1,32,128 --server_batch=1,32,128
    python -m rpd_jax.bench.teacher --size= --checkpoint=octo-base-1.5 \
        --dataset_name=bridge_dataset --window=1,2 --dtype=float32,bfloat16 --json=octo_base.json

For each (dtype, window, batch) the in-process teacher (``rpd_jax.teachers.octo``: resize,
window, task, 20 diffusion steps, unnormalisation) is compiled once with ``jit(...).lower(...)
.compile()``, timed separately, then called ``--repeats`` times with fresh keys; a call is timed
to ``block_until_ready`` and the median is reported, with the median CPU time of the process
(all threads; through the server: client plus server process), which a busy machine inflates
less than wall time. ``--server_batch`` runs the same teacher in a separate process behind
``rpd_jax.bench.remote`` (the published RPD's kind of teacher server: images through shared
memory, arrays serialised over a connection; float32, the first window of ``--window``) and
reports the extra time per call, the hop.

Flags:
  --size=tiny|small|base    random weights of a named size (``rpd_jax.octo.init_random``), or
  --size= --checkpoint=DIR|NAME  a checkpoint folder or released name (third_party/README.md);
  --dataset_name=NAME       action statistics to use when the checkpoint has several;
  --batch=1,32              in-process batch sizes;
  --window=1                observation windows (1 and/or 2);
  --dtype=float32           compute dtypes (float32 and/or bfloat16);
  --server_batch=1,32       batch sizes through the server (empty to skip it); where the same
                            batch ran in-process (float32, first window), server and
                            in-process calls alternate and the hop is the difference of their
                            medians; max_abs_diff in the JSON compares their answers;
  --noshared_memory         send images inside the message instead of shared memory;
  --image_size=N            camera resolution fed to the teacher (default 64 for tiny, else
                            256, ManiSkill's human camera in RPD); random models are built at
                            this resolution, checkpoints resize to theirs on device;
  --attention=flax          attention kernels: flax (the parity reference), xla, cudnn, auto
                            (``jax.nn.dot_product_attention``; auto: cuDNN where it applies);
  --transformer_batch=auto  examples per transformer slice: auto (8 on a CPU, else the whole
                            batch), 0 (the whole batch) or N;
  --repeats=5               timed calls per row (after one untimed warm-up call);
  --json=FILE               also write the rows (and the setup) as JSON.

The language input is the T5 embedding of the empty instruction, computed once: the cost of a
call does not depend on the text.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import flags

from rpd_jax import cli, octo
from rpd_jax.bench import Table
from rpd_jax.errors import ConfigError
from rpd_jax.octo.transformer import ATTENTIONS
from rpd_jax.teachers import octo as octo_teacher
from rpd_jax.teachers.base import Teacher
from rpd_jax.bench.remote import RemoteTeacher

BUILDER = f"{__name__}:build_teacher"


def load_model(size: Optional[str] = None, checkpoint: Optional[str] = None, window: int = 1,
               image_size: int = 256, seed: int = 0):
  """An Octo model: random weights of a named size (seeded: the same in every process), or a
  checkpoint."""
  if (size is None) == (checkpoint is None):
    raise ValueError("pass exactly one of --size and --checkpoint")
  if size is not None:
    return octo.init_random(size, window=window, primary_size=image_size, seed=seed)
  return octo.load_pretrained(checkpoint)


def empty_instruction_embedding(model) -> jax.Array:
  """T5 embedding [16, D] of "" (EOS then padding), the language input of the benchmark."""
  ids = np.zeros((1, 16), np.int32)
  ids[0, 0] = 1  # T5's EOS
  return jax.jit(type(model).encode_language)(model, ids, ids)[0]


def build_teacher(size: Optional[str] = None, checkpoint: Optional[str] = None,
                  dataset_name: Optional[str] = None, window: int = 1,
                  max_window: Optional[int] = None, dtype: str = "float32",
                  image_size: int = 256, seed: int = 0, attention: str = "flax") -> Teacher:
  """The benchmarked teacher; also the server's builder (JSON-able arguments).

  ``max_window`` is the window random models are built for (default ``window``), so that W=1
  and W=2 rows time the same model.
  """
  model = load_model(size, checkpoint, max(window, max_window or window), image_size, seed)
  return octo_teacher.teacher_from_model(
      model, empty_instruction_embedding(model), window=window, dataset_name=dataset_name,
      dtype=dtype, gripper="raw", attention=attention, name=f"octo-{size or checkpoint}")


def _inputs(batch: int, image_size: int, keys: tuple[str, ...] = ("rgb",), seed: int = 0):
  """(obs, prev_obs, is_first): random frames for each camera observation the teacher reads
  (``teacher.apply_fn.observation_keys``: a checkpoint's wrist camera too)."""
  rng = np.random.default_rng(seed)
  frames = lambda: {k: rng.integers(0, 256, (batch, image_size, image_size, 3), np.uint8)
                    for k in keys}
  return frames(), frames(), np.arange(batch) % 50 == 0


# Dense peak FLOP/s by device (the vendors' sheets), for MFU; devices not listed get none.
PEAK_FLOPS = {"H100": {"bfloat16": 989e12, "float32": 67e12},
              "H200": {"bfloat16": 989e12, "float32": 67e12},
              "A100": {"bfloat16": 312e12, "float32": 19.5e12}}


def peak_flops(dtype: str) -> Optional[float]:
  kind = jax.devices()[0].device_kind
  return next((p[dtype] for name, p in PEAK_FLOPS.items() if name in kind), None)


class InProcess:
  """The jitted teacher at one batch size: compiled (timed), with XLA's FLOPs and memory."""

  def __init__(self, teacher: Teacher, batch: int, image_size: int):
    self.batch = batch
    self._inputs = jax.device_put(_inputs(batch, image_size, teacher.apply_fn.observation_keys))
    fn = jax.jit(lambda p, o, q, f, k: teacher.apply_fn(p, o, q, f, k, 0).action)
    self._params = teacher.params
    start = time.perf_counter()
    self._compiled = fn.lower(teacher.params, *self._inputs, jax.random.key(0)).compile()
    self.compile_s = time.perf_counter() - start
    memory = self._compiled.memory_analysis()
    self.peak_mb = None if memory is None else (
        memory.temp_size_in_bytes + memory.argument_size_in_bytes +
        memory.output_size_in_bytes) / 2**20

  def __call__(self, seed: int) -> np.ndarray:
    return np.asarray(jax.block_until_ready(
        self._compiled(self._params, *self._inputs, jax.random.key(seed))))


def flops_per_sample(teacher: Teacher, image_size: int, batch: int = 8) -> Optional[float]:
  """XLA's FLOP count of one call at ``batch`` with the whole batch through the transformer,
  per sample, counted on the CPU backend whatever the device: a GPU backend turns matrix
  products into library calls that its count leaves out (octo-base compiled for an H200
  counted 3.3 GFLOP per sample; on a CPU 50.0). XLA counts a loop's body once: the diffusion
  head's 20 steps, well under 1% of the work, count as one."""
  whole = teacher.replace(apply_fn=dataclasses.replace(teacher.apply_fn, transformer_batch=0))
  fn = jax.jit(lambda p, o, q, f, k: whole.apply_fn(p, o, q, f, k, 0).action)
  cpu = jax.devices("cpu")[0]  # arguments committed to the CPU: compiled for the CPU
  inputs = _inputs(batch, image_size, whole.apply_fn.observation_keys)
  params, inputs, key = jax.device_put((whole.params, inputs, jax.random.key(0)), cpu)
  cost = fn.lower(params, *inputs, key).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost["flops"] / batch if cost and "flops" in cost else None


def interleaved_ms(calls: list[Callable[[int], Any]], repeats: int
                   ) -> list[tuple[float, float]]:
  """(median wall ms, median process CPU ms) per call, the calls taking turns round by round
  (after one untimed round), so that a drifting machine load slows every one alike."""
  wall = [[] for _ in calls]
  cpu = [[] for _ in calls]
  for round_ in range(repeats + 1):
    for i, call in enumerate(calls):
      start, cpu_start = time.perf_counter(), time.process_time()
      call(round_)
      if round_:
        wall[i].append(time.perf_counter() - start)
        cpu[i].append(time.process_time() - cpu_start)
  return [(1e3 * statistics.median(w), 1e3 * statistics.median(c)) for w, c in zip(wall, cpu)]


def bench_server(server: RemoteTeacher, batch: int, image_size: int, repeats: int,
                 local: Optional[Callable[[int], np.ndarray]] = None,
                 keys: tuple[str, ...] = ("rgb",)) -> dict[str, float]:
  """First-call seconds (compile in the server), ms per call and samples/s through ``server``.

  With ``local`` (the in-process teacher on the same inputs, as a function of a seed; see
  ``InProcess``) its calls alternate with the server's, so that the hop, the difference
  of the two medians, is measured under the same machine load; the answers, computed from the
  same weights, inputs and key, are compared too (max_abs_diff).
  """
  obs, prev, is_first = _inputs(batch, image_size, keys)
  start = time.perf_counter()
  server(obs, prev, is_first, seed=0)
  first_s = time.perf_counter() - start
  server_times, server_cpu, local_times = [], [], []
  for seed in range(1, repeats + 1):
    if local is not None:
      start = time.perf_counter()
      local_action = local(seed)
      local_times.append(time.perf_counter() - start)
    start, cpu_start = time.perf_counter(), time.process_time()
    remote_action = server(obs, prev, is_first, seed=seed).action
    server_times.append(time.perf_counter() - start)
    server_cpu.append(time.process_time() - cpu_start + server.last_server_cpu_s)
  ms = 1e3 * statistics.median(server_times)
  row = {"compile_s": first_s, "ms_per_call": ms, "samples_per_s": batch / ms * 1e3,
         "cpu_ms": 1e3 * statistics.median(server_cpu)}
  if local is not None:
    row["in_process_ms"] = 1e3 * statistics.median(local_times)
    row["hop_ms"] = ms - row["in_process_ms"]
    row["max_abs_diff"] = float(np.abs(remote_action - local_action).max())
  return row


def run(args: Settings) -> list[dict[str, Any]]:
  """All rows of the benchmark described by ``args``."""
  model_args = {"size": args.size, "checkpoint": args.checkpoint,
                "dataset_name": args.dataset_name, "max_window": max(args.window),
                "image_size": args.image_size}
  label = args.size or args.checkpoint
  rows, cases, answers = [], [], {}
  for dtype, window, attention in itertools.product(args.dtype, args.window, args.attention):
    teacher = build_teacher(window=window, dtype=dtype, attention=attention, **model_args)
    flops = flops_per_sample(teacher, args.image_size)
    peak = peak_flops(dtype)
    for slices in args.transformer_batch:
      sliced = teacher.replace(apply_fn=dataclasses.replace(teacher.apply_fn,
                                                            transformer_batch=slices))
      for batch in args.batch:
        case = InProcess(sliced, batch, args.image_size)
        cases.append(case)
        rows.append({"mode": "in-process", "model": label, "dtype": dtype, "window": window,
                     "attention": attention, "slices": "auto" if slices is None else slices,
                     "batch": batch, "compile_s": case.compile_s, "peak_mb": case.peak_mb,
                     "gflop_per_sample": None if flops is None else flops / 1e9,
                     "_peak_flops": peak})
        if slices is None and attention == "flax":  # what the server runs
          answers[(dtype, window, batch)] = case
  for row, (ms, cpu_ms) in zip(rows, interleaved_ms(cases, args.repeats)):
    row.update(ms_per_call=ms, samples_per_s=row["batch"] / ms * 1e3, cpu_ms=cpu_ms)
    peak = row.pop("_peak_flops")
    if peak and row["gflop_per_sample"]:
      row["mfu"] = row["gflop_per_sample"] * 1e9 * row["samples_per_s"] / peak
    print(TABLE.row(row), file=sys.stderr, flush=True)
  if args.server_batch:
    window = args.window[0]
    start = time.perf_counter()
    with RemoteTeacher(BUILDER, {**model_args, "window": window, "dtype": "float32"},
                       use_shared_memory=args.shared_memory) as server:
      startup_s = time.perf_counter() - start
      for batch in args.server_batch:
        row = {"mode": "server" + ("" if args.shared_memory else " (no shm)"),
               "model": label, "dtype": "float32", "window": window, "batch": batch,
               "server_startup_s": startup_s}
        row.update(bench_server(server, batch, args.image_size, args.repeats,
                                answers.get(("float32", window, batch)),
                                teacher.apply_fn.observation_keys))
        rows.append(row)
        print(TABLE.row(row), file=sys.stderr, flush=True)
  return rows


COLUMNS = ("mode", "model", "dtype", "window", "attention", "slices", "batch", "compile_s",
           "ms_per_call", "samples_per_s", "cpu_ms", "gflop_per_sample", "mfu", "peak_mb",
           "in_process_ms", "hop_ms")
HEADERS = ("mode", "model", "dtype", "W", "attention", "transformer slices", "batch",
           "compile / first call s", "ms/call (median)", "samples/s", "CPU ms/call",
           "GFLOP/sample (XLA)", "MFU", "peak MB (XLA)", "in-process ms/call, interleaved",
           "hop ms/call")


TABLE = Table(COLUMNS, HEADERS, {"samples_per_s": "{:.2f}", "gflop_per_sample": "{:.2f}",
                                 "mfu": "{:.1%}"}, float_format="{:.1f}")


def markdown(rows: list[dict[str, Any]]) -> str:
  return TABLE.markdown(rows)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one benchmark run measures (the flags, see the module doc)."""
  size: Optional[str] = "tiny"
  checkpoint: Optional[str] = None
  dataset_name: Optional[str] = None
  batch: tuple[int, ...] = (1, 32)
  window: tuple[int, ...] = (1,)
  dtype: tuple[str, ...] = ("float32",)
  server_batch: tuple[int, ...] = (1, 32)
  shared_memory: bool = True
  image_size: Optional[int] = None  # None: 64 for size tiny, else 256
  repeats: int = 5
  transformer_batch: tuple[Optional[int], ...] = (None,)  # None: the default (8 on CPUs)
  attention: tuple[str, ...] = ("flax",)  # rpd_jax.octo.transformer.ATTENTIONS

  def __post_init__(self):
    if self.size is not None and self.size not in octo.SIZES:
      raise ConfigError(f"--size={self.size!r} is unknown; use one of {', '.join(octo.SIZES)}")
    for name in ("batch", "server_batch"):
      if any(b < 1 for b in getattr(self, name)):
        raise ConfigError(f"--{name}={','.join(map(str, getattr(self, name)))}: batch sizes "
                          "must be >= 1")
    for dtype in self.dtype:
      if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"--dtype={dtype!r}: use float32 and/or bfloat16")
    if (self.size is None) == (self.checkpoint is None):
      raise ConfigError("pass exactly one of --size and --checkpoint (--size= for none)")
    if not set(self.window) <= {1, 2}:
      raise ConfigError(f"--window={','.join(map(str, self.window))}: Octo takes windows of 1 "
                        "or 2")
    bad = [a for a in self.attention if a not in ATTENTIONS]
    if bad:
      raise ConfigError(f"--attention={','.join(self.attention)}: use some of "
                        f"{', '.join(ATTENTIONS)}")
    if self.image_size is None:
      object.__setattr__(self, "image_size", 64 if self.size == "tiny" else 256)


def _slices(values: list[str]) -> tuple[Optional[int], ...]:
  """--transformer_batch's values: "auto" -> None, numbers -> int."""
  return tuple(None if v == "auto" else cli.integers([v], "transformer_batch")[0]
               for v in values)


def main() -> None:
  f = flags.FLAGS
  settings = Settings(
      size=f.size or None, checkpoint=f.checkpoint, dataset_name=f.dataset_name,
      batch=cli.integers(f.batch, "batch"), window=cli.integers(f.window, "window"),
      dtype=tuple(f.dtype), server_batch=cli.integers(f.server_batch, "server_batch"),
      shared_memory=f.shared_memory, image_size=f.image_size, repeats=f.repeats,
      transformer_batch=_slices(f.transformer_batch), attention=tuple(f.attention))
  rows = run(settings)
  print(markdown(rows))
  if f.json:
    save(f.json, settings, rows)


def save(path: str, settings: Settings, rows: list[dict[str, Any]]) -> None:
  """The rows and the setup (settings, JAX version, device, machine) as JSON."""
  setup = {"settings": dataclasses.asdict(settings), "jax": jax.__version__,
           "device": str(jax.devices()[0]), "platform": platform.platform(),
           "cpu_count": os.cpu_count()}
  with open(path, "w") as f:
    json.dump({"setup": setup, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  flags.DEFINE_string("size", "tiny", "random weights of a named size: tiny, small or base "
                      "('' with --checkpoint)")
  flags.DEFINE_string("checkpoint", None, "a checkpoint folder or released name")
  flags.DEFINE_string("dataset_name", None, "statistics to use for multi-dataset checkpoints")
  flags.DEFINE_list("batch", ["1", "32"], "in-process batch sizes")
  flags.DEFINE_list("window", ["1"], "observation windows, 1 and/or 2")
  flags.DEFINE_list("dtype", ["float32"], "compute dtypes: float32 and/or bfloat16")
  flags.DEFINE_list("server_batch", ["1", "32"], "batch sizes through the teacher server "
                    "(empty: skip it)")
  flags.DEFINE_bool("shared_memory", True, "server images through shared memory (else inside "
                    "the message)")
  flags.DEFINE_integer("image_size", None, "camera resolution (default: 64 for tiny, else 256)")
  flags.DEFINE_integer("repeats", 5, "timed calls per row")
  flags.DEFINE_list("transformer_batch", ["auto"], "examples per transformer slice inside a "
                    "call: auto (8 on a CPU, else the whole batch), 0 (the whole batch) or N")
  flags.DEFINE_list("attention", ["flax"], "attention kernels: flax (the parity reference), "
                    "xla, cudnn or auto (jax.nn.dot_product_attention; auto: cuDNN where it "
                    "applies)")
  flags.DEFINE_string("json", None, "also write the rows (and the setup) to this JSON file")
  cli.run(main)
