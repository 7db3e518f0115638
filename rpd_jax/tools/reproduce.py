"""One command per figure of the RPD paper: its trainings, then its plot and table.

  python -m rpd_jax.tools.reproduce --figure=3 --scale=cpu [--root=runs/reproduce] \\
      [--tasks=PushCube-v1,PickCube-v1] [--seeds=3] [--parallel=1] [--steps=N] \\
      [--set=key=value ...] [--dry_run] [--experiments=experiments]

Figures (FIGURES):
  3       dense reward, the six fine-tuning tasks (PickCube, PushCube, PullCube, StackCube,
          LiftPegUpright, RollBall): RPD-MSE vs PPO
  4       the same six tasks with the sparse reward (config variant ``sparse``)
  5       the held-out tasks PullCubeTool and PokeCube, dense: RPD-MSE vs PPO
  camera  PushCube with the moved camera (``moved_camera``): RPD-MSE vs PPO, and each run's
          students as one ensemble policy (``ensemble/eval/success_rate``)

Scales (SCALES):
  paper   the published run's settings (variant ``paper``: the paper's Octo teacher on the
          256x256 camera, an rgb student, 128 envs, 30M env steps), 5 seeds: for a GPU (each run
          simulates 5 x 128 envs on ManiSkill's GPU simulator and queries an octo-base teacher).
  cpu     what a small CPU machine finishes: where the task has a scripted controller the
          ``scripted`` variant (a state student, the scripted teacher, nothing rendered), else
          (PullCubeTool, PokeCube, and ``camera``, whose point is the camera the teacher sees)
          the task file's default (a state student, the task's shipped Octo teacher on the
          rendered 128x128 camera); 3 seeds, 50,000 env steps per student. The scripted runs
          render nothing: 17-21 minutes per run of 3 students on 2 CPU cores (PushCube and
          PickCube, evaluations included). The Octo ones take hours: PullCubeTool's RPD run
          made about 6 env steps per second per student on 2 cores shared with another job.

One training per (task, loss): ``python -m rpd_jax.train --config=experiments/<task>.py:<variants>
--workdir=<root>/figure<F>_<scale>/<task>/<rpd_mse|ppo> --config.num_seeds=K
--config.total_env_steps=N`` (K students in one process, rpd_jax/students.py), ``--parallel`` at
once, logging to ``<workdir>/train.log``; ``--set=key=value`` adds ``--config.key=value`` to
every run. A finished run leaves a ``done`` marker and is skipped when the command is run again;
a killed one resumes from its checkpoint (rpd_jax.tools.sweep.run_all). ``--dry_run`` prints the
commands and exits.

Then ``<root>/figure<F>_<scale>/`` gets ``figure<F>.png`` (one subplot per task: the mean +- std
over seeds of ``eval/success_rate`` per loss, and the teacher's own success as a dashed line
where it is known, ``teacher_success``), and ``figure<F>.md`` / ``figure<F>.json``: per task and
loss, the env steps at which the seed-mean curve reaches a success rate of 0.5 and of 0.8, the
final success (mean +- std over seeds), the teacher's success, the seeds and the env steps done.
Runs still missing are plotted as far as they got and named.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import sys
import textwrap
from typing import Callable, Optional, Sequence

import ml_collections
from absl import flags

from rpd_jax import cli
from rpd_jax import config as config_lib
from rpd_jax.errors import ConfigError, RunError
from rpd_jax.teachers import maniskill_scripted, records
from rpd_jax.tools import plot, sweep

METRIC = "eval/success_rate"
ENSEMBLE_METRIC = "ensemble/" + METRIC
TARGETS = (0.5, 0.8)  # success rates the table reports the env steps to


@dataclasses.dataclass(frozen=True)
class Figure:
  """A figure of the paper: which tasks, and what its runs add to the scale's variants."""

  description: str
  tasks: tuple[str, ...]
  sparse: bool = False  # the sparse reward (variant ``sparse``, first)
  variants: tuple[str, ...] = ()  # the figure's own variants, after the scale's
  ensemble: bool = False  # also plot each run's students as one policy
  # On the cpu scale, the scripted teacher where the task has one (False: the task file's
  # default teacher, e.g. where the figure is about what the teacher sees).
  scripted_on_cpu: bool = True


@dataclasses.dataclass(frozen=True)
class Scale:
  """How big each run of a figure is."""

  description: str
  variant: Callable[[str, Figure], str]  # (task, figure) -> the scale's variant ("" for none)
  seeds: int  # students per run (config.num_seeds), unless --seeds
  steps: Optional[int]  # env steps per student, unless --steps (None: the config's own)


FINETUNED = ("PickCube-v1", "PushCube-v1", "PullCube-v1", "StackCube-v1", "LiftPegUpright-v1",
             "RollBall-v1")

