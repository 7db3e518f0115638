"""PushCube-v1: RPD-MSE with the scripted teacher.

Variants: experiments/maniskill_common.py and rpd_jax/config.py, plus
  moved_camera  the paper's PushCube with a moved camera (maniskill.CAMERA_VARIANTS["moved"])
e.g. python -m rpd_jax.train --config=experiments/pushcube.py:rgb,moved_camera
"""

from experiments import maniskill_common


def _moved_camera(c):
  c.env.kwargs.camera_variant = "moved"


def get_config(arg=None):
  return maniskill_common.get_config("PushCube-v1", arg, {"moved_camera": _moved_camera})
