"""RPD on the pure-JAX push task with the scripted teacher (fast CPU experiments and tests).

Default: RPD-MSE with the scripted push teacher (tuned to succeed 30-50% of the time alone).
Variants (combine with commas): ppo, rpd_mse, rpd_l1, rpd_bc, ppd, sparse, rgb, smoke.
  python -m rpd_jax.train --config=experiments/jax_push.py:sparse,ppd
"""

from rpd_jax import config as config_lib
from rpd_jax.teachers import scripted


def _rgb(c):
  c.env.kwargs.obs_mode = "rgb"
  c.network.encoder = "cnn"
  c.network.obs_keys = ("rgb", "state")


def _smoke(c):
  """Seconds on a CPU: a few tiny iterations, one small evaluation, checkpoints on."""
  c.env.num_envs = 8
  c.ppo.num_steps = 16
  c.ppo.num_minibatches = 4
  c.ppo.update_epochs = 2
  c.total_env_steps = 8 * 16 * 4
  c.network.hidden = (32, 32)
  c.network.cnn_features = 32
  c.eval_every = 2
  c.eval_envs = 4
  c.eval_episodes = 4
  c.checkpoint_every = 2
  c.distill.ppd_samples = 4
  c.teacher.max_batch = 64


def get_config(arg=None):
  c = config_lib.base_config()
  c.env.name = "jax_push"
  c.env.num_envs = 64
  c.teacher.name = "scripted_push"
  # The teacher's quality (rpd_jax/teachers/scripted.py); these defaults succeed 44% alone.
  c.teacher.kwargs.noise = scripted.DEFAULT_NOISE
  c.teacher.kwargs.bias = scripted.DEFAULT_BIAS
  c.distill.loss = "mse"
  c.total_env_steps = 2_000_000
  c.ppo.num_steps = 50
  c.ppo.num_minibatches = 16
  c.eval_every = 5
  c.eval_envs = 64
  c.eval_episodes = 128
  return config_lib.apply_variants(c, arg, {"rgb": _rgb, "smoke": _smoke})
