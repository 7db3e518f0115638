"""The Octo teacher adapter: shapes, window/pad at episode starts, resize, gripper mapping,
statistics, compile-once, temporal ensembling; then the real model on the tiny fixtures.

``ProbeModel`` is an Octo-API stand-in whose "actions" are functions of what it was given (mean
pixel per timestep, the pad mask, the language embedding), so the adapter's plumbing can be
checked exactly; the fixture tests run the same adapter on the real model.
"""

import collections
import json
import os
import pathlib
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import rpd_jax.octo as rpd_octo
from rpd_jax.bench import teacher as teacher_bench
from rpd_jax.bench import remote
from rpd_jax.envs import tasks
from rpd_jax.errors import ConfigError
from rpd_jax.octo import hub
from rpd_jax.teachers import base, octo

INSTRUCTION = "push the cube away from the robot base"

FIXTURE_DIR = pathlib.Path(
    os.environ.get("OCTO_PARITY_DIR", pathlib.Path(__file__).parent / "data" / "octo_parity"))


@struct.dataclass
class ProbeModel:
  """Octo's inference API; chunk[b, t, :] = (mean pixel of timestep 0 (or -1 if padded),
  mean pixel of the last timestep, pad flag of timestep 0, language sum, t, noise, gripper)."""

  example_batch: Any
  dataset_statistics: Any
  gripper: jax.Array
  spec: Any = struct.field(pytree_node=False, default=None)
  config: Any = struct.field(pytree_node=False, default=None)

  def create_tasks(self, goals=None, language_embeddings=None):
    assert goals is None
    return {"language_instruction": language_embeddings}

  def sample_actions(self, observations, tasks, rng, unnormalization_statistics=None,
                     num_samples=None, normalization_type="normal", transformer_batch=None):
    del transformer_batch  # a probe has no transformer
    assert normalization_type == "normal"
    images = observations["image_primary"].astype(jnp.float32)  # [B, W, H, W, 3]
    chex.assert_shape(images, (None, None) + self.example_batch["observation"][
        "image_primary"].shape[2:])
    pad = observations["timestep_pad_mask"]
    means = images.mean(axis=(2, 3, 4))
    first = jnp.where(pad[:, 0], means[:, 0], -1.0)
    batch = images.shape[0]
    lang = jnp.sum(tasks["language_instruction"], axis=(1, 2))
    t = jnp.broadcast_to(jnp.arange(4.0), (batch, 4))
    noise = jax.random.normal(rng, (num_samples, batch, 4))
    cols = [first[:, None] * jnp.ones(4), means[:, -1:] * jnp.ones(4),
            pad[:, :1] * jnp.ones(4), lang[:, None] * jnp.ones(4), t]
    chunk = jnp.stack(cols, axis=-1)  # [B, 4, 5]
    chunk = jnp.broadcast_to(chunk, (num_samples,) + chunk.shape)
    gripper = jnp.broadcast_to(self.gripper, (num_samples, batch, 4))
    actions = jnp.concatenate([chunk, noise[..., None], gripper[..., None]], axis=-1)
    stats = unnormalization_statistics
    return jnp.where(stats["mask"], actions * stats["std"] + stats["mean"], actions)


# A language-conditioned single-camera model's config (only its spec is used by the probe).
PROBE_CONFIG = {"model": rpd_octo.model_config("tiny", goal_images=False)}


def probe_model(gripper=0.75, size=8, window=2, statistics=None):
  example = {"observation": {"image_primary": np.zeros((1, window, size, size, 3), np.uint8),
                             "timestep_pad_mask": np.ones((1, window), bool)}}
  if statistics is None:  # identity unnormalisation: actions come out as computed
    statistics = {"action": {"mean": [0.0] * 7, "std": [1.0] * 7, "mask": [True] * 6 + [False],
                             "p01": [0.0] * 7, "p99": [1.0] * 7}}
  return ProbeModel(example, statistics, jnp.float32(gripper),
                    rpd_octo.parse_model_config(PROBE_CONFIG["model"]), PROBE_CONFIG)


def gray(batch, value, size=8):
  return jnp.full((batch, size, size, 3), value, jnp.uint8)


# base.query, jitted (op-by-op dispatch of the adapter would dominate these tests' time).
query = jax.jit(base.query, static_argnums=(5, 6))


def raw_teacher(model, **kwargs):
  return octo.teacher_from_model(model, jnp.ones((16, 4)), gripper="raw", **kwargs)


