"""A torch policy as an in-process teacher: the adapter's answers are the torch model's, inside
jit, the chunked query, scan, vmap and a whole PPO update; keys, samples, zero copy, registry.

The policies are small torch models written here (a tiny CNN over uint8 images, a linear map of
the mean pixel plus seeded noise), so every answer can be recomputed in torch directly.
"""

import ml_collections
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rpd_jax import config as config_lib
from rpd_jax import ppo, rollout
from rpd_jax.errors import ConfigError
from rpd_jax.networks import make_network
from rpd_jax.teachers import make_teacher, observation_keys, query, torch_policy

A, H, W = 7, 12, 12
CALLBACKS = torch_policy.CALLBACKS


class TinyCNN(torch.nn.Module):
  """uint8 [B, H, W, 3] -> tanh actions [B, A]: conv, ReLU, mean pool, linear."""

  def __init__(self, action_dim: int = A):
    super().__init__()
    torch.manual_seed(0)
    self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
    self.head = torch.nn.Linear(4, action_dim)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = images.permute(0, 3, 1, 2).float() / 255.0
    x = torch.relu(self.conv(x)).mean(dim=(2, 3))
    return torch.tanh(self.head(x))


CNN = TinyCNN().eval()


def cnn_policy(images, seed):
  del seed
  return CNN(images)


WEIGHTS = torch.linspace(-1.0, 1.0, 3 * A).reshape(3, A)


def noisy_policy(images, seed):
  """Mean pixel @ W plus N(0, 0.1) noise from a generator seeded with ``seed``."""
  mean = images.float().mean(dim=(1, 2)) / 255.0 @ WEIGHTS
  noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
  return mean + 0.1 * noise


def global_rng_policy(images, seed):
  """Noise from torch's global RNG, which the adapter seeds with ``seed``."""
  del seed
  mean = images.float().mean(dim=(1, 2)) / 255.0 @ WEIGHTS
  return mean + 0.1 * torch.randn(mean.shape)


def images(batch, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 256, (batch, H, W, 3), np.uint8))


def call(teacher, obs, key, num_samples=0):
  """The teacher's apply_fn, jitted."""
  first = jnp.zeros(obs["rgb"].shape[0], bool)
  return jax.jit(lambda o, k: teacher.apply_fn(teacher.params, o, o, first, k, num_samples))(
      obs, key)


@pytest.mark.parametrize("callback", CALLBACKS)
def test_actions_are_the_torch_models_inside_jit(callback):
  teacher = torch_policy.teacher_from_torch(cnn_policy, action_dim=A, callback=callback)
  obs = {"rgb": images(5)}
  out = call(teacher, obs, jax.random.key(0))
  with torch.inference_mode():
    expected = CNN(torch.from_numpy(np.array(obs["rgb"]))).numpy()
  assert out.action.shape == (5, A) and out.action.dtype == jnp.float32
  assert out.samples is None
  np.testing.assert_allclose(np.asarray(out.action), expected, rtol=1e-6, atol=1e-6)
  assert np.abs(expected).max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("callback", CALLBACKS)
def test_chunked_padded_query_equals_one_call(callback):
  calls = []

  def counting(images, seed):
    calls.append(images.shape[0])
    return cnn_policy(images, seed)

  teacher = torch_policy.teacher_from_torch(counting, action_dim=A, callback=callback)
  obs = {"rgb": images(10)}
  first = jnp.zeros(10, bool)
  chunked = jax.jit(lambda o, k: query(teacher, o, o, first, k, 0, max_batch=4))(
      obs, jax.random.key(0))
  jax.block_until_ready(chunked)
  # The trace-time probe (2 blank rows), then 10 rows in 3 chunks of 4, the last padded with
  # 2 copies of the last row.
  assert calls == [torch_policy.PROBE_BATCH, 4, 4, 4]
  whole = call(teacher, obs, jax.random.key(0))
  np.testing.assert_allclose(np.asarray(chunked.action), np.asarray(whole.action), rtol=1e-6)
  assert chunked.action.shape == (10, A)
  noisy = torch_policy.teacher_from_torch(noisy_policy, action_dim=A, callback=callback)
  out = jax.jit(lambda o, k: query(noisy, o, o, first, k, 3, max_batch=4))(
      obs, jax.random.key(1))
  assert out.action.shape == (10, A) and out.samples.shape == (3, 10, A)
  assert np.all(np.isfinite(np.asarray(out.samples)))


