"""PickCube-v1: RPD-MSE with the shipped Octo teacher (octo-tiny-pickcube).

The student is a state MLP (the full state); the teacher, a small Octo made by this project's
pipeline (rpd_jax/teachers/checkpoints/README.md), sees the 128x128 human camera.

Variants: experiments/maniskill_common.py and rpd_jax/config.py;
e.g. python -m rpd_jax.train --config=experiments/pickcube.py:ppo   (PPO, no rendering)
     python -m rpd_jax.train --config=experiments/pickcube.py:scripted   (the scripted teacher)
     python -m rpd_jax.train --config=experiments/pickcube.py:rgb,sparse
"""

from experiments import maniskill_common


def get_config(arg=None):
  return maniskill_common.get_config("PickCube-v1", arg)
