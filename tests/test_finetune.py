"""Demonstration format and loader, Octo fine-tuning, and its checkpoints as teachers."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import finetune_octo
from rpd_jax import octo
from rpd_jax.errors import ConfigError
from rpd_jax.pipeline import demos as demos_lib
from rpd_jax.pipeline import finetune
from rpd_jax.teachers import octo as octo_teacher


def write_fake_demos(folder, lengths, image_size=32, instruction="push the cube", seed=0):
  """Episodes in the on-disk format of rpd_jax.pipeline.demos, images encoding the action."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for k, n in enumerate(lengths):
    action = rng.uniform(-1, 1, (n, 7)).astype(np.float32)
    action[:, -1] = np.sign(action[:, -1])
    image = np.zeros((n, image_size, image_size, 3), np.uint8)
    image[..., 0] = ((action[:, 0] + 1) * 127).astype(np.uint8)[:, None, None]
    np.savez_compressed(os.path.join(folder, f"episode_{k:07d}.npz"), image=image, action=action,
                        state=np.zeros((n, 5), np.float32), reward=np.zeros(n, np.float32),
                        seed=np.int64(k), env_id=np.str_("Fake-v1"),
                        instruction=np.str_(instruction))
  with open(os.path.join(folder, "metadata.json"), "w") as f:
    json.dump({"format_version": demos_lib.FORMAT_VERSION, "env_id": "Fake-v1",
               "instruction": instruction, "image_size": image_size}, f)
  return folder


def test_load_concatenates_episodes_with_boundaries(tmp_path):
  folder = write_fake_demos(str(tmp_path / "d"), [3, 5])
  demos = demos_lib.load(folder)
  assert len(demos) == 8 and demos.episodes == 2
  np.testing.assert_array_equal(demos.episode_start, [0, 0, 0, 3, 3, 3, 3, 3])
  np.testing.assert_array_equal(demos.episode_end, [3, 3, 3, 8, 8, 8, 8, 8])
  assert demos.instructions == ("push the cube",)


def test_window_indices_pad_at_episode_start_and_end(tmp_path):
  demos = demos_lib.load(write_fake_demos(str(tmp_path / "d"), [3, 5]))
  # Step 3 starts episode 2; step 1 is the middle of episode 1 (ends at 3).
  frames, pad, actions, action_pad = demos_lib.window_indices(demos, np.array([3, 1]), 2, 4)
  np.testing.assert_array_equal(frames, [[3, 3], [0, 1]])
  np.testing.assert_array_equal(pad, [[False, True], [True, True]])
  np.testing.assert_array_equal(actions[1], [[0, 1, 2, 2], [1, 2, 2, 2]])
  np.testing.assert_array_equal(action_pad[1], [[True, True, True, False],
                                                [True, True, False, False]])
  np.testing.assert_array_equal(actions[0, 1], [3, 4, 5, 6])
  assert action_pad[0, 1].all()


def test_batches_stream_jax_arrays(tmp_path):
  demos = demos_lib.load(write_fake_demos(str(tmp_path / "d"), [4, 6]))
  batch = next(demos_lib.batches(demos, batch_size=5, window=2, horizon=4, seed=0))
  assert isinstance(batch["image"], jax.Array)
  assert batch["image"].shape == (5, 2, 32, 32, 3) and batch["image"].dtype == jnp.uint8
  assert batch["action"].shape == (5, 2, 4, 7)
  assert batch["action_pad_mask"].shape == (5, 2, 4)


