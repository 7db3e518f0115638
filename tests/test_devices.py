"""Where simulation runs and what follows from it: the backend rule, the geometry that follows
the backend, and where a teacher was made (no ManiSkill, no simulator: the rules alone)."""

import types

import jax
import pytest
import torch

from rpd_jax import config as config_lib
from rpd_jax.envs import devices, maniskill_config
from rpd_jax.errors import ConfigError
from rpd_jax.octo import hub
from rpd_jax.teachers import records

_GPU = types.SimpleNamespace(platform="gpu", id=0, local_hardware_id=0)


def test_the_gpu_simulation_needs_torch_and_jax_on_a_gpu(monkeypatch):
  cpu = devices.default_device()
  assert cpu.platform == "cpu"
  monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
  # torch sees a GPU, JAX does not (JAX_PLATFORMS=cpu, or a CUDA plugin that fell back):
  # "auto" simulates on the CPU, and an explicit request names what is missing.
  assert devices.resolve_sim_backend("auto", cpu) == "physx_cpu"
  with pytest.raises(ConfigError, match=r"sim_backend='physx_cuda' needs a GPU that torch and "
                     r"JAX both see, but JAX .* computes on cpu.*sim_backend=physx_cpu"):
    devices.resolve_sim_backend("physx_cuda", cpu)
  assert devices.resolve_sim_backend("auto", _GPU) == "physx_cuda"
  assert devices.resolve_sim_backend("physx_cuda", _GPU) == "physx_cuda"
  # JAX on a GPU, torch a CPU build.
  monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
  assert devices.resolve_sim_backend("auto", _GPU) == "physx_cpu"
  with pytest.raises(ConfigError, match=r"torch .* sees no GPU"):
    devices.resolve_sim_backend("physx_cuda", _GPU)
  assert devices.resolve_sim_backend("physx_cpu", _GPU) == "physx_cpu"
  with pytest.raises(ConfigError, match="sim_backend='physx_gpu' is unknown"):
    devices.resolve_sim_backend("physx_gpu")


def test_the_default_device_is_jaxs():
  assert devices.default_device() == jax.local_devices()[0]
  with jax.default_device(jax.devices("cpu")[0]):
    assert devices.default_device() == jax.devices("cpu")[0]


def _maniskill(repo_root, arg=""):
  return config_lib.load(f"{repo_root}/experiments/pushcube.py:{arg}")


@pytest.mark.parametrize("backend", ["physx_cpu", "physx_cuda"])
def test_the_geometry_follows_the_backend(repo_root, monkeypatch, backend):
  monkeypatch.setattr(devices, "resolve_sim_backend", lambda name, device=None: backend)
  for arg, student in (("", "state"), ("rgb", "image")):
    c = _maniskill(repo_root, arg)
    assert c.env.num_envs is None and c.ppo.num_minibatches is None
    config_lib.validate(c)
    envs, eval_envs, episodes, minibatches = maniskill_config.GEOMETRY[(backend, student)]
    assert c.env.kwargs.sim_backend == backend  # recorded in config.json as it ran
    assert (c.env.num_envs, c.eval_envs, c.eval_episodes, c.ppo.num_minibatches) == (
        envs, eval_envs, episodes, minibatches)
  # What a variant or an override sets stays.
  c = _maniskill(repo_root, "smoke")
  c.eval_envs, c.eval_episodes = 3, None
  config_lib.validate(c)
  assert (c.env.num_envs, c.ppo.num_minibatches, c.eval_envs) == (1, 2, 3)
  assert c.eval_episodes % 3 == 0 and c.eval_episodes >= episodes  # whole rounds


def test_a_cpu_simulation_is_refused_past_its_process_limit(repo_root, monkeypatch):
  monkeypatch.setattr(devices, "resolve_sim_backend", lambda name, device=None: "physx_cpu")
  c = _maniskill(repo_root)
  c.env.num_envs = 128
  with pytest.raises(ConfigError, match="one process per env .* at most 64"):
    config_lib.validate(c)


def test_the_command_line_overrides_a_geometry_left_to_the_backend(repo_root, tmp_path):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  out = subprocess.run(
      [sys.executable, "-m", "rpd_jax.train", "--config=experiments/pushcube.py",
       "--config.env.num_envs=100", f"--workdir={tmp_path}"], cwd=repo_root,
      capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith(
      "error: config.env.num_envs=100 / config.eval_envs=2: ManiSkill on a CPU runs one process")


def test_where_a_teacher_was_made(tmp_path):
  shipped = records.made_on(str(hub.SHIPPED / "octo-tiny-pushcube"))
  assert shipped == "physx_cpu"
  assert records.made_on(str(tmp_path)) is None  # a released checkpoint names none
  assert records.mismatch("octo:x", "physx_cpu", "physx_cpu") is None
  assert records.mismatch("octo:x", None, "physx_cuda") is None
  warning = records.mismatch("octo:x", "physx_cpu", "physx_cuda")
  assert "made on physx_cpu" in warning and "simulates on physx_cuda" in warning
  assert "--config.env.kwargs.sim_backend=physx_cpu" in warning
