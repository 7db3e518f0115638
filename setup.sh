#!/usr/bin/env bash
# Sets up rpd_jax on a fresh machine: Python packages in the right order, then a Vulkan device
# for ManiSkill3 where no GPU driver provides one. Idempotent: a second run only checks.
#
#   bash setup.sh            # then: python -m rpd_jax.train --config=experiments/pushcube.py
set -euo pipefail
cd "$(dirname "$0")"
python="${PYTHON:-python3}"

# torch FIRST, pinned: an unpinned torch (which mani-skill pulls in through pytorch_kinematics)
# would fetch the CUDA build, gigabytes of wheels. On a GPU machine install the CUDA build of
# the same version yourself before running this script; it is then left as it is.
if ! "${python}" -c "import torch, sys; sys.exit(not torch.__version__.startswith('2.13.0'))" \
    2>/dev/null; then
  "${python}" -m pip install -q torch==2.13.0
fi
"${python}" -m pip install -q -r requirements.txt
"${python}" -m pip install -q --no-deps -e .
PYTHON="${python}" bash scripts/setup_vulkan.sh
