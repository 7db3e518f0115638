"""Learning curves of finished or running trainings: mean +- std over seeds, steps to a target.

  python -m rpd_jax.tools.plot runs/jax_push_curves --out=curves.png [--metric=eval/success_rate]

Run directories are grouped by name: ``<label>_s<seed>`` (e.g. ``rpd_mse_s0``) share the label
``rpd_mse``; a run of K students (``config.num_seeds``) adds its K curves. Prints a markdown
table: per label, the env steps at which the seed-mean curve first reaches 0.5 and ``--target``,
the final value, the teacher's answers per student and the wall time of a run.
"""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Optional

import numpy as np
from absl import flags

from rpd_jax import cli
from rpd_jax.errors import ConfigError


def _define_once(define, name: str, *args):
  """plot is also a library, imported next to commands that have flags of the same names
  (eval_teacher's --out): the first definition wins, so importing both does not collide."""
  return flags.FLAGS[name] if name in flags.FLAGS else define(name, *args)


_OUT = _define_once(flags.DEFINE_string, "out", "curves.png", "Where the plot goes (PNG).")
_METRIC = _define_once(flags.DEFINE_string, "metric", "eval/success_rate", "The metric to plot.")
_TARGET = _define_once(flags.DEFINE_float, "target", 0.8,
                       "Report the env steps at which the mean reaches this.")
_REFERENCE = _define_once(flags.DEFINE_float, "reference", None,
                          "A horizontal line, e.g. the teacher's success.")
_TITLE = _define_once(flags.DEFINE_string, "title", "", "Plot title.")


