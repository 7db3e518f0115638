"""Reliability drills: real signals, kills, damaged checkpoints, a full disk, a silent teacher.

On the pure-JAX env every stop must be followed by a resume that ends with the same metrics as
an uninterrupted run. The runs are ``experiments/jax_push.py:smoke`` at 48 iterations, with
checkpoints every 10, so that a stop between two checkpoints is visible.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rpd_jax import config as config_lib
from rpd_jax import students, trainer
from rpd_jax.checkpoint import CheckpointError, Checkpointer
from rpd_jax.errors import ConfigError, RunError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.total_env_steps=6144", "--config.checkpoint_every=10"]


def smoke_config(total=6144, checkpoint_every=10):
  c = config_lib.load(os.path.join(REPO, "experiments", "jax_push.py:smoke"))
  c.total_env_steps, c.checkpoint_every = total, checkpoint_every
  return c


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run's metrics."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  trainer.train_and_evaluate(smoke_config(), workdir)
  return metrics(workdir)


@pytest.fixture
def start():
  """start(workdir): the smoke run as a subprocess in its own process group; whatever a test
  leaves running is killed at its end."""
  procs = []

  def start_(workdir, *extra):
    cmd = [sys.executable, "-m", "rpd_jax.train", "--config=experiments/jax_push.py:smoke",
           *OVERRIDES, f"--workdir={workdir}", *extra]
    procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True))
    return procs[-1]

  yield start_
  for proc in procs:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.communicate()


def wait_for_rows(proc, workdir, rows):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and sum(1 for _ in open(path)) >= rows:
      return
    time.sleep(0.02)
  raise AssertionError(f"the run logged fewer than {rows} rows: {proc.communicate()}")


def resume(start, workdir):
  proc = start(workdir)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err
  assert "resumed" in err or "final evaluation" in out


# SIGTERM (a cluster's preemption); SIGINT to a process group is the ManiSkill run's test
# (tests/test_maniskill.py), and a second Ctrl-C has its own test below.
@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_signal_saves_the_last_iteration_and_the_resume_is_identical(tmp_path, straight,
                                                                       start, signum):
  workdir = str(tmp_path / "run")
  proc = start(workdir)
  wait_for_rows(proc, workdir, 13)  # past the checkpoint at 10
  sent = time.time()
  os.killpg(proc.pid, signum)  # the whole process group, as Ctrl-C in a terminal
  out, err = proc.communicate(timeout=60)
  took = time.time() - sent
  assert proc.returncode == 128 + signum, err
  assert took < 15, f"stopping took {took:.1f} s"
  assert "Traceback" not in err
  last = err.strip().splitlines()[-1]
  name = signal.Signals(signum).name
  assert last.startswith(f"stopped by {name} after iteration "), last
  iteration = int(last.split("after iteration ")[1].split(":")[0])
  assert iteration >= 13
  assert f"saved {os.path.join(workdir, 'checkpoints', str(iteration))}" in last
  assert "resume with: python -m rpd_jax.train --config=experiments/jax_push.py:smoke" in last
  assert str(iteration) in os.listdir(os.path.join(workdir, "checkpoints"))
  resume(start, workdir)
  assert metrics(workdir) == straight


def test_sigkill_loses_only_the_iterations_since_the_last_checkpoint(tmp_path, straight, start):
  workdir = str(tmp_path / "run")
  proc = start(workdir)
  wait_for_rows(proc, workdir, 17)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.communicate(timeout=60)
  assert sorted(map(int, os.listdir(os.path.join(workdir, "checkpoints"))))[-1] in (10, 20)
  resume(start, workdir)
  assert metrics(workdir) == straight


def test_a_second_ctrl_c_quits_at_once_and_leaves_a_resumable_run(tmp_path, straight, start):
  workdir = str(tmp_path / "run")
  proc = start(workdir)
  wait_for_rows(proc, workdir, 5)
  os.killpg(proc.pid, signal.SIGINT)
  os.killpg(proc.pid, signal.SIGINT)
  proc.communicate(timeout=60)
  assert proc.returncode == 130
  resume(start, workdir)
  assert metrics(workdir) == straight


def _crash_after(iteration, monkeypatch):
  """Makes the trainer die (as a kill would) in the update after ``iteration``."""
  make_update = students.Students.make_update

  def crashing(self, update_one):
    update = make_update(self, update_one)

    def wrapped(states, *rest):
      if int(states.iteration[0]) == iteration:
        raise KeyboardInterrupt("simulated kill")
      return update(states, *rest)
    return wrapped

  monkeypatch.setattr(students.Students, "make_update", crashing)


def _damage(step_dir, how):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  data = sorted(files, key=os.path.getsize)[-1]  # the largest: the array data
  if how == "truncated":
    with open(data, "r+b") as f:
      f.truncate(os.path.getsize(data) // 2)
  else:
    for f in files:
      if "manifest" in f or f.endswith("_METADATA"):
        os.remove(f)


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
    tmp_path, monkeypatch, capsys, how):
  config = smoke_config(total=1024, checkpoint_every=2)  # 8 iterations, checkpoints 2 .. 8
  reference = str(tmp_path / "straight")
  trainer.train_and_evaluate(config, reference)
  workdir = str(tmp_path / "run")
  _crash_after(6, monkeypatch)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  checkpoints = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(checkpoints)) == ["2", "4", "6"]
  _damage(os.path.join(checkpoints, "6"), how)
  trainer.train_and_evaluate(config, workdir)
  warning = capsys.readouterr().out
  assert f"warning: checkpoint 6 in {checkpoints} cannot be restored" in warning
  assert "resuming from checkpoint 4" in warning
  assert os.listdir(os.path.join(workdir, "damaged_checkpoints")) == ["6"]  # kept, not deleted
  assert metrics(workdir) == metrics(reference)


def test_no_restorable_checkpoint_is_one_error_and_nothing_moves(tmp_path, monkeypatch):
  config = smoke_config(total=1024, checkpoint_every=2)
  workdir = str(tmp_path / "run")
  _crash_after(4, monkeypatch)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  checkpoints = os.path.join(workdir, "checkpoints")
  for step in ("2", "4"):
    _damage(os.path.join(checkpoints, step), "truncated")
  with pytest.raises(ConfigError, match=f"no checkpoint in {checkpoints} can be restored .*"
                     "move that folder away to start this run afresh"):
    trainer.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(checkpoints)) == ["2", "4"]
  assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))


@pytest.fixture
def tiny_disk(tmp_path):
  """A 512 KiB tmpfs (needs permission to mount; skipped, saying why, without it)."""
  disk = tmp_path / "disk"
  disk.mkdir()
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)],
                          capture_output=True, text=True)
  if result.returncode:
    pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
  try:
    yield str(disk)
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(tiny_disk):
  small = {"w": np.zeros(16, np.float32)}
  ckpt = Checkpointer(tiny_disk, max_to_keep=3)
  ckpt.save(1, small)
  with pytest.raises(CheckpointError, match=r"could not write checkpoint 2 to .*: the disk is "
                     r"full \(.* bytes free, up to .* needed\); checkpoint 1 is intact\. Free "
                     r"space and run the same command"):
    ckpt.save(2, {"w": np.random.default_rng(0).random(300_000, np.float32)})
    ckpt.close()
  step, tree = Checkpointer(tiny_disk, max_to_keep=3).restore_latest(small)
  assert step == 1 and np.array_equal(tree["w"], small["w"])


def test_a_full_disk_stops_training_with_one_line(tiny_disk):
  result = subprocess.run(
      [sys.executable, "-m", "rpd_jax.train", "--config=experiments/jax_push.py:smoke",
       "--config.network.hidden=(512, 512)", f"--workdir={tiny_disk}/run"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: could not write checkpoint") and "the disk is full" in last
  assert "Traceback" not in result.stderr


def hanging_teacher():
  """A teacher server builder whose first call never returns (see the tests below)."""
  from rpd_jax.teachers.base import Teacher  # pylint: disable=g-import-not-at-top

  def apply_fn(params, obs, prev_obs, is_first, key, num_samples):
    time.sleep(3600)  # runs while the server traces its first call
  return Teacher(params={}, apply_fn=apply_fn)


def dying_teacher():
  from rpd_jax.teachers.base import Teacher  # pylint: disable=g-import-not-at-top

  def apply_fn(params, obs, prev_obs, is_first, key, num_samples):
    os._exit(3)
  return Teacher(params={}, apply_fn=apply_fn)


@pytest.mark.parametrize("builder,message", [
    ("hanging_teacher", r"did not answer in 2 tries of 1 s; it was stopped"),
    ("dying_teacher", r"died \(exit code 3\)")])
def test_a_teacher_server_that_stops_answering_fails_within_its_timeout(builder, message):
  from rpd_jax.bench.remote import RemoteTeacher  # pylint: disable=g-import-not-at-top
  server = RemoteTeacher(f"{__name__}:{builder}", timeout=1.0, retries=1)
  obs = {"x": np.zeros((2, 3), np.float32)}
  started = time.time()
  with pytest.raises(RunError, match=message):
    server(obs, obs, np.zeros(2, bool), seed=0)
  assert time.time() - started < 20
  server.close()


def test_a_damaged_teacher_checkpoint_fails_before_any_simulator_starts(tmp_path):
  from rpd_jax.octo import hub  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "teacher"
  shutil.copytree(hub.SHIPPED / "octo-tiny-pushcube", folder)
  blob = next(folder.glob("*/default/checkpoint"))
  blob.write_bytes(blob.read_bytes()[:1000])
  result = subprocess.run(
      [sys.executable, "-m", "rpd_jax.train", "--config=experiments/pushcube.py:smoke",
       f"--config.teacher.kwargs.checkpoint={folder}", f"--workdir={tmp_path / 'run'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: the Octo checkpoint {folder}: the parameters in "), last
  assert "cannot be read" in last and "incomplete or damaged" in last
  assert "Traceback" not in result.stderr and "env maniskill" not in result.stderr


def test_log_std_bounds_hold_the_policy_std(tmp_path):
  config = smoke_config(total=512)
  config.distill.loss = "bc"
  config.network.log_std_min = -0.6
  final = trainer.train_and_evaluate(config, str(tmp_path))
  assert final
  assert all(r["train/log_std"] >= -0.6 - 1e-6 for r in metrics(tmp_path))
  config.network.log_std_min = 0.0  # above log_std_init -0.5
  with pytest.raises(ConfigError, match="log_std_init=-0.5 is outside"):
    config_lib.validate(config)


def test_the_guard_defers_a_signal_until_the_save_is_done():
  from rpd_jax import preemption  # pylint: disable=g-import-not-at-top
  order, before = [], signal.getsignal(signal.SIGTERM)
  with preemption.Guard() as guard:
    with pytest.raises(preemption.Interrupt):
      with guard.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        order.append("the save finished")
    order.append("then the interrupt")
  assert order == ["the save finished", "then the interrupt"]
  assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back
