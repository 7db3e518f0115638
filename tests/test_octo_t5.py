"""rpd_jax.octo's T5 encoder against the fixture's standalone tiny T5 golden (Hugging Face Flax T5
4.36.2 outputs) and the official relative-position bucket table."""

import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpd_jax.octo import t5

DATA = pathlib.Path(__file__).parent / "data" / "octo_parity"


@pytest.fixture(scope="module")
def golden():
  with np.load(DATA / "t5_tiny.npz") as f:
    return dict(f)


@pytest.fixture(scope="module")
def encoder(golden):
  config = t5.T5Config.from_json(str(DATA / "t5-tiny-parity" / "config.json"))
  params = flax.traverse_util.unflatten_dict(
      {k[len("params/"):]: v for k, v in golden.items() if k.startswith("params/")}, sep="/")
  return t5.T5Encoder(config), params


def test_bucket_table_is_exact(golden):
  buckets = t5.relative_position_bucket(jnp.asarray(golden["bucket/relative_position"]))
  np.testing.assert_array_equal(buckets, golden["bucket/bucket_id"])
  pos = np.arange(16)
  np.testing.assert_array_equal(t5.relative_position_bucket(pos[None, :] - pos[:, None]),
                                golden["len16/bucket_matrix"])


def test_position_bias(golden, encoder):
  module, params = encoder
  table = params["encoder"]["block"]["0"]["layer"]["0"]["SelfAttention"][
      "relative_attention_bias"]
  bias = t5.T5PositionBias(module.config).apply({"params": table}, 16)
  np.testing.assert_allclose(bias, golden["len16/position_bias"], atol=1e-6, rtol=0)


def test_param_tree_matches_checkpoint(encoder):
  module, params = encoder
  tree = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32),
                        jnp.ones((1, 16), jnp.int32))["params"]
  assert jax.tree.map(lambda s: s.shape, tree) == jax.tree.map(np.shape, params)


@pytest.mark.parametrize("batch", ["batch1", "batch2", "batch3"])
def test_last_hidden_state(golden, encoder, batch):
  """Padded rows, unpadded rows without EOS, and 40 tokens (distances beyond 16)."""
  module, params = encoder
  out = jax.jit(module.apply)({"params": params}, golden[f"{batch}/input_ids"],
                     golden[f"{batch}/attention_mask"])
  np.testing.assert_allclose(out, golden[f"{batch}/last_hidden_state"], atol=1e-5, rtol=0)


def test_config_resolution(tmp_path):
  assert t5.resolve_t5_config("t5-base").d_model == 768
  (tmp_path / "my-t5").mkdir()
  (tmp_path / "my-t5" / "config.json").write_text(
      (DATA / "t5-tiny-parity" / "config.json").read_text())
  assert t5.resolve_t5_config("my-t5", [str(tmp_path)]).vocab_size == 128
  with pytest.raises(FileNotFoundError, match="unknown language encoder 'other-t5'"):
    t5.resolve_t5_config("other-t5", [str(tmp_path)])
