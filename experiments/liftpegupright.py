"""LiftPegUpright-v1: PPO (no scripted teacher; for RPD
set --config.teacher.name=octo --config.distill.loss=mse).

Variants: experiments/maniskill_common.py and rpd_jax/config.py; e.g.
  python -m rpd_jax.train --config=experiments/liftpegupright.py:rgb,sparse
"""

from experiments import maniskill_common


def get_config(arg=None):
  return maniskill_common.get_config("LiftPegUpright-v1", arg)
