"""Parity of rpd_jax.octo with the official Octo code on the fixtures' tiny checkpoints.

Every golden in tests/data/octo_parity and tests/data/octo_parity_ext (see their READMEs) was
produced by the official code (octo-models/octo 241fb35) with random weights, under legacy
threefry. octo_parity: Octo 1.0 and 1.5 with diffusion heads; octo_parity_ext: what Octo's
fine-tuning example produces (a proprio LowdimObsTokenizer, a wrist camera, window 2, an
L1ActionHead), an MSEActionHead goal-image model with "bounds" normalisation, and a diffusion
head with proprio. Tolerances are the fixtures' suggested acceptance thresholds: masks exact;
tokens, transformer outputs, eps and deterministic actions 1e-4; one sampler step 1e-5;
sampled actions 5e-3.
"""

import enum
import functools
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rpd_jax.octo as octo
from rpd_jax.octo import heads as heads_lib
from rpd_jax.octo.module import OctoModule

DATA = pathlib.Path(__file__).parent / "data" / "octo_parity"
EXT = pathlib.Path(__file__).parent / "data" / "octo_parity_ext"
# name -> (checkpoint folder, goldens file, cases)
MODELS = {
    "v15": (DATA / "tiny_v15", DATA / "goldens_v15.npz", "abcdef"),
    "v10": (DATA / "tiny_v10", DATA / "goldens_v10.npz", "abcdef"),
    **{name: (EXT / name, EXT / f"goldens_{name}.npz", "abc")
       for name in ("ext_l1_proprio_wrist", "ext_mse_bounds", "ext_diffusion_proprio_w2")},
}
VERSIONS = ("v15", "v10")  # the fixtures with head and sampler trajectory goldens
DETERMINISTIC = ("ext_l1_proprio_wrist", "ext_mse_bounds")
ATOL = 1e-4
ACTION_ATOL = 5e-3
STEP_ATOL = 1e-5
MODEL_CASES = [(name, case) for name, (_, _, cases) in MODELS.items() for case in cases]


class NormalizationType(str, enum.Enum):
  """As octo.data.utils.data_utils.NormalizationType."""
  NORMAL = "normal"
  BOUNDS = "bounds"


# The official goldens' random streams come from the pre-0.5 threefry (conftest.py).
pytestmark = pytest.mark.usefixtures("legacy_threefry")


@functools.lru_cache(maxsize=None)
def model(version):
  return octo.load_pretrained(str(MODELS[version][0]))


@functools.lru_cache(maxsize=None)
def goldens(version):
  with np.load(MODELS[version][1]) as f:
    return dict(f)


def subtree(golden, prefix):
  flat = {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}
  return flax.traverse_util.unflatten_dict(flat, sep="/")


@jax.jit
def transformer_with_intermediates(m, observations, tasks):
  outputs, state = m.module.apply(
      {"params": m.params}, observations, tasks, observations["timestep_pad_mask"],
      method=OctoModule.transformer, mutable=["intermediates"])
  inter = {k: v[0] for k, v in state["intermediates"]["octo_transformer"].items()}
  # The head's input: the mean of the readout tokens, or its MAP head's output.
  inter["readout_embedding"] = m.module.apply({"params": m.params}, "action",
                                              outputs["readout_action"],
                                              method=OctoModule.head_embedding)
  return outputs, inter


@functools.lru_cache(maxsize=None)
def case_outputs(version, case):
  g = goldens(version)
  obs, task = subtree(g, f"{case}/obs/"), subtree(g, f"{case}/task/")
  outputs, inter = transformer_with_intermediates(model(version), obs, task)
  return jax.device_get((outputs, inter))


def ours(version, case, part):
  """Our value for the golden key ``<case>/<part>``."""
  outputs, inter = case_outputs(version, case)
  kind, name = part.split("/", 1)
  index = 1 if name.endswith("_mask") else 0
  name = name.removesuffix("_mask")
  if part == "pre/transformer_input":
    return inter["transformer_input"]
  if part == "out/attention_mask":
    return inter["attention_mask"]
  if part == "out/t5_last_hidden_state":
    return inter["tokenizer/language"][0]
  if part == "out/readout_embedding":
    return inter["readout_embedding"]
  if kind in ("tokenizer", "pre"):
    return inter[f"{kind}/{name}"][index]
  return outputs[name][index]


