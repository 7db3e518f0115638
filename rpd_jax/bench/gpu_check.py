r"""The GPU check: what an NVIDIA GPU machine without internet can run, in one command.

  python -m rpd_jax.bench.gpu_check --out=DIR [--wheelhouse=DIR] [--checks=a,b] [--budget_s=450]
  python -m rpd_jax.bench.gpu_check --bundle=DIR --wheelhouse=WH   # what to carry, in one folder

``--wheelhouse`` first installs a wheelhouse built from requirements-gpu-check.txt (what a GPU
image with Python, JAX, PyTorch and CUDA lacks; ``bash scripts/wheelhouse.sh build --no_deps
...``, README "Checking a GPU machine") into DIR/site, offline and without resolving
dependencies, and puts it first on the checks' PYTHONPATH. Each check then runs in a process of
its own (``rpd_jax.bench.isolated``) with its time limit, cut to what is left of ``--budget_s``;
``DIR/gpu_check.md`` and ``DIR/gpu_check.json`` are rewritten after each one, and every check's
output goes to ``DIR/logs/<check>.log``. The exit status is 1 when a check failed (a check that
could not run here, such as ``physx_cuda`` without SAPIEN's PhysX GPU library, is "not run",
no failure).

Add a check: a function ``name(workdir, quick) -> {"summary": str, ...}`` below (it raises to
fail, returns ``status="not run"`` where this machine cannot run it) and a row of CHECKS.
This module's top level imports the standard library only: it runs before the wheelhouse is
installed, and never imports JAX, torch or SAPIEN itself.

``--bundle`` copies what the checks need of this repository (BUNDLE: the code, the experiment
files, the scripts and the one shipped teacher the checks' config uses, not the tests' data or
the other teachers) and the wheelhouse into one folder, and prints its size: run the check from
that folder where what can be carried is limited.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Optional

from rpd_jax.bench import isolated
from rpd_jax.errors import ConfigError, RunError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PUSHCUBE = os.path.join(REPO, "experiments", "pushcube.py")
# What of the repository the checks read; of the shipped teachers, only experiments/pushcube.py's.
BUNDLE = ("rpd_jax", "experiments", "scripts", "requirements.txt", "requirements-gpu.txt",
          "requirements-gpu-check.txt", "setup.cfg", "pyproject.toml")
BUNDLE_TEACHERS = ("octo-tiny-pushcube",)


@dataclasses.dataclass(frozen=True)
class Check:
  name: str
  timeout_s: float
  what: str  # one line for the report


def _nvidia_gpus() -> list[str]:
  """``nvidia-smi``'s GPUs as "name, driver, memory" lines; [] without a driver."""
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
  except (OSError, subprocess.SubprocessError):
    return []
  return [l.strip() for l in out.stdout.splitlines() if l.strip()] if out.returncode == 0 else []


def physx_gpu_library() -> Optional[str]:
  """The path of SAPIEN's PhysX GPU library where it is installed, else None. SAPIEN downloads
  it from GitHub on the first GPU simulation (``sapien.physx.enable_gpu``); not here."""
  import sapien.physx  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.expanduser("~"), ".sapien", "physx", sapien.physx.version(),
                      "libPhysXGpu_64.so")
  return path if os.path.isfile(path) else None


def _jax_on_the_gpu() -> str:
  """JAX's backend and device; RunError where nvidia-smi sees a GPU and JAX does not."""
  import jax  # pylint: disable=g-import-not-at-top
  device = f"{jax.default_backend()} ({jax.devices()[0].device_kind} x{jax.device_count()})"
  if _nvidia_gpus() and jax.default_backend() != "gpu":
    raise RunError(f"nvidia-smi sees a GPU but JAX runs on {device}: check the jax CUDA plugin "
                   "(python -m rpd_jax.tools.cuda, pip list | grep jax)")
  return device


# ---- the checks: each runs in its own process; (workdir, quick) -> a JSON-able dict ----

