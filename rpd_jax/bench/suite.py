r"""The device suite: simulator, teacher, training and learning measured by one command.

  python -m rpd_jax.bench.suite --out=DIR             # a GPU machine (sized for one H100/H200)
  python -m rpd_jax.bench.suite --out=DIR --quick     # small sizes: minutes on a CPU (CI runs it)
  python -m rpd_jax.bench.suite --out=DIR --sections=teacher,training

Writes ``DIR/suite.md`` and ``DIR/suite.json`` after every section, so a run cut short keeps
what it measured. A section that fails is reported with its error and the others still run;
the exit status is 1 when any failed. Every table comes with the device, the versions and the
command that made it. On a GPU every ManiSkill setting runs in a process of its own, with a time
limit (``rpd_jax.bench.isolated``): SAPIEN keeps GPU memory after an env closes, and CPU and GPU
PhysX cannot share a process (``Plan.isolate``). Sections:

  simulator  raw ManiSkill against the bridge (``rpd_jax.bench.env``): env steps/s, overhead
  teacher    Octo samples/s against batch (``rpd_jax.bench.teacher``; random weights of the
             octo-small / octo-base architectures), compile time, peak memory, MFU
  training   env steps/s of PPO and RPD-MSE on PushCube with the shipped teacher
             (``rpd_jax.bench.train``), split into simulate / act / teacher / update; the
             teacher's share is RPD-MSE's update minus PPO's on the same rollouts' size
  learning   eval success against env steps, RPD-MSE against PPO, a fixed budget each (on a
             GPU: PushCube from state; with ``--quick``: the pure-JAX push task, sparse reward)
  seeds      K students in one process (``config.num_seeds``, rpd_jax/students.py): env steps/s
             per student at each K on the pure-JAX push task, from state and (not with
             ``--quick``) with the published run's rgb student, 256x256 images and geometry
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback
from typing import Any, Callable

import jax
import numpy as np
from absl import flags

from rpd_jax import cli
from rpd_jax import config as config_lib
from rpd_jax import trainer
from rpd_jax.bench import isolated
from rpd_jax.bench import markdown_table
from rpd_jax.bench import teacher as teacher_bench
from rpd_jax.bench import train as train_bench
from rpd_jax.errors import ConfigError

SECTIONS = ("simulator", "teacher", "training", "learning", "seeds")

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "experiments")


@dataclasses.dataclass(frozen=True)
class Learning:
  """A fixed-budget comparison: ``spec`` (a config file and variants) for each loss."""
  spec: str
  losses: tuple[str, ...]
  env_steps: int
  overrides: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Seeds:
  """Env steps/s per student for K students in one process, each K a run of ``iterations``."""
  # (label, config spec, overrides, the K to run: 1 first, the baseline of the others)
  settings: tuple[tuple[str, str, dict[str, Any], tuple[int, ...]], ...]
  iterations: int


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the suite measures, by section."""
  simulator: tuple[tuple[str, int], ...]  # (obs: state | rgb<size>, num_envs)
  simulator_steps: int
  teacher: tuple[teacher_bench.Settings, ...]
  training: tuple[tuple[str, str], ...]  # (label, config spec)
  training_overrides: dict[str, Any]
  training_iterations: int
  learning: Learning
  seeds: Seeds
  setting_timeout_s: float  # the limit of one ManiSkill setting's process
  # Sections whose ManiSkill settings each run in a process of their own. The GPU plan: all.
  # The quick plan (CPUs: CPU PhysX only, no GPU memory to keep) only the simulator's, which
  # keeps that path tested and spares the ~10 CPU-seconds of imports a process costs.
  isolate: tuple[str, ...]


