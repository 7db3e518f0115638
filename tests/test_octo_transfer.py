"""transfer_params: copy matching path+shape leaves, report the rest; small trees and the tiny
Octo fixture checkpoints."""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

from rpd_jax.octo import transfer

# The Octo parity fixture (tiny checkpoints in the official layout); OCTO_PARITY_DIR overrides.
FIXTURE_DIR = pathlib.Path(
    os.environ.get("OCTO_PARITY_DIR", pathlib.Path(__file__).parent / "data" / "octo_parity"))


def _fixture(name):
  if not (FIXTURE_DIR / name).is_dir():
    pytest.skip(f"Octo parity fixture {name} not in {FIXTURE_DIR}")
  return FIXTURE_DIR / name


def _load_params(name):
  blob = (_fixture(name) / "5000" / "default" / "checkpoint").read_bytes()
  return serialization.msgpack_restore(blob)


def test_small_trees():
  pretrained = {"enc": {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)},
                "head": {"w": np.ones((3, 7), np.float32)},
                "old_tokenizer": {"w": np.ones(4, np.float32)}}
  fresh = {"enc": {"w": jnp.zeros((2, 3), jnp.bfloat16), "b": jnp.zeros(3)},
           "head": {"w": jnp.zeros((3, 8))},  # new action dim
           "proprio": {"w": jnp.zeros(5)}}  # new tokenizer
  merged, report = transfer.transfer_params(pretrained, fresh)
  assert jax.tree.structure(merged) == jax.tree.structure(fresh)
  assert merged["enc"]["w"].dtype == jnp.bfloat16  # cast to the fresh dtype
  np.testing.assert_array_equal(merged["enc"]["w"], 1)
  np.testing.assert_array_equal(merged["enc"]["b"], 1)
  np.testing.assert_array_equal(merged["head"]["w"], 0)
  np.testing.assert_array_equal(merged["proprio"]["w"], 0)
  assert sorted(report.copied) == [("enc", "b"), ("enc", "w")]
  assert report.kept_new == [("proprio", "w")]
  assert report.skipped == {("head", "w"): ((3, 7), (3, 8))}
  assert report.unused == [("old_tokenizer", "w")]
  summary = report.summary()
  assert "copied 2, kept new 1, skipped (shape mismatch) 1, unused pretrained 1" in summary
  assert "head/w pretrained (3, 7) != new (3, 8)" in summary


def test_tiny_fixture_new_head():
  """v1.5 tiny weights into a tree shaped like the v1.0 tiny model (narrower diffusion head)."""
  pretrained = _load_params("tiny_v15")
  fresh = jax.tree.map(jnp.zeros_like, _load_params("tiny_v10"))
  merged, report = transfer.transfer_params(pretrained, fresh)
  flat_p = traverse_util.flatten_dict(pretrained)
  flat_m = traverse_util.flatten_dict(merged)
  head = ("heads_action", "diffusion_model", "reverse_network")
  # The reverse network's hidden width differs (256 vs 64): its hidden layers stay fresh; its
  # output bias (28,), the time encoder and the whole transformer match and are copied.
  assert len(report.skipped) == 21
  assert all(p[:3] == head for p in report.skipped)
  assert not report.kept_new and not report.unused
  assert len(report.copied) == 126 - 21
  for path in report.copied:
    np.testing.assert_array_equal(flat_m[path], flat_p[path])
  for path in report.skipped:
    np.testing.assert_array_equal(flat_m[path], 0)
  t5 = ("octo_transformer", "task_tokenizers_language", "hf_model", "shared", "embedding")
  assert t5 in report.copied


def test_tiny_fixture_added_and_removed_tokenizers():
  """Dropping the wrist camera and adding a proprio tokenizer: the rest transfers."""
  pretrained = _load_params("tiny_v15")
  fresh = jax.tree.map(jnp.zeros_like, pretrained)
  fresh["octo_transformer"].pop("observation_tokenizers_wrist")
  fresh["octo_transformer"]["observation_tokenizers_proprio"] = {"kernel": jnp.zeros((8, 64))}
  merged, report = transfer.transfer_params(pretrained, fresh)
  assert report.kept_new == [("octo_transformer", "observation_tokenizers_proprio", "kernel")]
  assert report.unused and all(p[1] == "observation_tokenizers_wrist" for p in report.unused)
  assert not report.skipped
  assert "observation_tokenizers_wrist" not in merged["octo_transformer"]