def environment(workdir: str, quick: bool) -> dict[str, Any]:
  """Versions, the NVIDIA driver and GPUs, JAX's and torch's devices, the CPU."""
  del workdir, quick
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  versions = {}
  for package in ("jax", "jaxlib", "flax", "torch", "mani-skill", "sapien", "gymnasium"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = "not installed"
  gpus = _nvidia_gpus()
  out = {"python": platform.python_version(), "cpu_cores": os.cpu_count(),
         "nvidia_smi": gpus or "no NVIDIA driver", "versions": versions,
         "jax_devices": [f"{d.platform}: {d.device_kind}" for d in jax.devices()],
         "torch_cuda": (f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
                        if torch.cuda.is_available() else f"none (CUDA build: {torch.version.cuda})")}
  out["summary"] = (f"Python {out['python']}, {out['cpu_cores']} cores; "
                    f"{'; '.join(gpus) or 'no NVIDIA GPU'}; JAX {versions['jax']} on "
                    f"{out['jax_devices'][0]}; torch {versions['torch']}, CUDA device: "
                    f"{out['torch_cuda']}; mani-skill {versions['mani-skill']}, sapien "
                    f"{versions['sapien']}")
  return out


def vulkan(workdir: str, quick: bool) -> dict[str, Any]:
  """The Vulkan device SAPIEN renders on (and what is missing where there is none)."""
  del workdir, quick
  from rpd_jax.envs import vulkan as vk  # pylint: disable=g-import-not-at-top
  machine = vk.probe()
  out = {"nvidia_driver": machine.nvidia, "nvidia_vulkan_library": machine.nvidia_library,
         "missing_libraries": list(machine.missing), "icd_files": list(machine.icd_files)}
  try:
    out["device"] = vk.require_vulkan()
    out["render_backend"] = vk.render_backend()
  except vk.VulkanUnavailableError as e:
    raise RunError(f"no Vulkan device for SAPIEN: {e}") from e
  if machine.nvidia and out["render_backend"] != "gpu":
    raise RunError(f"SAPIEN renders on {out['device']} (render_backend "
                   f"{out['render_backend']!r}), not on the NVIDIA GPU: {vk.advice(machine)}")
  out["summary"] = f"SAPIEN renders on {out['device']} (render_backend {out['render_backend']!r})"
  return out


def teacher(workdir: str, quick: bool) -> dict[str, Any]:
  """Octo teacher samples/s, random weights, the whole batch through the transformer."""
  del workdir
  from rpd_jax.bench import teacher as teacher_bench  # pylint: disable=g-import-not-at-top
  device = _jax_on_the_gpu()
  settings = (teacher_bench.Settings(size="tiny", batch=(1, 8), server_batch=(), repeats=2)
              if quick else
              teacher_bench.Settings(size="small", batch=(64, 512), dtype=("bfloat16",),
                                     server_batch=(), repeats=3, transformer_batch=(0,)))
  rows = teacher_bench.run(settings)
  return {"rows": rows, "markdown": teacher_bench.markdown(rows),
          "summary": f"octo-{settings.size} on {device}: " + ", ".join(
              f"batch {r['batch']}: {r['samples_per_s']:,.0f} samples/s" for r in rows)}


def _smoke(workdir: str, quick: bool, sim_backend: str, variants: str = "",
           num_envs: Optional[int] = None) -> dict[str, Any]:
  """A few iterations of experiments/pushcube.py[:variants] (the shipped Octo teacher on the
  rendered human camera) on ``sim_backend``, an evaluation at the end, no videos."""
  from rpd_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from rpd_jax import trainer  # pylint: disable=g-import-not-at-top
  device = _jax_on_the_gpu()
  c = config_lib.load(PUSHCUBE + (f":{variants}" if variants else ""))
  iterations = 2 if quick else 3
  c.env.kwargs.sim_backend = sim_backend
  c.env.num_envs = num_envs or (2 if quick else 8)
  c.ppo.num_steps = 8 if quick else 16
  c.ppo.num_minibatches, c.ppo.update_epochs = 2, 2
  c.total_env_steps = iterations * c.env.num_envs * c.ppo.num_steps
  c.eval_every = c.checkpoint_every = iterations
  c.eval_envs = c.eval_episodes = 2
  c.eval_videos = 0  # no ffmpeg needed
  if quick:
    c.network.cnn_features = 32
    c.env.kwargs.image_size = min(c.env.kwargs.image_size, 64)
  start = time.perf_counter()
  final = trainer.train_and_evaluate(c, workdir)
  wall = time.perf_counter() - start
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  timed = rows[1:] or rows  # the first iteration compiles
  steps_per_s = sorted(r["time/env_steps_per_s"] for r in timed)[len(timed) // 2]
  backend = _recorded_backend(workdir, c.env.kwargs.sim_backend)
  from rpd_jax.envs import vulkan as vk  # pylint: disable=g-import-not-at-top
  out = {"sim_backend": backend, "jax": device, "render_device": vk.require_vulkan(),
         "render_backend_available": vk.render_backend(), "num_envs": c.env.num_envs,
         "iterations": len(rows), "env_steps_per_s": steps_per_s, "wall_s": wall,
         "final": final, "teacher": c.teacher.name, "student_obs": list(c.network.obs_keys)}
  out["summary"] = (f"{len(rows)} iterations of {c.env.num_envs} envs x {c.ppo.num_steps} "
                    f"steps on {backend}, JAX on {device}, teacher {c.teacher.name}, student "
                    f"{'/'.join(c.network.obs_keys)}: {steps_per_s:,.0f} env steps/s after "
                    f"compiling, {wall:.0f} s in all; eval success "
                    f"{final.get('eval/success_rate', float('nan')):.2f}")
  return out


def _recorded_backend(workdir: str, asked: str) -> str:
  """The simulation backend the run recorded (config.json, metrics.jsonl), else what was
  asked for (with a note where that was "auto")."""
  found = []

  def walk(node, key=""):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, k)
    elif isinstance(node, str) and node in ("physx_cpu", "physx_cuda") and "backend" in key:
      found.append(node)
  for name in ("config.json", "metrics.jsonl"):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      with open(path) as f:
        for line in (f.read().splitlines() if name.endswith("l") else [f.read()]):
          if line.strip():
            walk(json.loads(line))
  resolved = [b for b in found if b != asked] or found
  return resolved[-1] if resolved else (asked if asked != "auto" else "auto (not recorded)")


def physx_cpu(workdir: str, quick: bool) -> dict[str, Any]:
  """The default PushCube config on CPU PhysX workers, JAX (student, teacher) on the GPU."""
  return _smoke(workdir, quick, "physx_cpu")


def auto(workdir: str, quick: bool) -> dict[str, Any]:
  """The default config with sim_backend=auto: where SAPIEN's PhysX GPU library is absent the
  run must simulate on the CPU (a GPU simulation would stop for the missing download)."""
  library = physx_gpu_library()
  out = _smoke(workdir, quick, "auto")
  if library is None and out["sim_backend"] == "physx_cuda":
    raise RunError("sim_backend=auto chose physx_cuda although SAPIEN's PhysX GPU library is "
                   "absent")
  out["physx_gpu_library"] = library or "absent"
  out["summary"] = f"auto -> {out['sim_backend']} (PhysX GPU library {library or 'absent'}); " + (
      out["summary"])
  return out


def rgb(workdir: str, quick: bool) -> dict[str, Any]:
  """The rgb student (a CNN on the human camera) with the shipped teacher, CPU PhysX."""
  return _smoke(workdir, quick, "physx_cpu", variants="rgb")


def physx_cuda(workdir: str, quick: bool) -> dict[str, Any]:
  """The default config on GPU PhysX (one process, all envs), where the library is present."""
  library = physx_gpu_library()
  if library is None:
    import sapien.physx  # pylint: disable=g-import-not-at-top
    return {"status": "not run", "summary": (
        "SAPIEN's PhysX GPU library is absent (~/.sapien/physx/"
        f"{sapien.physx.version()}/libPhysXGpu_64.so; SAPIEN downloads it from GitHub on first "
        "use): copy it there to run this check")}
  return _smoke(workdir, quick, "physx_cuda", num_envs=16 if quick else 64)


CHECKS = (
    Check("environment", 120, "versions, NVIDIA driver, JAX's and torch's devices"),
    Check("vulkan", 120, "the Vulkan device SAPIEN renders on"),
    Check("teacher", 150, "Octo teacher samples/s (octo-small, random weights, bf16)"),
    Check("physx_cpu", 240, "PushCube default (shipped Octo teacher on the human camera, state "
                            "student), CPU PhysX workers, JAX on the GPU"),
    Check("auto", 240, "the same with sim_backend=auto (physx_cpu without the PhysX GPU "
                       "library)"),
    Check("rgb", 240, "the rgb student (CNN on the human camera), CPU PhysX"),
    Check("physx_cuda", 240, "PushCube default on GPU PhysX, where the library is present"),
)
RUNNERS: dict[str, Callable[[str, bool], dict[str, Any]]] = {
    "environment": environment, "vulkan": vulkan, "teacher": teacher, "physx_cpu": physx_cpu,
    "auto": auto, "rgb": rgb, "physx_cuda": physx_cuda}


# ---- the runner: stdlib only ----

def _bundled(path: str) -> bool:
  teachers = "rpd_jax/teachers/checkpoints/"
  if path.startswith(teachers) and path.count("/") > 3:
    return path.split("/")[3] in BUNDLE_TEACHERS
  return any(path == p or path.startswith(p + "/") for p in BUNDLE) and "__pycache__" not in path


def bundle(out: str, wheelhouse: str) -> dict[str, int]:
  """Copies BUNDLE (the files git tracks or does not ignore; all files outside a checkout) and
  ``wheelhouse`` (as out/wheelhouse) into ``out``; returns the bytes of each part."""
  import shutil  # pylint: disable=g-import-not-at-top
  if os.path.exists(out) and os.listdir(out):
    raise ConfigError(f"--bundle={out} is not empty: give a new folder")
  listed = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others",
                           "--exclude-standard"], capture_output=True, text=True)
  if listed.returncode == 0:
    files = [f for f in listed.stdout.split("\0") if f]
  else:
    files = [os.path.relpath(os.path.join(d, f), REPO) for d, _, names in os.walk(REPO)
             for f in names]
  files = [f for f in files if _bundled(f) and os.path.isfile(os.path.join(REPO, f))]
  for f in files:
    os.makedirs(os.path.dirname(os.path.join(out, f)) or out, exist_ok=True)
    shutil.copy2(os.path.join(REPO, f), os.path.join(out, f))
  shutil.copytree(wheelhouse, os.path.join(out, "wheelhouse"))
  size = lambda folder: sum(os.path.getsize(os.path.join(d, f)) for d, _, names in
                            os.walk(folder) for f in names)
  repository = sum(os.path.getsize(os.path.join(out, f)) for f in files)
  return {"repository": repository, "wheelhouse": size(os.path.join(out, "wheelhouse")),
          "files": len(files)}


