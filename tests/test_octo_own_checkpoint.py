"""Your own Octo checkpoint as the teacher: what a checkpoint's files decide (plan_feed), every
refusal as one ConfigError naming the piece, the config check and the inspect command, and the
adapter end to end against the official outputs on tests/data/octo_parity_ext.

Checkpoints of other shapes are made by editing a fixture's files in memory
(``CheckpointFiles``): nothing in the plan reads weights.
"""

import copy
import dataclasses
import functools
import logging
import pathlib

import flax
import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rpd_jax.octo as rpd_octo
from rpd_jax import config as config_lib
from rpd_jax import teachers
from rpd_jax.errors import ConfigError
from rpd_jax.pipeline import inspect
from rpd_jax.teachers import base, octo

EXT = pathlib.Path(__file__).parent / "data" / "octo_parity_ext"
A, B, C = "ext_l1_proprio_wrist", "ext_mse_bounds", "ext_diffusion_proprio_w2"
ATOL = 1e-4  # the fixture's tolerance for deterministic actions
INSTRUCTION = "push the cube away from the robot base"


@functools.lru_cache(maxsize=None)
def files(name) -> rpd_octo.CheckpointFiles:
  return rpd_octo.read_checkpoint(str(EXT / name))


def edited(name, edit) -> rpd_octo.CheckpointFiles:
  """A copy of a fixture's files, changed by ``edit(config, example_batch, statistics)``."""
  f = files(name)
  config, batch, stats = (copy.deepcopy(x) for x in (f.config, f.example_batch,
                                                      f.dataset_statistics))
  edit(config, batch, stats)
  return dataclasses.replace(f, config=config, example_batch=batch, dataset_statistics=stats)


def plan(f, **kwargs) -> octo.Feed:
  return octo.plan_feed(f, octo.checkpoint_spec(f), **kwargs)


@functools.lru_cache(maxsize=None)
def model(name):
  return rpd_octo.load_pretrained(str(EXT / name))


@functools.lru_cache(maxsize=None)
def goldens(name):
  with np.load(EXT / f"goldens_{name}.npz") as f:
    return dict(f)


def subtree(golden, prefix):
  flat = {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}
  return flax.traverse_util.unflatten_dict(flat, sep="/")


# The official goldens' random streams come from the pre-0.5 threefry (conftest.py).
pytestmark = pytest.mark.usefixtures("legacy_threefry")


def test_what_the_fine_tuning_example_checkpoint_reads():
  """Model A: two cameras at their own sizes, 8 proprio dims, window 2, a MAP-pooled L1 head,
  "normal" from its config.json; the observations follow from it."""
  feed = plan(files(A), instruction=INSTRUCTION, proprio="qpos[:7],qvel[-1:]")
  assert [(c.key, c.obs_key, c.size) for c in feed.cameras] == [
      ("image_primary", "rgb", (128, 128)), ("image_wrist", "rgb_wrist", (64, 64))]
  assert feed.proprio == (("qpos", None, 7), ("qvel", -1, None)) and feed.proprio_dim == 8
  assert feed.window == feed.trained_window == 2
  assert feed.head.name == "L1ActionHead" and feed.head.deterministic and feed.head.use_map
  assert feed.normalization_type == "normal" and "config.json" in feed.normalization_source
  assert feed.observation_keys == ("rgb", "rgb_wrist", "qpos", "qvel")
  c = plan(files(C), instruction=INSTRUCTION, proprio="qpos[:5]", window=1)
  assert not c.head.deterministic and c.window == 1 and c.trained_window == 2
  text = "\n".join(octo.describe(feed, {"rgb": (256, 256), "rgb_wrist": (64, 64)}))
  for part in ("camera image_primary 128x128 <- observation 'rgb': env frames 256x256: "
               "downscaled", "camera image_wrist 64x64 <- observation 'rgb_wrist': env frames "
               "64x64, no resize", "proprio 8 dims <- qpos[:7] + qvel[-1:]", "window 2 (the "
               "checkpoint's)", "head L1ActionHead (MAP pooling; deterministic",
               "ppd_min_std", "actions unnormalised 'normal'", "dim 6 kept raw",
               f"instruction '{INSTRUCTION}'", "gripper 'maniskill' (the default)"):
    assert part in text, part


def _camera(key, size):
  return {"module": "octo.model.components.tokenizers", "name": "ImageTokenizer", "args": [],
          "kwargs": {"obs_stack_keys": [key], "task_stack_keys": [],
                     "encoder": {"module": "octo.model.components.vit_encoders",
                                 "name": "SmallStem16", "args": [], "kwargs": {}}}}


def _window3(config, batch, stats):
  del config, stats
  for part in (batch["observation"],):
    for key, value in list(part.items()):
      if isinstance(value, np.ndarray) and value.ndim >= 2:
        part[key] = np.concatenate([value, value[:, :1]], axis=1)


