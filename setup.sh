#!/usr/bin/env bash
# Sets up rpd_jax on a fresh machine: Python packages in the right order, the CUDA 13 builds of
# PyTorch and JAX (requirements-gpu.txt; NVIDIA driver 580 or newer) where an NVIDIA GPU is
# present, then a Vulkan device for ManiSkill3 where no driver provides one. Idempotent: a
# second run only checks.
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

if [[ "${device}" == gpu ]]; then
  # requirements-gpu.txt is CUDA 13 (PyPI's torch 2.13.0 is a CUDA 13 build, and jax[cuda13]
  # matches it): NVIDIA's minimum driver for any CUDA 13.x is 580. Checked before installing.
  min_driver=580
  if ! smi="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1)"; then
    echo "error: installing for a GPU (RPD_JAX_DEVICE=${RPD_JAX_DEVICE:-auto}), but nvidia-smi" \
         "fails ($(head -n 1 <<<"${smi}")): install or repair the NVIDIA driver (${min_driver}" \
         "or newer), or install the CPU builds with RPD_JAX_DEVICE=cpu bash setup.sh" >&2
    exit 2
  fi
  driver="$(head -n 1 <<<"${smi}" | tr -d '[:space:]')"
  if [[ ! "${driver}" =~ ^[0-9]+(\.[0-9]+)*$ ]]; then
    echo "error: nvidia-smi reports no NVIDIA driver version (it printed '${driver}'): check" \
         "the driver (${min_driver} or newer for CUDA 13)" >&2
    exit 2
  fi
  if (( ${driver%%.*} < min_driver )); then
    echo "error: NVIDIA driver ${driver} is older than ${min_driver}, the oldest that runs CUDA" \
         "13 (PyPI's torch 2.13.0 and jax[cuda13], requirements-gpu.txt): update the driver," \
         "or install the CPU builds with RPD_JAX_DEVICE=cpu bash setup.sh" >&2
    exit 2
  fi
  # A CPU build of torch 2.13.0 already installed satisfies torch==2.13.0, and pip would keep it.
  torch_cuda="$("${python}" -c "import torch; print(torch.version.cuda or 'none')" 2>/dev/null ||
                true)"
  if [[ "${torch_cuda}" == none ]]; then
    echo "error: a CPU build of torch is installed ($("${python}" -c \
         'import torch; print(torch.__version__)')) and pip would keep it: remove it with" \
         "\`${python} -m pip uninstall -y torch\` and run setup.sh again" >&2
    exit 2
  fi
  # One resolution of both files: torch 2.13.0 and JAX's plugin of the same CUDA major.
  "${python}" -m pip install -q -r requirements.txt -r requirements-gpu.txt
else
  # torch FIRST, pinned: an unpinned torch (which mani-skill pulls in through
  # pytorch_kinematics) would fetch whatever build the index prefers. PyPI's Linux wheel of
  # torch 2.13.0 is the CUDA 13 build, gigabytes of nvidia-* wheels a CPU machine does not use:
  # point pip at the CPU build first (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu,
  # or a folder of wheels in PIP_FIND_LINKS). A torch 2.13.0 already installed is left as it is.
  if ! "${python}" -c "import torch, sys; sys.exit(not torch.__version__.startswith('2.13.0'))" \
      2>/dev/null; then
    "${python}" -m pip install -q torch==2.13.0
  fi
  "${python}" -m pip install -q -r requirements.txt
fi
"${python}" -m pip install -q --no-deps -e .
PYTHON="${PYTHON:-${python}}" bash scripts/setup_vulkan.sh

if [[ "${device}" == gpu ]]; then
  "${python}" -m rpd_jax.tools.cuda  # one CUDA major: an older jax[cuda12] would mix in
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