def test_load_rejects_a_folder_without_metadata(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m rpd_jax.pipeline.demos"):
    demos_lib.load(str(tmp_path))


def test_statistics_keep_the_gripper_raw_in_octo_convention():
  actions = finetune.to_octo_gripper(np.array([[0.5] * 6 + [-1.0], [0.1] * 6 + [1.0]]))
  np.testing.assert_array_equal(actions[:, -1], [0.0, 1.0])
  stats = finetune.dataset_statistics(actions, 1)["action"]
  assert stats["mask"].tolist() == [True] * 6 + [False]
  normed = octo.normalize(jnp.asarray(actions), stats, 5.0)
  np.testing.assert_allclose(normed[:, 0], [1.0, -1.0], atol=1e-5)
  np.testing.assert_array_equal(normed[:, -1], [0.0, 1.0])


def test_trainable_labels_by_mode():
  label = finetune.trainable_label
  t5 = ("octo_transformer", "task_tokenizers_language", "hf_model", "x")
  mlp = ("octo_transformer", "BlockTransformer_0", "Transformer_0", "encoderblock_0",
         "MlpBlock_0", "Dense_0", "kernel")
  attn = mlp[:4] + ("MultiHeadDotProductAttention_0", "query", "kernel")
  head = ("heads_action", "diffusion_model", "x")
  assert [label(p, "full") for p in (t5, mlp, attn, head)] == ["frozen", "train", "train",
                                                               "train"]
  assert [label(p, "head_only") for p in (t5, mlp, attn, head)] == ["frozen", "frozen",
                                                                    "frozen", "train"]
  assert [label(p, "head_mlp") for p in (t5, mlp, attn, head)] == ["frozen", "train", "frozen",
                                                                   "train"]


def test_augment_keeps_shape_and_changes_pixels():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (3, 2, 32, 32, 3)), jnp.uint8)
  out = finetune.augment(images, jax.random.key(0), shift=4, color=0.1)
  assert out.shape == images.shape and out.dtype == jnp.uint8
  assert not np.array_equal(np.asarray(out), np.asarray(images))
  np.testing.assert_array_equal(finetune.augment(images, jax.random.key(0), 0, 0.0), images)


def _smoke_config(folder):
  c = finetune_octo.get_config("smoke")
  c.data.folders = (folder,)
  return c


def test_finetune_from_scratch_writes_an_octo_checkpoint_the_teacher_loads(tmp_path):
  # Demonstrations in ManiSkill's trajectory format (the project's own: the tests below).
  folder = write_maniskill_trajectory(str(tmp_path / "push"), [6, 9, 7], [True] * 3)
  workdir = str(tmp_path / "ckpt")
  c = _smoke_config(folder)
  c.num_steps = 40
  c.log_every = 10
  c.save_every = 20
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 5
  last = finetune.finetune(c, workdir, progress=False)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [10, 20, 30, 40]
  assert rows[-1]["loss"] < rows[0]["loss"]  # it learns
  assert os.path.isfile(os.path.join(workdir, "loss.png"))
  assert last["step"] == 40

  model = octo.load_pretrained(workdir)
  assert sorted(os.listdir(workdir)).count("40") == 1
  assert model.skip_first_step  # written into config.json by the fine-tuning
  assert model.example_batch["observation"]["image_primary"].shape == (1, 1, 32, 32, 3)
  stats = json.load(open(os.path.join(workdir, "dataset_statistics.json")))
  assert stats["action"]["mask"] == [True] * 6 + [False]
  assert stats["num_trajectories"] == 3

  teacher = octo_teacher.make_teacher(workdir)  # no language input: no instruction
  obs = {"rgb": jnp.zeros((2, 64, 64, 3), jnp.uint8)}
  out = teacher.apply_fn(teacher.params, obs, obs, jnp.ones(2, bool), jax.random.key(0), 3)
  assert out.action.shape == (2, 7) and out.samples.shape == (3, 2, 7)
  assert np.all(np.abs(np.asarray(out.action)) <= 1.0)