def test_shapes_and_samples():
  teacher = raw_teacher(probe_model(), window=2)
  obs, key = {"rgb": gray(3, 10)}, jax.random.key(0)
  out = query(teacher, obs, obs, jnp.zeros(3, bool), key)
  assert out.action.shape == (3, 7) and out.action.dtype == jnp.float32 and out.samples is None
  out = query(teacher, obs, obs, jnp.zeros(3, bool), key, 5)
  assert out.action.shape == (3, 7) and out.samples.shape == (5, 3, 7)
  np.testing.assert_array_equal(out.samples[0], out.action)  # the action is the first sample
  assert np.std(out.samples[:, :, 5], axis=0).min() > 0  # independent noise per sample
  np.testing.assert_allclose(out.action[:, 3], 16 * 4)  # the stored embedding reached the model


def test_window_and_pad_at_episode_starts():
  teacher = raw_teacher(probe_model(), window=2)
  obs, prev = {"rgb": gray(2, 100)}, {"rgb": gray(2, 50)}
  is_first = jnp.array([True, False])
  out = query(teacher, obs, prev, is_first, jax.random.key(0))
  # Row 0 starts an episode: timestep 0 is padded (flag 0, probe reports -1); row 1 sees the
  # previous frame (50) then the current one (100).
  np.testing.assert_allclose(out.action[:, :3], [[-1, 100, 0], [50, 100, 1]])
  frames, mask = octo.history_window(obs["rgb"], prev["rgb"], is_first, 2)
  np.testing.assert_array_equal(frames[0, 0], obs["rgb"][0])  # current frame repeated
  np.testing.assert_array_equal(mask, [[False, True], [True, True]])


def test_window_one_ignores_prev_obs():
  teacher = raw_teacher(probe_model(), window=1)
  obs = {"rgb": gray(2, 100)}
  out = query(teacher, obs, {"rgb": gray(2, 7)}, jnp.array([True, False]),
                         jax.random.key(0))
  np.testing.assert_allclose(out.action[:, :3], [[100, 100, 1], [100, 100, 1]])
  with pytest.raises(ConfigError, match="window=3: it was trained with a window of 2"):
    raw_teacher(probe_model(), window=3)
  # Unset, the window is the checkpoint's.
  assert raw_teacher(probe_model(window=2)).apply_fn.window == 2


def test_resize_to_checkpoint_size():
  teacher = raw_teacher(probe_model(size=8), window=1)
  obs = {"rgb": gray(2, 200, size=20)}  # any size; constant images stay constant
  out = query(teacher, obs, obs, jnp.zeros(2, bool), jax.random.key(0))
  np.testing.assert_allclose(out.action[:, 1], 200)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (2, 3, 37, 53, 3)), jnp.uint8)
  resized = octo.resize_images(images, (16, 16))
  assert resized.shape == (2, 3, 16, 16, 3) and resized.dtype == jnp.uint8
  same = octo.resize_images(images, (37, 53))
  np.testing.assert_array_equal(same, images)
  # Downscaling with antialiasing keeps a smooth ramp close to its box average.
  ramp = jnp.broadcast_to(jnp.arange(64, dtype=jnp.uint8)[None, :, None] * 4, (64, 64, 3))
  small = np.asarray(octo.resize_images(ramp, (16, 16)), np.float32)
  box = np.asarray(ramp, np.float32).reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
  assert np.abs(small - box)[:, 2:-2].max() <= 1.0


def test_center_crop():
  image = np.zeros((1, 100, 100, 3), np.uint8)
  image[:, 2:98, 2:98] = 255  # a frame of width 2 that a 0.9-area crop (side 95) removes
  cropped = octo.resize_images(jnp.asarray(image), (95, 95), center_crop=0.9)
  assert cropped.shape == (1, 95, 95, 3)
  np.testing.assert_array_equal(cropped, 255)
  with pytest.raises(ValueError, match="area fraction"):
    octo.resize_images(jnp.asarray(image), (95, 95), center_crop=1.5)


@pytest.mark.parametrize("octo_gripper, expected", [(1.0, 1.0), (0.0, -1.0), (0.75, 0.5),
                                                    (1.3, 1.0), (-0.2, -1.0)])
def test_gripper_mapping(octo_gripper, expected):
  teacher = octo.teacher_from_model(probe_model(gripper=octo_gripper), jnp.zeros((16, 4)),
                                    window=1)
  obs = {"rgb": gray(1, 255)}
  out = query(teacher, obs, obs, jnp.zeros(1, bool), jax.random.key(0))
  np.testing.assert_allclose(out.action[0, -1], expected)
  assert out.action[0, 0] == 1.0  # mean pixel 255, clipped to the env's action bound


