"""Learning, end to end (brax's train_test habit): the trainer must still solve the push task.

Every other test would pass if a change broke learning; these would not. They train on the
pure-JAX push task (``experiments/jax_push.py``) with its default scripted teacher (44% success
alone) for the budgets the README reports, with one deterministic evaluation of 128 episodes at
the end, and take about a minute each on a 2-core CPU.

- sparse reward: RPD-MSE reached 80% at 64k env steps on all three seeds of the README's sweep;
  PPO alone saw no success at all in 1.6M steps. So RPD-MSE must pass 0.8 at 64k, and PPO must
  stay far below it on the same budget: the distillation term is what learns here.
- dense reward: PPO alone reached 80% by 48k steps on every seed; this guards the RL half (GAE,
  clip loss, value) that the sparse test cannot, since there PPO is expected to fail.
"""

import os

import pytest

from rpd_jax import config as config_lib
from rpd_jax import trainer

pytestmark = pytest.mark.learning
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(variants: str, env_steps: int, workdir) -> dict[str, float]:
  config = config_lib.load(os.path.join(REPO, "experiments", f"jax_push.py:{variants}"))
  config.total_env_steps = env_steps
  config.eval_every = config.checkpoint_every = env_steps  # evaluate and save once, at the end
  return trainer.train_and_evaluate(config, str(workdir))


def test_rpd_mse_solves_sparse_push_within_64k_steps(tmp_path):
  final = train("sparse,rpd_mse", 64_000, tmp_path)
  assert final["eval/success_rate"] >= 0.8, final


def test_ppo_stays_far_below_on_the_same_sparse_budget(tmp_path):
  final = train("sparse,ppo", 64_000, tmp_path)
  assert final["eval/success_rate"] <= 0.2, final


def test_ppo_solves_dense_push_within_48k_steps(tmp_path):
  final = train("ppo", 48_000, tmp_path)
  assert final["eval/success_rate"] >= 0.8, final