def test_finetune_from_a_pretrained_checkpoint_copies_matching_params(tmp_path,
                                                                     tiny_tokenizer_dir):
  # A "pretrained" Octo in the official layout: language input, goal images, 64x64, 1.5 config.
  pretrained = octo.init_random("tiny", window=2, primary_size=64, seed=3)
  pre_dir = str(tmp_path / "pretrained")
  octo.save_pretrained(pretrained, pre_dir, 100)
  folder = write_fake_demos(str(tmp_path / "d"), [5, 6])
  c = _smoke_config(folder)
  c.pretrained = pre_dir
  c.tokenizer_dir = str(tiny_tokenizer_dir)
  c.mode = "head_only"
  c.num_steps = 3
  model, loaded = finetune.build_model(c, image_size=32, action_dim=7)
  _, report = finetune.transfer_params(loaded.params, model.params)
  copied = {"/".join(p) for p in report.copied}
  assert any("hf_model" in p for p in copied)  # the T5 encoder
  assert any("SmallStem16" in p for p in copied)
  # 32x32 images make 4 tokens instead of 16: the observation position embedding is new.
  assert any("obs_primary_pos_embedding" in "/".join(p) for p in report.skipped)

  workdir = str(tmp_path / "ckpt")
  finetune.finetune(c, workdir, progress=False)
  tuned = octo.load_pretrained(workdir, t5_config=loaded.spec.task_tokenizers[0][1].t5)
  flat = lambda m: {"/".join(k): np.asarray(v)
                    for k, v in jax.tree_util.tree_flatten_with_path(m.params)[0]
                    for k in [[str(getattr(e, "key", e)) for e in k]]}
  before, after = flat(loaded), flat(tuned)
  stem = [k for k in after if "SmallStem16" in k]
  head = [k for k in after if k.startswith("heads_action")]
  assert stem and all(np.array_equal(before[k], after[k]) for k in stem)  # frozen
  assert any(not np.array_equal(before[k], after[k]) for k in head)  # trained
  assert tuned.window_size == 1


def test_validate_names_the_bad_value():
  c = finetune_octo.get_config()
  c.mode = "head_only"
  with pytest.raises(finetune.FinetuneError, match="config.mode='head_only'.*pretrained"):
    finetune.validate(c)
  c = finetune_octo.get_config()
  c.data.window = 3
  with pytest.raises(finetune.FinetuneError, match="window=3"):
    finetune.validate(c)
  c = finetune_octo.get_config()
  c.num_steps = 40  # the default warmup is 300 steps: no cosine decay would be left
  with pytest.raises(finetune.FinetuneError, match="warmup_steps=300 .*num_steps=40"):
    finetune.validate(c)


def test_skip_first_step_starts_one_step_later():
  """The skipped sampler equals the official loop begun from the same noise at t = T-2."""
  from rpd_jax.octo import heads  # pylint: disable=g-import-not-at-top
  from rpd_jax.octo.config import HeadSpec  # pylint: disable=g-import-not-at-top
  head = HeadSpec(action_horizon=1, action_dim=2, diffusion_steps=5)
  eps_fn = lambda x, t: 0.1 * x + 0.01 * t
  rng = jax.random.key(0)
  skipped = heads.sample_chunks(eps_fn, (3, 1, 2), rng, head, skip_first_step=True)
  betas, alphas, alpha_hats = heads.schedule(5)
  rng_loop, key = jax.random.split(rng)
  x = jax.random.normal(key, (3, 1, 2))
  for t in range(3, -1, -1):
    eps = eps_fn(x, jnp.full((3, 1, 1), t))
    rng_loop, key = jax.random.split(rng_loop)
    x = heads.ddpm_step(x, eps, jax.random.normal(key, x.shape), t, betas, alphas, alpha_hats,
                        head.max_action)
  np.testing.assert_allclose(skipped, x, rtol=1e-5, atol=1e-6)
  full = heads.sample_chunks(eps_fn, (3, 1, 2), rng, head)
  assert not np.allclose(full, skipped)
  assert not octo.init_random("tiny", primary_size=32).skip_first_step  # official sampler


