r"""Time jitted ``sample_actions`` of a random Octo on this machine (the model alone, without
the teacher adapter that ``rpd_jax.bench.teacher`` times).

    python -m rpd_jax.bench.octo --size=small --batch=1,8 --window=1,2 --dtype=float32,bfloat16

Per (dtype, window, batch): build ``init_random(size, window)`` (primary camera only, 256x256),
embed an instruction once (language precomputed, as a teacher does), compile ``sample_actions``
with ``jit(...).lower(...).compile()`` (timed), make one untimed call, then time ``--repeats``
calls with fresh keys to ``block_until_ready``. Prints median wall-clock ms per call and the
process CPU ms per call (user + system, all threads; robust to other load on the machine, which
the printed load average shows).
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from rpd_jax import cli
from rpd_jax.errors import ConfigError
from rpd_jax.octo.sizes import SIZES, init_random


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def time_sample_actions(size: str, batch: int, window: int, dtype, repeats: int,
                        image_size: int = 256,
                        transformer_batch: Optional[int] = None) -> dict[str, float]:
  """Compile seconds, median wall ms and mean CPU ms of one jitted sample_actions call."""
  model = init_random(size, window=window, primary_size=image_size, dtype=dtype)
  ids = np.zeros((batch, 16), np.int32)
  ids[:, 0] = 1
  embedding = jax.jit(type(model).encode_language)(model, ids, ids)
  tasks = model.create_tasks(language_embeddings=embedding)
  rng = np.random.default_rng(0)
  obs = {"image_primary": jnp.asarray(
      rng.integers(0, 256, (batch, window, image_size, image_size, 3), np.uint8)),
         "timestep_pad_mask": jnp.ones((batch, window), bool)}
  fn = jax.jit(lambda m, o, t, k: m.sample_actions(o, t, k,
                                                  transformer_batch=transformer_batch))
  start = time.perf_counter()
  compiled = fn.lower(model, obs, tasks, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - start
  compiled(model, obs, tasks, jax.random.key(1)).block_until_ready()
  walls, cpu_start = [], _cpu_seconds()
  for i in range(repeats):
    start = time.perf_counter()
    compiled(model, obs, tasks, jax.random.key(2 + i)).block_until_ready()
    walls.append(time.perf_counter() - start)
  cpu_ms = (_cpu_seconds() - cpu_start) / repeats * 1e3
  return {"compile_s": compile_s, "wall_ms": statistics.median(walls) * 1e3, "cpu_ms": cpu_ms}


def main() -> None:
  f = flags.FLAGS
  if f.size not in SIZES:
    raise ConfigError(f"--size={f.size!r} is unknown; use one of {', '.join(SIZES)}")
  bad = [d for d in f.dtype if d not in ("float32", "bfloat16")]
  if bad:
    raise ConfigError(f"--dtype has {bad[0]!r}; use float32 and/or bfloat16")
  batches, windows = cli.integers(f.batch, "batch"), cli.integers(f.window, "window")
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, "
        f"size {f.size}, 20 diffusion steps, language precomputed")
  slices = [None if s == "auto" else int(s) for s in f.transformer_batch]
  print("dtype     W  slices  batch  compile_s  wall_ms  cpu_ms  samples/s  load_avg")
  for dtype in f.dtype:
    for window in windows:
      for batch in batches:
        for size in slices:
          r = time_sample_actions(f.size, batch, window, jnp.dtype(dtype), f.repeats,
                                  f.image_size, size)
          print(f"{dtype:9s} {window:2d} {str(size):>6s} {batch:6d} {r['compile_s']:10.1f} "
                f"{r['wall_ms']:8.0f} {r['cpu_ms']:7.0f} {batch / r['wall_ms'] * 1e3:10.1f}  "
                f"{os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
  flags.DEFINE_string("size", "small", "model size: tiny, small or base")
  flags.DEFINE_list("batch", ["1", "8"], "batch sizes")
  flags.DEFINE_list("window", ["1", "2"], "observation windows")
  flags.DEFINE_list("dtype", ["float32", "bfloat16"], "compute dtypes")
  flags.DEFINE_integer("repeats", 5, "timed calls per row")
  flags.DEFINE_integer("image_size", 256, "camera resolution")
  flags.DEFINE_list("transformer_batch", ["auto"], "examples per transformer slice: auto (8 on "
                    "a CPU, else the whole batch), 0 (the whole batch) or a number")
  cli.run(main)