def test_inside_scan_and_vmap_each_key_gives_its_own_answer():
  teacher = torch_policy.teacher_from_torch(noisy_policy, action_dim=A)
  obs = {"rgb": images(4)}
  first = jnp.zeros(4, bool)
  keys = jax.random.split(jax.random.key(2), 3)
  step = lambda k: teacher.apply_fn(teacher.params, obs, obs, first, k, 0).action
  _, scanned = jax.jit(lambda ks: jax.lax.scan(lambda c, k: (c, step(k)), 0, ks))(keys)
  mapped = jax.jit(jax.vmap(step))(keys)
  single = np.stack([np.asarray(call(teacher, obs, k).action) for k in keys])
  np.testing.assert_array_equal(np.asarray(scanned), single)
  np.testing.assert_array_equal(np.asarray(mapped), single)
  assert np.abs(single[0] - single[1]).max() > 1e-3  # the keys differ, so do the answers


@pytest.mark.parametrize("policy", [noisy_policy, global_rng_policy])
def test_same_key_same_answer_different_keys_different_samples(policy):
  teacher = torch_policy.teacher_from_torch(policy, action_dim=A)
  obs = {"rgb": images(6)}
  a = call(teacher, obs, jax.random.key(0), num_samples=4)
  b = call(teacher, obs, jax.random.key(0), num_samples=4)
  c = call(teacher, obs, jax.random.key(1), num_samples=4)
  assert a.samples.shape == (4, 6, A)
  np.testing.assert_array_equal(np.asarray(a.action), np.asarray(b.action))
  np.testing.assert_array_equal(np.asarray(a.samples), np.asarray(b.samples))
  assert np.abs(np.asarray(a.samples) - np.asarray(c.samples)).min() > 0
  # The N samples of one call are distinct draws, none equal to the action.
  flat = np.asarray(a.samples).reshape(4, -1)
  assert all(np.abs(flat[i] - flat[j]).max() > 1e-3 for i in range(4) for j in range(i))
  assert np.abs(flat - np.asarray(a.action).reshape(1, -1)).max(axis=1).min() > 1e-3


def test_torch_global_rng_is_restored_after_a_call():
  teacher = torch_policy.teacher_from_torch(global_rng_policy, action_dim=A)
  obs = {"rgb": images(2)}
  call(teacher, obs, jax.random.key(3))  # trace (and probe) first
  torch.manual_seed(123)
  expected = torch.randn(5)
  torch.manual_seed(123)
  jax.block_until_ready(call(teacher, obs, jax.random.key(4)))
  np.testing.assert_array_equal(torch.randn(5).numpy(), expected.numpy())


def test_samples_fn_is_called_once_for_n_samples():
  calls = []

  def samples_fn(images, seed, num_samples):
    calls.append(num_samples)
    g = torch.Generator().manual_seed(seed)
    return cnn_policy(images, seed) + 0.1 * torch.randn(
        (num_samples, images.shape[0], A), generator=g)

  teacher = torch_policy.teacher_from_torch(cnn_policy, action_dim=A, samples_fn=samples_fn)
  obs = {"rgb": images(3)}
  out = call(teacher, obs, jax.random.key(0), num_samples=5)
  calls_after_trace = len(calls)
  out = call(teacher, obs, jax.random.key(0), num_samples=5)
  assert out.samples.shape == (5, 3, A)
  assert calls[calls_after_trace:] == [5]  # one call for all 5 samples
  spread = np.asarray(out.samples).std(axis=0)
  assert 0.03 < spread.mean() < 0.3