FIGURES: dict[str, Figure] = {
    "3": Figure("dense reward, the six fine-tuning tasks: RPD-MSE vs PPO", FINETUNED),
    "4": Figure("sparse reward, the six fine-tuning tasks: RPD-MSE vs PPO", FINETUNED,
                sparse=True),
    "5": Figure("the held-out tasks, dense reward: RPD-MSE vs PPO",
                ("PullCubeTool-v1", "PokeCube-v1")),
    "camera": Figure("PushCube with the moved camera: RPD-MSE vs PPO, and the students' ensemble",
                     ("PushCube-v1",), variants=("moved_camera",), ensemble=True,
                     scripted_on_cpu=False),
}


def _cpu_variant(task: str, figure: Figure) -> str:
  scripted = figure.scripted_on_cpu and task in maniskill_scripted.CONTROLLERS
  return "scripted" if scripted else ""


SCALES: dict[str, Scale] = {
    "paper": Scale("the published settings (variant paper), 5 seeds, 30M env steps: a GPU",
                   lambda task, figure: "paper", seeds=5, steps=None),
    "cpu": Scale("scripted teacher where the task has one, else its shipped Octo teacher; "
                 "3 seeds, 50k env steps: a small CPU machine", _cpu_variant, seeds=3,
                 steps=50_000),
}

# Loss -> (its variant after the others, its label in the plot and table). The RPD runs add
# nothing: every variant the scales use (paper, scripted, the task files' default) is RPD-MSE.
LOSSES = {"rpd_mse": ("", "RPD-MSE"), "ppo": ("ppo", "PPO")}


@dataclasses.dataclass(frozen=True)
class Run:
  """One training of a figure: a task and a loss, K students."""

  task: str
  loss: str  # a key of LOSSES
  spec: str  # "<config file>:<variants>"
  workdir: str
  command: tuple[str, ...]
  # The loaded config with num_seeds and total_env_steps as the command sets them (not --set).
  config: ml_collections.ConfigDict = dataclasses.field(compare=False, repr=False)


def config_path(task: str, experiments: str = "experiments") -> str:
  """``<experiments>/<task, lower case, without -v1>.py``; ConfigError where ``experiments`` is
  not a folder (the experiment files are the repository's, not the installed package's)."""
  if not os.path.isdir(experiments):
    raise ConfigError(f"--experiments={experiments!r} is not a folder; run from the repository's "
                      "root, where experiments/ is, or name that folder with --experiments")
  return os.path.join(experiments, task.lower().removesuffix("-v1") + ".py")


def out_dir(root: str, figure: str, scale: str) -> str:
  return os.path.join(root, f"figure{figure}_{scale}")


def plan(figure: str, scale: str, root: str, tasks: Optional[Sequence[str]] = None,
         seeds: Optional[int] = None, steps: Optional[int] = None,
         overrides: Sequence[str] = (), experiments: str = "experiments") -> list[Run]:
  """The runs of ``figure`` at ``scale``, in order; every config loaded (a bad figure, scale,
  task, variant or override raises ConfigError before anything runs)."""
  if figure not in FIGURES:
    raise ConfigError(f"--figure={figure!r} is unknown; use one of {', '.join(FIGURES)}")
  if scale not in SCALES:
    raise ConfigError(f"--scale={scale!r} is unknown; use one of {', '.join(SCALES)}")
  fig, sc = FIGURES[figure], SCALES[scale]
  tasks = list(tasks or fig.tasks)
  bad = [t for t in tasks if t not in fig.tasks]
  if bad:
    raise ConfigError(f"--tasks has {bad[0]!r}, which is not in figure {figure}; its tasks are "
                      f"{', '.join(fig.tasks)}")
  seeds = sc.seeds if seeds is None else seeds
  if seeds < 1:
    raise ConfigError(f"--seeds={seeds} must be >= 1 (students per run)")
  if steps is not None and steps < 1:
    raise ConfigError(f"--steps={steps} must be >= 1 (env steps per student)")
  steps = sc.steps if steps is None else steps
  runs = []
  for task in tasks:
    for loss, (loss_variant, _) in LOSSES.items():
      variants = ",".join(filter(None, ["sparse" if fig.sparse else "", sc.variant(task, fig),
                                        *fig.variants, loss_variant]))
      path = config_path(task, experiments)
      spec = f"{path}:{variants}" if variants else path
      config = config_lib.load(spec)
      if (config.distill.loss == "none") != (loss == "ppo"):
        raise ConfigError(f"{spec} trains with distill.loss={config.distill.loss!r}, not "
                          f"{LOSSES[loss][1]}; check the variants of figure {figure}")
      for override in overrides:
        sweep.check_override(config, override)
      config.num_seeds = seeds
      config.total_env_steps = config.total_env_steps if steps is None else steps
      workdir = os.path.join(out_dir(root, figure, scale), task, loss)
      command = ((sys.executable, "-m", "rpd_jax.train", f"--config={spec}",
                  f"--workdir={workdir}", f"--config.num_seeds={seeds}",
                  f"--config.total_env_steps={config.total_env_steps}") +
                 tuple(f"--config.{o}" for o in overrides))
      runs.append(Run(task, loss, spec, workdir, command, config))
  return runs