def test_unnormalisation_statistics():
  per_dataset = {name: {"action": {"mean": [float(i)] * 7, "std": [2.0] * 7,
                                   "mask": [True] * 6 + [False]}, "num_transitions": 3}
                 for i, name in enumerate(["bridge_dataset", "fractal20220817_data"])}
  model = probe_model(statistics=per_dataset)
  with pytest.raises(ConfigError, match="config.teacher.kwargs.dataset_name=None: this "
                     "checkpoint has statistics per dataset; set it to one of bridge_dataset, "
                     "fractal20220817_data"):
    raw_teacher(model)
  teacher = raw_teacher(model, window=1, dataset_name="fractal20220817_data")
  obs = {"rgb": gray(1, 10)}
  out = query(teacher, obs, obs, jnp.zeros(1, bool), jax.random.key(0))
  np.testing.assert_allclose(out.action[0, :3], [10 * 2 + 1, 10 * 2 + 1, 1 * 2 + 1])
  np.testing.assert_allclose(out.action[0, 6], 0.75)  # mask False: gripper stays raw
  with pytest.raises(ConfigError, match="one statistics dict"):
    raw_teacher(probe_model(), dataset_name="bridge_dataset")


def test_compiles_once():
  teacher = raw_teacher(probe_model(), window=2)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def update(teacher, obs, prev, is_first, key):
    return base.query(teacher, obs, prev, is_first, key, num_samples=4)

  chex.clear_trace_counter()
  key = jax.random.key(0)
  for i in range(3):  # new data, new params values, new keys: same trace
    task = {"language_instruction": teacher.params["task"]["language_instruction"] + i}
    teacher = teacher.replace(params={**teacher.params, "task": task})
    obs = {"rgb": gray(4, i, size=12)}
    out = update(teacher, obs, obs, jnp.arange(4) % 2 == i % 2, jax.random.fold_in(key, i))
    jax.block_until_ready(out)


def test_a_language_model_needs_its_instruction_in_the_teacher_config(tiny_tokenizer_dir):
  with pytest.raises(ConfigError, match="config.teacher.kwargs.instruction"):
    octo.make_teacher(str(_fixture("tiny_v15")), tokenizer_dir=str(tiny_tokenizer_dir))


def test_resolve_checkpoint(tmp_path, monkeypatch):
  assert hub.resolve_checkpoint(tmp_path) == str(tmp_path)
  assert hub.resolve_checkpoint("octo-tiny-pushcube") == str(hub.SHIPPED / "octo-tiny-pushcube")
  monkeypatch.setattr(hub, "DOWNLOADS", tmp_path / "downloads")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  with pytest.raises(FileNotFoundError, match="third_party/README.md"):
    hub.resolve_checkpoint("octo-small-1.5")
  snapshots = tmp_path / "hub" / "models--rail-berkeley--octo-small-1.5" / "snapshots"
  (snapshots / "abc").mkdir(parents=True)
  assert hub.resolve_checkpoint("hf://rail-berkeley/octo-small-1.5") == str(snapshots / "abc")
  (snapshots / "def").mkdir()  # newer, but refs/main names abc
  (snapshots.parent / "refs").mkdir()
  (snapshots.parent / "refs" / "main").write_text("abc")
  assert hub.resolve_checkpoint("rail-berkeley/octo-small-1.5") == str(snapshots / "abc")
  (tmp_path / "downloads" / "octo-small-1.5").mkdir(parents=True)
  assert hub.resolve_checkpoint("octo-small-1.5").endswith("downloads/octo-small-1.5")
  with pytest.raises(FileNotFoundError, match="neither a folder"):
    hub.resolve_checkpoint("octo-huge")


def test_chunks_drive_temporal_ensemble():
  teacher = raw_teacher(probe_model(), window=1)
  obs = {"rgb": gray(2, 30)}
  chunks = jax.jit(teacher.apply_fn.chunks)(teacher.params, obs, obs, jnp.zeros(2, bool),
                                            jax.random.key(0))
  assert chunks.shape == (1, 2, 4, 7)
  ensemble = octo.TemporalEnsemble(horizon=4)
  np.testing.assert_allclose(ensemble(chunks[0], np.ones(2, bool)), chunks[0, :, 0])
  # Next step: the mean of the older chunk's 2nd action and the new chunk's 1st (the probe's
  # column 4 is the index in the chunk).
  np.testing.assert_allclose(ensemble(chunks[0], np.zeros(2, bool))[:, 4], 0.5)
  # Equal settings give equal (hashable) apply functions: one compilation for both teachers.
  assert teacher.apply_fn == raw_teacher(probe_model(), window=1).apply_fn
  assert hash(teacher.apply_fn) == hash(raw_teacher(probe_model(), window=1).apply_fn)


