"""rpd_jax: Refined Policy Distillation in JAX with an in-process Octo teacher."""

import os

# ManiSkill's GPU simulation and renderer share the GPU with JAX: JAX must not take 75% of its
# memory at start-up (its default), or PyTorch and SAPIEN run out. Set before JAX is imported;
# an explicit setting by the user wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
