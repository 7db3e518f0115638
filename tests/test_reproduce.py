"""rpd_jax.tools.reproduce: each figure's runs, their configs, the table and plot, the launcher."""

import json
import os
import sys

import numpy as np
import pytest

from rpd_jax.errors import ConfigError
from rpd_jax.octo import hub
from rpd_jax.tools import plot, reproduce, sweep


@pytest.fixture
def in_repo(repo_root, monkeypatch):
  monkeypatch.chdir(repo_root)  # the configs as a user in the repository names them
  return repo_root


def _runs(runs):
  return {(r.task, r.loss): r for r in runs}


def test_figure4_cpu_is_sparse_with_the_scripted_teacher(in_repo, tmp_path):
  runs = reproduce.plan("4", "cpu", str(tmp_path))
  assert [r.task for r in runs[::2]] == list(reproduce.FIGURES["4"].tasks)
  rpd, ppo = _runs(runs)["PushCube-v1", "rpd_mse"], _runs(runs)["PushCube-v1", "ppo"]
  assert rpd.spec == "experiments/pushcube.py:sparse,scripted"
  assert ppo.spec == "experiments/pushcube.py:sparse,scripted,ppo"
  assert rpd.workdir == os.path.join(tmp_path, "figure4_cpu", "PushCube-v1", "rpd_mse")
  assert rpd.command[1:] == (
      "-m", "rpd_jax.train", "--config=experiments/pushcube.py:sparse,scripted",
      f"--workdir={rpd.workdir}", "--config.num_seeds=3", "--config.total_env_steps=50000")
  for run, loss in ((rpd, "mse"), (ppo, "none")):
    c = run.config
    assert c.env.reward_mode == "sparse" and c.ppo.gamma == 0.99
    assert c.teacher.name == "scripted_maniskill" and c.env.kwargs.obs_mode == "state"
    assert c.distill.loss == loss and c.num_seeds == 3 and c.total_env_steps == 50_000


def test_paper_scale_is_the_published_run_with_five_seeds(in_repo, tmp_path):
  dense = _runs(reproduce.plan("3", "paper", str(tmp_path), tasks=["PickCube-v1"]))
  sparse = _runs(reproduce.plan("4", "paper", str(tmp_path), tasks=["PickCube-v1"]))
  assert dense["PickCube-v1", "rpd_mse"].spec == "experiments/pickcube.py:paper"
  assert dense["PickCube-v1", "ppo"].spec == "experiments/pickcube.py:paper,ppo"
  assert sparse["PickCube-v1", "rpd_mse"].spec == "experiments/pickcube.py:sparse,paper"
  assert sparse["PickCube-v1", "ppo"].spec == "experiments/pickcube.py:sparse,paper,ppo"
  for run in [*dense.values(), *sparse.values()]:
    c = run.config
    assert c.env.num_envs == 128 and c.num_seeds == 5 and c.total_env_steps == 30_000_000
    assert c.network.encoder == "ppo_rgb" and c.teacher.name == "octo"
    assert "--config.num_seeds=5" in run.command
    assert "--config.total_env_steps=30000000" in run.command
  assert sparse["PickCube-v1", "ppo"].config.env.reward_mode == "sparse"
  assert dense["PickCube-v1", "rpd_mse"].config.distill.loss == "mse"


def test_tasks_without_a_scripted_teacher_and_the_camera_use_the_default(in_repo, tmp_path):
  held_out = _runs(reproduce.plan("5", "cpu", str(tmp_path), seeds=2, steps=1000))
  rpd = held_out["PokeCube-v1", "rpd_mse"]
  assert rpd.spec == "experiments/pokecube.py"
  assert held_out["PokeCube-v1", "ppo"].spec == "experiments/pokecube.py:ppo"
  assert rpd.config.teacher.name == "octo" and rpd.config.distill.loss == "mse"
  assert rpd.config.num_seeds == 2 and "--config.total_env_steps=1000" in rpd.command
  camera = _runs(reproduce.plan("camera", "cpu", str(tmp_path)))
  rpd, ppo = camera["PushCube-v1", "rpd_mse"], camera["PushCube-v1", "ppo"]
  assert rpd.spec == "experiments/pushcube.py:moved_camera"
  assert ppo.spec == "experiments/pushcube.py:moved_camera,ppo"
  assert rpd.config.env.kwargs.camera_variant == "moved"
  assert rpd.config.teacher.kwargs.checkpoint == "octo-tiny-pushcube"
  assert ppo.config.distill.loss == "none"
  assert rpd.workdir.endswith(os.path.join("figurecamera_cpu", "PushCube-v1", "rpd_mse"))