def test_sigterm_saves_the_last_step_and_the_run_resumes(repo_root, tmp_path):
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  folder = write_fake_demos(str(tmp_path / "d"), [6, 9])
  workdir = tmp_path / "ckpt"
  cmd = [sys.executable, "-m", "rpd_jax.pipeline.finetune",
         "--config=experiments/finetune_octo.py:smoke", f"--config.data.folders=('{folder}',)",
         "--config.num_steps=400", "--config.save_every=1000", "--config.log_every=1",
         f"--workdir={workdir}"]
  proc = subprocess.Popen(cmd, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  try:
    metrics = workdir / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
      assert proc.poll() is None, proc.communicate()
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 143, err
  last = err.strip().splitlines()[-1]
  assert last.startswith("stopped by SIGTERM after step ") and "resume with:" in last
  step = int(last.split("after step ")[1].split(":")[0])
  assert str(step) in os.listdir(workdir)  # the Octo checkpoint of that step, loadable
  assert octo.load_pretrained(str(workdir)).params
  # Resuming logs each step once, from the step after the stop.
  subprocess.run([*cmd[:-4], "--config.num_steps=" + str(step + 2), *cmd[-3:]], cwd=repo_root,
                 check=True, capture_output=True)
  steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
  assert steps == list(range(1, step + 3))


def write_maniskill_trajectory(path, lengths, success, image_size=32, seed=0):
  """<path>.h5 + .json as ManiSkill's RecordEpisode writes them (mani_skill/utils/wrappers/
  record.py): traj_<id>/actions [T, A], obs/sensor_data/<camera>/rgb [T + 1, ...] (gzip),
  success [T]; the json's env_info and one entry per episode."""
  import h5py  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  episodes = []
  with h5py.File(path + ".h5", "w") as f:
    for k, (n, ok) in enumerate(zip(lengths, success)):
      group = f.create_group(f"traj_{k}")
      action = rng.uniform(-1, 1, (n, 7)).astype(np.float32)
      action[:, -1] = np.sign(action[:, -1])
      group.create_dataset("actions", data=action)
      rgb = np.zeros((n + 1, image_size, image_size, 3), np.uint8)
      rgb[:n, ..., 0] = ((action[:, 0] + 1) * 127).astype(np.uint8)[:, None, None]
      rgb[:, 0, 0, 1] = k  # which episode
      group.create_dataset("obs/sensor_data/base_camera/rgb", data=rgb, compression="gzip")
      group.create_dataset("obs/agent/qpos", data=np.zeros((n + 1, 9), np.float32))
      group.create_dataset("success", data=np.arange(n) == n - 1 if ok else np.zeros(n, bool))
      episodes.append({"episode_id": k, "episode_seed": k, "control_mode": "pd_ee_delta_pose",
                       "elapsed_steps": n, "reset_kwargs": {"seed": k}, "success": ok})
  with open(path + ".json", "w") as f:
    json.dump({"env_info": {"env_id": "PushCube-v1", "env_kwargs": {
        "obs_mode": "rgb", "control_mode": "pd_ee_delta_pose"}, "max_episode_steps": 50},
        "episodes": episodes}, f)
  return path + ".h5"


def test_maniskill_trajectories_load_their_successful_episodes(tmp_path):
  path = write_maniskill_trajectory(str(tmp_path / "push"), [4, 3, 5], [True, False, True])
  demos = demos_lib.load([path, write_fake_demos(str(tmp_path / "d"), [2])],
                         instructions=["push it", None])
  assert demos.episodes == 3 and len(demos) == 4 + 5 + 2
  np.testing.assert_array_equal(demos.image[:9, 0, 0, 1], [0] * 4 + [2] * 5)  # no failed one
  assert demos.instructions == ("push it", "push the cube")
  assert demos_lib.source_info(path)["control_mode"] == "pd_ee_delta_pose"


def test_a_maniskill_trajectory_without_frames_says_how_to_render_them(tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top
  path = write_maniskill_trajectory(str(tmp_path / "push"), [3], [True])
  with h5py.File(path, "a") as f:
    del f["traj_0/obs/sensor_data"]
  with pytest.raises(ConfigError, match="replay_trajectory .*--obs-mode=rgb"):
    demos_lib.load(path)


def test_octo_convention_demonstrations_are_converted_once(tmp_path):
  folder = write_fake_demos(str(tmp_path / "d"), [3])
  maniskill = demos_lib.load(folder).action
  meta = json.load(open(os.path.join(folder, "metadata.json")))
  json.dump({**meta, "gripper": "octo"}, open(os.path.join(folder, "metadata.json"), "w"))
  for path in glob.glob(os.path.join(folder, "episode_*.npz")):
    episode = dict(np.load(path))
    episode["action"][:, -1] = (episode["action"][:, -1] + 1) / 2  # written as Octo's 0 / 1
    np.savez_compressed(path, **episode)
  octo_written = demos_lib.load(folder).action
  np.testing.assert_array_equal(octo_written, maniskill)  # both in ManiSkill's convention
  np.testing.assert_array_equal(finetune.to_octo_gripper(octo_written)[:, -1],
                                (maniskill[:, -1] + 1) / 2)

