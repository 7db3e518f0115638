"""PullCube-v1: RPD-MSE with the scripted teacher.

Variants: experiments/maniskill_common.py and rpd_jax/config.py; e.g.
  python -m rpd_jax.train --config=experiments/pullcube.py:rgb,sparse
"""

from experiments import maniskill_common


def get_config(arg=None):
  return maniskill_common.get_config("PullCube-v1", arg)
