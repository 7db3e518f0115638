#!/usr/bin/env bash
# Offline wheelhouse for rpd_jax: build a folder of wheels here (with internet), carry it to a
# machine without internet (a GPU cluster, the device machine), install from it there.
#
#   bash scripts/wheelhouse.sh build --python 3.12 --out DIR [options]    # here, online
#   bash DIR/wheelhouse.sh install DIR [--python PY] [--pins] [--editable REPO] [-- PIP_ARGS]
#   bash DIR/wheelhouse.sh check DIR                                       # after a copy
#
# build (runs `python scripts/wheelhouse.py build` in this repo's environment):
#   --python 3.N          the target's Python (3.11, 3.12, ...); resolved with a local python3.N
#                         when there is one (pyenv's too), or --interpreter PATH
#   --out DIR             a new folder; every file in it is under --max_file_mb (60 MB):
#                         bigger wheels (torch, jaxlib) become DIR/NAME.whl.part000, ...
#   --exclude a,b==1.2    packages the target already has: left out, with their own
#                         dependencies (a GPU image with torch and jax: --exclude torch,jax,jaxlib)
#   --exclude_from FILE   the same from the target's `python3 -m pip list --format=freeze`
#   --torch cpu|cuda      torch's build (default cpu: torch==X+cpu; cuda: PyPI's CUDA build and
#                         its nvidia-* wheels, several GB); --torch_index URL adds an index for
#                         the CPU build (e.g. https://download.pytorch.org/whl/cpu)
#   --glibc 2.28          the target's glibc (`ldd --version`); --arch x86_64 (`uname -m`)
#   --requirements FILE   default: this repo's requirements.txt (pyproject's build backend,
#                         setuptools, is added so that `pip install -e .` works offline)
#   mani_skill is repacked without the robot and scene assets that the eight tasks never load
#   (about 28 MB instead of 102; same name and version; --norepack keeps the original).
#   --no_deps             the requirements are every wheel (name==version), nothing resolved;
#                         install with --pins -- --no-deps (the GPU check's house)
#   --lean                leave out also what other uses may read (Panda camera assets,
#                         SAPIEN's headers and depth-sensor patterns)
#   --lzma                recompress every wheel with LZMA (pip reads it; sapien 41 -> 30 MB)
#
# install (bash, coreutils and the target's Python with pip; needs nothing from this repo):
#   checks every file against DIR/SHA256SUMS, joins the split wheels into a scratch folder
#   (--scratch DIR, default a temporary one) and checks their sha256 (DIR/JOINED.sha256), then
#   runs `PY -m pip install --no-index --find-links DIR -r DIR/requirements.txt` with pip's
#   configuration files and PIP_* index variables ignored, so that only the wheelhouse is used.
#   --python PY     the Python to install into (default: python3; a venv's bin/python)
#   --pins          install exactly DIR/pins.txt (every wheel) instead of the requirements,
#                   which keep what the target already has where it satisfies them
#   --editable REPO then `pip install --no-deps -e REPO` offline (the project itself)
#   -- PIP_ARGS     passed to pip install (e.g. -- --target /tmp/site, or -- --user)
set -euo pipefail

fail() { echo "error: $*" >&2; exit 2; }
log() { echo "wheelhouse: $*" >&2; }

