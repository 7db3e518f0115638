"""Runs one config over several variants and seeds, then plots mean +- std learning curves.

  python -m rpd_jax.tools.sweep --config=experiments/jax_push.py:sparse \\
      --variants=ppo,rpd_mse,rpd_l1,rpd_bc,ppd --seeds=0,1,2 --root=runs/jax_push_sparse

Each run is ``python -m rpd_jax.train`` in ``<root>/<variant>_s<seed>``, so an interrupted sweep
picks up where it stopped (finished runs are skipped, killed ones resume). ``--parallel`` runs go
at once. ``--set=x=y`` overrides apply to every run; ``--grid=x=v1,v2,...`` runs every variant at
each value of one field (in ``<root>/<variant>_<field><value>_s<seed>``), e.g. the teacher budget:

  python -m rpd_jax.tools.sweep --config=experiments/jax_push.py:sparse --variants=rpd_mse \
      --grid=teacher.query_fraction=1,0.5,0.25,0.125,0.0625 --seeds=0 --set=num_seeds=3 \
      --root=runs/budget_jax_push

(one process of 3 students per value). The plot and a table of env steps to 0.5 and
``--target``, final value, teacher answers and wall time go to ``<root>/curves.png`` and
``<root>/summary.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Optional, Sequence

import ml_collections
from absl import flags

from rpd_jax import cli
from rpd_jax import config as config_lib
from rpd_jax.errors import ConfigError
from rpd_jax.tools import plot

_CONFIG = flags.DEFINE_string("config", None, "Config file with its base variants, e.g. "
                              "experiments/jax_push.py:sparse.", required=True)
_VARIANTS = flags.DEFINE_list("variants", ["ppo", "rpd_mse"], "Variants to compare.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_ROOT = flags.DEFINE_string("root", None, "Folder for the runs.", required=True)
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at once.")
_OVERRIDES = flags.DEFINE_multi_string("set", [], "Overrides for every run, e.g. "
                                       "--set=total_env_steps=300000.")
_GRID = flags.DEFINE_string("grid", None, "One config field and the values to run every variant "
                            "at, e.g. --grid=teacher.query_fraction=1,0.5,0.25.")
# --target (success rate to report steps to) and --reference (the teacher's own success, drawn
# in the plot) are rpd_jax.tools.plot's flags.
_TARGET, _REFERENCE = plot._TARGET, plot._REFERENCE  # pylint: disable=protected-access


def _command(variant: str, seed: str, workdir: str, overrides: Sequence[str]) -> list[str]:
  path, _, base = _CONFIG.value.partition(":")
  variants = ",".join(filter(None, [base, variant]))
  return ([sys.executable, "-m", "rpd_jax.train", f"--config={path}:{variants}",
           f"--workdir={workdir}", f"--config.seed={seed}"] +
          [f"--config.{o}" for o in overrides])


def check_override(config: ml_collections.ConfigDict, override: str, flag: str = "--set"
                   ) -> None:
  """ConfigError unless ``override`` is ``key=value`` for a field that ``config`` has."""
  key, sep, _ = override.partition("=")
  if not sep or not key:
    raise ConfigError(f"{flag}={override}: give key=value, e.g. {flag}=env.num_envs=8")
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f"{flag}={override}: the config has no field {key!r}; see the "
                        "experiment file for the fields it sets")
    node = node[part]


def grid(spec: Optional[str]) -> list[tuple[str, Optional[str]]]:
  """(run name suffix, override) per value of ``--grid=field=v1,v2,...``; [("", None)]
  without one."""
  if not spec:
    return [("", None)]
  key, _, values = spec.partition("=")
  if not key or not values or "" in values.split(","):
    raise ConfigError(f"--grid={spec}: give field=v1,v2,..., e.g. "
                      "--grid=teacher.query_fraction=1,0.5,0.25")
  return [(f"_{key.split('.')[-1]}{value}", f"{key}={value}") for value in values.split(",")]


def finished(workdir: str) -> bool:
  """Whether the run in ``workdir`` ended well (run_all left its ``done`` marker there)."""
  return os.path.exists(os.path.join(workdir, "done"))


def run_all(jobs: Sequence[tuple[Sequence[str], str]], parallel: int,
            poll: float = 2.0) -> list[str]:
  """Runs ``(command, workdir)`` jobs as subprocesses, ``parallel`` at once, in order.

  Each logs to ``<workdir>/train.log`` (appended) and leaves a ``done`` marker there when it
  exits with status 0; a job whose workdir has one is skipped (so a rerun picks up where the
  last stopped: ``rpd_jax.train`` resumes a killed run from its workdir). Prints a line as each
  starts and ends. Returns the workdirs of the jobs that failed.
  """
  if parallel < 1:
    raise ConfigError(f"--parallel={parallel} must be >= 1")
  queue = list(jobs)
  running: list[tuple[subprocess.Popen, str, float]] = []
  failed = []
  while queue or running:
    while queue and len(running) < parallel:
      command, workdir = queue.pop(0)
      if finished(workdir):
        continue
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "train.log"), "a") as log:
        running.append((subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT),
                        workdir, time.time()))
      print(f"started {workdir}", flush=True)
    if running:
      time.sleep(poll)
    for proc, workdir, start in list(running):
      if proc.poll() is None:
        continue
      running.remove((proc, workdir, start))
      if proc.returncode:
        failed.append(workdir)
        print(f"FAILED {workdir} (exit {proc.returncode}); see {workdir}/train.log", flush=True)
      else:
        open(os.path.join(workdir, "done"), "w").close()
        print(f"finished {workdir} in {time.time() - start:.0f} s", flush=True)
  return failed


def main() -> None:
  if _PARALLEL.value < 1:
    raise ConfigError(f"--parallel={_PARALLEL.value} must be >= 1")
  bad = [s for s in _SEEDS.value if not s.lstrip("-").isdigit()]
  if bad:
    raise ConfigError(f"--seeds has {bad[0]!r}, not an integer; e.g. --seeds=0,1,2")
  # Every variant and override must load before any run starts (one error line for a typo,
  # not N failures).
  path, _, base = _CONFIG.value.partition(":")
  values = grid(_GRID.value)
  for variant in _VARIANTS.value:
    config = config_lib.load(f"{path}:{','.join(filter(None, [base, variant]))}")
    for override in _OVERRIDES.value:
      check_override(config, override)
    for _, override in values:
      if override:
        check_override(config, override, "--grid")
  os.makedirs(_ROOT.value, exist_ok=True)
  jobs = []
  for seed in _SEEDS.value:
    for variant in _VARIANTS.value:
      for suffix, override in values:
        workdir = os.path.join(_ROOT.value, f"{variant}{suffix}_s{seed}")
        overrides = _OVERRIDES.value + ([override] if override else [])
        jobs.append((_command(variant, seed, workdir, overrides), workdir))
  run_all(jobs, _PARALLEL.value)

  rows = plot.summarise(plot.group_runs([_ROOT.value]), "eval/success_rate", _TARGET.value)
  # Seeds are curves: a run of K students (config.num_seeds) adds K.
  title = f"{_CONFIG.value} ({max((r['seeds'] for r in rows), default=0)} seeds, mean +- std)"
  plot.plot(rows, "eval/success_rate", os.path.join(_ROOT.value, "curves.png"),
            _REFERENCE.value, title)
  summary = plot.table(rows, "eval/success_rate", _TARGET.value)
  with open(os.path.join(_ROOT.value, "summary.md"), "w") as f:
    f.write(summary + "\n")
  print(summary)


if __name__ == "__main__":
  cli.run(main)
