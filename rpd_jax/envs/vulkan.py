"""Checks that SAPIEN (ManiSkill3's renderer) finds a usable Vulkan device, and says how to get
one where it does not.

ManiSkill3 needs Vulkan even for state observations. Without a usable device every env
construction fails deep inside SAPIEN with messages that do not say what to do
(``ErrorIncompatibleDriver``, ``failed to find a rendering device``, ``Failed to find a supported
physical device "cpu"``); ``require_vulkan`` turns them into one error that names the fix for
this machine (``advice``):

- no NVIDIA driver: Mesa's software Vulkan (lavapipe), which ``scripts/setup_vulkan.sh``
  installs on Debian 12;
- an NVIDIA driver without its graphics libraries (``libGLX_nvidia.so.0`` and the rest), as in
  a container started without the ``graphics`` driver capability: the
  ``NVIDIA_DRIVER_CAPABILITIES`` to start it with;
- NVIDIA's Vulkan library present but some library it links to missing (libglvnd's
  ``libGLdispatch.so.0``, ``libX11``, ``libXext`` are the image's to provide): the packages;
- NVIDIA's Vulkan library present but no ICD file naming it (the file that tells the Vulkan
  loader about a driver): SAPIEN supplies its own copy at import (with a warning) where
  ``/usr/share/vulkan/icd.d/nvidia_icd.json`` is missing, and ``setup_vulkan.sh`` writes that
  file.

  python -m rpd_jax.envs.vulkan                  # what this machine has; the device SAPIEN picks
  python -m rpd_jax.envs.vulkan --write_icd=DIR  # DIR/nvidia_icd.json, where none names NVIDIA
  python -m rpd_jax.envs.vulkan --require_nvidia # error (1) unless SAPIEN has an NVIDIA device
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import shutil
import subprocess
import sys
from typing import Mapping, Optional, Sequence

# The library NVIDIA's own nvidia_icd.json names; the driver installs it with its graphics
# (GLX/EGL/Vulkan) libraries, which containers get only with the "graphics" capability.
NVIDIA_VULKAN_LIBRARY = "libGLX_nvidia.so.0"
ICD_NAME = "nvidia_icd.json"
SYSTEM_ICD_DIR = "/usr/share/vulkan/icd.d"
CAPABILITIES = "NVIDIA_DRIVER_CAPABILITIES=all (or graphics,compute,utility)"

_LAVAPIPE_FIX = (
    "Fix: run `bash scripts/setup_vulkan.sh` (on Debian 12 it installs Mesa's software Vulkan "
    "driver, lavapipe, from bookworm-backports; on other systems install Mesa >= 23 "
    "`mesa-vulkan-drivers`, or a GPU driver with Vulkan support). Debian 12's own "
    "mesa-vulkan-drivers 22.3 is too old for SAPIEN.")


class VulkanUnavailableError(RuntimeError):
  """No Vulkan device that SAPIEN can use; the message says how to get one."""


@dataclasses.dataclass(frozen=True)
class Machine:
  """What decides where a Vulkan device can come from."""
  nvidia: bool  # an NVIDIA kernel driver is loaded (its /proc entry or device node exists)
  icd_files: tuple[str, ...]  # the Vulkan ICD files the loader reads
  nvidia_icd: Optional[str]  # the one of them that names an NVIDIA library
  nvidia_library: Optional[str]  # NVIDIA_VULKAN_LIBRARY's path where the linker can find it
  missing: tuple[str, ...] = ()  # libraries it links to that the dynamic linker does not find


def nvidia_icd_json(library: str = NVIDIA_VULKAN_LIBRARY) -> str:
  """The ICD file NVIDIA's driver installs (its api_version is informational to the loader)."""
  return json.dumps({"file_format_version": "1.0.1",
                     "ICD": {"library_path": library, "api_version": "1.3.280"}}, indent=2) + "\n"