def read_curve(workdir: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """(env_steps, values) of ``metric`` in ``workdir/metrics.jsonl``, where it was logged."""
  steps, values = [], []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if metric in row:
        steps.append(row["env_steps"])
        values.append(row[metric])
  return np.asarray(steps), np.asarray(values)


def read_seed_curves(workdir: str, metric: str) -> list[tuple[np.ndarray, np.ndarray]]:
  """The curves of ``metric`` of every student of a run (``config.num_seeds = K``, which logs
  ``seed<k>/<metric>``), in k order; with K = 1 the one curve of ``metric`` itself. [] where
  it was not logged yet."""
  pattern = re.compile(r"seed(\d+)/" + re.escape(metric))
  curves: dict[int, tuple[list, list]] = collections.defaultdict(lambda: ([], []))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      for name, value in row.items():
        match = pattern.fullmatch(name)
        if match:
          curves[int(match.group(1))][0].append(row["env_steps"])
          curves[int(match.group(1))][1].append(value)
  if not curves:
    steps, values = read_curve(workdir, metric)
    return [(steps, values)] if len(steps) else []
  return [(np.asarray(s), np.asarray(v)) for _, (s, v) in sorted(curves.items())]


def group_runs(root_or_dirs: list[str]) -> dict[str, list[str]]:
  """{label: [run dirs]} from run dirs, or from folders holding run dirs."""
  runs = []
  for path in root_or_dirs:
    if os.path.exists(os.path.join(path, "metrics.jsonl")):
      runs.append(path)
    else:
      runs += sorted(os.path.join(path, d) for d in os.listdir(path)
                     if os.path.exists(os.path.join(path, d, "metrics.jsonl")))
  groups = collections.defaultdict(list)
  for run in runs:
    groups[re.sub(r"_s\d+$", "", os.path.basename(os.path.normpath(run)))].append(run)
  return dict(groups)


def mean_std(curves: list[tuple[np.ndarray, np.ndarray]]):
  """Seed curves on the steps they share (the shortest run's): steps, mean, std."""
  n = min(len(s) for s, _ in curves)
  steps = curves[0][0][:n]
  values = np.stack([v[:n] for _, v in curves])
  return steps, values.mean(0), values.std(0)


def steps_to(steps: np.ndarray, values: np.ndarray, target: float) -> Optional[int]:
  hit = np.nonzero(values >= target)[0]
  return int(steps[hit[0]]) if len(hit) else None


def curve_row(label: str, curves: list[tuple[np.ndarray, np.ndarray]], target: float) -> dict:
  """One label's seed curves (non-empty) summarised: the row ``plot`` and ``table`` take."""
  steps, mean, std = mean_std(curves)
  per_seed = [steps_to(s, v, target) for s, v in curves]
  return dict(label=label, seeds=len(curves), steps=steps, mean=mean, std=std,
              steps_to_target=steps_to(steps, mean, target),
              steps_to_half=steps_to(steps, mean, 0.5), per_seed=per_seed,
              final=float(mean[-1]), final_std=float(std[-1]), max_steps=int(steps[-1]))


def cost(workdir: str) -> dict[str, float]:
  """What a run spent: ``teacher_calls``, the teacher's answers per student (the sum over the
  logged rows of ``teacher/calls_per_step`` times the env steps since the row before; 0
  without a teacher), and ``wall_s``, the last row's ``time/elapsed_s``."""
  calls, wall, before = 0.0, 0.0, 0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      calls += row.get("teacher/calls_per_step", 0.0) * (row["env_steps"] - before)
      wall, before = row.get("time/elapsed_s", wall), row["env_steps"]
  return {"teacher_calls": calls, "wall_s": wall}


def summarise(groups: dict[str, list[str]], metric: str, target: float) -> list[dict]:
  rows = []
  for label, runs in sorted(groups.items()):
    curves = [c for r in runs for c in read_seed_curves(r, metric)]
    if not curves:
      continue
    costs = [cost(r) for r in runs]
    rows.append({**curve_row(label, curves, target),
                 **{k: float(np.mean([c[k] for c in costs])) for k in costs[0]}})
  return rows


def draw(ax, rows: list[dict], metric: str, reference: Optional[float], title: str,
         ylabel: Optional[str] = None) -> None:
  """The mean +- std band of each row, and ``reference`` as a dashed line, on ``ax``."""
  for row in rows:
    line, = ax.plot(row["steps"], row["mean"], label=f"{row['label']} (n={row['seeds']})")
    low, high = row["mean"] - row["std"], row["mean"] + row["std"]
    if "success" in metric:  # a rate: keep the band inside [0, 1]
      low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
    ax.fill_between(row["steps"], low, high, color=line.get_color(), alpha=0.2)
  if reference is not None:
    ax.axhline(reference, color="k", ls="--", lw=1, label=f"teacher alone ({reference:.2f})")
  ax.set_xlabel("env steps")
  ax.set_ylabel(ylabel or metric)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()


def plot(rows: list[dict], metric: str, out: str, reference: Optional[float], title: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  draw(ax, rows, metric, reference, title)
  fig.tight_layout()
  fig.savefig(out, dpi=120)


def table(rows: list[dict], metric: str, target: float) -> str:
  lines = [f"| run | seeds | env steps to {metric} >= 0.5 / >= {target} (mean curve) | "
           f"per seed (to {target}) | final {metric} (mean +- std) | teacher answers per "
           "student | wall time per run | steps run |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    fmt = lambda s: "not reached" if s is None else f"{s:,}"
    lines.append(f"| {r['label']} | {r['seeds']} | {fmt(r['steps_to_half'])} / "
                 f"{fmt(r['steps_to_target'])} | {', '.join(fmt(s) for s in r['per_seed'])} | "
                 f"{r['final']:.3f} +- {r['final_std']:.3f} | {r['teacher_calls']:,.0f} | "
                 f"{r['wall_s']:.0f} s | {r['max_steps']:,} |")
  return "\n".join(lines)


def main(paths: list[str]) -> None:
  if not paths:
    raise ConfigError("give run directories, or folders holding them")
  missing = [p for p in paths if not os.path.isdir(p)]
  if missing:
    raise FileNotFoundError(f"no such folder: {', '.join(missing)}")
  rows = summarise(group_runs(paths), _METRIC.value, _TARGET.value)
  if not rows:
    raise ConfigError(f"no run under {', '.join(paths)} has logged {_METRIC.value}")
  plot(rows, _METRIC.value, _OUT.value, _REFERENCE.value, _TITLE.value)
  print(table(rows, _METRIC.value, _TARGET.value))
  print(f"\nplot: {_OUT.value}")


if __name__ == "__main__":
  cli.run(main, positional=True)