def plan(quick: bool) -> Plan:
  """The GPU plan (sized for an H100/H200) or the quick one (a 2-core CPU)."""
  pushcube = os.path.join(EXPERIMENTS, "pushcube.py")
  jax_push = os.path.join(EXPERIMENTS, "jax_push.py")
  no_eval = {"eval_envs": 1, "eval_episodes": 1, "eval_videos": 0}
  # The published run's student and geometry on the pure-JAX task (no simulator or teacher to
  # wait for): the ppo_rgb agent on 256x256 images, 128 envs x 50 steps, 8 epochs of 50
  # minibatches, as experiments/maniskill_common.py's paper variant sets them.
  paper_student = {"env.kwargs.obs_mode": "rgb", "env.kwargs.image_size": 256,
                   "network.encoder": "ppo_rgb", "network.obs_keys": ("rgb",),
                   "network.cnn_features": 256, "env.num_envs": 128, "ppo.num_steps": 50,
                   "ppo.update_epochs": 8, "ppo.num_minibatches": 50, **no_eval}
  training = (("state student, PPO", f"{pushcube}:ppo"),
              ("state student, RPD-MSE", f"{pushcube}:rpd_mse"),
              ("rgb student, PPO", f"{pushcube}:rgb,ppo"),
              ("rgb student, RPD-MSE", f"{pushcube}:rgb,rpd_mse"))
  if quick:
    tiny = teacher_bench.Settings(size="tiny", batch=(1, 8), server_batch=(), repeats=3)
    small = teacher_bench.Settings(size="small", batch=(8,), server_batch=(), repeats=2)
    return Plan(
        # State only: rendering workers take half a minute to start on a CPU, and the rgb
        # path is tested elsewhere (tests/test_maniskill.py).
        simulator=(("state", 2),), simulator_steps=50,
        teacher=(tiny, small),
        training=training[:2],  # the state student (an rgb student's CPU update takes long)
        training_overrides={"env.num_envs": 2, "ppo.num_steps": 8, "ppo.num_minibatches": 2,
                            "ppo.update_epochs": 2, "network.cnn_features": 32,
                            "eval_envs": 1, "eval_videos": 0},
        training_iterations=2,
        learning=Learning(jax_push + ":sparse", ("rpd_mse", "ppo"), 12_800,
                          {"eval_every": 2, "eval_episodes": 64, "eval_videos": 0}),
        seeds=Seeds((("state student, RPD-MSE, 16 envs x 16 steps", f"{jax_push}:rpd_mse",
                      {"env.num_envs": 16, "ppo.num_steps": 16, "ppo.num_minibatches": 4,
                       "ppo.update_epochs": 2, **no_eval}, (1, 2)),), iterations=2),
        setting_timeout_s=600, isolate=("simulator",))
  # Ten compiled teachers: bf16 for both sizes (what a GPU run uses), the parity reference's
  # attention (flax) against jax.nn.dot_product_attention (auto), and float32 once.
  small = teacher_bench.Settings(size="small", batch=(1, 256, 2048), dtype=("bfloat16",),
                                 attention=("auto",), server_batch=(), repeats=3)
  base = teacher_bench.Settings(size="base", batch=(1, 256, 2048), dtype=("bfloat16",),
                                attention=("flax", "auto"), server_batch=(), repeats=3)
  base32 = teacher_bench.Settings(size="base", batch=(256,), dtype=("float32",),
                                  attention=("auto",), server_batch=(), repeats=3)
  return Plan(
      simulator=(("state", 256), ("state", 1024), ("state", 4096), ("rgb128", 128),
                 ("rgb128", 512), ("rgb256", 128), ("rgb256", 512)),
      simulator_steps=100,
      teacher=(small, base, base32),
      training=training,
      training_overrides={"env.num_envs": 512, "eval_envs": 64, "eval_videos": 0},
      training_iterations=4,
      learning=Learning(pushcube, ("rpd_mse", "ppo"), 1_024_000,
                        {"env.num_envs": 512, "eval_every": 4, "eval_envs": 128,
                         "eval_episodes": 128, "eval_videos": 0}),
      seeds=Seeds((("state student, RPD-MSE, 512 envs x 50 steps", f"{jax_push}:rpd_mse",
                    {"env.num_envs": 512, **no_eval}, (1, 5, 16)),
                   ("paper's rgb student (ppo_rgb, 256x256), RPD-MSE, 128 envs x 50 steps",
                    f"{jax_push}:rpd_mse", paper_student, (1, 5))), iterations=3),
      setting_timeout_s=1800, isolate=("simulator", "training", "learning"))


def _override(config, overrides: dict[str, Any]):
  for dotted, value in overrides.items():
    *path, leaf = dotted.split(".")
    node = config
    for name in path:
      node = node[name]
    node[leaf] = tuple(value) if isinstance(value, list) else value  # lists: from JSON
  return config


def _maniskill(spec: str) -> bool:
  return config_lib.load(spec).env.name == "maniskill"


