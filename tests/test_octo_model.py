"""rpd_jax.octo's parameter trees, checkpoint loading and inference API."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rpd_jax.octo as octo
from rpd_jax.octo import sizes

DATA = pathlib.Path(__file__).parent / "data" / "octo_parity"
EXT = pathlib.Path(__file__).parent / "data" / "octo_parity_ext"
FULL_SIZE = ("octo-small-1.5", "octo-base-1.5", "octo-small", "octo-base")
EXT_TINY = ("ext_l1_proprio_wrist", "ext_mse_bounds", "ext_diffusion_proprio_w2")
# Octo's fine-tuning example (a proprio tokenizer and an L1 head on octo-small/base-1.5).
EXT_FULL_SIZE = ("octo-small-1.5-finetune-example", "octo-base-1.5-finetune-example")


def flat_shapes(tree):
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(k.key for k in path): (list(x.shape), str(x.dtype)) for path, x in leaves}


@pytest.mark.parametrize("name", FULL_SIZE + ("tiny_v15", "tiny_v10") + EXT_TINY
                         + EXT_FULL_SIZE)
def test_param_tree_equals_official(name):
  """Paths, shapes and dtypes of our init (eval_shape only) equal the official trees.

  The released full-size trees were taken at primary 256x256, wrist 128x128, window 2, 16
  tokens; the fine-tuning example's at primary 256x256, proprio 14 dims, window 1.
  """
  data = EXT if name in EXT_TINY + EXT_FULL_SIZE else DATA
  with open(data / "param_trees" / f"{name}.json") as f:
    official = json.load(f)
  if name.startswith("tiny") or name in EXT_TINY:
    spec = octo.parse_model_config(official["model_config"], t5_search_dirs=[str(data)])
    batch = octo.checkpoint.read_example_batch(str(data / name / "example_batch.msgpack"))
  elif name in EXT_FULL_SIZE:
    spec = octo.parse_model_config(official["model_config"])
    batch = sizes.example_batch(window=1, primary_size=256)
    batch["observation"]["proprio"] = np.zeros((1, 1, 14), np.float32)
  else:
    spec = octo.parse_model_config(official["model_config"])
    batch = sizes.example_batch(window=2, primary_size=256, wrist_size=128)
  ours = flat_shapes(octo.param_shapes(octo.OctoModule(spec), batch))
  want = {leaf["path"]: (leaf["shape"], leaf["dtype"]) for leaf in official["leaves"]}
  assert ours == want
  assert len(ours) == official["num_leaves"]
  assert sum(int(np.prod(s)) for s, _ in ours.values()) == official["total_params"]


def test_random_sizes_match_released_trees():
  """init_random's "small"/"base" (with a wrist camera) are octo-small/base-1.5."""
  for size, name in (("small", "octo-small-1.5"), ("base", "octo-base-1.5")):
    spec = octo.parse_model_config(sizes.model_config(size, wrist=True))
    batch = sizes.example_batch(window=2, primary_size=256, wrist_size=128)
    with open(DATA / "param_trees" / f"{name}.json") as f:
      official = json.load(f)
    assert spec == octo.parse_model_config(official["model_config"])
    assert len(flat_shapes(octo.param_shapes(octo.OctoModule(spec), batch))) == 366


@pytest.fixture(scope="module")
def model():
  return octo.load_pretrained(str(DATA / "tiny_v15"))


def copy_checkpoint(tmp_path, name="tiny_v15"):
  folder = tmp_path / name
  shutil.copytree(DATA / name, folder)
  shutil.copytree(DATA / "t5-tiny-parity", tmp_path / "t5-tiny-parity")
  return folder


def test_load_steps(tmp_path):
  folder = copy_checkpoint(tmp_path)
  shutil.copytree(folder / "5000", folder / "300")
  assert octo.load_pretrained(str(folder)).params is not None
  with pytest.raises(FileNotFoundError, match=r"step 7 is not in .*available steps: \[300, 5000\]"):
    octo.load_pretrained(str(folder), step=7)
  octo.load_pretrained(str(folder), step=300)