def compared_parts(version, case):
  g = goldens(version)
  skip = ("obs/", "task/", "in/", "meta/", "out/actions_")
  return sorted(k[2:] for k in g if k.startswith(f"{case}/") and not k[2:].startswith(skip))


@pytest.mark.parametrize("version, case", MODEL_CASES)
def test_groups_in_sequence_order(version, case):
  """Our groups, concatenated in the golden's order, are exactly our transformer input."""
  g = goldens(version)
  _, inter = case_outputs(version, case)
  names = [str(n) for n in g[f"{case}/meta/group_order"]]
  kinds = [str(k) for k in g[f"{case}/meta/group_kind"]]
  prefix = [inter[f"pre/{n}"][0] for n, k in zip(names, kinds) if k == "prefix"]
  steps = np.concatenate([inter[f"pre/{n}"][0] for n, k in zip(names, kinds) if k != "prefix"],
                         axis=2)
  for name, n in zip(names, g[f"{case}/meta/group_ntokens"]):
    assert inter[f"pre/{name}"][0].shape[-2] == n, name
  sequence = np.concatenate(prefix + [steps.reshape(steps.shape[0], -1, steps.shape[-1])], 1)
  np.testing.assert_array_equal(sequence, inter["transformer_input"])


@pytest.mark.parametrize("version, case", MODEL_CASES)
def test_tokens_masks_and_outputs(version, case):
  g = goldens(version)
  for part in compared_parts(version, case):
    want, got = g[f"{case}/{part}"], np.asarray(ours(version, case, part))
    assert got.shape == want.shape, part
    if part.endswith("mask"):
      np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=part)
    else:
      # Includes case e's task_language rows, whose keys are all padding: masked logits are
      # float32's minimum (not -inf), so they average all values as in the official model.
      np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=part)


@pytest.mark.parametrize("version", MODELS)
def test_sampled_actions(version):
  """The official samples for the same key, in every case (cases of one batch size share a
  compilation), normalised and unnormalised with the golden's normalisation type.

  Every fixture's statistics cover all 7 dims, so unnormalising the samples afterwards equals
  passing the statistics to sample_actions (tested in test_octo_model, and below for
  "bounds"), without compiling the sampler twice.
  """
  g, m = goldens(version), model(version)
  for case in MODELS[version][2]:
    obs, task = subtree(g, f"{case}/obs/"), subtree(g, f"{case}/task/")
    actions = m.sample_actions(obs, task, jnp.asarray(g[f"{case}/in/rng_key"]))
    np.testing.assert_allclose(actions, g[f"{case}/out/actions_normalized"], atol=ACTION_ATOL,
                               rtol=0, err_msg=case)
    normalization_type = str(g[f"{case}/meta/normalization_type"]) if (
        f"{case}/meta/normalization_type" in g) else "normal"
    unnormalized = octo.unnormalize(actions, m.dataset_statistics["action"], normalization_type)
    np.testing.assert_allclose(unnormalized, g[f"{case}/out/actions_unnormalized"],
                               atol=ACTION_ATOL, rtol=0, err_msg=case)


def test_the_official_call_with_bounds():
  """Octo's own call (keyword rng, the type as its NormalizationType, a str Enum) works with
  "bounds", which the official jitted sample_actions cannot take."""
  g, m = goldens("ext_mse_bounds"), model("ext_mse_bounds")
  obs, task = subtree(g, "a/obs/"), subtree(g, "a/task/")
  actions = m.sample_actions(obs, task, unnormalization_statistics=m.dataset_statistics["action"],
                             normalization_type=NormalizationType.BOUNDS,
                             rng=jnp.asarray(g["a/in/rng_key"]))
  np.testing.assert_allclose(actions, g["a/out/actions_unnormalized"], atol=ATOL, rtol=0)


