import os

import jax
import pytest

# Tests compile the same small graphs many times over (each trainer run builds its jitted
# functions afresh): a persistent cache makes the repeats cheap.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def repo_root():
  return os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