@pytest.mark.parametrize("figure", list(reproduce.FIGURES))
@pytest.mark.parametrize("scale", list(reproduce.SCALES))
def test_every_figure_and_scale_loads(in_repo, tmp_path, figure, scale):
  runs = reproduce.plan(figure, scale, str(tmp_path), overrides=["eval_every=5"])
  assert len(runs) == 2 * len(reproduce.FIGURES[figure].tasks)
  assert len({r.workdir for r in runs}) == len(runs)
  for run in runs:
    assert run.config.num_seeds == reproduce.SCALES[scale].seeds
    assert run.command[-1] == "--config.eval_every=5"
    assert (run.config.distill.loss == "none") == (run.loss == "ppo")


@pytest.mark.parametrize("kwargs,message", [
    (dict(figure="6"), "--figure='6' is unknown; use one of 3, 4, 5, camera"),
    (dict(scale="gpu"), "--scale='gpu' is unknown; use one of paper, cpu"),
    (dict(figure="5", tasks=["PushCube-v1"]),
     "--tasks has 'PushCube-v1', which is not in figure 5; its tasks are PullCubeTool-v1, "
     "PokeCube-v1"),
    (dict(seeds=0), "--seeds=0 must be >= 1"),
    (dict(overrides=["ppo.gama=0.9"]), "the config has no field 'ppo.gama'"),
    (dict(overrides=["ppo.gamma"]), "--set=ppo.gamma: give key=value"),
])
def test_bad_input_is_a_config_error(in_repo, tmp_path, kwargs, message):
  kwargs = {"figure": "3", "scale": "cpu", "root": str(tmp_path), **kwargs}
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
    reproduce.plan(**kwargs)


def _write_metrics(workdir, steps, per_seed, ensemble=None):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"iteration": 0, "env_steps": 10, "loss/total": 1.0}) + "\n")  # no eval
    for i, step in enumerate(steps):
      row = {"iteration": i + 1, "env_steps": step,
             "eval/success_rate": float(np.mean([s[i] for s in per_seed]))}
      row.update({f"seed{k}/eval/success_rate": s[i] for k, s in enumerate(per_seed)})
      row.update({f"seed{k}/eval/success_rate/std": 0.0 for k in range(len(per_seed))})
      if ensemble is not None:
        row["ensemble/eval/success_rate"] = ensemble[i]
      f.write(json.dumps(row) + "\n")


STEPS = [1000, 2000, 3000, 4000]
RPD = [[0.1, 0.55, 0.85, 0.9], [0.3, 0.65, 0.95, 1.0], [0.2, 0.45, 0.75, 0.8]]  # 80% at 3000
PPO = [[0.0, 0.1, 0.2, 0.3], [0.0, 0.0, 0.1, 0.2], [0.1, 0.1, 0.2, 0.4]]  # never 50%


def test_table_and_plot_from_the_runs_metrics(in_repo, tmp_path, capsys):
  runs = reproduce.plan("3", "cpu", str(tmp_path), tasks=["PushCube-v1"])
  rpd, ppo = _runs(runs)["PushCube-v1", "rpd_mse"], _runs(runs)["PushCube-v1", "ppo"]
  _write_metrics(rpd.workdir, STEPS, RPD)
  _write_metrics(ppo.workdir, STEPS[:3], [s[:3] for s in PPO])  # still running
  open(os.path.join(rpd.workdir, "done"), "w").close()
  result = reproduce.report(runs, "3", "cpu", str(tmp_path))
  folder = tmp_path / "figure3_cpu"
  assert (folder / "figure3.png").stat().st_size > 10_000
  assert json.loads((folder / "figure3.json").read_text()) == result
  task = result["tasks"]["PushCube-v1"]
  assert task["teacher_success"] == 0.34  # records.SCRIPTED_EVALUATIONS
  got = {r["run"]: r for r in task["runs"]}
  assert got["RPD-MSE"]["steps_to_50"] == 2000 and got["RPD-MSE"]["steps_to_80"] == 3000
  assert got["RPD-MSE"]["final_mean"] == pytest.approx(0.9)
  assert got["RPD-MSE"]["final_std"] == pytest.approx(np.std([0.9, 1.0, 0.8]))
  assert got["RPD-MSE"]["seeds"] == 3 and got["RPD-MSE"]["env_steps"] == 4000
  assert got["PPO"]["steps_to_50"] is None and got["PPO"]["steps_to_80"] is None
  assert got["PPO"]["final_mean"] == pytest.approx(np.mean([0.2, 0.1, 0.2]))
  assert got["PPO"]["env_steps"] == 3000 and not got["PPO"]["finished"]
  assert result["missing"] == [ppo.workdir]
  md = (folder / "figure3.md").read_text()
  assert "| RPD-MSE | 3 | 2,000 | 3,000 | 0.900 +- 0.082 | 0.34 | 4,000 |" in md
  assert "| PPO | 3 | not reached | not reached | 0.167 +- 0.047 | 0.34 | 3,000 of 50,000" in md
  assert ppo.workdir in md and md in capsys.readouterr().out


