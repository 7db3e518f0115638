"""The GPU install: one CUDA major in what pip resolves, and setup.sh's driver check.

The resolution reads the packages' metadata only (uv's resolver, which fetches a wheel's
METADATA with HTTP range requests where the index does not serve it on its own; pip's
``install --dry-run --report`` gives the same set but downloads about 3 GB of CUDA wheels to
get there), from the package index alone: pip's and uv's configuration files and local wheel
folders are ignored.
"""

import os
import pathlib
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from rpd_jax.errors import ConfigError
from rpd_jax.tools import cuda

REPO = pathlib.Path(__file__).resolve().parent.parent


def index_url() -> str:
  """PyPI, or the mirror PIP_INDEX_URL names (never a local folder)."""
  url = os.environ.get("PIP_INDEX_URL", "")
  return url.rstrip("/") if url.startswith(("http://", "https://")) else "https://pypi.org/simple"


def resolve(*requirements: str, python: str) -> list[tuple[str, str]]:
  """(name, version) of everything ``requirements`` resolve to for CPython ``python`` on
  x86_64 manylinux 2.28; skips the test when the index cannot be reached."""
  url = index_url()
  try:
    urllib.request.urlopen(f"{url}/torch/", timeout=20).close()
  except (urllib.error.URLError, OSError) as e:
    pytest.skip(f"the package index {url} cannot be reached ({e}): nothing to resolve against")
  import uv  # pylint: disable=g-import-not-at-top  (requirements.txt: a test dependency)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
  proc = subprocess.run(
      [uv.find_uv_bin(), "pip", "compile", "--no-config", "--no-header", "--no-annotate",
       "--quiet", "--python-version", python, "--python-platform", "x86_64-manylinux_2_28",
       "--index-url", url, *requirements], capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [tuple(line.split("==", 1)) for line in proc.stdout.splitlines()
          if "==" in line and not line.startswith("#")]


def test_the_gpu_requirements_resolve_to_one_cuda_major():
  python = f"{sys.version_info.major}.{sys.version_info.minor}"  # the CUDA wheels' markers
  pins = dict(resolve(str(REPO / "requirements.txt"), str(REPO / "requirements-gpu.txt"),
                      python=python))                          # do not depend on it
  found = cuda.check_major(pins.items(), cuda.project_major(str(REPO / "requirements-gpu.txt")))
  assert list(found) == [13], found
  assert pins["torch"] == "2.13.0" and "nvidia-cudnn-cu13" in pins and "nvidia-nccl-cu13" in pins
  assert pins["jax-cuda13-plugin"] == pins["jax"] == pins["jaxlib"]


def test_the_old_mix_of_cuda_12_and_13_is_named():
  # What torch==2.13.0 with jax[cuda12]==0.10.2 resolved to (an excerpt of pip's answer).
  mix = [("torch", "2.13.0"), ("cuda-toolkit", "13.0.3.0"), ("nvidia-cudnn-cu13", "9.20.0.48"),
         ("nvidia-nccl-cu13", "2.29.7"), ("nvidia-cuda-runtime", "13.0.96"),
         ("nvidia-cufft", "12.0.0.61"), ("jax-cuda12-plugin", "0.10.2"),
         ("jax_cuda12_pjrt", "0.10.2"), ("nvidia-cudnn-cu12", "9.28.0.42"),
         ("nvidia-nccl-cu12", "2.32.3"), ("jax", "0.10.2"), ("numpy", "2.4.6")]
  assert {k: len(v) for k, v in cuda.majors(mix).items()} == {12: 4, 13: 4}
  with pytest.raises(ConfigError, match=r"CUDA 12 packages are installed \(jax-cuda12-pjrt=="
                     r".*nvidia-nccl-cu12==2.32.3\) where requirements-gpu.txt asks for CUDA 13"
                     r".*`pip uninstall -y jax-cuda12-pjrt jax-cuda12-plugin nvidia-cudnn-cu12 "
                     r"nvidia-nccl-cu12`"):
    cuda.check_major(mix, 13)
  assert cuda.cuda_major("torch", "2.13.0+cu126") == 12
  assert cuda.cuda_major("torch", "2.13.0+cu130") == 13
  assert cuda.cuda_major("torch", "2.13.0+cpu") is None
  assert cuda.project_major(str(REPO / "requirements-gpu.txt")) == 13


def fake_gpu(tmp_path, driver: str) -> dict[str, str]:
  """An environment whose PATH has an nvidia-smi that sees one GPU with ``driver``, and whose
  Python fails loudly if setup.sh gets as far as installing anything."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  smi = bin_dir / "nvidia-smi"
  smi.write_text("#!/bin/sh\ncase \"$*\" in\n  -L) echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: "
                 "GPU-0)' ;;\n  *driver_version*) echo '" + driver + "' ;;\n  *) exit 0 ;;\n"
                 "esac\n")
  python = bin_dir / "python-must-not-run"
  python.write_text("#!/bin/sh\necho \"python was called: $*\" >&2\nexit 99\n")
  for path in (smi, python):
    path.chmod(0o755)
  return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python)}


def test_setup_refuses_a_driver_too_old_for_cuda_13_before_installing_anything(tmp_path):
  proc = subprocess.run(["bash", str(REPO / "setup.sh")], env=fake_gpu(tmp_path, "550.54.15"),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2, proc.stderr
  assert "python was called" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: NVIDIA driver 550.54.15 is older than 580, the oldest that runs CUDA 13 (PyPI's "
      "torch 2.13.0 and jax[cuda13], requirements-gpu.txt): update the driver, or install the "
      "CPU builds with RPD_JAX_DEVICE=cpu bash setup.sh")


def test_setup_asked_for_a_gpu_that_nvidia_smi_cannot_see_says_so(tmp_path):
  env = fake_gpu(tmp_path, "580.65.06")
  (tmp_path / "bin" / "nvidia-smi").write_text(
      "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA "
      "driver.'\nexit 9\n")
  proc = subprocess.run(["bash", str(REPO / "setup.sh")], env={**env, "RPD_JAX_DEVICE": "gpu"},
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2, proc.stderr
  assert "python was called" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: installing for a GPU (RPD_JAX_DEVICE=gpu), but nvidia-smi fails (NVIDIA-SMI has "
      "failed because it could not communicate with the NVIDIA driver.): install or repair the "
      "NVIDIA driver (580 or newer)")