def install_wheelhouse(wheelhouse: str, site: str) -> str:
  """Installs every wheel of ``wheelhouse`` (split ones joined and checked) into ``site`` with
  pip, offline and without dependencies; returns ``site``."""
  script = os.path.join(REPO, "scripts", "wheelhouse.sh")
  proc = subprocess.run(["bash", script, "install", wheelhouse, "--python", sys.executable,
                         "--pins", "--", "--no-deps", "--target", site, "--upgrade", "-q"],
                        capture_output=True, text=True)
  if proc.returncode != 0:
    raise RunError(f"installing {wheelhouse} into {site} failed: "
                   f"{proc.stderr.strip()[-isolated.TAIL:]}")
  return site


def render(header: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
  lines = ["# rpd_jax GPU check", ""] + [f"- {k}: {v}" for k, v in header.items()]
  lines += ["", "| check | status | seconds | result |", "|---|---|---|---|"]
  for name, r in results.items():
    summary = str(r.get("summary", "")).replace("|", "/").replace("\n", " ")
    lines.append(f"| {name} | {r['status']} | {r['seconds']:.0f} | {summary} |")
  for name, r in results.items():
    if r["status"] == "FAILED":
      lines += ["", f"## {name}: FAILED", "", "```", r["error"].strip(), "```"]
    elif "markdown" in r:
      lines += ["", f"## {name}", "", r["markdown"]]
  return "\n".join(lines) + "\n"


def run(out: str, names: list[str], quick: bool, budget_s: float,
        wheelhouse: Optional[str] = None, argv: Optional[list[str]] = None) -> bool:
  """Runs the checks ``names`` into ``out``; True when none failed."""
  os.makedirs(os.path.join(out, "logs"), exist_ok=True)
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX shares the GPU with SAPIEN
  header = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": "python -m rpd_jax.bench.gpu_check " + " ".join(argv or []),
            "nvidia-smi": "; ".join(_nvidia_gpus()) or "no NVIDIA GPU",
            "budget": f"{budget_s:.0f} s"}
  start = time.perf_counter()
  results: dict[str, dict[str, Any]] = {}

  def write():
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
      f.write(render(header, results))
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
      json.dump({"header": header, "checks": results}, f, indent=1, default=str)

  if wheelhouse:
    t = time.perf_counter()
    site = install_wheelhouse(wheelhouse, os.path.join(out, "site"))
    env["PYTHONPATH"] = os.pathsep.join([site, REPO] + [p for p in [env.get("PYTHONPATH")] if p])
    header["wheelhouse"] = f"{wheelhouse}, installed into {site} in {time.perf_counter() - t:.0f} s"
  else:
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
  for name in names:
    check = next(c for c in CHECKS if c.name == name)
    left = budget_s - (time.perf_counter() - start)
    t = time.perf_counter()
    if left < 10:
      results[name] = {"status": "not run", "seconds": 0.0,
                       "summary": f"the budget of {budget_s:.0f} s was spent"}
    else:
      workdir = os.path.join(out, "runs", name)
      try:
        result = isolated.call(f"rpd_jax.bench.gpu_check:{name}", {"workdir": workdir, "quick": quick},
                               min(check.timeout_s * (4 if quick else 1), left), env=env,
                               log=os.path.join(out, "logs", f"{name}.log"))
        results[name] = {"status": "ok", **result}
      except RunError as e:
        results[name] = {"status": "FAILED", "error": str(e),
                         "summary": str(e).splitlines()[0][:300]}
    results[name]["seconds"] = time.perf_counter() - t
    print(f"[gpu_check] {name}: {results[name]['status']} ({results[name]['seconds']:.0f} s) "
          f"{results[name].get('summary', '')}", file=sys.stderr, flush=True)
    write()
  header["total"] = f"{time.perf_counter() - start:.0f} s"
  write()
  return all(r["status"] != "FAILED" for r in results.values())