def test_camera_figure_adds_the_ensemble(in_repo, tmp_path):
  runs = reproduce.plan("camera", "cpu", str(tmp_path))
  for run in runs:
    _write_metrics(run.workdir, STEPS, RPD, ensemble=[0.3, 0.6, 0.9, 1.0])
  result = reproduce.report(runs, "camera", "cpu", str(tmp_path))
  got = {r["run"]: r for r in result["tasks"]["PushCube-v1"]["runs"]}
  assert set(got) == {"RPD-MSE", "RPD-MSE ensemble", "PPO", "PPO ensemble"}
  ensemble = got["RPD-MSE ensemble"]
  assert ensemble["seeds"] == 1 and ensemble["steps_to_80"] == 3000
  assert ensemble["final_mean"] == 1.0 and ensemble["final_std"] == 0.0
  assert (tmp_path / "figurecamera_cpu" / "figurecamera.png").exists()


def test_read_seed_curves_of_one_and_of_three_students(tmp_path):
  _write_metrics(str(tmp_path / "k3"), STEPS, RPD)
  curves = plot.read_seed_curves(str(tmp_path / "k3"), "eval/success_rate")
  assert [list(v) for _, v in curves] == RPD and all(list(s) == STEPS for s, _ in curves)
  os.makedirs(tmp_path / "k1")
  with open(tmp_path / "k1" / "metrics.jsonl", "w") as f:
    for step, value in zip(STEPS, RPD[0]):
      f.write(json.dumps({"env_steps": step, "eval/success_rate": value}) + "\n")
  (steps, values), = plot.read_seed_curves(str(tmp_path / "k1"), "eval/success_rate")
  assert list(steps) == STEPS and list(values) == RPD[0]
  assert plot.read_seed_curves(str(tmp_path / "k1"), "ensemble/eval/success_rate") == []


def test_finished_runs_are_skipped_and_failures_reported(tmp_path, capsys):
  done, new, bad = (str(tmp_path / n) for n in ("done", "new", "bad"))
  os.makedirs(done)
  open(os.path.join(done, "done"), "w").close()
  touch = lambda d: [sys.executable, "-c", f"open({os.path.join(d, 'ran')!r}, 'w')"]
  failed = sweep.run_all([(touch(done), done), (touch(new), new),
                          ([sys.executable, "-c", "raise SystemExit(3)"], bad)],
                         parallel=2, poll=0.05)
  assert failed == [bad]
  assert not os.path.exists(os.path.join(done, "ran"))
  assert os.path.exists(os.path.join(new, "ran")) and sweep.finished(new)
  assert not sweep.finished(bad) and os.path.exists(os.path.join(bad, "train.log"))
  out = capsys.readouterr().out
  assert f"started {done}" not in out and f"finished {new}" in out and f"FAILED {bad}" in out


def test_a_rerun_of_finished_runs_only_reports(in_repo, tmp_path, capsys):
  runs = reproduce.plan("3", "cpu", str(tmp_path), tasks=["PullCube-v1"])
  for run in runs:
    _write_metrics(run.workdir, STEPS, RPD)
    open(os.path.join(run.workdir, "done"), "w").close()
  reproduce.reproduce("3", "cpu", str(tmp_path), tasks=["PullCube-v1"], dry_run=True)
  assert capsys.readouterr().out.count("# done: ") == 2
  result = reproduce.reproduce("3", "cpu", str(tmp_path), tasks=["PullCube-v1"], poll=0.05)
  assert "started" not in capsys.readouterr().out and result["missing"] == []
  assert result["tasks"]["PullCube-v1"]["teacher_success"] == 0.51


