"""Checks that SAPIEN (ManiSkill3's renderer) finds a usable Vulkan device.

ManiSkill3 needs Vulkan even for state observations. Without a usable device every env
construction fails deep inside SAPIEN with messages that do not say what to do
(``ErrorIncompatibleDriver``, ``failed to find a rendering device``, ``Failed to find a supported
physical device "cpu"``); ``require_vulkan`` turns them into one error that names the fix.
"""

from __future__ import annotations

import functools

_FIX = (
    "Fix: run `bash scripts/setup_vulkan.sh` (on Debian 12 it installs Mesa's software Vulkan "
    "driver, lavapipe, from bookworm-backports; on other systems install Mesa >= 23 "
    "`mesa-vulkan-drivers`, or a GPU driver with Vulkan support). Debian 12's own "
    "mesa-vulkan-drivers 22.3 is too old for SAPIEN.")


class VulkanUnavailableError(RuntimeError):
  """No Vulkan device that SAPIEN can use; the message says how to get one."""


def _supported_devices(summary: str) -> list[str]:
  """Names of the devices that SAPIEN's device summary marks ``Supported: 1``."""
  devices, name = [], None
  for line in summary.splitlines():
    line = line.strip()
    if line.startswith("GPU:"):
      name = line[len("GPU:"):].strip()
    elif line.startswith("Supported:") and line.split(":", 1)[1].strip() == "1":
      devices.append(name)
  return devices


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
        f"ManiSkill3 needs a Vulkan device, and SAPIEN found none ({e}). {_FIX}") from e
  devices = _supported_devices(summary)
  if not devices:
    raise VulkanUnavailableError(
        "ManiSkill3 needs a Vulkan device, and none of the Vulkan devices found is supported "
        f"by SAPIEN:\n{summary.strip()}\n{_FIX}")
  return devices[0]
