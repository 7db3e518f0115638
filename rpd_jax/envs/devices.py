"""Where a simulator runs and where its arrays land: one rule for every env and the trainer.

- ``default_device()``: the JAX device this process computes on (``jax_default_device`` where
  set, else its first local device). The train state is committed to it and every env's arrays
  land on it, so that a simulator on another device (a CPU simulator beside a GPU JAX) never
  hands a jitted function arrays of two devices.
- ``resolve_sim_backend``: ManiSkill's GPU simulation (``physx_cuda``) only where torch AND JAX
  both see a GPU. Torch alone is not enough: a CPU-only JAX (``JAX_PLATFORMS=cpu``, or a CUDA
  plugin that failed its checks and fell back with a warning) could not take the simulator's
  GPU tensors through DLPack.

Light: torch is imported only when a ManiSkill backend is resolved.
"""

from __future__ import annotations

from typing import Optional

import jax

from rpd_jax.errors import ConfigError

SIM_BACKENDS = ("auto", "physx_cuda", "physx_cpu")


def default_device() -> jax.Device:
  """The device JAX computes on by default in this process."""
  device = jax.config.jax_default_device
  if device is None:
    return jax.local_devices()[0]
  if isinstance(device, str):  # a platform name, e.g. JAX_DEFAULT_DEVICE=cpu
    return jax.local_devices(backend=device)[0]
  return device


def cuda_ordinal(device: jax.Device) -> int:
  """The CUDA device number (torch's ``cuda:N``, SAPIEN's) of a JAX GPU device."""
  return device.local_hardware_id if device.local_hardware_id is not None else device.id


def _torch_gpu() -> Optional[str]:
  """None where torch sees a GPU, else why not."""
  import torch  # pylint: disable=g-import-not-at-top  (only ManiSkill needs it)
  if torch.cuda.is_available():
    return None
  build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
  return f"torch {torch.__version__} ({build}) sees no GPU"


def _jax_gpu(device: jax.Device) -> Optional[str]:
  """None where JAX computes on a GPU, else why not."""
  if device.platform == "gpu":
    return None
  return (f"JAX {jax.__version__} computes on {device.platform} (its backends: "
          f"{', '.join(sorted({d.platform for d in jax.devices()}))}; a CUDA JAX needs the "
          "jax[cuda13] plugin of requirements-gpu.txt, and JAX_PLATFORMS must not be 'cpu')")


def resolve_sim_backend(sim_backend: str, device: Optional[jax.Device] = None) -> str:
  """"auto" -> "physx_cuda" where torch and JAX (on ``device``, default ``default_device()``)
  both see a GPU, else "physx_cpu". An explicit "physx_cuda" that cannot run is a ConfigError
  naming what is missing; a ``physx_cuda:N`` device suffix is not taken (the GPU is JAX's)."""
  if sim_backend not in SIM_BACKENDS:
    raise ConfigError(f"config.env.kwargs.sim_backend={sim_backend!r} is unknown; use one of "
                      f"{', '.join(SIM_BACKENDS)}")
  if sim_backend == "physx_cpu":
    return sim_backend
  device = device or default_device()
  missing = [why for why in (_jax_gpu(device), _torch_gpu()) if why is not None]
  if sim_backend == "auto":
    return "physx_cpu" if missing else "physx_cuda"
  if missing:
    raise ConfigError(
        "config.env.kwargs.sim_backend='physx_cuda' needs a GPU that torch and JAX both see, "
        f"but {'; '.join(missing)}. Install the GPU builds (bash setup.sh on the GPU machine), "
        "or simulate on the CPU with --config.env.kwargs.sim_backend=physx_cpu")
  return sim_backend
