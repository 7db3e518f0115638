"""T5 tokenizer padding/truncation/EOS and the per-instruction embedding cache.

The t5-base tokenizer is not shipped, so a tiny SentencePiece model with T5's special ids
(pad 0, eos 1, unk 2, no bos) is trained here from a few sentences.
"""

import io

import numpy as np
import pytest
import sentencepiece as spm

from rpd_jax.octo import text

SENTENCES = [
    "pick up the red cube", "push the cube to the goal", "pull the cube towards the robot",
    "lift the peg upright", "roll the ball to the goal", "stack the red cube on the green cube",
    "poke the cube with the peg", "pull the cube with the tool",
]


@pytest.fixture(scope="module")
def spiece_folder(tmp_path_factory):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(SENTENCES * 4), model_writer=model, vocab_size=40,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
      minloglevel=2)
  folder = tmp_path_factory.mktemp("t5")
  (folder / text.SPIECE).write_bytes(model.getvalue())
  return folder


@pytest.fixture(scope="module")
def tokenizer(spiece_folder):
  return text.T5Tokenizer.from_folder(spiece_folder)


def test_padding_eos_and_mask(tokenizer, spiece_folder):
  sp = spm.SentencePieceProcessor(model_file=str(spiece_folder / text.SPIECE))
  out = tokenizer(["pick up the red cube", ""])
  assert out["input_ids"].shape == (2, 16) and out["input_ids"].dtype == np.int32
  assert out["attention_mask"].shape == (2, 16) and out["attention_mask"].dtype == np.int32
  pieces = sp.encode("pick up the red cube")
  n = len(pieces) + 1
  np.testing.assert_array_equal(out["input_ids"][0, :n], pieces + [1])
  np.testing.assert_array_equal(out["input_ids"][0, n:], 0)
  np.testing.assert_array_equal(out["attention_mask"][0], [1] * n + [0] * (16 - n))
  # The empty string is EOS alone, as in Octo's goal-image tasks.
  np.testing.assert_array_equal(out["input_ids"][1], [1] + [0] * 15)
  np.testing.assert_array_equal(out["attention_mask"][1], [1] + [0] * 15)


def test_truncation_keeps_eos(tokenizer, spiece_folder):
  sp = spm.SentencePieceProcessor(model_file=str(spiece_folder / text.SPIECE))
  long = " ".join(SENTENCES)
  pieces = sp.encode(long)
  assert len(pieces) > 16
  out = tokenizer(long)
  np.testing.assert_array_equal(out["input_ids"][0], pieces[:15] + [1])
  np.testing.assert_array_equal(out["attention_mask"][0], 1)


def test_unknown_ids_and_single_string(tokenizer):
  out = tokenizer("zzz qqq")  # letters never seen in training -> unk (2)
  assert out["input_ids"].shape == (1, 16)
  assert 2 in out["input_ids"][0]


def test_missing_files_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match="spiece.model"):
    text.T5Tokenizer.from_folder(tmp_path)


def test_finds_hf_cache_snapshot(spiece_folder, tmp_path, monkeypatch):
  snapshot = tmp_path / "models--google-t5--t5-base" / "snapshots" / "abc123"
  snapshot.mkdir(parents=True)
  (snapshot / text.SPIECE).write_bytes((spiece_folder / text.SPIECE).read_bytes())
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
  monkeypatch.setattr(text, "DOWNLOAD_DIR", tmp_path / "absent")
  assert text.find_t5_folders() == [snapshot]
  assert text.T5Tokenizer.find().vocab_size == text.T5Tokenizer.from_folder(snapshot).vocab_size
