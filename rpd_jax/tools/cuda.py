"""One CUDA major per environment: which CUDA major each package is built for.

PyPI's torch 2.13.0 for Linux is a CUDA 13 build (it requires cuda-toolkit 13.0.3,
nvidia-cudnn-cu13, nvidia-nccl-cu13), while jax[cuda12] brings nvidia-cudnn-cu12,
nvidia-nccl-cu12, ... The cu12 and cu13 cuDNN and NCCL wheels install the same files
(nvidia/cudnn/lib/libcudnn.so.9, nvidia/nccl/lib/libnccl.so.2): the last one installed wins and
uninstalling one deletes the other's. requirements-gpu.txt asks for one major; ``setup.sh``
runs this module after a GPU install, and tests/test_install.py applies ``majors`` to pip's
resolution of requirements.txt + requirements-gpu.txt.

  python -m rpd_jax.tools.cuda     # the installed CUDA packages by major; error (exit 2) if
                                   # any is not of requirements-gpu.txt's major

Standard library only: it runs before the project's own dependencies are importable.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from typing import Iterable, Optional

from rpd_jax.errors import ConfigError

# Packages whose own version's major is the CUDA major they belong to (CUDA 13's wheels dropped
# the -cuNN suffix; cuFFT, cuRAND, cuSOLVER, cuSPARSE and cuFile keep versions of their own).
VERSIONED_AS_CUDA = frozenset({
    "cuda-toolkit", "cuda-bindings", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc",
    "nvidia-cuda-cupti", "nvidia-cuda-nvcc", "nvidia-cuda-crt", "nvidia-nvjitlink",
    "nvidia-nvvm", "nvidia-cublas"})


def canonical(name: str) -> str:
  """A distribution name as pip compares them (PEP 503): ``Jax_CUDA13_Plugin`` ->
  ``jax-cuda13-plugin``."""
  return re.sub(r"[-_.]+", "-", name).lower()


def cuda_major(name: str, version: str) -> Optional[int]:
  """The CUDA major that distribution ``name`` ``version`` is built for; None for packages
  that are not CUDA builds (and CPU builds such as torch 2.13.0+cpu)."""
  name = canonical(name)
  if m := re.fullmatch(r".+-cu(\d+)", name):  # nvidia-cudnn-cu13, nvidia-nccl-cu12
    return int(m.group(1))
  if m := re.fullmatch(r"jax-cuda(\d+)-(plugin|pjrt)", name):
    return int(m.group(1))
  if m := re.search(r"\+cu(\d+?)(\d)$", version):  # torch 2.13.0+cu126: 12, +cu130: 13
    return int(m.group(1))
  if name in VERSIONED_AS_CUDA and (m := re.match(r"(\d+)\.", version)):
    return int(m.group(1))
  return None


def majors(packages: Iterable[tuple[str, str]]) -> dict[int, list[str]]:
  """{CUDA major: ["name==version", ...]} of the CUDA builds among (name, version) pairs."""
  out: dict[int, list[str]] = {}
  for name, version in packages:
    major = cuda_major(name, version)
    if major is not None:
      out.setdefault(major, []).append(f"{canonical(name)}=={version}")
  return {k: sorted(v) for k, v in sorted(out.items())}


def installed() -> list[tuple[str, str]]:
  """(name, version) of every distribution this Python sees."""
  return [(d.metadata["Name"], d.version) for d in importlib.metadata.distributions()
          if d.metadata["Name"]]


def project_major(requirements: str) -> int:
  """The CUDA major that requirements-gpu.txt asks for: its ``jax[cudaNN]`` extra."""
  with open(requirements) as f:
    m = re.search(r"^jax\[cuda(\d+)\]", f.read(), re.MULTILINE)
  if not m:
    raise ConfigError(f"{requirements} names no jax[cudaNN] extra: it must pin one CUDA major")
  return int(m.group(1))


def check_major(packages: Iterable[tuple[str, str]], expected: int) -> dict[int, list[str]]:
  """``majors(packages)``; ConfigError naming every CUDA package of another major than
  ``expected``, and how to remove them."""
  found = majors(packages)
  others = sorted(p for k, group in found.items() if k != expected for p in group)
  if others:
    names = " ".join(p.split("==")[0] for p in others)
    raise ConfigError(
        f"CUDA {', '.join(str(k) for k in found if k != expected)} packages are installed "
        f"({', '.join(others)}) where requirements-gpu.txt asks for CUDA {expected}: CUDA "
        "wheels of two majors overwrite each other's cuDNN and NCCL files. Remove them with "
        f"`pip uninstall -y {names}` and run setup.sh again")
  return found


def main() -> None:
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    found = check_major(installed(), project_major(os.path.join(repo, "requirements-gpu.txt")))
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for major, group in found.items():
    print(f"CUDA {major}: {len(group)} packages ({', '.join(group)})")
  if not found:
    print("no CUDA packages installed")


if __name__ == "__main__":
  main()
