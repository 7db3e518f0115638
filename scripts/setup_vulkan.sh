#!/usr/bin/env bash
# Makes a Vulkan device usable for ManiSkill3/SAPIEN.
#
# SAPIEN needs Vulkan even for state observations.
#
# With an NVIDIA driver, the driver provides Vulkan through its graphics library
# (libGLX_nvidia.so.0), which the Vulkan loader finds through an ICD file
# (/usr/share/vulkan/icd.d/nvidia_icd.json). Containers started without the "graphics" driver
# capability often lack the file, or the library too, or an image lacks what the library links
# to (libglvnd, libX11, libXext). This script installs those (apt-get), writes the file where
# the library is there (RPD_JAX_ICD_DIR: another folder), and otherwise stops with the one line
# that says what the container needs (NVIDIA_DRIVER_CAPABILITIES).
#
# Without one, it installs Mesa's software rasterizer (lavapipe) system-wide: Debian 12's own
# mesa-vulkan-drivers (22.3) is too old for SAPIEN (it lacks descriptorBindingPartiallyBound),
# the one in bookworm-backports (25.x) works. Installed system-wide, it needs no environment
# variables at run time.
#
# Idempotent and quiet when there is nothing to do. Needs root (or sudo) only when it writes or
# installs.
set -euo pipefail

log() { echo "setup_vulkan: $*" >&2; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
# rpd_jax/envs/vulkan.py of this checkout (standard library only; run as a file, it imports
# none of the package).
vulkan=("${python}" "${repo}/rpd_jax/envs/vulkan.py")

sudo=""
if [[ "$(id -u)" != 0 ]] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi

nvidia=0
if [[ -e /proc/driver/nvidia/version || -e /dev/nvidiactl ]] ||
   { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; }; then
  nvidia=1
fi
if ((nvidia)); then
  if "${vulkan[@]}" --require_nvidia >/dev/null 2>&1; then exit 0; fi  # SAPIEN renders on it
  # What NVIDIA's Vulkan library links to and the image lacks (libglvnd, libX11, libXext).
  packages="$("${vulkan[@]}" --missing_packages)"
  if [[ -n "${packages}" ]] && command -v apt-get >/dev/null 2>&1 &&
     [[ "$(id -u)" == 0 || -n "${sudo}" ]]; then
    log "installing ${packages} (NVIDIA's Vulkan library links to them)"
    export DEBIAN_FRONTEND=noninteractive
    ${sudo} apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    ${sudo} apt-get install -y -qq ${packages} >/dev/null
  fi
  # The ICD file, where only it is missing (an error: line and exit 1 where the library or
  # what it links to is missing). SAPIEN looks for it in /usr/share/vulkan/icd.d and supplies
  # a copy of its own (with a warning) where it is not there; other Vulkan programs do not.
  icd_dir="${RPD_JAX_ICD_DIR:-/usr/share/vulkan/icd.d}"
  tmp="$(mktemp -d)"
  trap 'rm -rf "${tmp}"' EXIT
  "${vulkan[@]}" --write_icd="${tmp}" >/dev/null
  if [[ -f "${tmp}/nvidia_icd.json" ]]; then
    log "writing ${icd_dir}/nvidia_icd.json (NVIDIA's Vulkan library is here, its ICD file was not)"
    mkdir -p "${icd_dir}" 2>/dev/null || true
    if [[ -w "${icd_dir}" ]]; then sudo=""; fi
    ${sudo} install -D -m 644 "${tmp}/nvidia_icd.json" "${icd_dir}/nvidia_icd.json"
  fi
  # A new process (the loader reads ICD files once); its error: line says what is still missing.
  "${vulkan[@]}" --require_nvidia >/dev/null
  exit 0
fi

# Mesa >= 23 lavapipe already installed: nothing to do.
min_mesa=23
installed="$(dpkg-query -W -f='${Status} ${Version}' mesa-vulkan-drivers 2>/dev/null || true)"
if [[ "${installed}" == "install ok installed "* ]] &&
   dpkg --compare-versions "${installed##* }" ge "${min_mesa}"; then
  exit 0
fi

# Another usable Vulkan device (e.g. a non-NVIDIA GPU driver): ask SAPIEN, when it is installed.
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

if [[ "$(id -u)" != 0 && -z "${sudo}" ]]; then
  log "installing Mesa lavapipe needs root; rerun as root"
  exit 1
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