def _icd_dirs(root: str, environ: Mapping[str, str]) -> list[str]:
  """The folders the Vulkan loader searches for ICD files on Linux, in its order."""
  home = environ.get("HOME", "")
  config_home = environ.get("XDG_CONFIG_HOME") or (home and os.path.join(home, ".config"))
  data_home = environ.get("XDG_DATA_HOME") or (home and os.path.join(home, ".local", "share"))
  folders = [config_home]
  folders += (environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":")
  folders += ["/etc", data_home]
  folders += (environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":")
  return [os.path.join(root, f.lstrip("/"), "vulkan", "icd.d") for f in folders if f]


def _library_dirs(root: str, environ: Mapping[str, str]) -> list[str]:
  """Where the dynamic linker looks: LD_LIBRARY_PATH, ld.so.conf's folders, the defaults."""
  folders = [f for f in environ.get("LD_LIBRARY_PATH", "").split(":") if f]
  for conf in sorted(glob.glob(os.path.join(root, "etc", "ld.so.conf.d", "*.conf"))):
    with open(conf) as f:
      folders += [l.strip() for l in f if l.strip().startswith("/")]
  folders += ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64",
              "/usr/lib", "/lib", "/usr/local/nvidia/lib64"]
  return [os.path.join(root, f.lstrip("/")) for f in folders]


def probe(root: str = "/", environ: Optional[Mapping[str, str]] = None) -> Machine:
  """What this machine (or a file tree at ``root``, for tests) has; reads files only."""
  environ = os.environ if environ is None else environ
  nvidia = any(os.path.exists(os.path.join(root, p))
               for p in ("proc/driver/nvidia/version", "dev/nvidiactl", "dev/nvidia0"))
  nvidia = nvidia or _nvidia_smi_sees_a_gpu(environ.get("PATH", ""))
  listed = environ.get("VK_DRIVER_FILES") or environ.get("VK_ICD_FILENAMES")
  if listed:  # the loader then reads these files only
    icd_files = [os.path.join(root, f.lstrip("/")) for f in listed.split(":") if f]
  else:
    icd_files = [f for d in _icd_dirs(root, environ) for f in sorted(glob.glob(f"{d}/*.json"))]
  icd_files = [f for f in dict.fromkeys(icd_files) if os.path.isfile(f)]
  nvidia_icd = next((f for f in icd_files if "nvidia" in _icd_library(f).lower()), None)
  library = next((os.path.join(d, NVIDIA_VULKAN_LIBRARY) for d in _library_dirs(root, environ)
                  if os.path.exists(os.path.join(d, NVIDIA_VULKAN_LIBRARY))), None)
  return Machine(nvidia, tuple(icd_files), nvidia_icd, library,
                 missing_libraries(library) if library and root == "/" else ())


# The packages that provide what NVIDIA's Vulkan library links to (Debian and Ubuntu names).
PACKAGES = {"libGLdispatch.so.0": "libglvnd0", "libX11.so.6": "libx11-6",
            "libXext.so.6": "libxext6", "libxcb.so.1": "libxcb1"}


def missing_libraries(library: str) -> tuple[str, ...]:
  """The shared libraries ``library`` links to that the dynamic linker does not find (``ldd``;
  empty where ldd cannot tell)."""
  try:
    out = subprocess.run(["ldd", library], capture_output=True, text=True, timeout=30).stdout
  except (OSError, subprocess.SubprocessError):
    return ()
  return parse_ldd_missing(out)


def parse_ldd_missing(ldd_output: str) -> tuple[str, ...]:
  """The names ldd's output marks ``=> not found``."""
  return tuple(line.split("=>")[0].strip() for line in ldd_output.splitlines()
               if line.strip().endswith("not found") and "=>" in line)


def _nvidia_smi_sees_a_gpu(path: str) -> bool:
  smi = shutil.which("nvidia-smi", path=path)
  if smi is None:
    return False
  try:
    return "GPU" in subprocess.run([smi, "-L"], capture_output=True, text=True,
                                   timeout=30).stdout
  except (OSError, subprocess.SubprocessError):
    return False


def _icd_library(path: str) -> str:
  try:
    with open(path) as f:
      return str(json.load(f).get("ICD", {}).get("library_path", ""))
  except (OSError, ValueError, AttributeError):
    return ""


