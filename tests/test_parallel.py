"""Data parallelism: D devices x N/D envs learn as 1 device x N envs, in one process and across two
processes on this machine (CPU collectives), and a run resumes on another process count."""

import json
import os
import socket
import subprocess
import sys

import jax
import pytest

from rpd_jax import config as config_lib
from rpd_jax import parallel
from rpd_jax.errors import ConfigError

SMOKE = "experiments/jax_push.py:smoke"  # 8 envs, 4 iterations of 128 steps, evaluations, saves


def _train(repo_root, workdir, *overrides, env=None, background=False):
  cmd = [sys.executable, "-m", "rpd_jax.train", f"--config={SMOKE}", f"--workdir={workdir}",
         *overrides]
  env = {**os.environ, **(env or {})}
  if background:
    return subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _processes(repo_root, workdir, *overrides, count=2):
  """``count`` processes of one run on localhost; their (returncode, stderr)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [_train(repo_root, workdir, *overrides, background=True,
                  env={"RPD_JAX_COORDINATOR": f"localhost:{port}",
                       "RPD_JAX_NUM_PROCESSES": str(count), "RPD_JAX_PROCESS_ID": str(i)})
           for i in range(count)]
  return [(p.wait(timeout=600), p.communicate()[1]) for p in procs]


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _assert_same_learning(a, b):
  assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == [1, 2, 3, 4]
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:  # the same math; only the order of float reductions may differ
      assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-6), (x["iteration"], k)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_device")
  _train(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), workdir)
  return _metrics(workdir)


def test_two_devices_in_one_process_learn_as_one_under_a_teacher_budget(repo_root, tmp_path):
  """With a teacher budget (4 of 16 steps labelled, the teacher's keys observed on demand):
  the labelled steps and the on-demand masks are split over the devices like the envs. (The
  two-process test below runs without one.)"""
  budget = "--config.teacher.query_fraction=0.25"
  _train(repo_root, tmp_path / "one", budget)
  proc = _train(repo_root, tmp_path / "two", budget, "--config.mesh.data=2",
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert "teacher budget: 4 of 16 steps per rollout labelled" in proc.stderr
  metrics = _metrics(tmp_path / "two")
  _assert_same_learning(_metrics(tmp_path / "one"), metrics)
  assert metrics[-1]["teacher/calls_per_step"] == 0.25
  assert metrics[-1]["loss/grad_norm"] > 0 and "eval/success_rate" in metrics[-1]


def test_two_processes_learn_as_one_device_and_resume_as_one_process(repo_root, tmp_path,
                                                                     one_device):
  # Two processes, one CPU device each, run the first half and save collectively ...
  results = _processes(repo_root, tmp_path, "--config.mesh.data=2",
                       "--config.total_env_steps=256")
  for returncode, stderr in results:
    assert returncode == 0, stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "checkpoints"))[:1] == ["2"]
  # ... only the first one writes the logs (two processes' rows would appear twice) ...
  assert [r["iteration"] for r in _metrics(tmp_path)] == [1, 2]
  # ... and one process on one device finishes the run from that checkpoint.
  proc = _train(repo_root, tmp_path)
  assert "resumed from iteration 2" in proc.stderr
  _assert_same_learning(one_device, _metrics(tmp_path))


def test_processes_with_different_configs_stop_with_one_clear_error(repo_root, tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [_train(repo_root, tmp_path, "--config.mesh.data=2", f"--config.seed={seed}",
                  background=True,
                  env={"RPD_JAX_COORDINATOR": f"localhost:{port}", "RPD_JAX_NUM_PROCESSES": "2",
                       "RPD_JAX_PROCESS_ID": str(i)})
           for i, seed in enumerate((0, 1))]
  for p in procs:
    p.wait(timeout=300)
    last = p.communicate()[1].strip().splitlines()[-1]
    assert p.returncode != 0
    assert last.startswith("error: the processes of this run were given different configs: "
                           "process(es) 1 differ from process 0"), last


def test_mesh_settings_are_checked(monkeypatch):
  c = config_lib.load(SMOKE)
  c.mesh.data = 3
  with pytest.raises(ConfigError, match=r"config.mesh.data=3 must be >= 1 and divide "
                                        r"config.env.num_envs=8"):
    config_lib.validate(c)
  assert parallel.make_mesh(1) is None  # one device, one process: nothing is sharded
  with pytest.raises(ConfigError, match=r"needs 2 devices, but JAX sees 1 .*"
                                        r"xla_force_host_platform_device_count=2"):
    parallel.make_mesh(2 * jax.device_count())


@pytest.mark.maniskill
@pytest.mark.usefixtures("vulkan_device")
def test_two_processes_each_with_its_own_maniskill_simulator(repo_root, tmp_path):
  """One simulator per process (parallel.ProcessEnvs): each process steps its own ManiSkill
  env of N / 2 envs, seeded as rows of one N-env run; the first iteration's metrics equal
  those of one process with all N. (Later iterations are not compared: two identical
  one-process ManiSkill CPU runs already differ from the second iteration on.) Under a teacher
  budget: each process observes the teacher's key (``privileged``) on the steps and rows of
  the one plan, and the teacher labels the same transitions."""
  config = ["--config=experiments/pushcube.py:scripted,smoke", "--config.env.num_envs=2",
            "--config.eval_envs=1", "--config.teacher.query_fraction=0.5"]
  one = tmp_path / "one"
  subprocess.run([sys.executable, "-m", "rpd_jax.train", *config, f"--workdir={one}"],
                 cwd=repo_root, check=True, capture_output=True, timeout=600)
  two = tmp_path / "two"
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "rpd_jax.train", *config, "--config.mesh.data=2",
       f"--workdir={two}"], cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env={**os.environ, "RPD_JAX_COORDINATOR": f"localhost:{port}",
                      "RPD_JAX_NUM_PROCESSES": "2", "RPD_JAX_PROCESS_ID": str(i)})
      for i in range(2)]
  for p in procs:
    assert p.wait(timeout=600) == 0, p.communicate()[1][-3000:]
  (a,), (b,) = _metrics(one), _metrics(two)
  assert a.keys() == b.keys() and len(a) > 15
  for k in a:
    assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