@jax.jit
def deterministic_chunks(m, embedding):
  return m.module.apply({"params": m.params}, "action", embedding, method=OctoModule.head_predict)


@pytest.mark.parametrize("version", DETERMINISTIC)
def test_deterministic_heads(version):
  """L1/MSE heads: the chunk of every window timestep, and the last one's (what sample_actions
  returns for every sample, whatever the key), within 1e-4."""
  g = goldens(version)
  for case in MODELS[version][2]:
    _, inter = case_outputs(version, case)
    chunks = deterministic_chunks(model(version), inter["readout_embedding"])
    np.testing.assert_allclose(chunks, g[f"{case}/out/actions_all_timesteps"], atol=ATOL,
                               rtol=0, err_msg=case)
    np.testing.assert_allclose(chunks[:, -1], g[f"{case}/out/actions_deterministic"],
                               atol=ATOL, rtol=0, err_msg=case)


@pytest.mark.parametrize("version", VERSIONS)
def test_sampled_actions_with_the_transformer_in_slices(version):
  """Slices of 2 of the 3 examples (the last slice padded) give the official samples too, and
  the whole batch's readout embedding and samples up to float32 rounding."""
  g, m = goldens(version), model(version)
  obs, task = subtree(g, "a/obs/"), subtree(g, "a/task/")
  key = jnp.asarray(g["a/in/rng_key"])
  sliced = m.sample_actions(obs, task, key, transformer_batch=2)
  np.testing.assert_allclose(sliced, g["a/out/actions_normalized"], atol=ACTION_ATOL, rtol=0)
  whole = m.sample_actions(obs, task, key, transformer_batch=0)
  # The transformer's output, the head's only input, is the same computation on slices: it
  # may differ only by float32 rounding (matrix products blocked for another batch size).
  # Measured: 1.3e-6 / 2.1e-6 (v15 / v10, values up to 2.9) on an AVX2-only CPU.
  embed = jax.jit(m.readout_embedding, static_argnums=3)
  mask = obs["timestep_pad_mask"]
  np.testing.assert_allclose(embed(obs, task, mask, 2), embed(obs, task, mask, 0), atol=1e-5,
                             rtol=0)
  # The diffusion sampler amplifies its input's rounding: 20 denoising steps, the first of
  # which multiplies the noise prediction by 1/sqrt(1 - 0.999) = 32 (heads.schedule clips the
  # last beta). Measured: 1.3e-6 in the embedding became 2.1e-4 in v15's actions (x170) on an
  # AVX2-only CPU, 6e-6 in v10's. 1e-3 leaves 5x headroom over that and is still 5x tighter
  # than the parity tolerance against the official samples (ACTION_ATOL) checked above.
  np.testing.assert_allclose(sliced, whole, atol=1e-3, rtol=0)


@jax.jit
def run_transformer(m, observations, tasks):
  return m.run_transformer(observations, tasks)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_fused_attention_path_matches_the_official_outputs(version):
  """jax.nn.dot_product_attention (XLA here; cuDNN on a GPU) instead of Flax's attention:
  every transformer output of every case within the fixture's tolerances, padded rows (no
  valid key) included, and the samples of the cases of case a's batch size (one compilation
  of the sampler)."""
  g, base = goldens(version), model(version)
  m = base.replace(module=base.module.clone(attention="xla"))
  compared = 0
  cases = MODELS[version][2]
  for case in cases:
    obs, task = subtree(g, f"{case}/obs/"), subtree(g, f"{case}/task/")
    outputs = jax.device_get(run_transformer(m, obs, task))
    for part in compared_parts(version, case):
      if part.startswith("out/") and part[4:] in outputs:
        np.testing.assert_allclose(outputs[part[4:]][0], g[f"{case}/{part}"], atol=ATOL,
                                   rtol=0, err_msg=f"{case}/{part}")
        compared += 1
    if len(obs["timestep_pad_mask"]) == len(g["a/obs/timestep_pad_mask"]):
      actions = m.sample_actions(obs, task, jnp.asarray(g[f"{case}/in/rng_key"]))
      np.testing.assert_allclose(actions, g[f"{case}/out/actions_normalized"],
                                 atol=ACTION_ATOL, rtol=0, err_msg=case)
  assert compared >= 3 * len(cases)  # every case's token groups, not just the samples


