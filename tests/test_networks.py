"""The published run's rgb agent (encoder="ppo_rgb") against a torch replica of ManiSkill's
ppo_rgb Agent, the student of the official RPD code: the same layers, sizes and initial scales."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from rpd_jax import config as config_lib
from rpd_jax.networks import NatureCNN, TorchNatureCNN, make_network


def _layer_init(layer, std=np.sqrt(2)):
  torch.nn.init.orthogonal_(layer.weight, std)
  torch.nn.init.constant_(layer.bias, 0.0)
  return layer


def _torch_agent(n_actions, size):
  """ManiSkill's ppo_rgb NatureCNN (rgb only) and the Agent's heads, as the official code."""
  cnn = nn.Sequential(nn.Conv2d(3, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(),
                      nn.Conv2d(64, 64, 3, 1), nn.ReLU(), nn.Flatten())
  with torch.no_grad():
    n_flatten = cnn(torch.zeros(1, 3, size, size)).shape[1]
  fc = nn.Sequential(nn.Linear(n_flatten, 256), nn.ReLU())
  actor = nn.Sequential(_layer_init(nn.Linear(256, 512)), nn.ReLU(),
                        _layer_init(nn.Linear(512, n_actions), std=0.01 * np.sqrt(2)))
  critic = nn.Sequential(_layer_init(nn.Linear(256, 512)), nn.ReLU(),
                         _layer_init(nn.Linear(512, 1)))
  return cnn, fc, actor, critic


def _flax_agent(size, seed=0):
  c = config_lib.base_config()
  c.network.encoder, c.network.obs_keys = "ppo_rgb", ("rgb",)
  network = make_network(c.network, 7)
  obs = {"rgb": jnp.zeros((2, size, size, 3), jnp.uint8)}
  return network, network.init(jax.random.key(seed), obs)["params"]


def test_ppo_rgb_has_the_official_agents_layers_and_parameter_count():
  size = 128
  _, params = _flax_agent(size)
  cnn, fc, actor, critic = _torch_agent(7, size)
  torch_count = sum(p.numel() for m in (cnn, fc, actor, critic) for p in m.parameters()) + 7
  assert sum(x.size for x in jax.tree.leaves(params)) == torch_count  # + the 7 log-stds
  enc = params["encoder"]
  assert enc["Conv_0"]["kernel"].shape == (8, 8, 3, 32)
  assert enc["Dense_0"]["kernel"].shape == (fc[0].in_features, 256)
  assert params["actor_hidden"]["kernel"].shape == (256, 512)
  assert params["actor_out"]["kernel"].shape == (512, 7)
  assert params["critic_out"]["kernel"].shape == (512, 1)


def test_ppo_rgb_starts_at_the_official_scales():
  _, params = _flax_agent(128)
  cnn, fc, actor, critic = _torch_agent(7, 128)
  enc = params["encoder"]
  pairs = [(enc["Conv_0"]["kernel"], cnn[0].weight), (enc["Conv_2"]["kernel"], cnn[4].weight),
           (enc["Dense_0"]["kernel"], fc[0].weight), (enc["Dense_0"]["bias"], fc[0].bias),
           (params["actor_hidden"]["kernel"], actor[0].weight),
           (params["actor_out"]["kernel"], actor[2].weight),
           (params["critic_out"]["kernel"], critic[2].weight)]
  for ours, theirs in pairs:
    theirs = theirs.detach().numpy()
    assert np.std(ours) == pytest.approx(np.std(theirs), rel=0.1)
    assert np.abs(ours).max() <= np.abs(theirs).max() * 1.2 + 1e-6


def test_ppo_rgb_features_are_the_official_size_not_the_cnn_encoders():
  """The default "cnn" encoder's orthogonal (sqrt 2) fc layer starts its features much larger
  than torch's default init; ppo_rgb keeps the official, smaller ones. One init's feature size
  varies by +-25% (0.0068 to 0.0116 over 6 seeds on each side): 4 seeded inits are averaged."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (8, 128, 128, 3), np.uint8))
  pixels = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
  features = lambda p, encoder: encoder.apply({"params": p}, {"rgb": images})
  ours, theirs = [], []
  for seed in range(4):
    network, params = _flax_agent(128, seed=seed)
    if seed == 0:
      mean, _, value = network.apply({"params": params}, {"rgb": images})
      assert mean.shape == (8, 7) and value.shape == (8,) and np.isfinite(np.asarray(mean)).all()
    ours.append(float(jnp.abs(features(params["encoder"], TorchNatureCNN(256))).mean()))
    torch.manual_seed(seed)
    cnn, fc, _, _ = _torch_agent(7, 128)
    with torch.no_grad():
      theirs.append(float(fc(cnn(pixels)).abs().mean()))
  c = config_lib.base_config()
  c.network.encoder, c.network.obs_keys = "cnn", ("rgb",)
  default = make_network(c.network, 7).init(jax.random.key(0), {"rgb": images})["params"]
  assert np.mean(ours) == pytest.approx(np.mean(theirs), rel=0.3)
  assert float(jnp.abs(features(default["encoder"], NatureCNN(256))).mean()) > 5 * max(theirs)