def test_inputs_are_xla_buffers_and_the_answer_is_written_into_xlas_output(monkeypatch):
  """Zero copy on a CPU with callback="buffer": the policy's image tensor is the jitted
  function's input buffer, and the callback's output tensor is the buffer jit returns."""
  seen = []

  def recording(images, seed):
    seen.append(images.data_ptr())
    return cnn_policy(images, seed)

  views = []
  from_dlpack = torch.from_dlpack

  def recording_from_dlpack(x):
    tensor = from_dlpack(x)
    views.append(tensor.data_ptr())
    return tensor

  teacher = torch_policy.teacher_from_torch(recording, action_dim=A)
  obs = {"rgb": images(8)}
  first = jnp.zeros(8, bool)
  fn = jax.jit(lambda o, k: teacher.apply_fn(teacher.params, o, o, first, k, 0).action)
  jax.block_until_ready(fn(obs, jax.random.key(0)))  # compile (and probe)
  monkeypatch.setattr(torch, "from_dlpack", recording_from_dlpack)
  seen.clear()
  action = jax.block_until_ready(fn(obs, jax.random.key(1)))
  assert seen == [obs["rgb"].unsafe_buffer_pointer()]
  assert action.unsafe_buffer_pointer() in views


def test_in_a_ppo_update_with_mse_and_ppd():
  t, b, d = 4, 4, 5
  config = config_lib.base_config()
  config.env.num_envs, config.ppo.num_steps = b, t
  config.ppo.num_minibatches, config.ppo.update_epochs = 2, 1
  config.ppo.target_kl = 0.0  # every minibatch step applied (the log-probs here are made up)
  config.network.hidden = (16,)
  rng = np.random.default_rng(0)  # numpy data: no eager JAX ops to compile
  zeros = lambda *shape, dtype=np.float32: jnp.asarray(np.zeros(shape, dtype))
  data = rollout.Rollout(
      obs={"state": jnp.asarray(rng.normal(size=(t, b, d)), jnp.float32),
           "rgb": jnp.asarray(rng.integers(0, 256, (t, b, H, W, 3), np.uint8))},
      prev_obs0={"state": zeros(b, d), "rgb": zeros(b, H, W, 3, dtype=np.uint8)},
      is_first=zeros(t, b, dtype=bool), actions=jnp.asarray(rng.normal(size=(t, b, A)),
                                                            jnp.float32),
      log_probs=jnp.asarray(np.full((t, b), -5.0, np.float32)), values=zeros(t, b),
      rewards=jnp.asarray(rng.normal(size=(t, b)), jnp.float32),
      terminated=zeros(t, b, dtype=bool), truncated=zeros(t, b, dtype=bool),
      final_values=zeros(t, b), last_value=zeros(b))
  network = make_network(config.network, A)
  rows = []

  def counting(images, seed):
    rows.append(images.shape[0])
    return noisy_policy(images, seed)

  teacher = torch_policy.teacher_from_torch(counting, action_dim=A)
  # 16 transitions in 3 chunks of 6; PPD's chunks are one call for the action and 3 for its
  # samples; the trace-time probe (2 blank rows) runs once per image shape.
  for loss, expected in (("mse", [torch_policy.PROBE_BATCH] + [6] * 3), ("ppd", [6] * 12)):
    rows.clear()
    config.distill.loss, config.distill.ppd_samples = loss, 3
    optimizer = ppo.make_optimizer(config.ppo, 10)
    state = ppo.init_train_state(network, optimizer, {"state": jnp.zeros((b, d))},
                                 jax.random.key(0))
    update = ppo.make_update(network, optimizer, config.ppo, config.distill,
                             teacher_max_batch=6)  # 16 rows: 3 chunks of 6, 2 padded
    state, metrics = update(state, teacher, data, jax.random.key(1))
    metrics = jax.device_get(metrics)
    assert all(np.isfinite(v).all() for v in metrics.values()), metrics
    assert float(metrics["loss/distill"]) > 0
    assert float(metrics["teacher/calls_per_step"]) == 1.0
    assert bool(metrics["train/finite"]) and float(metrics["loss/update_fraction"]) == 1.0
    assert rows == expected


