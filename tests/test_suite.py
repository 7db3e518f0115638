"""The device suite's quick run, as CI runs it: every section measured, written and readable."""

import json
import subprocess
import sys

import pytest

from rpd_jax.bench import suite


def test_quick_suite_writes_every_section(tmp_path):
  out = tmp_path / "suite"
  proc = subprocess.run([sys.executable, "-m", "rpd_jax.bench.suite", f"--out={out}", "--quick"],
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = (out / "suite.md").read_text()
  assert "FAILED" not in report
  for name in suite.SECTIONS:
    assert f"## {name}" in report
  assert "- jax_device: cpu" in report and "- mani_skill: 3.0.1" in report
  data = json.loads((out / "suite.json").read_text())
  sections = data["sections"]
  assert data["quick"] and list(sections) == list(suite.SECTIONS)

  sim = sections["simulator"]["rows"]
  assert [(r["obs"], r["num_envs"]) for r in sim] == [("state", 2)]
  assert all(r["raw_steps_per_s"] > 0 and r["bridge_steps_per_s"] > 0 for r in sim)

  teacher = sections["teacher"]["rows"]
  assert [(r["model"], r["batch"]) for r in teacher] == [("tiny", 1), ("tiny", 8), ("small", 8)]
  assert all(r["samples_per_s"] > 0 and r["compile_s"] > 0 and r["peak_mb"] > 0
             for r in teacher)
  assert teacher[2]["gflop_per_sample"] == pytest.approx(14.1, rel=0.05)

  training = {r["setting"]: r for r in sections["training"]["rows"]}
  assert list(training) == ["state student, PPO", "state student, RPD-MSE"]
  for label, row in training.items():
    assert row["env_steps_per_s"] > 0
    assert 0 < row["simulate_s"] + row["act_s"] <= row["rollout_s"]
    if "RPD-MSE" in label:
      assert row["loss"] == "mse" and row["teacher_s"] is not None and row["vs_ppo"] > 0
    else:
      assert row["loss"] == "none" and row["teacher_s"] is None

  learning = sections["learning"]["rows"]
  assert [r["loss"] for r in learning] == ["rpd_mse", "ppo"]
  for row in learning:
    steps = [s for s, _, _ in row["curve"]]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] == row["env_steps"]
  assert (out / "learning.png").stat().st_size > 1000

  students = sections["seeds"]["rows"]
  assert [r["num_seeds"] for r in students] == [1, 2]
  for row in students:
    assert row["env_steps_per_s"] == pytest.approx(
        row["num_seeds"] * row["env_steps_per_s_per_student"])
    assert row["vs_one"] == pytest.approx(row["env_steps_per_s"] / students[0]["env_steps_per_s"])


def test_suite_rejects_unknown_sections_and_a_missing_out(tmp_path):
  for argv in ([f"--out={tmp_path}", "--sections=teacher,physics"], []):
    proc = subprocess.run([sys.executable, "-m", "rpd_jax.bench.suite", *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --")


def test_isolated_call_returns_reports_and_kills_the_whole_group_on_a_timeout():
  from rpd_jax.bench import isolated  # pylint: disable=g-import-not-at-top
  from rpd_jax.errors import RunError  # pylint: disable=g-import-not-at-top
  assert isolated.call("json:dumps", {"obj": [1, 2]}, timeout_s=60) == "[1, 2]"
  with pytest.raises(RunError, match=r"json:loads failed \(exit status 1\):\n(.|\n)*"
                     r"JSONDecodeError"):
    isolated.call("json:loads", {"s": "not json"}, timeout_s=60)
  # A child with a grandchild (as ManiSkill's workers are): both go at the limit.
  marker = "sleep 987"
  with pytest.raises(isolated.Timeout, match="ran past its limit of 3 s"):
    isolated.call("subprocess:run", {"args": ["bash", "-c", f"{marker} & {marker}"]},
                  timeout_s=3)
  left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
  assert not left.strip(), f"processes left behind: {left}"