def official_ensemble(chunks, exp_weight):
  """Octo's TemporalEnsembleWrapper.step for one env, chunk by chunk."""
  history, out = collections.deque(maxlen=4), []
  for chunk in chunks:
    history.append(chunk[:4])
    n = len(history)
    preds = np.stack([c[i] for i, c in zip(range(n - 1, -1, -1), history)])
    w = np.exp(-exp_weight * np.arange(n))
    out.append(np.sum((w / w.sum())[:, None] * preds, axis=0))
  return np.stack(out)


@pytest.mark.parametrize("exp_weight", [0.0, 0.5])
def test_temporal_ensemble_matches_official(exp_weight):
  rng = np.random.default_rng(0)
  chunks = rng.normal(size=(9, 2, 4, 3)).astype(np.float32)  # [steps, B, horizon, A]
  ensemble = octo.TemporalEnsemble(horizon=4, exp_weight=exp_weight)
  # Env 1 starts a new episode at step 5 and must forget its history there.
  got = np.stack([ensemble(chunks[t], np.array([t == 0, t in (0, 5)])) for t in range(9)])
  np.testing.assert_allclose(got[:, 0], official_ensemble(chunks[:, 0], exp_weight), rtol=1e-5)
  np.testing.assert_allclose(got[:5, 1], official_ensemble(chunks[:5, 1], exp_weight), rtol=1e-5)
  np.testing.assert_allclose(got[5:, 1], official_ensemble(chunks[5:, 1], exp_weight), rtol=1e-5)


# --- The real model on the tiny fixture checkpoints. ---------------------------------------


def _fixture(name):
  if not (FIXTURE_DIR / name).is_dir():
    pytest.skip(f"Octo parity fixture {name} not in {FIXTURE_DIR}")
  return FIXTURE_DIR / name


@pytest.fixture(scope="module", params=["tiny_v15", "tiny_v10"])
def fixture_teacher(request, tiny_tokenizer_dir):
  folder = _fixture(request.param)
  if not hasattr(rpd_octo, "load_pretrained"):
    pytest.skip("rpd_jax.octo.load_pretrained is not available")
  return octo.make_teacher(str(folder), instruction=INSTRUCTION, window=2,
                           tokenizer_dir=str(tiny_tokenizer_dir))


def test_fixture_teacher(fixture_teacher):
  """Shapes, bounds, compile-once and padding of the previous frame, on the real model.

  Images are 48x48, resized to the checkpoint's 64x64 (primary) and 32x32 (wrist). Rows 0, 3
  and 6 start an episode.
  """
  teacher = fixture_teacher
  rng = np.random.default_rng(0)
  images = lambda: {key: jnp.asarray(rng.integers(0, 256, (8, 48, 48, 3)), jnp.uint8)
                    for key in ("rgb", "rgb_wrist")}
  obs, prev, other_prev = images(), images(), images()
  is_first = jnp.arange(8) % 3 == 0

  @jax.jit
  @chex.assert_max_traces(n=1)
  def query(teacher, obs, prev, is_first, key):
    return base.query(teacher, obs, prev, is_first, key, num_samples=3, max_batch=4)

  chex.clear_trace_counter()
  key = jax.random.key(0)
  out = query(teacher, obs, prev, is_first, key)
  assert out.action.shape == (8, 7) and out.samples.shape == (3, 8, 7)
  assert np.isfinite(out.samples).all() and np.abs(out.samples).max() <= 1.0
  np.testing.assert_array_equal(out.samples[0], out.action)
  # Same key, another previous frame: only rows that do not start an episode may change.
  out2 = query(teacher, obs, other_prev, is_first, key)
  np.testing.assert_allclose(out2.samples[:, is_first], out.samples[:, is_first], atol=1e-5)
  assert not np.allclose(out2.samples[:, ~is_first], out.samples[:, ~is_first])


def test_fixture_teacher_bfloat16(tiny_tokenizer_dir):
  """bfloat16 compute (tiny_v15): same shapes, finite, within the action bounds."""
  teacher = octo.make_teacher(str(_fixture("tiny_v15")), instruction=INSTRUCTION,
                              tokenizer_dir=str(tiny_tokenizer_dir), dtype="bfloat16")
  assert teacher.params["model"].module.dtype == jnp.bfloat16
  # The instruction was embedded once, in float32.
  assert teacher.params["task"]["language_instruction"].dtype == jnp.float32
  rng = np.random.default_rng(1)
  obs = {"rgb": jnp.asarray(rng.integers(0, 256, (2, 64, 64, 3)), jnp.uint8),
         "rgb_wrist": jnp.asarray(rng.integers(0, 256, (2, 32, 32, 3)), jnp.uint8)}
  out = query(teacher, obs, obs, jnp.array([True, False]), jax.random.key(0), 2, 2)
  assert out.action.dtype == jnp.float32 and out.samples.shape == (2, 2, 7)
  assert np.isfinite(out.samples).all() and np.abs(out.samples).max() <= 1.0