# Every file listed in SHA256SUMS is there and matches, every file there is listed.
check_dir() {
  local dir="$1"
  [[ -f "${dir}/SHA256SUMS" ]] ||
    fail "${dir} has no SHA256SUMS: not a wheelhouse (build one with: bash scripts/wheelhouse.sh build)"
  command -v sha256sum >/dev/null || fail "sha256sum (coreutils) is needed to check ${dir}"
  local bad
  if ! bad="$(cd "${dir}" && sha256sum -c --quiet SHA256SUMS 2>&1)"; then
    fail "files in ${dir} are damaged or missing (copy them again):"$'\n'"${bad}"
  fi
  local f
  for f in "${dir}"/*; do
    [[ -f "$f" ]] || continue
    f="$(basename "$f")"
    [[ "$f" == SHA256SUMS ]] && continue
    grep -qF "  ${f}" "${dir}/SHA256SUMS" || fail "${dir}/${f} is not in SHA256SUMS (another build's file?)"
  done
}

# Joins DIR/NAME.partNNN into SCRATCH/NAME for each NAME of JOINED.sha256 and checks its sha256.
join_dir() {
  local dir="$1" scratch="$2" digest name parts
  [[ -f "${dir}/JOINED.sha256" ]] || return 0
  while read -r digest name; do
    [[ -n "${name}" ]] || continue
    parts=("${dir}/${name}".part[0-9][0-9][0-9])
    [[ -f "${parts[0]}" ]] || fail "${dir}/${name}.part000 is missing: copy every part"
    cat "${parts[@]}" >"${scratch}/${name}"
    if [[ "$(sha256sum "${scratch}/${name}" | cut -d' ' -f1)" != "${digest}" ]]; then
      rm -f "${scratch}/${name}"
      fail "${name} joined from ${#parts[@]} parts does not match its sha256 in JOINED.sha256: a part is damaged or missing; copy them again"
    fi
  done <"${dir}/JOINED.sha256"
}

install() {
  local dir="" python="${PYTHON:-python3}" pins=0 editable="" scratch=""
  local -a pip_args=()
  while (($#)); do
    case "$1" in
      --python) python="${2:?--python needs a value}"; shift 2 ;;
      --python=*) python="${1#*=}"; shift ;;
      --pins) pins=1; shift ;;
      --editable) editable="${2:?--editable needs a folder}"; shift 2 ;;
      --editable=*) editable="${1#*=}"; shift ;;
      --scratch) scratch="${2:?--scratch needs a folder}"; shift 2 ;;
      --scratch=*) scratch="${1#*=}"; shift ;;
      --) shift; pip_args=("$@"); break ;;
      -*) fail "install: unknown option $1 (see the top of $0)" ;;
      *) [[ -z "${dir}" ]] || fail "install takes one folder; got ${dir} and $1"; dir="$1"; shift ;;
    esac
  done
  [[ -n "${dir}" ]] || fail "install needs the wheelhouse folder: bash $0 install DIR"
  [[ -d "${dir}" ]] || fail "no such folder: ${dir}"
  dir="$(cd "${dir}" && pwd)"
  "${python}" -m pip --version >/dev/null 2>&1 ||
    fail "--python ${python}: not a Python with pip (give a venv's bin/python)"
  check_dir "${dir}"
  local own_scratch=0
  if [[ -z "${scratch}" ]]; then
    scratch="$(mktemp -d "${TMPDIR:-/tmp}/wheelhouse.XXXXXX")"; own_scratch=1
  fi
  mkdir -p "${scratch}"
  # shellcheck disable=SC2064  # expanded now: the variable is local to this function
  ((own_scratch)) && trap "rm -rf $(printf %q "${scratch}")" EXIT
  join_dir "${dir}" "${scratch}"
  local req="${dir}/requirements.txt"
  ((pins)) && req="${dir}/pins.txt"
  log "pip install -r ${req} with ${python} ($("${python}" -c 'import sys; print(sys.prefix)')), from ${dir} only"
  # Only the wheelhouse: no pip.conf (its find-links and indexes), no PIP_* index variables.
  local -a pip=(env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT
                PIP_CONFIG_FILE=/dev/null "${python}" -m pip install --no-index
                --find-links "${dir}" --find-links "${scratch}" --only-binary=:all:)
  "${pip[@]}" -r "${req}" ${pip_args[@]+"${pip_args[@]}"}
  if [[ -n "${editable}" ]]; then
    # The build backend (setuptools) comes from the wheelhouse too, in pip's isolated build env.
    "${pip[@]/--only-binary=:all:/--prefer-binary}" --no-deps -e "${editable}" \
      ${pip_args[@]+"${pip_args[@]}"}
  fi
  log "done"
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command="${1:-}"
shift || true
case "${command}" in
  build)
    [[ -f "${here}/wheelhouse.py" && -f "${here}/../setup.sh" ]] ||
      fail "build runs in the rpd_jax repository (scripts/wheelhouse.sh), not from a wheelhouse copy"
    cd "${here}/.."
    PYTHONPATH=".${PYTHONPATH:+:${PYTHONPATH}}" exec "${PYTHON:-python3}" scripts/wheelhouse.py build "$@" ;;
  install) install "$@" ;;
  check)
    (($# == 1)) || fail "check takes the wheelhouse folder: bash $0 check DIR"
    check_dir "$1"
    scratch="$(mktemp -d "${TMPDIR:-/tmp}/wheelhouse.XXXXXX")"
    trap 'rm -rf "${scratch}"' EXIT
    join_dir "$1" "${scratch}"
    log "$1: every file matches SHA256SUMS and the split wheels join to their sha256" ;;
  *) fail "give a command: build, install or check (got '${command}'); usage is at the top of $0" ;;
esac