def advice(machine: Machine) -> str:
  """How this machine gets a Vulkan device SAPIEN can use, in a sentence or two."""
  if not machine.nvidia:
    return _LAVAPIPE_FIX
  if machine.nvidia_library is None:
    icd = (f"{machine.nvidia_icd} names {NVIDIA_VULKAN_LIBRARY}, which"
           if machine.nvidia_icd else f"{NVIDIA_VULKAN_LIBRARY} is not on this machine, and")
    return (f"This machine has an NVIDIA driver but not its Vulkan library: {icd} the dynamic "
            "linker does not find it. Fix: in a container NVIDIA's graphics libraries come "
            f"only with the graphics driver capability: start it with {CAPABILITIES}, e.g. "
            "`docker run --gpus all -e NVIDIA_DRIVER_CAPABILITIES=all ...` (Kubernetes: that "
            "variable in the pod's env). Outside a container, install the driver's Vulkan "
            "package (e.g. libnvidia-gl-<driver major> on Ubuntu).")
  if machine.missing:
    packages = sorted({PACKAGES[m] for m in machine.missing if m in PACKAGES})
    return (f"NVIDIA's Vulkan library {machine.nvidia_library} is here but the libraries it "
            f"links to are not: {', '.join(machine.missing)}. Fix: install them"
            + (f" (Debian/Ubuntu: apt-get install {' '.join(packages)}; "
               "`bash scripts/setup_vulkan.sh` does)" if packages else "") + ".")
  if machine.nvidia_icd is None:
    return (f"NVIDIA's Vulkan library is here ({machine.nvidia_library}) but no Vulkan ICD file "
            "names it (containers started without the graphics capability lack "
            f"{SYSTEM_ICD_DIR}/{ICD_NAME}). Fix: `bash scripts/setup_vulkan.sh` writes it, or "
            f"write it yourself: {json.dumps(json.loads(nvidia_icd_json()))}")
  return (f"NVIDIA's Vulkan driver is declared ({machine.nvidia_icd}) and its library is here "
          f"({machine.nvidia_library}), yet SAPIEN cannot use it. Check the driver with "
          "`vulkaninfo --summary`; in a container the graphics capability must be on "
          f"({CAPABILITIES}) so that the library matches the host's kernel driver.")


def write_nvidia_icd(folder: str, machine: Machine) -> str:
  """Writes ``folder/nvidia_icd.json`` naming NVIDIA's Vulkan library; returns its path.

  VulkanUnavailableError (with ``advice``) where the library or one it links to is missing: a
  file naming a library that cannot load would only move the failure.
  """
  if machine.nvidia_library is None or machine.missing:
    raise VulkanUnavailableError(advice(machine))
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, ICD_NAME)
  with open(path + ".tmp", "w") as f:
    f.write(nvidia_icd_json())
  os.replace(path + ".tmp", path)
  return path


def devices(summary: str) -> list[dict[str, str]]:
  """SAPIEN's device summary as one dict per device: {"name", "Supported", "cudaId", ...}."""
  out: list[dict[str, str]] = []
  for line in summary.splitlines():
    line = line.strip()
    if line.startswith("GPU:"):
      out.append({"name": line[len("GPU:"):].strip()})
    elif out and line:
      key, _, value = line.partition(":") if ":" in line else line.partition(" ")
      out[-1][key.strip()] = value.strip()
  return out


def _supported_devices(summary: str) -> list[str]:
  """Names of the devices that SAPIEN's device summary marks ``Supported: 1``."""
  return [d["name"] for d in devices(summary) if d.get("Supported") == "1"]


