#!/usr/bin/env bash
# Makes a Vulkan device usable for ManiSkill3/SAPIEN on machines without a GPU driver.
#
# SAPIEN needs Vulkan even for state observations. On a machine with an NVIDIA driver the
# driver provides it, and this script does nothing. Elsewhere it installs Mesa's software
# rasterizer (lavapipe) system-wide: Debian 12's own mesa-vulkan-drivers (22.3) is too old for
# SAPIEN (it lacks descriptorBindingPartiallyBound), the one in bookworm-backports (25.x) works.
# Installed system-wide, it needs no environment variables at run time.
#
# Idempotent and quiet when there is nothing to do. Needs root (or sudo) only when it installs.
set -euo pipefail

log() { echo "setup_vulkan: $*" >&2; }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then exit 0; fi
if [[ -e /dev/nvidia0 ]]; then exit 0; fi

# Mesa >= 23 lavapipe already installed: nothing to do.
min_mesa=23
installed="$(dpkg-query -W -f='${Status} ${Version}' mesa-vulkan-drivers 2>/dev/null || true)"
if [[ "${installed}" == "install ok installed "* ]] &&
   dpkg --compare-versions "${installed##* }" ge "${min_mesa}"; then
  exit 0
fi

# Another usable Vulkan device (e.g. a non-NVIDIA GPU driver): ask SAPIEN, when it is installed.
python="${PYTHON:-python3}"
if "${python}" - >/dev/null 2>&1 <<'PY'
import sapien
sapien.render.RenderSystem()
PY
then
  exit 0
fi

. /etc/os-release
if [[ "${ID:-}" != "debian" || "${VERSION_CODENAME:-}" != "bookworm" ]]; then
  log "no usable Vulkan device, and this script only knows how to install one on Debian 12"
  log "(found ${PRETTY_NAME:-an unknown OS}). Install Mesa >= 23 lavapipe (the package is"
  log "mesa-vulkan-drivers on Debian/Ubuntu) or a GPU driver with Vulkan support."
  exit 1
fi

sudo=""
if [[ "$(id -u)" != 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    log "installing Mesa lavapipe needs root; rerun as root"
    exit 1
  fi
  sudo="sudo"
fi

# Enable bookworm-backports, in whichever form the machine declares its Debian sources.
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "enabling bookworm-backports"
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    ${sudo} sed -i -E '0,/^Suites:.*\bbookworm\b/{/^Suites:/ s/$/ bookworm-backports/}' \
      /etc/apt/sources.list.d/debian.sources
  else
    echo "deb http://deb.debian.org/debian bookworm-backports main" |
      ${sudo} tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
  fi
fi

log "installing Mesa lavapipe (mesa-vulkan-drivers) from bookworm-backports"
export DEBIAN_FRONTEND=noninteractive
${sudo} apt-get update -qq
${sudo} apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers >/dev/null
log "done: $(dpkg-query -W -f='mesa-vulkan-drivers ${Version}' mesa-vulkan-drivers)"