def _left_camera(config, batch, stats):
  del stats
  config["model"]["observation_tokenizers"]["left"] = _camera("image_left", 64)
  batch["observation"]["image_left"] = np.zeros((1, 2, 64, 64, 3), np.uint8)


def _per_dataset(config, batch, stats):
  del config, batch
  one = dict(stats)
  stats.clear()
  stats.update({"bridge_dataset": one, "fractal20220817_data": one})


def _config_says(value):
  def edit(config, batch, stats):
    del batch, stats
    config["dataset_kwargs"]["action_proprio_normalization_type"] = value
  return edit


def _no_proprio_stats(config, batch, stats):
  del config, batch
  del stats["proprio"]


def _discretize(config, batch, stats):
  del batch, stats
  config["model"]["observation_tokenizers"]["proprio"]["kwargs"]["discretize"] = True


def _head(name):
  def edit(config, batch, stats):
    del batch, stats
    config["model"]["heads"]["action"]["name"] = name
  return edit


def _nothing(config, batch, stats):
  del config, batch, stats


# (checkpoint, edit, plan kwargs, what the one-line error must say)
REFUSALS = {
    "proprio not declared": (A, _nothing, dict(instruction=INSTRUCTION),
                             "it reads proprio (8 dims, LowdimObsTokenizer): set "
                             "config.teacher.kwargs.proprio to the env observations"),
    "proprio for a model without": (B, _nothing, dict(proprio="qpos", goal_image=__file__),
                                    "it reads no proprio"),
    "proprio syntax": (A, _nothing, dict(instruction=INSTRUCTION, proprio="qpos[1]"),
                       "config.teacher.kwargs.proprio has 'qpos[1]'"),
    "proprio statistics missing": (A, _no_proprio_stats,
                                   dict(instruction=INSTRUCTION, proprio="qpos"),
                                   "its dataset_statistics.json lacks (proprio: mean, std)"),
    "window 3": (C, _window3, dict(instruction=INSTRUCTION, proprio="qpos[:5]"),
                 "it was trained with a window of 3 frames; rpd_jax's teacher feeds 1 or 2"),
    "window above training": (B, _nothing, dict(window=2, goal_image=__file__),
                              "config.teacher.kwargs.window=2: it was trained with a window "
                              "of 1"),
    "a camera it cannot feed": (A, _left_camera, dict(instruction=INSTRUCTION, proprio="qpos"),
                                "its observation tokenizer 'left' reads 'image_left'; rpd_jax "
                                "feeds only image_primary"),
    "several datasets": (A, _per_dataset, dict(instruction=INSTRUCTION, proprio="qpos"),
                         "config.teacher.kwargs.dataset_name=None: this checkpoint has "
                         "statistics per dataset; set it to one of bridge_dataset, "
                         "fractal20220817_data"),
    "unknown normalisation": (A, _config_says("normal_clip"),
                              dict(instruction=INSTRUCTION, proprio="qpos"),
                              "action normalisation 'normal_clip' (the checkpoint's "
                              "config.json"),
    "goal image missing": (B, _nothing, {}, "it is conditioned on a goal image (no language "
                           "input; its tokenizers stack a goal on image_primary): set "
                           "config.teacher.kwargs.goal_image"),
    "goal image not a file": (B, _nothing, dict(goal_image="/nonexistent.png"),
                              "config.teacher.kwargs.goal_image='/nonexistent.png' is not a "
                              "file"),
    "instruction missing": (A, _nothing, dict(proprio="qpos"),
                            "it takes a language instruction (t5-tiny-parity): set "
                            "config.teacher.kwargs.instruction"),
    "discretised proprio": (A, _discretize, dict(instruction=INSTRUCTION, proprio="qpos"),
                            "observation_tokenizers.proprio sets discretize=True; rpd_jax's "
                            "Octo supports only discretize=False"),
    "unsupported head": (A, _head("UNetDDPMActionHead"),
                         dict(instruction=INSTRUCTION, proprio="qpos"),
                         "heads.action is octo.model.components.action_heads.UNetDDPMActionHead"
                         ", which rpd_jax's Octo does not implement; supported action heads: "
                         "DiffusionActionHead, L1ActionHead, MSEActionHead"),
    "gripper": (A, _nothing, dict(instruction=INSTRUCTION, proprio="qpos", gripper="octo"),
                "config.teacher.kwargs.gripper='octo'; use one of maniskill, clip, raw"),
}


@pytest.mark.parametrize("row", REFUSALS)
def test_refusals_are_one_line_naming_the_piece(row):
  name, edit, kwargs, message = REFUSALS[row]
  with pytest.raises(ConfigError) as error:
    plan(edited(name, edit), **kwargs)
  assert message in str(error.value)
  assert "\n" not in str(error.value) and "download" not in str(error.value)