def teacher_success(config: ml_collections.ConfigDict) -> Optional[float]:
  """The success rate of the run's teacher alone on its task, from the teacher's records
  (``teachers.records.success``); None where it was not measured, and for a run without
  distillation (PPO), which has no teacher."""
  if config.distill.loss == "none":
    return None
  return records.success(config.teacher, config.env)


def _fmt_steps(steps: Optional[int]) -> str:
  return "not reached" if steps is None else f"{steps:,}"


def summarise(runs: Sequence[Run], figure: str) -> dict:
  """Per task: the teacher's success and, per loss (and its ensemble), the plot rows and the
  table's numbers, from the metrics the runs have logged so far."""
  tasks: dict[str, dict] = {}
  for run in runs:
    task = tasks.setdefault(run.task, {"teacher_success": None, "rows": [], "table": []})
    _, label = LOSSES[run.loss]
    if run.loss != "ppo":
      task["teacher_success"] = teacher_success(run.config)
    has_metrics = os.path.isfile(os.path.join(run.workdir, "metrics.jsonl"))
    lines = [(label, plot.read_seed_curves(run.workdir, METRIC) if has_metrics else [])]
    if FIGURES[figure].ensemble:
      curve = plot.read_curve(run.workdir, ENSEMBLE_METRIC) if has_metrics else ([], [])
      lines.append((f"{label} ensemble", [curve] if len(curve[0]) else []))
    for name, curves in lines:
      entry = {"run": name, "loss": run.loss, "workdir": run.workdir,
               "finished": sweep.finished(run.workdir), "seeds": len(curves),
               "total_env_steps": int(run.config.total_env_steps),
               "teacher_success": task["teacher_success"], "env_steps": 0,
               "final_mean": None, "final_std": None,
               **{f"steps_to_{round(100 * t)}": None for t in TARGETS}}
      if curves:
        row = plot.curve_row(name, curves, TARGETS[-1])
        task["rows"].append(row)
        entry.update(env_steps=row["max_steps"], final_mean=row["final"],
                     final_std=row["final_std"],
                     **{f"steps_to_{round(100 * t)}": plot.steps_to(row["steps"], row["mean"], t)
                        for t in TARGETS})
      task["table"].append(entry)
  return tasks


def markdown(summary: dict, title: str) -> str:
  lines = [f"## {title}", ""]
  for task, info in summary.items():
    teacher = info["teacher_success"]
    teacher = "unknown" if teacher is None else f"{teacher:.2f}"
    lines += [f"### {task}", "",
              "| run | seeds | env steps to 50% | env steps to 80% | final success (mean +- std) "
              "| teacher alone | env steps done |", "|---|---|---|---|---|---|---|"]
    for e in info["table"]:
      final = ("no evaluation yet" if e["final_mean"] is None
               else f"{e['final_mean']:.3f} +- {e['final_std']:.3f}")
      done = f"{e['env_steps']:,}" + ("" if e["finished"] else
                                      f" of {e['total_env_steps']:,} (not finished)")
      lines.append(f"| {e['run']} | {e['seeds']} | {_fmt_steps(e['steps_to_50'])} | "
                   f"{_fmt_steps(e['steps_to_80'])} | {final} | {teacher} | {done} |")
    lines.append("")
  return "\n".join(lines)


