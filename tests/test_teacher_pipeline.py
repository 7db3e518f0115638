"""The teacher pipeline on ManiSkill's CPU simulation: record demonstrations, then train a
student with the shipped Octo teacher (the default of experiments/pushcube.py)."""

import json
import os

import numpy as np
import pytest

from rpd_jax import config as config_lib
from rpd_jax.pipeline import demos as demos_lib

pytestmark = [pytest.mark.maniskill, pytest.mark.usefixtures("vulkan_device")]


def test_record_keeps_successful_episodes_and_resumes(tmp_path):
  out = str(tmp_path / "push")
  meta = demos_lib.record("PushCube-v1", 2, out, image_size=32, num_envs=1, seed=5,
                          progress=False)
  assert meta["kept"] == 2 and meta["attempts"] >= 2
  files = demos_lib.episode_files(out)
  assert [os.path.basename(f) for f in files][:1] == ["episode_0000005.npz"]
  with np.load(files[0]) as ep:
    n = ep["action"].shape[0]
    assert 1 <= n <= 50
    assert ep["image"].shape == (n, 32, 32, 3) and ep["image"].dtype == np.uint8
    assert ep["state"].shape == (n, 35)
    assert np.all(np.abs(ep["action"]) <= 1.0)
    assert int(ep["seed"]) == 5
    assert str(ep["instruction"]) == "push the cube away from the robot base"
    assert ep["reward"][-1] == pytest.approx(1.0)  # normalized dense reward at success
    # Frames change as the arm moves (the image is the observation each action was taken on).
    assert not np.array_equal(ep["image"][0], ep["image"][-1])
  # Asking for more continues the same folder with the next seeds.
  meta = demos_lib.record("PushCube-v1", 3, out, image_size=32, num_envs=1, seed=5,
                          progress=False)
  assert meta["kept"] == 3 and len(demos_lib.episode_files(out)) == 3
  demos = demos_lib.load(out)
  assert demos.episodes == 3 and demos.image.shape[1:] == (32, 32, 3)
  saved = json.load(open(os.path.join(out, "metadata.json")))
  assert saved["env_id"] == "PushCube-v1" and saved["image_size"] == 32
  with pytest.raises(config_lib.ConfigError, match="image_size=32"):
    demos_lib.record("PushCube-v1", 4, out, image_size=64, num_envs=1, progress=False)


def test_pushcube_default_trains_with_the_shipped_octo_teacher(repo_root, tmp_path):
  from rpd_jax import trainer  # pylint: disable=g-import-not-at-top
  from rpd_jax.octo import hub  # pylint: disable=g-import-not-at-top
  if not (hub.SHIPPED / "octo-tiny-pushcube").is_dir():
    pytest.fail("the shipped teacher rpd_jax/teachers/checkpoints/octo-tiny-pushcube is missing")
  config = config_lib.load(os.path.join(repo_root, "experiments", "pushcube.py:smoke"))
  config_lib.validate(config)
  final = trainer.train_and_evaluate(config, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  distill = [r["loss/distill"] for r in rows if "loss/distill" in r]
  assert distill and np.all(np.isfinite(distill)) and max(distill) > 0
  assert [r["teacher/calls_per_step"] for r in rows if "teacher/calls_per_step" in r][0] == 1.0
  assert 0.0 <= final["eval/success_rate"] <= 1.0