def test_maniskill_gripper_mapping_and_state_input():
  def policy(images, seed, state):
    del seed
    return torch.cat([state[:, :A - 1], torch.full((images.shape[0], 1), 0.75)], dim=1)

  teacher = torch_policy.teacher_from_torch(policy, action_dim=A, state_key="state",
                                            gripper="maniskill")
  state = jnp.linspace(-2.0, 2.0, 3 * 8).reshape(3, 8)
  obs = {"rgb": images(3), "state": state}
  out = call(teacher, obs, jax.random.key(0))
  np.testing.assert_allclose(out.action[:, :A - 1], np.clip(state[:, :A - 1], -1, 1))
  np.testing.assert_allclose(out.action[:, -1], 0.5)  # 1 = open in [0, 1] -> +1 = open


# ---- the registry ----

NOT_CALLABLE = 3


def make_cnn(action_dim: int = A, scale: float = 1.0):
  """A factory, as config.teacher.kwargs.factory names it."""
  model = TinyCNN(action_dim).eval()
  return lambda images, seed: scale * model(images)


def make_with_samples():
  return torch_policy.TorchPolicy(
      act=cnn_policy,
      sample=lambda images, seed, n: torch.stack([cnn_policy(images, seed)] * n))


def teacher_config(**kwargs):
  c = ml_collections.ConfigDict()
  c.name = "torch"
  c.kwargs = ml_collections.ConfigDict(kwargs)
  return c


def test_registry_builds_the_factorys_policy():
  c = teacher_config(factory=f"{__name__}:make_cnn", action_dim=A,
                     factory_kwargs={"scale": 2.0})
  teacher = make_teacher(c)
  assert teacher.name == f"torch:{__name__}:make_cnn"
  obs = {"rgb": images(4)}
  with torch.inference_mode():
    expected = 2.0 * CNN(torch.from_numpy(np.array(obs["rgb"]))).numpy()
  np.testing.assert_allclose(np.asarray(call(teacher, obs, jax.random.key(0)).action), expected,
                             rtol=1e-6, atol=1e-6)
  assert observation_keys(c) == ("rgb",)
  assert observation_keys(teacher_config(factory="m:f", action_dim=A, image_key="cam",
                                         state_key="state")) == ("cam", "state")
  sampled = make_teacher(teacher_config(factory=f"{__name__}:make_with_samples", action_dim=A))
  assert call(sampled, obs, jax.random.key(0), num_samples=2).samples.shape == (2, 4, A)
  assert "torch" in config_lib.teachers.TEACHER_NAMES


@pytest.mark.parametrize("factory, message", [
    ("no_colon", "must be 'package.module:function'"),
    ("a:b:c", "must be 'package.module:function'"),
    ("no_such_module_xyz:f", "module 'no_such_module_xyz' cannot be imported"),
    (f"{__name__}:missing", "has no 'missing'"),
    (f"{__name__}:NOT_CALLABLE", "is a int, not a function"),
])
def test_bad_factory_paths(factory, message):
  with pytest.raises(ConfigError, match=message) as e:
    make_teacher(teacher_config(factory=factory, action_dim=A))
  assert "config.teacher.kwargs.factory=" in str(e.value)