def head_fn(version):
  m = model(version)

  @jax.jit
  def eps(embedding, noisy, t):
    return m.module.apply({"params": m.params}, "action", embedding, noisy, t,
                          method=OctoModule.head_eps, mutable=["intermediates"])
  return eps


@pytest.mark.parametrize("version", VERSIONS)
def test_head(version):
  g = goldens(version)
  embedding = g["head/in/readout_tokens"].mean(axis=-2)
  eps, state = head_fn(version)(embedding, g["head/in/noisy_actions"], g["head/in/t"])
  np.testing.assert_allclose(eps, g["head/out/eps"], atol=ATOL, rtol=0)
  inter = state["intermediates"]["heads_action"]["diffusion_model"]
  for name in ("time_features", "cond_enc", "reverse_input"):
    np.testing.assert_allclose(inter[name][0], g[f"head/int/{name}"], atol=1e-5, rtol=0,
                               err_msg=name)


@pytest.mark.parametrize("version", VERSIONS)
def test_schedule(version):
  g = goldens(version)
  betas, alphas, alpha_hats = heads_lib.schedule(20)
  for name, value in (("betas", betas), ("alphas", alphas), ("alpha_hats", alpha_hats)):
    np.testing.assert_allclose(value, g[f"sched/{name}"], atol=3e-7, rtol=0, err_msg=name)
  # The last step divides by sqrt(alpha_19): it must be the clipped beta's exact complement.
  assert alphas[19] == g["sched/alphas"][19]


@pytest.mark.parametrize("version", VERSIONS)
def test_trajectory_with_injected_noise(version):
  """The sampler with the official normal draws.

  Each step from the stored previous state: with the stored eps (the update alone, 1e-5) and
  with ours (eps 1e-4; the first step multiplies eps errors by about 31); then the whole
  20-step chain on our own states.
  """
  g, m = goldens(version), model(version)
  head = dict(m.spec.heads)["action"]
  betas, alphas, alpha_hats = heads_lib.schedule(head.diffusion_steps)
  embedding = g["traj/in/readout_tokens"].mean(axis=-2)
  eps_fn = head_fn(version)
  step = jax.jit(lambda x, eps, z, t: heads_lib.ddpm_step(
      x, eps, z, t, betas, alphas, alpha_hats, head.max_action))
  x_prev, x_chain = g["traj/in/x_init"], g["traj/in/x_init"]
  for i, t in enumerate(g["traj/in/t"]):
    z = g["traj/in/z"][i]
    t_in = np.full(x_prev.shape[:-1] + (1,), t, np.int32)
    eps, _ = eps_fn(embedding, x_prev, t_in)
    np.testing.assert_allclose(eps, g["traj/out/eps"][i], atol=ATOL, rtol=0, err_msg=f"t={t}")
    np.testing.assert_allclose(step(x_prev, g["traj/out/eps"][i], z, t), g["traj/out/x"][i],
                               atol=STEP_ATOL, rtol=0, err_msg=f"t={t}")
    np.testing.assert_allclose(step(x_prev, eps, z, t), g["traj/out/x"][i], atol=ATOL, rtol=0,
                               err_msg=f"t={t}")
    eps_chain, _ = eps_fn(embedding, x_chain, t_in)
    x_chain = step(x_chain, eps_chain, z, t)
    x_prev = g["traj/out/x"][i]
  actions = np.asarray(x_chain)[:, -1].reshape(-1, head.action_horizon, head.action_dim)
  np.testing.assert_allclose(actions, g["traj/out/actions_normalized"], atol=ACTION_ATOL, rtol=0)
  np.testing.assert_allclose(octo.unnormalize(actions, m.dataset_statistics["action"]),
                             g["traj/out/actions_unnormalized"], atol=ACTION_ATOL, rtol=0)
