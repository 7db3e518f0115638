"""PullCubeTool-v1: RPD-MSE with the shipped Octo teacher of PullCube (octo-tiny-pullcube).

A held-out task: no teacher was made for it, so it borrows the nearest task's, as the
paper used its fine-tuned VLA here (that teacher has no language input, so the
instruction does not reach it). The student is a state MLP (the full state); the teacher
sees the 128x128 human camera.

Variants: experiments/maniskill_common.py and rpd_jax/config.py;
e.g. python -m rpd_jax.train --config=experiments/pullcubetool.py:ppo   (PPO, no rendering)
     python -m rpd_jax.train --config=experiments/pullcubetool.py:rgb,sparse
"""

from experiments import maniskill_common


def get_config(arg=None):
  return maniskill_common.get_config("PullCubeTool-v1", arg)
