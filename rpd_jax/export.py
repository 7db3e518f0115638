"""Command line: write a saved student into a folder that needs no trainer to run.

  python -m rpd_jax.export --workdir=runs/pushcube --out=students/pushcube \\
      [--checkpoint=STEP] [--student=k]

Writes ``student.json``, ``params.msgpack`` and ``student.onnx`` (the format:
``rpd_jax/student.py``) from the newest checkpoint of the run in ``--workdir`` (or
``--checkpoint``; of K students trained at once, ``--student``, default 0). No simulator starts.
Then it loads the folder as a user would (``rpd_jax.student.load``) and runs ``student.onnx``
with onnxruntime on the checkpoint's last observations and on random ones, and prints the
largest difference between the two policies' actions.

The ONNX model is made by jax2onnx from the same JAX function ``student.load`` runs: one input
per observation key, named as the key, with a symbolic batch axis "B".
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Mapping

import flax.serialization
import jax
import numpy as np
from absl import flags

from rpd_jax import cli
from rpd_jax import config as config_lib
from rpd_jax import runs
from rpd_jax import student as student_lib
from rpd_jax.errors import ConfigError

# Random observations the ONNX model is checked on, besides the checkpoint's own.
CHECK_BATCH = 8


def write_onnx(saved: runs.SavedStudent, path: str) -> None:
  """``path``: the student's deterministic action as an ONNX model (module doc)."""
  from jax2onnx import to_onnx  # pylint: disable=g-import-not-at-top  (heavy; export only)
  keys = list(saved.observation_spec)
  network, params = saved.network, saved.params

  def act(*arrays):
    return student_lib.deterministic_action(network, params, dict(zip(keys, arrays)))

  batch, = jax.export.symbolic_shape("B")
  inputs = [jax.ShapeDtypeStruct((batch,) + shape, dtype)
            for shape, dtype in saved.observation_spec.values()]
  to_onnx(act, inputs, model_name="rpd_jax_student", input_names=keys,
          output_names=[student_lib.ONNX_OUTPUT], return_mode="file", output_path=path)


def write(saved: runs.SavedStudent, out: str, source: Mapping[str, Any]) -> None:
  """The folder of ``rpd_jax.student`` for ``saved`` (``source``: where it came from)."""
  os.makedirs(out, exist_ok=True)
  spec = {
      "format_version": student_lib.FORMAT_VERSION,
      "network": student_lib.network_fields(saved.network),
      "observation_spec": {k: {"shape": list(shape), "dtype": dtype}
                           for k, (shape, dtype) in saved.observation_spec.items()},
      "action": {"dim": saved.network.action_dim, "low": -1.0, "high": 1.0,
                 "what": "the mean of the student's Gaussian, clipped to [-1, 1]",
                 "env": source["config"]["env"]},
      "source": dict(source),
  }
  with open(os.path.join(out, student_lib.PARAMS_FILE), "wb") as f:
    f.write(flax.serialization.to_bytes(saved.params))
  write_onnx(saved, os.path.join(out, student_lib.ONNX_FILE))
  with open(os.path.join(out, student_lib.SPEC_FILE), "w") as f:
    json.dump(spec, f, indent=2)


def check_observations(spec: Mapping[str, tuple[tuple[int, ...], str]], seed: int = 0
                       ) -> dict[str, np.ndarray]:
  """``CHECK_BATCH`` random observations of ``spec``: images uniform over 0..255, the rest
  standard normal times 3 (beyond the clip of most actions)."""
  rng = np.random.default_rng(seed)
  return {k: (rng.integers(0, 256, (CHECK_BATCH,) + shape).astype(dtype) if dtype == "uint8"
              else (3 * rng.standard_normal((CHECK_BATCH,) + shape)).astype(dtype))
          for k, (shape, dtype) in spec.items()}


def onnx_difference(folder: str, observations: list[Mapping[str, np.ndarray]]) -> float:
  """max |ONNX - JAX| over the actions of ``folder``'s two policies on ``observations``."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  policy = student_lib.load(folder)
  session = onnxruntime.InferenceSession(os.path.join(folder, student_lib.ONNX_FILE),
                                         providers=["CPUExecutionProvider"])
  worst = 0.0
  for obs in observations:
    feed = {k: np.asarray(obs[k]) for k in policy.observation_spec}
    onnx_action = session.run([student_lib.ONNX_OUTPUT], feed)[0]
    worst = max(worst, float(np.max(np.abs(onnx_action - policy(feed)))))
  return worst


def main() -> None:
  cli.quiet_libraries()
  f = flags.FLAGS
  for module in ("jax2onnx", "onnxruntime"):
    if importlib.util.find_spec(module) is None:
      raise ConfigError(f"{module} is not installed: pip install 'rpd_jax[export]' (or -r "
                        "requirements.txt)")
  if not f.out:
    raise ConfigError("--out is required: the folder to write the student into")
  workdir = f.workdir
  if not workdir:
    raise ConfigError("--workdir is required: the folder of a run (python -m rpd_jax.train "
                      "--workdir=...)")
  config = config_lib.from_workdir(workdir)
  step, tree = runs.read_checkpoint(workdir, f.checkpoint)
  saved = runs.saved_student(config, (step, tree), f.student)
  source = {"workdir": os.path.abspath(workdir), "checkpoint": saved.iteration,
            "env_steps": saved.env_steps, "student": saved.index, "students": saved.count,
            "config": config.to_dict()}
  write(saved, f.out, source)
  seen = {k: np.asarray(tree["carry"]["obs"][k]) for k in saved.observation_spec}
  difference = onnx_difference(f.out, [seen, check_observations(saved.observation_spec)])
  print(f"exported student {saved.index} of {saved.count} of {workdir} (checkpoint "
        f"{saved.iteration}, {saved.env_steps} env steps) to {f.out}: "
        f"{', '.join(sorted(os.listdir(f.out)))}; observations "
        f"{', '.join(f'{k} {list(s)} {d}' for k, (s, d) in saved.observation_spec.items())}, "
        f"action [{saved.network.action_dim}]; ONNX vs JAX: max |difference| "
        f"{difference:.2e} on {len(next(iter(seen.values()))) + CHECK_BATCH} observations. "
        "Load it with rpd_jax.student.load")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "the run's folder (config.json, checkpoints/)")
  flags.DEFINE_string("out", None, "the folder to write the student into")
  flags.DEFINE_integer("checkpoint", None, "the iteration of the checkpoint to export "
                       "(default: the newest)")
  flags.DEFINE_integer("student", 0, "which of the run's config.num_seeds students")
  cli.run(main)