def test_load_errors(tmp_path):
  folder = copy_checkpoint(tmp_path)
  (folder / "dataset_statistics.json").unlink()
  with pytest.raises(FileNotFoundError, match="dataset_statistics.json is missing"):
    octo.load_pretrained(str(folder))

  folder = copy_checkpoint(tmp_path / "b")
  config = json.loads((folder / "config.json").read_text())
  config["model"]["token_embedding_size"] = 32
  (folder / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"with other shapes .*encoder_norm/bias: stored "
                                       r"\(64,\), config needs \(32,\)"):
    octo.load_pretrained(str(folder))

  config["model"]["heads"]["action"]["name"] = "UNetDDPMActionHead"
  (folder / "config.json").write_text(json.dumps(config))
  with pytest.raises(octo.UnsupportedConfigError,
                     match="heads.action is octo.model.components.action_heads."
                           "UNetDDPMActionHead, which rpd_jax's Octo does not implement; "
                           "supported action heads: DiffusionActionHead, L1ActionHead"):
    octo.load_pretrained(str(folder))

  shutil.rmtree(folder / "5000")
  with pytest.raises(FileNotFoundError, match="no parameters in .*the checkpoint is incomplete"):
    octo.load_pretrained(str(folder))
  with pytest.raises(FileNotFoundError, match="huggingface-cli download nobody/nothing"):
    octo.load_pretrained("nobody/nothing")

  folder = copy_checkpoint(tmp_path / "c")
  blob = folder / "5000" / "default" / "checkpoint"
  blob.write_bytes(blob.read_bytes()[:1000])  # a download cut short
  with pytest.raises(octo.CheckpointReadError, match="cannot be read .*incomplete or damaged"):
    octo.load_pretrained(str(folder))


