"""PokeCube-v1: RPD-MSE with the shipped Octo teacher of PushCube (octo-tiny-pushcube).

A held-out task: no teacher was made for it, so it borrows the nearest task's, as the
paper used its fine-tuned VLA here (that teacher has no language input, so the
instruction does not reach it). The student is a state MLP (the full state); the teacher
sees the 128x128 human camera.

Variants: experiments/maniskill_common.py and rpd_jax/config.py;
e.g. python -m rpd_jax.train --config=experiments/pokecube.py:ppo   (PPO, no rendering)
     python -m rpd_jax.train --config=experiments/pokecube.py:rgb,sparse
"""

from experiments import maniskill_common


def get_config(arg=None):
  return maniskill_common.get_config("PokeCube-v1", arg)
