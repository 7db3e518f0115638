import os

import io

import jax
import pytest
import sentencepiece as spm

from rpd_jax.envs import vulkan
from rpd_jax.octo import text

# Tests compile the same small graphs many times over (each trainer run builds its jitted
# functions afresh): a persistent cache makes the repeats cheap.
# Commands the tests start as subprocesses inherit the setting through the environment.
CACHE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture
def legacy_threefry():
  """JAX's pre-0.5 threefry (the official Octo goldens' random streams), restored afterwards."""
  old = jax.config.jax_threefry_partitionable
  jax.config.update("jax_threefry_partitionable", False)
  yield
  jax.config.update("jax_threefry_partitionable", old)


@pytest.fixture
def repo_root():
  return os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
  """A SentencePiece model with T5's special ids and ids < 128 (the tiny T5's vocabulary)."""
  model = io.BytesIO()
  sentences = ["push the cube away from the robot base", "pick up the cube",
               "lift the peg upright", "stack the red cube on the green cube"] * 4
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model, vocab_size=40, pad_id=0, eos_id=1,
      unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
  folder = tmp_path_factory.mktemp("spiece")
  (folder / text.SPIECE).write_bytes(model.getvalue())
  return folder


@pytest.fixture(scope="session")
def vulkan_device():
  """Skips (saying why) where ManiSkill has no Vulkan device (scripts/setup_vulkan.sh)."""
  try:
    vulkan.require_vulkan()
  except vulkan.VulkanUnavailableError as e:
    pytest.skip(f"no usable Vulkan device: {e}")
