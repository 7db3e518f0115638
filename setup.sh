#!/usr/bin/env bash
# Sets up rpd_jax on a fresh machine: Python packages in the right order, the CUDA builds of
# PyTorch and JAX where an NVIDIA GPU is present, then a Vulkan device for ManiSkill3 where no
# GPU driver provides one. Idempotent: a second run only checks.
#
#   bash setup.sh                 # then: python -m rpd_jax.train --config=experiments/pushcube.py
#   RPD_JAX_DEVICE=cpu bash setup.sh   # force the CPU builds (auto: gpu when nvidia-smi sees one)
set -euo pipefail
cd "$(dirname "$0")"
python="${PYTHON:-python3}"
device="${RPD_JAX_DEVICE:-auto}"
if [[ "${device}" == auto ]]; then
  device=cpu
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    device=gpu
  fi
fi
if [[ "${device}" != cpu && "${device}" != gpu ]]; then
  echo "error: RPD_JAX_DEVICE=${device}: use cpu, gpu or auto" >&2
  exit 2
fi
echo "setup: installing for ${device}" >&2

# torch FIRST, pinned: an unpinned torch (which mani-skill pulls in through pytorch_kinematics)
# would fetch whatever build the index prefers, gigabytes of CUDA wheels on a CPU machine. The
# build is the index's: PyPI's Linux wheel is the CUDA 12 one (what a GPU machine needs); for
# a CPU-only machine point pip at a CPU build first (PIP_EXTRA_INDEX_URL=
# https://download.pytorch.org/whl/cpu). A torch 2.13.0 already installed is left as it is.
if ! "${python}" -c "import torch, sys; sys.exit(not torch.__version__.startswith('2.13.0'))" \
    2>/dev/null; then
  "${python}" -m pip install -q torch==2.13.0
fi
"${python}" -m pip install -q -r requirements.txt
if [[ "${device}" == gpu ]]; then
  # JAX's CUDA 12 plugin for the jax version just installed; it shares the nvidia-* runtime
  # wheels with torch. XLA_PYTHON_CLIENT_PREALLOCATE=false (set by rpd_jax itself) keeps JAX
  # from taking the GPU memory that PhysX, SAPIEN and torch need.
  jax_version="$("${python}" -c 'import jax; print(jax.__version__)')"
  "${python}" -m pip install -q "jax[cuda12]==${jax_version}"
fi
"${python}" -m pip install -q --no-deps -e .
PYTHON="${PYTHON:-${python}}" bash scripts/setup_vulkan.sh

if [[ "${device}" == gpu ]]; then
  "${python}" - <<'PY'
import os, sys
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import jax, torch
problems = []
if jax.default_backend() != "gpu":
  problems.append(f"JAX sees no GPU (backend {jax.default_backend()!r})")
if not torch.cuda.is_available():
  problems.append(f"torch {torch.__version__} sees no GPU (CUDA build: {torch.version.cuda})")
if problems:
  sys.exit("error: " + "; ".join(problems) + ". Check the NVIDIA driver (nvidia-smi) and that "
           "pip installed the CUDA builds (pip list | grep -i -E 'torch|jax|nvidia').")
print(f"setup: JAX on {jax.devices()[0].device_kind}, torch CUDA {torch.version.cuda}",
      file=sys.stderr)
PY
fi
