"""LiftPegUpright-v1: RPD-MSE with the scripted teacher (noise maniskill_scripted.TASK_NOISE).

Variants: experiments/maniskill_common.py and rpd_jax/config.py; e.g.
  python -m rpd_jax.train --config=experiments/liftpegupright.py:rgb,sparse
  python -m rpd_jax.train --config=experiments/liftpegupright.py:octo   (an Octo teacher, rgb student)
"""

from experiments import maniskill_common


def get_config(arg=None):
  return maniskill_common.get_config("LiftPegUpright-v1", arg)
