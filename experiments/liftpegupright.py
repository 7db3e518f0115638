"""LiftPegUpright-v1: RPD-MSE with the shipped Octo teacher (octo-tiny-liftpegupright).

The student is a state MLP (the full state); the teacher, a small Octo made by this project's
pipeline (rpd_jax/teachers/checkpoints/README.md), sees the 128x128 human camera.

Variants: experiments/maniskill_common.py and rpd_jax/config.py;
e.g. python -m rpd_jax.train --config=experiments/liftpegupright.py:ppo   (PPO, no rendering)
     python -m rpd_jax.train --config=experiments/liftpegupright.py:scripted   (the scripted teacher)
     python -m rpd_jax.train --config=experiments/liftpegupright.py:rgb,sparse
"""

from experiments import maniskill_common


def get_config(arg=None):
  return maniskill_common.get_config("LiftPegUpright-v1", arg)