def draw_figure(summary: dict, out: str, title: str) -> None:
  """One subplot per task (plot.draw), the teacher's success as a dashed line where known."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = len(summary)
  cols = min(n, 3)
  rows = math.ceil(n / cols)
  width = max(5 * cols, 7)
  fig, axes = plt.subplots(rows, cols, figsize=(width, 3.8 * rows + 0.5), squeeze=False)
  for ax, (task, info) in zip(axes.flat, summary.items()):
    plot.draw(ax, info["rows"], METRIC, info["teacher_success"], task, ylabel="success rate")
    ax.set_ylim(-0.02, 1.02)
  for ax in list(axes.flat)[n:]:
    ax.set_visible(False)
  fig.suptitle(textwrap.fill(title, width=9 * width, break_on_hyphens=False))
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def report(runs: Sequence[Run], figure: str, scale: str, root: str) -> dict:
  """Writes figure<F>.png, .md and .json under ``<root>/figure<F>_<scale>``; prints the table
  and the runs still missing. Returns what the JSON holds."""
  folder = out_dir(root, figure, scale)
  os.makedirs(folder, exist_ok=True)
  summary = summarise(runs, figure)
  seeds = runs[0].config.num_seeds if runs else 0
  title = (f"Figure {figure} ({scale} scale): {FIGURES[figure].description}; {seeds} seeds, "
           "mean +- std")
  missing = [r.workdir for r in runs if not sweep.finished(r.workdir)]
  text = markdown(summary, title)
  if missing:
    text += "\nNot finished yet (rerun the command to continue them):\n" + "\n".join(
        f"- {m}" for m in missing) + "\n"
  result = {"figure": figure, "scale": scale, "description": FIGURES[figure].description,
            "seeds": seeds, "tasks": {t: {"teacher_success": i["teacher_success"],
                                          "runs": i["table"]} for t, i in summary.items()},
            "missing": missing}
  base = os.path.join(folder, f"figure{figure}")
  with open(base + ".md", "w") as f:
    f.write(text)
  with open(base + ".json", "w") as f:
    json.dump(result, f, indent=2)
  draw_figure(summary, base + ".png", title)
  print(text)
  print(f"plot: {base}.png")
  return result


def _check_teachers(runs: Sequence[Run]) -> None:
  """An Octo teacher's checkpoint must be there before its runs start (one error, not N)."""
  for run in runs:
    if run.config.distill.loss != "none" and run.config.teacher.name == "octo":
      from rpd_jax.octo import hub  # pylint: disable=g-import-not-at-top
      hub.resolve_checkpoint(run.config.teacher.kwargs.checkpoint)  # FileNotFoundError says why


def reproduce(figure: str, scale: str, root: str, tasks: Optional[Sequence[str]] = None,
              seeds: Optional[int] = None, steps: Optional[int] = None, parallel: int = 1,
              overrides: Sequence[str] = (), dry_run: bool = False,
              poll: float = 2.0, experiments: str = "experiments") -> Optional[dict]:
  """Plans, runs (``parallel`` at once; finished ones skipped) and reports a figure. Returns
  the report (None for ``dry_run``); raises RunError after the report if a run failed."""
  if parallel < 1:
    raise ConfigError(f"--parallel={parallel} must be >= 1")
  runs = plan(figure, scale, root, tasks, seeds, steps, overrides, experiments)
  if dry_run:
    for run in runs:
      done = "# done: " if sweep.finished(run.workdir) else ""
      print(done + " ".join(shlex.quote(a) for a in run.command))
    return None
  _check_teachers(runs)
  failed = sweep.run_all([(r.command, r.workdir) for r in runs], parallel, poll=poll)
  result = report(runs, figure, scale, root)
  if failed:
    raise RunError(f"{len(failed)} run(s) failed: {', '.join(failed)}; see their train.log, "
                   "fix it and run the same command again (finished runs are skipped)")
  return result


def _define_flags() -> None:
  """reproduce's flags (only as a command: tests import this module next to others with flags
  of the same names). ``--parallel`` and ``--set`` are rpd_jax.tools.sweep's own; sweep's and
  plot's other flags mean something else here and are removed."""
  by_module = flags.FLAGS.flags_by_module_dict()
  for module in (sweep.__name__, plot.__name__):
    for flag in list(by_module.get(module, [])):  # deleting edits these lists
      if flag.name not in ("parallel", "set") and flag.name in flags.FLAGS:
        delattr(flags.FLAGS, flag.name)
  flags.DEFINE_string("figure", None, f"Which figure: {', '.join(FIGURES)}.")
  flags.DEFINE_string("scale", None, f"How big: {', '.join(SCALES)}.")
  flags.DEFINE_string("root", "runs/reproduce", "Folder for the runs and figures.")
  flags.DEFINE_list("tasks", None, "Only these of the figure's tasks (default: all).")
  flags.DEFINE_integer("seeds", None, "Students per run (default: paper 5, cpu 3).")
  flags.DEFINE_integer("steps", None, "Env steps per student (default: paper the config's 30M, "
                       "cpu 50,000).")
  flags.DEFINE_bool("dry_run", False, "Print the commands and exit.")
  flags.DEFINE_string("experiments", "experiments", "The folder of the experiment files (the "
                      "repository's experiments/).")
  flags.declare_key_flag("parallel")
  flags.declare_key_flag("set")


def main() -> None:
  f = flags.FLAGS
  if f.figure is None or f.scale is None:
    raise ConfigError(f"give --figure ({'|'.join(FIGURES)}) and --scale ({'|'.join(SCALES)}), "
                      "e.g. --figure=3 --scale=cpu")
  reproduce(f.figure, f.scale, f.root, f.tasks, f.seeds, f.steps, f.parallel, f.set,
            f.dry_run, experiments=f.experiments)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