# --- The server hop and the benchmark. -----------------------------------------------------


def test_pack_roundtrip_with_shared_memory():
  rng = np.random.default_rng(0)
  arrays = {"obs/rgb": rng.integers(0, 256, (3, 8, 8, 3), np.uint8),
            "obs/state": rng.normal(size=(3, 5)).astype(np.float32),
            "is_first": np.array([True, False, True])}
  owned, attached = {}, {}
  try:
    message = remote.pack(arrays, owned, {"seed": 4})
    assert set(owned) == {"obs/rgb"}  # only the image went to shared memory
    assert len(message) < arrays["obs/rgb"].nbytes
    got, extra = remote.unpack(message, attached)
    assert extra == {"seed": 4}
    for name, value in arrays.items():
      np.testing.assert_array_equal(got[name], value)
      assert got[name].dtype == value.dtype
    bigger = {"obs/rgb": rng.integers(0, 256, (6, 8, 8, 3), np.uint8)}  # grows the segment
    got, _ = remote.unpack(remote.pack(bigger, owned), attached)
    np.testing.assert_array_equal(got["obs/rgb"], bigger["obs/rgb"])
    got, _ = remote.unpack(remote.pack(arrays))  # without shared memory
    np.testing.assert_array_equal(got["obs/rgb"], arrays["obs/rgb"])
  finally:
    del got
    for segment in attached.values():
      segment.close()
    for segment in owned.values():
      segment.close()
      segment.unlink()


def test_bench_tiny_in_process_and_server(tmp_path):
  out = tmp_path / "bench.json"
  settings = teacher_bench.Settings(size="tiny", batch=(1,), server_batch=(1,), repeats=1)
  rows = teacher_bench.run(settings)
  teacher_bench.save(str(out), settings, rows)
  assert [r["mode"] for r in rows] == ["in-process", "server"]
  assert rows[0]["gflop_per_sample"] > 0 and rows[0]["peak_mb"] > 0  # XLA's cost and memory
  for row in rows:
    assert row["batch"] == 1 and row["window"] == 1 and row["samples_per_s"] > 0
    assert row["compile_s"] > 0 and row["ms_per_call"] > 0 and row["cpu_ms"] > 0
  assert "hop_ms" in rows[1]
  assert rows[1]["max_abs_diff"] < 1e-4  # the server computes what the in-process teacher does
  saved = json.loads(out.read_text())
  assert saved["rows"] == rows and saved["setup"]["settings"]["size"] == "tiny"
  table = teacher_bench.markdown(rows)
  assert table.count("\n") == 3 and "| server | tiny | float32 | 1 |  |  | 1 |" in table


@pytest.mark.parametrize("name", sorted({t.teacher for t in tasks.TASKS.values()}))
def test_every_shipped_teacher_loads_and_carries_its_records(name):
  """Each task's shipped teacher: the model a teacher is made from, the 128x128 camera, 7-dim
  pd_ee_delta_pose chunks, and the records of how it was made and how well it does alone."""
  folder = hub.SHIPPED / name
  model = rpd_octo.load_pretrained(str(folder))
  assert model.example_batch["observation"]["image_primary"].shape[-3:] == (128, 128, 3)
  assert np.asarray(model.dataset_statistics["action"]["mean"]).shape == (7,)
  config = json.loads((folder / "config.json").read_text())
  made = config["rpd_jax_finetune"]  # the fine-tuning config that made it
  assert made["model"]["size"] == "tiny" and made["data"]["folders"]
  demos = json.loads((folder / "demonstrations.json").read_text())
  assert demos["image_size"] == 128 and demos["kept"] >= made["data"]["max_episodes"]
  losses = [json.loads(l)["loss"] for l in (folder / "metrics.jsonl").read_text().splitlines()]
  assert losses[-1] < losses[0]
  rows = json.loads((folder / "teacher_eval.json").read_text())
  row = next(r for r in rows if r["task"] == demos["env_id"] and r["execution"] == "first")
  assert row["episodes"] >= 100 and row["seed"] >= 1000  # demonstrations use seeds 0 onwards
  assert 0.0 <= row["success_rate"] <= 1.0