def test_a_wrist_only_checkpoint_reads_the_wrist_camera():
  def wrist_only(config, batch, stats):
    del stats
    del config["model"]["observation_tokenizers"]["primary"]
    del batch["observation"]["image_primary"], batch["task"]["image_primary"]
  feed = plan(edited(A, wrist_only), instruction=INSTRUCTION, proprio="qpos[:8]")
  assert [(c.key, c.obs_key) for c in feed.cameras] == [("image_wrist", "rgb_wrist")]
  assert feed.observation_keys == ("rgb_wrist", "qpos")


def test_normalisation_type_comes_from_the_config_or_the_kwarg():
  assert plan(files(B), goal_image=__file__).normalization_type == "bounds"
  unrecorded = plan(edited(A, lambda c, b, s: c.pop("dataset_kwargs")),
                    instruction=INSTRUCTION, proprio="qpos")
  assert unrecorded.normalization_type == "normal"
  assert "does not record it" in unrecorded.normalization_source
  override = plan(files(A), instruction=INSTRUCTION, proprio="qpos",
                  normalization_type="bounds")
  assert override.normalization_type == "bounds"
  assert "config.json says 'normal'" in override.normalization_source


def _teacher_for_golden(name, case, **kwargs):
  """A teacher whose task is the golden case's (the instruction's T5 embedding of its token
  ids, equal to running T5 inside the call), fed the case's last timestep as ``obs``."""
  g, m = goldens(name), model(name)
  task = subtree(g, f"{case}/task/")
  embedding = None
  if m.spec.task_tokenizers:
    lang = task["language_instruction"]
    embedding = m.encode_language(lang["input_ids"], lang["attention_mask"])[0]
  return octo.teacher_from_model(m, embedding, gripper="raw", **kwargs)


def test_the_adapter_reproduces_the_official_l1_proprio_wrist_model():
  """Model A, golden case b (window 2, timestep 0 padded: an episode start): the teacher fed
  the last frame of each camera and the raw proprio whose normalisation is the golden's input
  gives the official unnormalised actions."""
  g, m = goldens(A), model(A)
  stats = m.dataset_statistics["proprio"]
  obs_in = subtree(g, "b/obs/")
  raw = obs_in["proprio"][:, -1] * (stats["std"] + 1e-8) + stats["mean"]
  obs = {"rgb": obs_in["image_primary"][:, -1], "rgb_wrist": obs_in["image_wrist"][:, -1],
         "qpos": raw[:, :5], "qvel": raw[:, 5:]}
  teacher = _teacher_for_golden(A, "b", proprio="qpos,qvel")
  out = jax.jit(base.query, static_argnums=(5,))(teacher, obs, obs, jnp.array([True]),
                                                 jax.random.key(0), 3)
  want = g["b/out/actions_unnormalized"][:, 0]
  np.testing.assert_allclose(out.action, want, atol=ATOL, rtol=0)
  # A deterministic head: every sample is the prediction (PPD's Gaussian gets its std floor).
  np.testing.assert_array_equal(out.samples, jnp.broadcast_to(out.action, out.samples.shape))


def test_the_adapter_reproduces_the_official_goal_image_bounds_model(tmp_path):
  """Model B, golden case b: the goal image read from a PNG file, "bounds" unnormalisation
  from the checkpoint's config.json, the official actions."""
  g = goldens(B)
  goal = tmp_path / "goal.png"
  iio.imwrite(goal, g["b/task/image_primary"][0])
  teacher = _teacher_for_golden(B, "b", goal_image=str(goal))
  obs = {"rgb": jnp.asarray(g["b/obs/image_primary"][:, -1])}
  out = jax.jit(base.query, static_argnums=(5,))(teacher, obs, obs, jnp.array([True]),
                                                 jax.random.key(0), 0)
  np.testing.assert_allclose(out.action, g["b/out/actions_unnormalized"][:, 0], atol=ATOL,
                             rtol=0)
  with pytest.raises(ConfigError, match="goal_image=.* cannot be read as an image"):
    octo.read_goal_image(__file__)