def test_orbax_pytree_checkpoint(tmp_path):
  """Parameters saved by current orbax (OCDBT, as Octo's save_pretrained writes them on a newer
  stack) load bit for bit like the msgpack blob."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  folder = copy_checkpoint(tmp_path)
  want = octo.load_pretrained(str(folder)).params
  shutil.rmtree(folder / "5000")
  manager = ocp.CheckpointManager(folder, ocp.PyTreeCheckpointer())
  manager.save(4000, jax.tree.map(jnp.asarray, want))
  manager.wait_until_finished()
  assert (folder / "4000" / "default" / "manifest.ocdbt").is_file()
  got = octo.load_pretrained(str(folder)).params
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


def test_load_from_hub_cache(tmp_path, monkeypatch):
  repo = tmp_path / "hub" / "models--rail-berkeley--octo-tiny"
  snapshot = copy_checkpoint(repo / "snapshots", "tiny_v15").rename(repo / "snapshots" / "abc")
  shutil.move(str(repo / "snapshots" / "t5-tiny-parity"), str(snapshot / "t5-tiny-parity"))
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("abc")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  assert octo.resolve_checkpoint("hf://rail-berkeley/octo-tiny") == str(snapshot)
  model = octo.load_pretrained("rail-berkeley/octo-tiny")
  assert model.window_size == 2


def test_unsupported_specs_are_named():
  """One line naming the piece, the value and what is supported instead."""
  cases = [
      (("observation_tokenizers", "proprio"),
       {"module": "octo.model.components.tokenizers", "name": "LowdimObsTokenizer", "args": [],
        "kwargs": {"obs_keys": ["proprio"], "discretize": True}},
       "observation_tokenizers.proprio sets discretize=True; rpd_jax's Octo supports only "
       "discretize=False"),
      (("observation_tokenizers", "depth"),
       {"module": "octo.model.components.tokenizers", "name": "BinTokenizer", "args": [],
        "kwargs": {}},
       "supported observation tokenizers: ImageTokenizer, LowdimObsTokenizer"),
      (("task_tokenizers", "goal"),
       {"module": "octo.model.components.tokenizers", "name": "ImageTokenizer", "args": [],
        "kwargs": {}},
       "task_tokenizers.goal is octo.model.components.tokenizers.ImageTokenizer, which "
       "rpd_jax's Octo does not implement; supported task tokenizers: LanguageTokenizer"),
      (("heads", "action"),
       {"module": "octo.model.components.action_heads", "name": "DiscreteActionHead",
        "args": [], "kwargs": {}},
       "supported action heads: DiffusionActionHead, L1ActionHead, MSEActionHead"),
  ]
  for (section, key), spec, message in cases:
    config = sizes.model_config("tiny")
    config[section][key] = spec
    with pytest.raises(octo.UnsupportedConfigError) as error:
      octo.parse_model_config(config)
    assert message in str(error.value) and "\n" not in str(error.value)
  config = sizes.model_config("tiny")
  config["heads"]["action"]["kwargs"]["use_map"] = True  # supported: MAP pooling
  assert dict(octo.parse_model_config(config).heads)["action"].use_map


def batch_inputs(batch=3, window=2):
  rng = np.random.default_rng(0)
  obs = {"image_primary": rng.integers(0, 256, (batch, window, 64, 64, 3), np.uint8),
         "image_wrist": rng.integers(0, 256, (batch, window, 32, 32, 3), np.uint8),
         "timestep_pad_mask": np.ones((batch, window), bool)}
  ids = rng.integers(2, 128, (batch, 16)).astype(np.int32)
  return obs, {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def test_create_tasks(model):
  _, tokens = batch_inputs()
  tasks = model.create_tasks(texts=["a", "b", "c"], tokenize=lambda texts: tokens)
  assert tasks["image_primary"].shape == (3, 64, 64, 3) and not tasks["image_primary"].any()
  assert not tasks["pad_mask_dict"]["image_primary"].any()
  assert tasks["pad_mask_dict"]["language_instruction"].all()
  np.testing.assert_array_equal(tasks["language_instruction"]["input_ids"], tokens["input_ids"])
  with pytest.raises(ValueError, match="needs tokenize="):
    model.create_tasks(texts=["a"])

  goals = {"image_primary": np.ones((2, 64, 64, 3), np.uint8)}
  tasks = model.create_tasks(goals=goals)
  assert tasks["pad_mask_dict"]["image_primary"].all()
  assert not tasks["pad_mask_dict"]["language_instruction"].any()
  # The official goal-conditioned task: the tokens of "" (EOS) with the language padded out.
  np.testing.assert_array_equal(tasks["language_instruction"]["input_ids"][:, :2], [[1, 0]] * 2)
  np.testing.assert_array_equal(tasks["language_instruction"]["attention_mask"][:, :2],
                                [[1, 0]] * 2)


def test_precomputed_language_and_jit(model):
  """Precomputed T5 embeddings give the same transformer outputs as tokens, and so does the
  readouts-only path; sample_actions jits over the model pytree; statistics inside it equal
  unnormalising afterwards."""
  obs, tokens = batch_inputs()
  embeddings = jax.jit(type(model).encode_language)(model, tokens["input_ids"],
                                                    tokens["attention_mask"])
  assert embeddings.shape == (3, 16, 32)
  run = jax.jit(type(model).run_transformer, static_argnames="readouts_only")
  with_tokens = run(model, obs, model.create_tasks(texts=["x"] * 3, tokenize=lambda t: tokens))
  tasks = model.create_tasks(language_embeddings=embeddings)
  with_embeddings = run(model, obs, tasks)
  np.testing.assert_allclose(with_embeddings["readout_action"].tokens,
                             with_tokens["readout_action"].tokens, atol=1e-5)
  # What sample_actions runs: the last layer computes only the readout rows.
  readouts = run(model, obs, tasks, readouts_only=True)
  assert list(readouts) == ["readout_action"]
  np.testing.assert_allclose(readouts["readout_action"].tokens,
                             with_embeddings["readout_action"].tokens, atol=1e-5)
  stats = model.dataset_statistics["action"]

  @jax.jit
  def sample(m, observations, tasks, rng):
    return (m.sample_actions(observations, tasks, rng, num_samples=2),
            m.sample_actions(observations, tasks, rng, unnormalization_statistics=stats,
                             num_samples=2))

  samples, unnormalized = sample(model, obs, tasks, jax.random.key(0))
  assert samples.shape == unnormalized.shape == (2, 3, 4, 7)
  assert np.abs(samples).max() <= 5.0
  assert not np.allclose(samples[0], samples[1])
  np.testing.assert_allclose(unnormalized, octo.unnormalize(samples, stats), atol=1e-5)


def test_input_shapes_must_match_example_batch(model):
  obs, tokens = batch_inputs()
  obs["image_primary"] = obs["image_primary"][:, :, :32, :32]
  tasks = model.create_tasks(texts=["x"] * 3, tokenize=lambda t: tokens)
  with pytest.raises(ValueError, match=r"observations/image_primary: \(3, 2, 32, 32, 3\) "
                                       r"\(expected \[\.\.\., 64, 64, 3\]\)"):
    model.sample_actions(obs, tasks, jax.random.key(0))


def test_init_random_tiny_bfloat16():
  """A random tiny model computing in bfloat16 (float32 parameters and diffusion head)."""
  model = octo.init_random("tiny", window=1, primary_size=64, dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(model.params))
  assert model.window_size == 1
  ids = np.ones((2, 16), np.int32)
  tasks = model.create_tasks(language_embeddings=model.encode_language(ids, ids))
  obs = {"image_primary": np.zeros((2, 1, 64, 64, 3), np.uint8),
         "timestep_pad_mask": np.ones((2, 1), bool)}
  actions = model.sample_actions(obs, tasks, jax.random.key(0), num_samples=3)
  assert actions.shape == (3, 2, 4, 7) and actions.dtype == jnp.float32
  assert np.isfinite(actions).all()