class _Parser(argparse.ArgumentParser):
  """argparse (this module runs before absl is installed) with bad flags as ConfigError."""

  def error(self, message):
    raise ConfigError(f"{message}; see python -m rpd_jax.bench.gpu_check --help")


def main(argv: list[str]) -> int:
  parser = _Parser(prog="python -m rpd_jax.bench.gpu_check",
                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", help="folder for gpu_check.md/.json and logs (required)")
  parser.add_argument("--wheelhouse", help="a wheelhouse to install first (offline, no deps)")
  parser.add_argument("--checks", default=",".join(c.name for c in CHECKS),
                      help="checks to run, in this order")
  parser.add_argument("--budget_s", type=float, default=450.0,
                      help="seconds for all checks; each one's limit is cut to what is left")
  parser.add_argument("--quick", action="store_true",
                      help="small sizes and 4x the time limits (a CPU, tests)")
  parser.add_argument("--bundle", help="copy what the check needs and --wheelhouse into this "
                      "new folder instead of running it")
  try:
    args = parser.parse_args(argv)
    if args.bundle:
      if not args.wheelhouse:
        raise ConfigError("--bundle needs --wheelhouse=DIR (README, \"Checking a GPU machine\")")
      sizes = bundle(args.bundle, args.wheelhouse)
      mib = lambda n: f"{n / 2**20:.1f} MiB"
      print(f"{args.bundle}: {sizes['files']} files of the repository ({mib(sizes['repository'])})"
            f" and the wheelhouse ({mib(sizes['wheelhouse'])}): "
            f"{mib(sizes['repository'] + sizes['wheelhouse'])} in all. On the GPU machine: "
            f"cd {os.path.basename(os.path.abspath(args.bundle))} && python3 -m "
            "rpd_jax.bench.gpu_check --wheelhouse=wheelhouse --out=gpu_check")
      return 0
    if not args.out:
      raise ConfigError("--out is required: the folder for the report, e.g. --out=gpu_check")
    names = [n for n in args.checks.split(",") if n]
    unknown = [n for n in names if n not in RUNNERS]
    if unknown or not names:
      raise ConfigError(f"--checks={args.checks}: use some of {', '.join(RUNNERS)}")
    if args.wheelhouse and not os.path.isfile(os.path.join(args.wheelhouse, "SHA256SUMS")):
      raise ConfigError(f"--wheelhouse={args.wheelhouse} is not a wheelhouse (no SHA256SUMS); "
                        "build one: README, \"Checking a GPU machine\"")
    ok = run(args.out, names, args.quick, args.budget_s, args.wheelhouse, argv)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except RunError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  with open(os.path.join(args.out, "gpu_check.md")) as f:
    print(f.read())
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
