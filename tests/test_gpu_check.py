"""The GPU check's runner on a CPU: checks in their own processes, the report written as it goes,
"not run" where the machine cannot run a check, a check past its limit failed and the rest of
the budget respected. (Its ManiSkill smoke runs take minutes on 2 CPU cores; they share their
code with tests/test_teacher_pipeline.py's training of the same config.)"""

import json
import subprocess
import sys

from rpd_jax.bench import gpu_check


def run_check(*args):
  return subprocess.run([sys.executable, "-m", "rpd_jax.bench.gpu_check", *args],
                        capture_output=True, text=True, timeout=600)


def test_checks_report_as_they_go_and_not_run_is_no_failure(tmp_path):
  proc = run_check(f"--out={tmp_path}", "--checks=environment,vulkan,physx_cuda", "--quick")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "gpu_check.json").read_text())["checks"]
  assert list(report) == ["environment", "vulkan", "physx_cuda"]
  env = report["environment"]
  assert env["status"] == "ok" and env["versions"]["mani-skill"] == "3.0.1"
  assert env["jax_devices"] and env["cpu_cores"] >= 1
  assert report["vulkan"]["status"] == "ok" and report["vulkan"]["device"]
  if gpu_check._nvidia_gpus():  # pylint: disable=protected-access
    assert report["vulkan"]["render_backend"] == "gpu"
  cuda = report["physx_cuda"]
  assert cuda["status"] == "not run" and "PhysX GPU library is absent" in cuda["summary"]
  markdown = (tmp_path / "gpu_check.md").read_text()
  assert "| physx_cuda | not run |" in markdown and "| environment | ok |" in markdown
  for name in report:
    assert (tmp_path / "logs" / f"{name}.log").exists()


def test_a_spent_budget_leaves_the_rest_not_run(tmp_path):
  proc = run_check(f"--out={tmp_path}", "--checks=environment,vulkan", "--budget_s=5")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "gpu_check.json").read_text())["checks"]
  for name in ("environment", "vulkan"):
    assert report[name]["status"] == "not run" and report[name]["seconds"] < 1
    assert report[name]["summary"] == "the budget of 5 s was spent"


def test_a_failed_check_is_reported_with_its_error():
  results = {"environment": {"status": "ok", "seconds": 9.2, "summary": "Python 3.12 | 16 cores"},
             "vulkan": {"status": "FAILED", "seconds": 3.0, "summary": "no Vulkan device",
                        "error": "no Vulkan device for SAPIEN: ...\nFix: ..."}}
  text = gpu_check.render({"budget": "450 s"}, results)
  assert "| environment | ok | 9 | Python 3.12 / 16 cores |" in text  # a | would split the row
  assert "| vulkan | FAILED | 3 | no Vulkan device |" in text
  assert "## vulkan: FAILED\n\n```\nno Vulkan device for SAPIEN: ...\nFix: ...\n```" in text


def test_bad_input_is_one_error_line():
  for args, message in ((["--out=x", "--checks=physics"], "error: --checks=physics: use some"),
                        (["--checks=vulkan"], "error: --out is required"),
                        (["--bundle=x"], "error: --bundle needs --wheelhouse=DIR"),
                        (["--out=x", "--wheelhouse=/nonexistent"],
                         "error: --wheelhouse=/nonexistent is not a wheelhouse")):
    proc = run_check(*args)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(message), proc.stderr


def test_the_bundle_holds_what_the_check_reads_and_the_wheelhouse(tmp_path):
  house = tmp_path / "house"
  house.mkdir()
  (house / "SHA256SUMS").write_text("")
  out = tmp_path / "bundle"
  proc = run_check(f"--bundle={out}", f"--wheelhouse={house}")
  assert proc.returncode == 0, proc.stderr
  assert "python3 -m rpd_jax.bench.gpu_check --wheelhouse=wheelhouse --out=gpu_check" in proc.stdout
  teachers = sorted(p.name for p in (out / "rpd_jax/teachers/checkpoints").iterdir() if p.is_dir())
  assert teachers == list(gpu_check.BUNDLE_TEACHERS)
  assert (out / "experiments/pushcube.py").exists() and (out / "wheelhouse/SHA256SUMS").exists()
  assert (out / "rpd_jax/bench/gpu_check.py").exists() and not (out / "tests").exists()
  size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
  assert size < 10e6  # the code and one 7 MB teacher: the wheelhouse has the rest of 64 MiB