def _row(p: Plan, section: str, function: Callable[..., dict[str, Any]], maniskill: bool,
         **kwargs) -> Any:
  """``function(**kwargs)``: a ManiSkill setting of a section the plan isolates in a process of
  its own with the plan's time limit, anything else here."""
  if maniskill and section in p.isolate:
    # by its import name: run as `python -m rpd_jax.bench.suite`, this module is __main__
    return isolated.call(f"rpd_jax.bench.suite:{function.__name__}", kwargs,
                         p.setting_timeout_s)
  return function(**kwargs)


def simulator_row(obs: str, num_envs: int, steps: int) -> dict[str, Any]:
  """One simulator setting: raw ManiSkill against the bridge, PushCube, random actions."""
  from rpd_jax.bench import env as env_bench  # imports ManiSkill: only when asked for
  from rpd_jax.envs import maniskill
  backend = maniskill.resolve_backend("auto")
  size = int(obs[3:]) if obs.startswith("rgb") else 64
  mode = "rgb" if obs.startswith("rgb") else "state"
  raw, bridge = env_bench.bench("PushCube-v1", num_envs, mode, size, steps, backend)
  return {"env_id": "PushCube-v1", "sim_backend": backend, "obs": obs, "num_envs": num_envs,
          "steps": steps, "raw_steps_per_s": raw, "bridge_steps_per_s": bridge,
          "overhead": 1 - bridge / raw}