def test_teacher_success(in_repo, tmp_path, monkeypatch):
  load = lambda spec: reproduce.config_lib.load(os.path.join(in_repo, spec))
  assert reproduce.teacher_success(load("experiments/rollball.py:scripted")) == 0.20
  off = load("experiments/rollball.py:scripted")
  off.teacher.kwargs.noise = 0.1  # not the noise its record was measured at
  assert reproduce.teacher_success(off) is None
  for spec in ("experiments/pushcube.py:ppo", "experiments/pushcube.py:scripted,ppo",
               "experiments/jax_push.py:ppo"):
    assert reproduce.teacher_success(load(spec)) is None, spec
  # The push task's scripted teacher at the noise and bias of its record (scripted_push_eval).
  assert reproduce.teacher_success(load("experiments/jax_push.py")) == 0.445
  # A shipped Octo teacher, by name: its folder's teacher_eval.json (eval_teacher's rows).
  shipped = tmp_path / "checkpoints"
  monkeypatch.setattr(hub, "SHIPPED", shipped)
  octo = load("experiments/pushcube.py:moved_camera")
  assert octo.teacher.kwargs.checkpoint == "octo-tiny-pushcube"
  (shipped / "octo-tiny-pushcube").mkdir(parents=True)
  assert reproduce.teacher_success(octo) is None  # not evaluated
  rows = [{"task": "PushCube-v1", "camera_variant": None, "execution": "first",
           "success_rate": 0.4},
          {"task": "PushCube-v1", "camera_variant": "moved", "execution": "ensemble",
           "success_rate": 0.3},
          {"task": "PushCube-v1", "camera_variant": "moved", "execution": "first",
           "success_rate": 0.2}]
  (shipped / "octo-tiny-pushcube" / "teacher_eval.json").write_text(json.dumps(rows))
  assert reproduce.teacher_success(octo) == 0.2
  octo.env.kwargs.camera_variant = None
  assert reproduce.teacher_success(octo) == 0.4
  octo.env.kwargs.env_id = "PokeCube-v1"  # a held-out task borrowing the teacher
  assert reproduce.teacher_success(octo) is None
  octo.teacher.kwargs.checkpoint = str(tmp_path / "nowhere")  # not there: no line
  assert reproduce.teacher_success(octo) is None


def test_a_tiny_figure_end_to_end(in_repo, tmp_path, monkeypatch, capsys):
  """Two real trainings (the pure-JAX push task, 2 students, 2 iterations) through the launcher."""
  monkeypatch.setitem(reproduce.FIGURES, "tiny", reproduce.Figure(
      "jax_push smoke", ("jax_push",), variants=("smoke",)))
  result = reproduce.reproduce("tiny", "cpu", str(tmp_path), seeds=2, steps=256, parallel=2,
                               poll=0.2)
  out = capsys.readouterr().out
  assert out.count("finished ") == 2 and result["missing"] == []
  for run in result["tasks"]["jax_push"]["runs"]:
    assert run["seeds"] == 2 and run["env_steps"] == 256 and run["finished"]
    assert 0 <= run["final_mean"] <= 1
  assert (tmp_path / "figuretiny_cpu" / "figuretiny.png").exists()


def test_a_grid_names_a_run_per_value_and_the_table_counts_the_teachers_answers(tmp_path):
  assert sweep.grid(None) == [("", None)]
  assert sweep.grid("teacher.query_fraction=1,0.25") == [
      ("_query_fraction1", "teacher.query_fraction=1"),
      ("_query_fraction0.25", "teacher.query_fraction=0.25")]
  with pytest.raises(ConfigError, match="--grid=teacher.query_fraction: give field=v1,v2"):
    sweep.grid("teacher.query_fraction")
  # Two logged rows: 1000 env steps at a quarter, then 3000 more at half.
  workdir = tmp_path / "rpd_mse_query_fraction0.25_s0"
  os.makedirs(workdir)
  with open(workdir / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"env_steps": 1000, "teacher/calls_per_step": 0.25,
                        "time/elapsed_s": 10.0, "eval/success_rate": 0.6}) + "\n")
    f.write(json.dumps({"env_steps": 4000, "teacher/calls_per_step": 0.5,
                        "time/elapsed_s": 30.0, "eval/success_rate": 0.9}) + "\n")
  assert plot.cost(str(workdir)) == {"teacher_calls": 1750.0, "wall_s": 30.0}
  rows = plot.summarise(plot.group_runs([str(tmp_path)]), "eval/success_rate", 0.8)
  assert "| rpd_mse_query_fraction0.25 | 1 | 1,000 / 4,000 | 4,000 | 0.900 +- 0.000 | 1,750 | " \
         "30 s | 4,000 |" in plot.table(rows, "eval/success_rate", 0.8)