def test_bad_kwargs():
  with pytest.raises(ConfigError, match="needs config.teacher.kwargs.factory"):
    make_teacher(teacher_config(action_dim=A))
  with pytest.raises(ConfigError, match="needs config.teacher.kwargs.action_dim"):
    make_teacher(teacher_config(factory=f"{__name__}:make_cnn"))
  with pytest.raises(ConfigError, match="factory_kwargs.size is not an option"):
    make_teacher(teacher_config(factory=f"{__name__}:make_cnn", action_dim=A,
                                factory_kwargs={"size": 3}))
  with pytest.raises(ConfigError, match="kwargs.nope is not an option"):
    make_teacher(teacher_config(factory=f"{__name__}:make_cnn", action_dim=A, nope=1))
  for bad in (dict(action_dim=0), dict(action_dim="7"), dict(gripper="open"),
              dict(callback="io"), dict(device="gpu0")):
    with pytest.raises(ConfigError, match=f"kwargs.{next(iter(bad))}="):
      torch_policy.teacher_from_torch(cnn_policy, **{"action_dim": A, **bad})


def test_an_action_dim_mismatch_is_a_config_error_naming_both():
  teacher = make_teacher(teacher_config(factory=f"{__name__}:make_cnn", action_dim=A,
                                        factory_kwargs={"action_dim": 6}))
  with pytest.raises(ConfigError, match=r"returned shape \(2, 6\).*action_dim=7 needs \(2, 7\)"):
    call(teacher, {"rgb": images(4)}, jax.random.key(0))
  one_row = torch_policy.teacher_from_torch(lambda images, seed: CNN(images[:1]), action_dim=A)
  with pytest.raises(ConfigError, match=r"returned shape \(1, 7\) for a batch of 2"):
    call(one_row, {"rgb": images(4)}, jax.random.key(0))
  with pytest.raises(ConfigError, match="reads observation 'rgb', which is not among cam"):
    jax.jit(lambda o: one_row.apply_fn({}, o, o, jnp.zeros(4, bool), jax.random.key(0), 0))(
        {"cam": images(4)})
  with pytest.raises(ConfigError, match="takes uint8 images"):
    call(one_row, {"rgb": images(4).astype(jnp.float32)}, jax.random.key(0))


def test_per_image_loops_over_a_single_image_policy():
  def one(image, seed):  # [H, W, 3] -> numpy [A], as OpenVLA's predict_action answers
    assert image.shape == (H, W, 3)
    return CNN(image[None])[0].numpy() + seed * 0.0

  teacher = torch_policy.teacher_from_torch(torch_policy.per_image(one), action_dim=A)
  obs = {"rgb": images(3)}
  with torch.inference_mode():
    expected = CNN(torch.from_numpy(np.array(obs["rgb"]))).numpy()
  np.testing.assert_allclose(np.asarray(call(teacher, obs, jax.random.key(0)).action), expected,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kept", ["tensor", "view"])
def test_a_policy_that_keeps_its_inputs_is_stopped_before_anything_runs(kept):
  """The inputs are views of XLA's buffers, which XLA reuses after the call: a policy keeping
  them (an action queue, ``self.last_obs``) is a ConfigError at the trace-time probe."""
  store = []

  def keeping(images_, seed):
    store.append(images_ if kept == "tensor" else images_[0])
    return cnn_policy(images_, seed)

  teacher = torch_policy.teacher_from_torch(keeping, action_dim=A)
  fn = jax.jit(lambda o, k: teacher.apply_fn(teacher.params, o, o, jnp.zeros(4, bool), k,
                                             0).action)
  with pytest.raises(ConfigError, match="kept its input tensors"):
    fn({"rgb": images(4)}, jax.random.key(0))
  # A copy is the policy's own.
  teacher = torch_policy.teacher_from_torch(
      lambda images_, seed: (store.append(images_.clone()), cnn_policy(images_, seed))[1],
      action_dim=A)
  jax.block_until_ready(teacher.apply_fn(teacher.params, {"rgb": images(4)}, None,
                                         jnp.zeros(4, bool), jax.random.key(0), 0).action)