def simulator(p: Plan, workdir: str) -> tuple[str, list[dict[str, Any]]]:
  rows = []
  for obs, num_envs in p.simulator:
    steps = p.simulator_steps if obs == "state" else max(25, p.simulator_steps // 2)
    rows.append(_row(p, "simulator", simulator_row, True, obs=obs, num_envs=num_envs,
                     steps=steps))
    r = rows[-1]
    _progress(f"simulator {obs} x{num_envs}: raw {r['raw_steps_per_s']:.0f}, bridge "
              f"{r['bridge_steps_per_s']:.0f} steps/s")
  table = markdown_table(("obs", "envs", "timed steps", "raw steps/s", "bridge steps/s", "overhead"),
                 [(r["obs"], r["num_envs"], r["steps"], f"{r['raw_steps_per_s']:.0f}",
                   f"{r['bridge_steps_per_s']:.0f}", f"{r['overhead']:+.1%}") for r in rows])
  backends = ", ".join(sorted({r["sim_backend"] for r in rows}))
  return (f"PushCube-v1, {backends}, random actions, alternating blocks of 25 steps, each "
          "setting in a process of its own.\n\n" + table), rows


def teacher(p: Plan, workdir: str) -> tuple[str, list[dict[str, Any]]]:
  rows = []
  for settings in p.teacher:
    rows += teacher_bench.run(settings)
  return teacher_bench.markdown(rows), rows


def training_row(label: str, spec: str, overrides: dict[str, Any],
                 iterations: int) -> dict[str, Any]:
  """One training setting: ``rpd_jax.bench.train.measure`` of ``spec`` with ``overrides``."""
  config = _override(config_lib.load(spec), overrides)
  config.eval_episodes = config.eval_envs
  r = train_bench.measure(config, iterations)
  return {"setting": label, "config": spec, "num_envs": config.env.num_envs,
          "loss": config.distill.loss, **r}


def training(p: Plan, workdir: str) -> tuple[str, list[dict[str, Any]]]:
  rows = []
  for label, spec in p.training:
    rows.append(_row(p, "training", training_row, _maniskill(spec), label=label, spec=spec,
                     overrides=p.training_overrides, iterations=p.training_iterations))
    _progress(f"training {label}: {rows[-1]['env_steps_per_s']:.0f} env steps/s")
  ppo_update = {r["setting"].split(",")[0]: r["update_s"] for r in rows if r["loss"] == "none"}
  lines = []
  for r in rows:
    student = r["setting"].split(",")[0]
    base = ppo_update.get(student) if r["loss"] != "none" else None
    r["teacher_s"] = None if base is None else r["update_s"] - base
    ppo = next((q for q in rows if q["loss"] == "none" and q["setting"].startswith(student)),
               None)
    r["vs_ppo"] = None if ppo is None else r["env_steps_per_s"] / ppo["env_steps_per_s"]
    other = r["rollout_s"] - r["simulate_s"] - r["act_s"]
    lines.append((r["setting"], r["num_envs"], r["transitions_per_iteration"],
                  f"{r['env_steps_per_s']:.0f}", "" if r["vs_ppo"] is None else
                  f"{r['vs_ppo']:.2f}", f"{r['simulate_s']:.3f}", f"{r['act_s']:.3f}",
                  f"{other:.3f}", "" if r["teacher_s"] is None else f"{r['teacher_s']:.3f}",
                  f"{r['update_s']:.3f}"))
  table = markdown_table(("setting", "envs", "transitions/iter", "env steps/s", "x PPO",
                  "simulate s", "act s", "rest of rollout s", "teacher s (update - PPO's)",
                  "update s"), lines)
  return ("PushCube-v1 (`experiments/pushcube.py`: the shipped octo-tiny-pushcube teacher on "
          "the 128x128 human camera), seconds per iteration, medians after the compiling "
          "one.\n\n" + table), rows


def learning_row(spec: str, loss: str, overrides: dict[str, Any], env_steps: int,
                 run_dir: str) -> dict[str, Any]:
  """One fixed-budget run of ``spec`` with ``loss``: its evaluation curve."""
  # The loss joins the spec's variants (the GPU plan's spec has none: a colon, not a comma).
  config = config_lib.load(f"{spec}{',' if ':' in spec else ':'}{loss}")
  config = _override(config, {**overrides, "total_env_steps": env_steps})
  start = time.perf_counter()
  trainer.train_and_evaluate(config, run_dir)
  wall = time.perf_counter() - start
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    evals = [r for r in map(json.loads, f) if "eval/success_rate" in r]
  curve = [(r["env_steps"], r["eval/success_rate"], r["time/elapsed_s"]) for r in evals]
  reach = lambda level: next(((steps, s) for steps, success, s in curve if success >= level),
                             (None, None))
  return {"loss": loss, "env_steps": env_steps, "wall_s": wall,
          "final_success": curve[-1][1] if curve else None,
          "steps_to_50": reach(0.5)[0], "steps_to_80": reach(0.8)[0],
          "seconds_to_80": reach(0.8)[1], "curve": curve}


def learning(p: Plan, workdir: str) -> tuple[str, list[dict[str, Any]]]:
  plan_ = p.learning
  rows, curves = [], {}
  for loss in plan_.losses:
    rows.append(_row(p, "learning", learning_row, _maniskill(plan_.spec), spec=plan_.spec,
                     loss=loss, overrides=plan_.overrides, env_steps=plan_.env_steps,
                     run_dir=os.path.join(workdir, "learning", loss)))
    curves[loss] = [tuple(point) for point in rows[-1]["curve"]]
    _progress(f"learning {loss}: final success {rows[-1]['final_success']}, "
              f"{rows[-1]['wall_s']:.0f} s")
  plot = os.path.join(workdir, "learning.png")
  _plot(curves, plot, plan_.spec)
  table = markdown_table(("loss", "env steps", "wall s", "final eval success", "steps to 50%",
                  "steps to 80%", "wall s to 80%"),
                 [(r["loss"], r["env_steps"], f"{r['wall_s']:.0f}",
                   "" if r["final_success"] is None else f"{r['final_success']:.2f}",
                   r["steps_to_50"] or "not reached", r["steps_to_80"] or "not reached",
                   "" if r["seconds_to_80"] is None else f"{r['seconds_to_80']:.0f}")
                  for r in rows])
  spec = os.path.relpath(plan_.spec, os.path.dirname(EXPERIMENTS))
  return (f"`{spec}`, one seed, deterministic evaluations; curves in "
          f"[learning.png](learning.png).\n\n" + table), rows


def seeds(p: Plan, workdir: str) -> tuple[str, list[dict[str, Any]]]:
  rows = []
  for label, spec, overrides, num_seeds in p.seeds.settings:
    one = None
    for k in num_seeds:
      config = _override(config_lib.load(spec), {**overrides, "num_seeds": k})
      r = train_bench.measure(config, p.seeds.iterations)
      per_student = r["env_steps_per_s"]
      one = per_student if k == 1 else one
      rows.append({"setting": label, "num_seeds": k, "env_steps_per_s_per_student": per_student,
                   "env_steps_per_s": k * per_student,
                   "vs_one": None if one is None else k * per_student / one,
                   **{key: r[key] for key in ("rollout_s", "act_s", "update_s")}})
      _progress(f"seeds {label}, K={k}: {per_student:.0f} env steps/s per student")
  table = markdown_table(
      ("setting", "K students", "env steps/s per student", "all K", "all K / K=1",
       "rollout s/iter", "update s/iter"),
      [(r["setting"], r["num_seeds"], f"{r['env_steps_per_s_per_student']:.0f}",
        f"{r['env_steps_per_s']:.0f}", "" if r["vs_one"] is None else f"{r['vs_one']:.2f}",
        f"{r['rollout_s']:.3f}", f"{r['update_s']:.3f}") for r in rows])
  return ("`experiments/jax_push.py` (pure JAX: simulation, scripted teacher and update on the "
          "device), K students in one process (`config.num_seeds`), each with the envs of the "
          "setting; medians after the compiling iteration. \"all K / K=1\": how many times "
          "one student's throughput K students get together.\n\n" + table), rows


def _plot(curves: dict[str, list], path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for loss, curve in curves.items():
    if curve:
      steps, success, _ = zip(*curve)
      ax.plot(steps, success, marker="o", label=loss)
  ax.set(xlabel="env steps", ylabel="eval success", ylim=(-0.02, 1.02),
         title=os.path.basename(title))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


RUNNERS: dict[str, Callable[[Plan, str], tuple[str, list[dict[str, Any]]]]] = {
    "simulator": simulator, "teacher": teacher, "training": training, "learning": learning,
    "seeds": seeds}


def _progress(line: str) -> None:
  print(f"[suite {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def environment(argv: list[str]) -> dict[str, Any]:
  """The device, the versions and the command, for the report's header."""
  device = jax.devices()[0]
  out = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
         "command": "python -m rpd_jax.bench.suite " + " ".join(argv[1:]),
         "jax_device": f"{device.platform}: {device.device_kind} x{jax.device_count()}",
         "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
         "python": platform.python_version()}
  for package in ("jax", "jaxlib", "flax", "torch", "mani_skill", "sapien"):
    out[package] = _version(package.replace("_", "-") if package == "mani_skill" else package)
  try:
    import torch
    out["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
  except ImportError:
    out["torch_cuda"] = "torch not installed"
  return out


def render(env: dict[str, Any], sections: dict[str, dict[str, Any]]) -> str:
  lines = ["# rpd_jax device suite", ""]
  lines += [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in env.items()]
  for name, section in sections.items():
    lines += ["", f"## {name}", "", f"({section['seconds']:.0f} s)", ""]
    lines.append(section["markdown"] if "markdown" in section else
                 f"FAILED:\n\n```\n{section['error']}\n```")
  return "\n".join(lines) + "\n"


def run(out: str, quick: bool, names: list[str], argv: list[str]) -> bool:
  """Runs the sections into ``out``; True when all of them succeeded."""
  os.makedirs(out, exist_ok=True)
  p = plan(quick)
  env = environment(argv)
  sections: dict[str, dict[str, Any]] = {}
  for name in names:
    _progress(f"section {name}")
    start = time.perf_counter()
    try:
      text, rows = RUNNERS[name](p, out)
      sections[name] = {"markdown": text, "rows": rows}
    except Exception:  # pylint: disable=broad-except  (reported; the next section still runs)
      sections[name] = {"error": traceback.format_exc(limit=8)}
      _progress(f"section {name} FAILED:\n{sections[name]['error']}")
    sections[name]["seconds"] = time.perf_counter() - start
    with open(os.path.join(out, "suite.md"), "w") as f:
      f.write(render(env, sections))
    with open(os.path.join(out, "suite.json"), "w") as f:
      json.dump({"environment": env, "quick": quick, "sections": sections}, f, indent=1,
                default=_jsonable)
  return all("error" not in s for s in sections.values())


def _jsonable(x):
  if isinstance(x, (np.generic, np.ndarray)):
    return x.tolist()
  return str(x)


def main() -> None:
  f = flags.FLAGS
  if not f.out:
    raise ConfigError("--out is required: the folder for suite.md and suite.json, e.g. "
                      "--out=runs/suite")
  unknown = [s for s in f.sections if s not in SECTIONS]
  if unknown or not f.sections:
    raise ConfigError(f"--sections={','.join(f.sections)}: use some of {', '.join(SECTIONS)}")
  ok = run(f.out, f.quick, f.sections, sys.argv)
  with open(os.path.join(f.out, "suite.md")) as report:
    print(report.read())
  if not ok:
    sys.exit(1)


if __name__ == "__main__":  # flags here: importing the module (tests, other tools) defines none
  flags.DEFINE_string("out", None, "folder for suite.md, suite.json and the run folders")
  flags.DEFINE_bool("quick", False, "small sizes (a CPU, CI)")
  flags.DEFINE_list("sections", list(SECTIONS), "sections to run, in this order")
  cli.run(main)