@functools.cache
def require_vulkan() -> str:
  """Returns the name of a Vulkan device SAPIEN supports, or raises VulkanUnavailableError.

  Cached: the check creates a Vulkan instance once per process (about 0.1 s).
  """
  import sapien  # pylint: disable=g-import-not-at-top
  try:
    summary = sapien.render.get_device_summary()
  except RuntimeError as e:  # SAPIEN raises when no Vulkan driver is installed at all
    raise VulkanUnavailableError(
        f"ManiSkill3 needs a Vulkan device, and SAPIEN found none ({e}). "
        f"{advice(probe())}") from e
  supported = _supported_devices(summary)
  if not supported:
    raise VulkanUnavailableError(
        "ManiSkill3 needs a Vulkan device, and none of the Vulkan devices found is supported "
        f"by SAPIEN:\n{summary.strip()}\n{advice(probe())}")
  return supported[0]


@functools.cache
def render_backend() -> str:
  """ManiSkill's ``render_backend`` for this machine: "gpu" where SAPIEN supports a Vulkan
  device that is also a CUDA device (an NVIDIA GPU renders, whichever the simulation backend),
  else "cpu" (a software Vulkan device such as lavapipe). Raises VulkanUnavailableError like
  ``require_vulkan`` when there is none."""
  require_vulkan()
  import sapien  # pylint: disable=g-import-not-at-top
  return "gpu" if cuda_devices(sapien.render.get_device_summary()) else "cpu"


def cuda_devices(summary: str) -> list[str]:
  """Names of the devices SAPIEN supports that are also CUDA devices (``cudaId`` >= 0)."""
  return [d["name"] for d in devices(summary)
          if d.get("Supported") == "1" and d.get("cudaId", "-1").isdigit()]


def require_nvidia() -> str:
  """The name of the NVIDIA (CUDA) Vulkan device SAPIEN renders on, or VulkanUnavailableError
  with this machine's ``advice`` (a software device such as lavapipe does not count)."""
  import sapien  # pylint: disable=g-import-not-at-top
  try:
    summary = sapien.render.get_device_summary()
  except RuntimeError as e:
    raise VulkanUnavailableError(f"SAPIEN found no Vulkan device ({e}). "
                                 f"{advice(probe())}") from e
  found = cuda_devices(summary)
  if not found:
    seen = "; ".join(f"{d['name']}, cudaId {d.get('cudaId', '?')}" for d in devices(summary))
    raise VulkanUnavailableError(
        f"SAPIEN finds no NVIDIA Vulkan device (it sees: {seen or 'none'}). {advice(probe())}")
  return found[0]


USAGE = "use nothing, --write_icd=DIR, --require_nvidia or --missing_packages"


def main(argv: Sequence[str]) -> int:
  """The CLI (module docstring and --missing_packages: the Debian/Ubuntu packages that provide
  what NVIDIA's Vulkan library links to and the linker does not find, on one line); returns
  the exit status."""
  command, _, folder = (argv[0] if argv else "").partition("=")
  if len(argv) > 1 or command not in ("", "--write_icd", "--require_nvidia",
                                      "--missing_packages") or (command == "--write_icd") != bool(folder):
    print(f"error: arguments {' '.join(argv)}: {USAGE}", file=sys.stderr)
    return 2
  machine = probe()
  if command == "--missing_packages":
    print(" ".join(sorted({PACKAGES[m] for m in machine.missing if m in PACKAGES})))
    return 0
  print(f"NVIDIA driver: {'yes' if machine.nvidia else 'no'}; NVIDIA Vulkan library: "
        f"{machine.nvidia_library or 'not found'}"
        + (f" (missing: {', '.join(machine.missing)})" if machine.missing else "")
        + f"; Vulkan ICD files: {', '.join(machine.icd_files) or 'none'}")
  try:
    if command == "--write_icd":
      if machine.nvidia_icd:
        print(f"NVIDIA's ICD file exists already: {machine.nvidia_icd}")
      else:
        print(f"wrote {write_nvidia_icd(folder, machine)}")
    elif command == "--require_nvidia":
      print(f"SAPIEN's NVIDIA device: {require_nvidia()}")
    else:
      print(f"SAPIEN's device: {require_vulkan()} (render_backend {render_backend()!r})")
  except ImportError as e:
    print(f"error: {e}: install the project's requirements first (pip install -r "
          "requirements.txt)", file=sys.stderr)
    return 2
  except VulkanUnavailableError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
