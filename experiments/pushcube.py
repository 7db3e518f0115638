"""PushCube-v1: RPD-MSE with the shipped Octo teacher (octo-tiny-pushcube).

The student is a state MLP (the full state); the teacher, a small Octo made by this project's
pipeline (rpd_jax/teachers/checkpoints/README.md), sees the 128x128 human camera.

Variants: experiments/maniskill_common.py and rpd_jax/config.py, plus
  moved_camera  the paper's PushCube with a moved camera (maniskill.CAMERA_VARIANTS["moved"])
e.g. python -m rpd_jax.train --config=experiments/pushcube.py:ppo  (PPO, no rendering)
     python -m rpd_jax.train --config=experiments/pushcube.py:rgb,moved_camera
"""

from experiments import maniskill_common

def _moved_camera(c):
  c.env.kwargs.camera_variant = "moved"


def get_config(arg=None):
  return maniskill_common.get_config("PushCube-v1", arg, {"moved_camera": _moved_camera})