def test_proprio_is_windowed_normalised_and_checked():
  """Model C's proprio: oldest first, the previous step's from prev_obs, normalised with the
  checkpoint's statistics; the current one repeated at episode starts; a size that is not the
  checkpoint's is refused when traced."""
  m = model(C)
  teacher = octo.teacher_from_model(m, jnp.zeros((16, 32)), proprio="qpos[:5]")
  stats = m.dataset_statistics["proprio"]
  image = jnp.zeros((2, 64, 64, 3), jnp.uint8)
  qpos, prev_qpos = np.ones((2, 9), np.float32), np.zeros((2, 9), np.float32)
  got = teacher.apply_fn.observations(teacher.params, {"rgb": image, "qpos": qpos},
                                      {"rgb": image, "qpos": prev_qpos},
                                      jnp.array([False, True]))
  normed = lambda x: (x[:5] - stats["mean"]) / (stats["std"] + 1e-8)
  np.testing.assert_allclose(got["proprio"][0], [normed(prev_qpos[0]), normed(qpos[0])],
                             rtol=1e-6)
  np.testing.assert_allclose(got["proprio"][1], [normed(qpos[1]), normed(qpos[1])], rtol=1e-6)
  np.testing.assert_array_equal(got["timestep_pad_mask"], [[True, True], [False, True]])
  bad = octo.teacher_from_model(m, jnp.zeros((16, 32)), proprio="qpos[:4]")
  with pytest.raises(ConfigError, match=r"proprio=qpos\[:4\] gives 4 dims, but the "
                                        "checkpoint's proprio has 5"):
    jax.eval_shape(lambda o: bad.apply_fn.observations(bad.params, o, o, jnp.ones(2, bool)),
                   {"rgb": image, "qpos": qpos})


def _pushcube(**teacher_kwargs):
  c = config_lib.load("experiments/pushcube.py")
  c.teacher.kwargs.update(teacher_kwargs)
  return c


def test_config_validate_learns_what_the_checkpoint_reads(repo_root, monkeypatch):
  """From the checkpoint's files, before any simulator starts: the wrist camera and proprio
  it reads, and anything it cannot be fed."""
  monkeypatch.chdir(repo_root)
  c = _pushcube(checkpoint=str(EXT / A), proprio="qpos[:8]")
  assert teachers.observation_keys(c.teacher) == ("rgb", "rgb_wrist", "qpos")
  with pytest.raises(ConfigError, match="reads observation 'rgb_wrist', which the maniskill env "
                     r"does not give .*set config.env.kwargs.wrist_image_size \(it renders the "
                     "Panda's hand camera"):
    config_lib.validate(c)
  c.env.kwargs.wrist_image_size = 64
  config_lib.validate(c)
  c.teacher.kwargs.proprio = None
  with pytest.raises(ConfigError, match="set config.teacher.kwargs.proprio"):
    config_lib.validate(c)
  # A checkpoint that is not there yet: the teacher reads its camera; make_teacher says more.
  assert teachers.observation_keys(_pushcube(checkpoint="/nowhere").teacher) == ("rgb",)


def test_inspect_describes_two_checkpoints(repo_root, monkeypatch, tmp_path):
  monkeypatch.chdir(repo_root)
  c = _pushcube(checkpoint=str(EXT / A), proprio="qpos[:8]")
  c.env.kwargs.wrist_image_size = 64
  lines = inspect.report(c)
  assert lines[0].startswith("Octo teacher octo:ext_l1_proprio_wrist (step 4999 of")
  assert "env frames 128x128, no resize" in lines[1]  # pushcube renders 128x128 by default
  assert lines[-1] == ("env observations read: rgb, rgb_wrist, qpos (the maniskill env gives "
                       "privileged, rgb, qpos, qvel, tcp_pose, rgb_wrist)")
  with pytest.raises(ConfigError, match=f"config.teacher.kwargs.tokenizer_dir='{tmp_path}' has "
                                        "no spiece.model"):
    octo.tokenizer_path(str(tmp_path))
  lines = inspect.report(_pushcube(checkpoint="octo-tiny-pushcube"))
  assert any("instruction: none, the model takes no language input; "
             "config.teacher.kwargs.instruction" in line for line in lines)
  with pytest.raises(ConfigError, match="describes Octo teachers"):
    inspect.report(config_lib.load("experiments/pushcube.py:scripted"))


def test_make_teacher_names_the_tokenizer_kwarg_and_logs_the_feed(tmp_path, caplog,
                                                                  tiny_tokenizer_dir):
  with pytest.raises(ConfigError, match=f"config.teacher.kwargs.tokenizer_dir='{tmp_path}' has "
                                        "no spiece.model"):
    octo.make_teacher(str(EXT / A), instruction=INSTRUCTION, proprio="qpos[:8]",
                      tokenizer_dir=str(tmp_path))
  with caplog.at_level(logging.INFO):
    teacher = octo.make_teacher(str(EXT / A), instruction=INSTRUCTION, proprio="qpos[:8]",
                                tokenizer_dir=str(tiny_tokenizer_dir))
  assert teacher.name == "octo:ext_l1_proprio_wrist"
  logged = [r.getMessage() for r in caplog.records]
  assert logged.count(octo.describe(octo.feed_of(files(A), dict(
      instruction=INSTRUCTION, proprio="qpos[:8]")))[0]) == 1
  assert any(line.startswith("  proprio 8 dims <- qpos[:8]") for line in logged)
