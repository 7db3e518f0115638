"""Offline wheelhouses: every wheel the project needs for a target Python, in files small enough
to carry, and the pieces of that: repacking a wheel without unused files, splitting and joining.

  python scripts/wheelhouse.py build --python=3.12 --out=/tmp/wh312 [--exclude=torch,jax]
  python scripts/wheelhouse.py repack WHEEL --out=DIR --drop=GLOB,... [--keep=GLOB,...]
  python scripts/wheelhouse.py split FILE --out=DIR [--max_file_mb=60]
  python scripts/wheelhouse.py check DIR          # sums, sizes, parts that join
  python scripts/wheelhouse.py join DIR --out=SCRATCH

``scripts/wheelhouse.sh`` wraps ``build`` and ``check`` and does the install in bash, so that an
offline target needs only bash, coreutils and a Python with pip (not this project's packages).
Install tooling, beside ``setup.sh``: it is not part of the ``rpd_jax`` package and runs in a
checkout (it reads ``requirements.txt`` and ``pyproject.toml`` there).

``build`` resolves ``requirements.txt`` (plus the build backend of pyproject.toml, so that
``pip install -e .`` works offline) for the target Python with pip's own resolver (``pip install
--dry-run --report --target``), downloads the pinned wheels (``--only-binary=:all:``, manylinux
for ``--glibc``), repacks mani_skill without the assets that the project's eight tasks never
load (MANISKILL_DROP), splits every file of ``--max_file_mb`` or more into parts, and writes:

  *.whl, *.whl.partNNN   the wheels; a split wheel is the concatenation of its parts in order
  SHA256SUMS             sha256 of every file shipped (``sha256sum -c`` format)
  JOINED.sha256          sha256 of each split wheel once joined
  requirements.txt       what ``install`` asks pip for (the roots, less the excluded packages)
  pins.txt               name==version of every wheel in the house
  wheelhouse.json        how it was built: target, exclusions, files, the repack's summary
  wheelhouse.sh          a copy of the script, so the folder installs itself

Excluded packages (``--exclude``, ``--exclude_from``: what the target already has) stand in the
resolution as empty stand-in wheels (no dependencies), so that neither they nor their own
dependencies (a CUDA torch's nvidia-* wheels) are resolved, downloaded or carried.

``--no_deps`` skips the resolution: the requirements file lists every wheel (the GPU check's
requirements-gpu-check.txt); ``--lean`` drops more (MANISKILL_KEEP_LEAN, SAPIEN_DROP_LEAN);
``--lzma`` recompresses every wheel with LZMA.
"""

from __future__ import annotations

import base64
import csv
import fnmatch
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Iterable, Optional, Sequence

from rpd_jax.errors import ConfigError, RunError

MB = 1000 * 1000
MAX_FILE_MB = 60.0  # one transfer to the device machine carries at most 64 MiB
PART_SUFFIX = ".part"
SUMS = "SHA256SUMS"
JOINED = "JOINED.sha256"
STUB_LABEL = "wheelhousestub"  # local version label of the excluded packages' stand-ins

# What the repacked mani_skill 3.0.1 leaves out: asset files that none of the eight tasks
# (PickCube, PushCube, PullCube, LiftPegUpright, RollBall, StackCube, PullCubeTool, PokeCube;
# Panda, pd_ee_delta_pose, obs_mode state or state+rgb, the 256x256 human camera) opens. Measured
# with strace (every file syscall, C++ mesh and texture loading included) and an audit hook on
# "open" while each task was made, reset, stepped and rendered: the only package files read
# besides Python code are the Panda's URDF/SRDF and meshes (assets/robots/panda; StackCube's
# panda_v3 also loads realsense2_description/meshes/d415.stl), the table scene
# (utils/scene_builder/table/assets/table.glb), the ground texture
# (utils/building/assets/grid_texture.png) and assets/partnet_mobility/meta/*.json (at import).
# The environment map (assets/environment_maps/default.hdr) is never opened: the default
# lighting is ambient and directional lights, and frames rendered with the repacked package are
# pixel-identical to the original's. Python files are never dropped (repack_wheel refuses).
MANISKILL_DROP = (
    "mani_skill/assets/robots/*",  # other robots: g1_humanoid, fetch, trifinger, dclaw, ...
    "mani_skill/assets/environment_maps/*",
    "mani_skill/assets/maniskill2-scene-2.glb",
    "mani_skill/utils/scene_builder/replicacad/*.hdr",  # ReplicaCAD's sky
    "mani_skill/utils/scene_builder/kitchen_counter/assets/*",
    "mani_skill/utils/building/assets/floor_tiles_06_diff_2k_aligned.png",
)
# The whole Panda folder stays (24 MB), its unread camera meshes too, so that Panda variants
# with a wrist camera keep working.
MANISKILL_KEEP = ("mani_skill/assets/robots/panda/*",)
REPACK_NOTE = "WHEELHOUSE_REPACK.txt"  # written into the repacked wheel's .dist-info

# ``--lean`` (the GPU check's wheelhouse, which travels with the repository) also leaves out
# what the eight tasks never read but the default keeps for other uses: of the Panda's folder
# only the robot descriptions, the Franka meshes and StackCube's d415.stl stay (the strace
# measurement above), not the wrist and stereo camera assets or another robot's meshes filed
# under panda/; and from SAPIEN its C++ headers, its
# macOS loader and the projector patterns of its simulated stereo depth sensors (none of the
# tasks has one). SAPIEN's largest library, OpenImageDenoise (17 MB, for ray tracing), stays:
# libsvulkan2.so links to it.
MANISKILL_KEEP_LEAN = (
    "mani_skill/assets/robots/panda/*.urdf",
    "mani_skill/assets/robots/panda/*.srdf",
    "mani_skill/assets/robots/panda/franka_description/*",
    "mani_skill/assets/robots/panda/realsense2_description/meshes/d415.stl",
)
SAPIEN_DROP_LEAN = (
    "sapien/include/*",
    "sapien/sensor/assets/patterns/*",
    "sapien/vulkan_library/*.dylib",
)


def canonical(name: str) -> str:
  """A distribution name as pip compares them (PEP 503): ``Mani_Skill`` -> ``mani-skill``."""
  return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(filename: str) -> str:
  """The canonical distribution name of a wheel file (or one of its parts)."""
  base = os.path.basename(filename)
  if not base.endswith(".whl") and PART_SUFFIX not in base:
    raise ConfigError(f"{filename}: not a wheel (a wheel's name ends in .whl)")
  return canonical(base.split("-", 1)[0])


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def record_hash(data: bytes) -> str:
  """A RECORD file's hash field: ``sha256=`` and the urlsafe base64 digest without padding."""
  digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
  return "sha256=" + digest.decode("ascii")


def _dist_info(names: Iterable[str]) -> str:
  folders = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
  if len(folders) != 1:
    raise ConfigError(f"a wheel has exactly one .dist-info folder; found {sorted(folders) or 0}")
  return folders.pop()


def check_record(wheel: str) -> list[str]:
  """What is wrong with ``wheel``'s RECORD: files missing from it, listed but absent, or with
  another hash or size. Empty when the RECORD is consistent (as pip requires)."""
  with zipfile.ZipFile(wheel) as z:
    names = [i.filename for i in z.infolist() if not i.filename.endswith("/")]
    record_path = _dist_info(names) + "/RECORD"
    rows = {}
    for row in csv.reader(io.StringIO(z.read(record_path).decode("utf-8"))):
      if row:
        rows[row[0]] = row[1:]
    problems = []
    for name in names:
      if name not in rows:
        problems.append(f"{name}: not in RECORD")
      elif name != record_path:
        data = z.read(name)
        expected = [record_hash(data), str(len(data))]
        if rows[name] != expected:
          problems.append(f"{name}: RECORD says {','.join(rows[name])}, the file is "
                          f"{','.join(expected)}")
    problems += [f"{name}: in RECORD, not in the wheel" for name in rows if name not in names]
  return problems


def _matches(name: str, patterns: Sequence[str]) -> bool:
  return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def repack_wheel(wheel: str, out_dir: str, drop: Sequence[str],
                 keep: Sequence[str] = (), lzma: bool = False) -> dict:
  """Writes ``out_dir/<same file name>``: ``wheel`` without the files matching a ``drop`` glob
  (fnmatch on the path in the wheel; ``*`` crosses ``/``) unless they match a ``keep`` glob,
  with a RECORD rewritten for what is left and a note of what went (REPACK_NOTE) in its
  .dist-info. Name and version are unchanged, so ``name==version`` still resolves to it.

  Refuses (ConfigError) a glob that matches nothing (the wheel's layout changed: measure again),
  and dropping Python code or .dist-info files. Returns a summary (sizes, counts, the globs).
  """
  os.makedirs(out_dir, exist_ok=True)
  dst = os.path.join(out_dir, os.path.basename(wheel))
  if os.path.abspath(dst) == os.path.abspath(wheel):
    raise ConfigError(f"--out={out_dir} holds {os.path.basename(wheel)} already: the repacked "
                      "wheel keeps its name, so give another folder")
  with zipfile.ZipFile(wheel) as src:
    infos = [i for i in src.infolist() if not i.filename.endswith("/")]
    dist_info = _dist_info(i.filename for i in infos)
    record_path = f"{dist_info}/RECORD"
    dropped = [i for i in infos if _matches(i.filename, drop) and not _matches(i.filename, keep)]
    unused = [p for p in drop if not any(fnmatch.fnmatchcase(i.filename, p) for i in infos)]
    if unused:
      raise ConfigError(f"--drop={unused[0]} matches no file of {os.path.basename(wheel)}: "
                        "its layout differs from the one measured; list it (unzip -l) and fix "
                        "the globs")
    code = [i.filename for i in dropped
            if i.filename.endswith((".py", ".so", ".pyd")) or i.filename.startswith(dist_info)]
    if code:
      raise ConfigError(f"the drop globs match {code[0]} (and {len(code) - 1} more code or "
                        ".dist-info files): only data files may go; narrow the globs")
    gone = {i.filename for i in dropped}
    kept = [i for i in infos if i.filename not in gone
            and i.filename != record_path and not i.filename.startswith(f"{dist_info}/RECORD.")]
    note = (f"Repacked by rpd_jax's scripts/wheelhouse.py from {os.path.basename(wheel)} "
            f"(sha256 {sha256_file(wheel)}).\n"
            f"Dropped {len(dropped)} files ({sum(i.file_size for i in dropped) / MB:.1f} MB "
            f"unpacked) matching: {', '.join(drop)}\n"
            f"Kept despite that: {', '.join(keep) or 'none'}\n"
            "Environments that load a dropped asset fail; install the original wheel for them.\n")
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    stamp = src.getinfo(record_path).date_time
    tmp = dst + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
      for info in kept:
        data = src.read(info)
        out.writestr(info, data, compress_type=zipfile.ZIP_LZMA if lzma else info.compress_type)
        writer.writerow([info.filename, record_hash(data), len(data)])
      for path, data in ((f"{dist_info}/{REPACK_NOTE}", note.encode("utf-8")),):
        out.writestr(zipfile.ZipInfo(path, stamp), data, compress_type=zipfile.ZIP_DEFLATED)
        writer.writerow([path, record_hash(data), len(data)])
      writer.writerow([record_path, "", ""])
      record_info = zipfile.ZipInfo(record_path, stamp)
      record_info.external_attr = src.getinfo(record_path).external_attr
      out.writestr(record_info, record.getvalue().encode("utf-8"),
                   compress_type=zipfile.ZIP_DEFLATED)
  os.replace(tmp, dst)
  return dict(wheel=os.path.basename(wheel), original_bytes=os.path.getsize(wheel),
              repacked_bytes=os.path.getsize(dst), files_dropped=len(dropped),
              files_kept=len(kept) + 2, dropped_unpacked_bytes=sum(i.file_size for i in dropped),
              drop=list(drop), keep=list(keep), path=dst)


def part_name(name: str, index: int) -> str:
  return f"{name}{PART_SUFFIX}{index:03d}"


def split_file(path: str, out_dir: str, max_bytes: int) -> list[str]:
  """Splits ``path`` into ``out_dir/<name>.part000``, ``.part001``, ... of equal size (the last
  may be smaller), each under ``max_bytes``; their concatenation in order is the file. Returns
  the parts' paths. The file itself is left where it is."""
  if max_bytes < 2:
    raise ConfigError(f"--max_file_mb gives {max_bytes} bytes: give at least 1e-6 (two bytes)")
  size = os.path.getsize(path)
  count = max(1, -(-size // (max_bytes - 1)))
  chunk = -(-size // count)
  os.makedirs(out_dir, exist_ok=True)
  parts = []
  with open(path, "rb") as f:
    for index in range(count):
      part = os.path.join(out_dir, part_name(os.path.basename(path), index))
      with open(part, "wb") as out:
        remaining = chunk
        while remaining:
          block = f.read(min(remaining, 1 << 20))
          if not block:
            break
          out.write(block)
          remaining -= len(block)
      parts.append(part)
  return parts


def parts_of(folder: str, name: str) -> list[str]:
  """The parts of ``name`` in ``folder``, in order; ConfigError when one is missing."""
  found = sorted(glob.glob(os.path.join(glob.escape(folder), glob.escape(name) + PART_SUFFIX +
                                        "[0-9][0-9][0-9]")))
  expected = [os.path.join(folder, part_name(name, i)) for i in range(len(found))]
  if not found or found != expected:
    missing = sorted(set(expected) - set(found)) or [part_name(name, 0)]
    raise ConfigError(f"{os.path.basename(missing[0])} is missing from {folder}: copy every "
                      f"{name}{PART_SUFFIX}NNN file of the wheelhouse")
  return found


def join_parts(folder: str, name: str, sha256: str, out_dir: str) -> str:
  """Joins ``folder/<name>.partNNN`` into ``out_dir/name`` and checks its sha256; on a mismatch
  removes the result and raises ConfigError naming the damaged part where SHA256SUMS (in
  ``folder``) tells which."""
  os.makedirs(out_dir, exist_ok=True)
  parts = parts_of(folder, name)
  dst = os.path.join(out_dir, name)
  tmp = dst + ".tmp"
  h = hashlib.sha256()
  with open(tmp, "wb") as out:
    for part in parts:
      with open(part, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
          out.write(block)
  if h.hexdigest() != sha256:
    os.remove(tmp)
    sums = read_sums(os.path.join(folder, SUMS)) if os.path.exists(
        os.path.join(folder, SUMS)) else {}
    bad = [os.path.basename(p) for p in parts
           if os.path.basename(p) in sums and sha256_file(p) != sums[os.path.basename(p)]]
    which = f" ({', '.join(bad)} differs from {SUMS})" if bad else ""
    raise ConfigError(f"{name} joined from {len(parts)} parts has sha256 {h.hexdigest()}, "
                      f"expected {sha256}{which}: a part is damaged or from another build; "
                      "copy the parts again")
  os.replace(tmp, dst)
  return dst


def read_sums(path: str) -> dict[str, str]:
  """{file name: sha256} from a ``sha256sum`` style file."""
  sums = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        digest, name = line.rstrip("\n").split(None, 1)
        sums[name.lstrip("*")] = digest
  return sums


def write_sums(path: str, sums: dict[str, str]) -> None:
  with open(path, "w") as f:
    for name in sorted(sums):
      f.write(f"{sums[name]}  {name}\n")


def check_folder(folder: str, max_bytes: Optional[int] = None) -> list[str]:
  """What is wrong with a wheelhouse: files unlisted in SHA256SUMS or differing from it, listed
  ones missing, files of ``max_bytes`` or more. Empty when it is sound."""
  if not os.path.exists(os.path.join(folder, SUMS)):
    return [f"{folder} has no {SUMS}: not a wheelhouse built by this tool"]
  sums = read_sums(os.path.join(folder, SUMS))
  present = sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)))
  problems = [f"{n}: listed in {SUMS}, missing" for n in sums if n not in present]
  for name in present:
    if name == SUMS:
      continue
    path = os.path.join(folder, name)
    if name not in sums:
      problems.append(f"{name}: not listed in {SUMS}")
    elif sha256_file(path) != sums[name]:
      problems.append(f"{name}: sha256 differs from {SUMS} (damaged copy)")
    if max_bytes is not None and os.path.getsize(path) >= max_bytes:
      problems.append(f"{name}: {os.path.getsize(path) / MB:.1f} MB, not under "
                      f"{max_bytes / MB:g} MB")
  return problems


def join_all(folder: str, out_dir: str) -> list[str]:
  """Joins every split wheel of a wheelhouse (JOINED.sha256) into ``out_dir``; their paths."""
  joined = os.path.join(folder, JOINED)
  if not os.path.exists(joined):
    return []
  return [join_parts(folder, name, digest, out_dir)
          for name, digest in sorted(read_sums(joined).items())]


def stub_wheel(out_dir: str, name: str, version: str) -> str:
  """An empty wheel for ``name`` at ``version`` with no dependencies: the stand-in of a package
  the target already has, so that the resolver neither needs nor fetches its requirements."""
  dist = re.sub(r"[-_.]+", "_", name)
  dist_info = f"{dist}-{version}.dist-info"
  files = {
      f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
      f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: rpd_jax\nRoot-Is-Purelib: true\n"
                            "Tag: py3-none-any\n",
  }
  record = "".join(f"{p},{record_hash(d.encode())},{len(d.encode())}\n" for p, d in files.items())
  files[f"{dist_info}/RECORD"] = record + f"{dist_info}/RECORD,,\n"
  path = os.path.join(out_dir, f"{dist}-{version}-py3-none-any.whl")
  with zipfile.ZipFile(path, "w") as z:
    for p, d in files.items():
      z.writestr(zipfile.ZipInfo(p, (2020, 1, 1, 0, 0, 0)), d)
  return path


def stub_version(version: str) -> str:
  """``version`` with the stand-in label added to its local part: it sorts just above
  ``version`` (so pip prefers the stand-in) and still satisfies ``==version``-style pins."""
  return f"{version}.{STUB_LABEL}" if "+" in version else f"{version}+{STUB_LABEL}"


def parse_exclusions(names: Sequence[str], from_file: Optional[str]) -> dict[str, Optional[str]]:
  """{canonical name: version or None} from ``--exclude`` entries (``name`` or
  ``name==version``) and a ``--exclude_from`` file (``pip freeze`` or ``pip list
  --format=freeze`` output of the target, or one name a line)."""
  entries = [n.strip() for n in names if n.strip()]
  if from_file:
    if not os.path.exists(from_file):
      raise FileNotFoundError(f"--exclude_from={from_file}: no such file; write it on the "
                              "target with `python3 -m pip list --format=freeze > FILE`")
    with open(from_file) as f:
      for line in f:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
          entries.append(line.split(" @ ", 1)[0].strip())
  out: dict[str, Optional[str]] = {}
  for entry in entries:
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(?:==\s*(\S+))?", entry)
    if not m:
      raise ConfigError(f"--exclude: {entry!r} is neither a name nor name==version "
                        "(e.g. torch or torch==2.11.0)")
    out[canonical(m.group(1))] = m.group(2)
  return out


def read_requirements(path: str) -> list[str]:
  """The requirement lines of a requirements file, comments and blank lines left out."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--requirements={path}: no such file")
  lines = []
  with open(path) as f:
    for line in f:
      line = line.split(" #", 1)[0].strip()
      if not line or line.startswith("#"):
        continue
      if line.startswith("-"):
        raise ConfigError(f"{path}: {line!r}: options in a requirements file are not supported "
                          "here; give them as flags (e.g. --torch_index)")
      lines.append(line)
  return lines


def requirement_name(line: str) -> str:
  m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
  if not m:
    raise ConfigError(f"{line!r} is not a requirement (expected e.g. flax>=0.12)")
  return canonical(m.group(1))


def torch_requirement(line: str, torch: str) -> str:
  """The torch root for ``--torch``: ``cpu`` asks for the CPU build (``==X+cpu``), ``cuda``
  for exactly the plain release ``X`` (PyPI's CUDA build; ``===`` refuses ``X+cpu``)."""
  m = re.fullmatch(r"torch\s*==\s*([0-9][0-9A-Za-z.]*)", line.strip())
  if not m:
    raise ConfigError(f"requirements: {line!r}: pin torch to one release (torch==2.13.0), so "
                      "that --torch can choose its build")
  if torch == "cpu":
    return f"torch=={m.group(1)}+cpu"
  if torch == "cuda":
    return f"torch==={m.group(1)}"
  raise ConfigError(f"--torch={torch}: give cpu or cuda (or leave torch out with --exclude)")


def platform_tags(glibc: str, arch: str) -> list[str]:
  """manylinux tags a target with glibc ``glibc`` (e.g. 2.28) on ``arch`` runs, newest first."""
  m = re.fullmatch(r"2\.(\d+)", glibc)
  if not m or int(m.group(1)) < 17:
    raise ConfigError(f"--glibc={glibc}: give the target's glibc as 2.N with N >= 17 (2.28 for "
                      "RHEL 8, 2.31 for Ubuntu 20.04, 2.35 for 22.04; `ldd --version` tells)")
  tags = [f"manylinux_2_{n}_{arch}" for n in range(int(m.group(1)), 16, -1)]
  return tags + [f"manylinux2014_{arch}", f"manylinux1_{arch}"]


def pip_target_args(python: str, glibc: str, arch: str) -> list[str]:
  """pip's options that select wheels for the target, for ``download`` and ``install``."""
  if not re.fullmatch(r"3\.\d+", python):
    raise ConfigError(f"--python={python}: give the target's Python as 3.N, e.g. 3.12")
  args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python]
  for tag in platform_tags(glibc, arch):
    args += ["--platform", tag]
  return args


def find_interpreter(python: str, given: Optional[str] = None) -> Optional[str]:
  """A Python ``python`` (3.N) with pip on this machine: pip evaluates dependency markers
  (``python_version < "3.12"``) for the interpreter it runs in, so resolving with the target's
  version gets them right. None when there is none (then the running one resolves)."""
  candidates = [given] if given else [shutil.which(f"python{python}")] + sorted(
      glob.glob(os.path.expanduser(f"~/.pyenv/versions/{python}.*/bin/python{python}"))) + [
          f"/usr/bin/python{python}", f"/usr/local/bin/python{python}", sys.executable]
  for exe in candidates:
    if not exe or not os.path.exists(exe):
      continue
    try:
      out = subprocess.run([exe, "-c", "import sys, pip; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=60)
    except OSError:
      continue
    if out.returncode == 0 and out.stdout.strip() == python:
      return exe
  if given:
    raise ConfigError(f"--interpreter={given} is not a Python {python} with pip")
  return None


def _pip(python_exe: str, args: list[str], what: str) -> subprocess.CompletedProcess:
  proc = subprocess.run([python_exe, "-m", "pip", *args], capture_output=True, text=True)
  if proc.returncode != 0:
    lines = [l for l in (proc.stderr + proc.stdout).splitlines()
             if l.strip() and not l.startswith("WARNING: Location")]
    raise RunError(f"{what} failed (pip exit {proc.returncode}):\n" + "\n".join(lines[-15:]))
  return proc


def index_versions(python_exe: str, name: str, target_args: list[str],
                   index_args: list[str]) -> list[str]:
  """The releases of ``name`` that pip's indexes have for the target (``pip index versions``)."""
  proc = subprocess.run([python_exe, "-m", "pip", "index", "versions", name, *target_args,
                         *index_args], capture_output=True, text=True)
  m = re.search(r"Available versions: (.*)", proc.stdout)
  if proc.returncode != 0 or not m:
    raise ConfigError(f"--exclude={name}: pip's indexes have no release of {name} for the "
                      f"target; check the name, or give the target's version ({name}==X.Y)")
  return [v.strip() for v in m.group(1).split(",") if v.strip()]


def build_requirements(repo: str) -> list[str]:
  """``[build-system] requires`` of the project's pyproject.toml (for an offline ``-e .``)."""
  path = os.path.join(repo, "pyproject.toml")
  if not os.path.exists(path):
    return []
  import tomllib  # Python >= 3.11
  with open(path, "rb") as f:
    return list(tomllib.load(f).get("build-system", {}).get("requires", []))


def _satisfies(line: str, version: str) -> bool:
  """Whether ``version`` meets the requirement ``line`` (True where that cannot be told)."""
  try:
    from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
    return Requirement(line).specifier.contains(version, prereleases=True)
  except Exception:  # pylint: disable=broad-except  (no packaging, or an odd line: don't warn)
    return True


def _human(n: int) -> str:
  return f"{n / MB:.1f} MB"


def _resolve(exe: str, work: str, stubs: str, constraints: str, resolve: list[str],
             roots: list[str], target_args: list[str], index_args: list[str], torch: str,
             python: str) -> tuple[list[tuple[str, str]], set[str]]:
  """pip's resolution of ``resolve`` for the target: the (name, version) pins, sorted, and the
  names the excluded packages' stand-ins filled."""
  report_path = os.path.join(work, "report.json")
  try:
    _pip(exe, ["install", "--dry-run", "--quiet", "--ignore-installed", "--target",
               os.path.join(work, "target"), "--report", report_path, "--find-links", stubs,
               "--constraint", constraints,
               *target_args, *index_args, *resolve], "resolving the requirements")
  except RunError as e:
    if torch == "cpu" and "torch==" in str(e) and "+cpu" in str(e):
      raise ConfigError(
          f"no CPU build of {[r for r in roots if r.startswith('torch')][0]} for Python "
          f"{python} is reachable from pip's indexes (PyPI has only CUDA builds for Linux). "
          "Give --torch_index=https://download.pytorch.org/whl/cpu (or a folder of wheels "
          "in pip's --find-links), --torch=cuda for PyPI's CUDA build (several GB), or "
          "--exclude=torch if the target has torch") from None
    raise
  with open(report_path) as f:
    report = json.load(f)
  pins, stood_in = [], set()
  for item in report["install"]:
    name, version = canonical(item["metadata"]["name"]), item["metadata"]["version"]
    if STUB_LABEL in version:
      stood_in.add(name)
    else:
      pins.append((name, version))
  return sorted(pins), stood_in


def build(python: str, out: str, requirements: str, exclude: dict[str, Optional[str]],
          torch: str = "cpu", torch_index: Optional[str] = None, glibc: str = "2.28",
          arch: str = "x86_64", max_file_mb: float = MAX_FILE_MB,
          interpreter: Optional[str] = None, repack: bool = True, no_deps: bool = False,
          lean: bool = False, lzma: bool = False, log=print) -> dict:
  """Builds a wheelhouse for Python ``python`` in ``out`` (see the module's docstring); returns
  its wheelhouse.json content.

  ``no_deps``: the requirements are the exact list of wheels (every line ``name==version``),
  nothing is resolved (install with ``--pins -- --no-deps``). ``lean``: the smaller repack
  profiles (MANISKILL_KEEP_LEAN, SAPIEN_DROP_LEAN). ``lzma``: every wheel recompressed with
  LZMA (zip method 14, which pip reads; about 25% smaller for SAPIEN's libraries).
  """
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if os.path.exists(out) and os.listdir(out):
    raise ConfigError(f"--out={out} is not empty: give a new folder (a wheelhouse is built whole)")
  max_bytes = int(max_file_mb * MB)
  target_args = pip_target_args(python, glibc, arch)
  index_args = ["--extra-index-url", torch_index] if torch_index else []
  exe = find_interpreter(python, interpreter)
  if exe is None:
    exe = sys.executable
    log(f"warning: no Python {python} with pip here; resolving with {sys.version.split()[0]}'s "
        f"pip for --python-version={python}: dependency markers are then evaluated for "
        f"{sys.version_info[0]}.{sys.version_info[1]} (give --interpreter=PATH to avoid that)")
  # (the build backend lets `pip install -e .` work offline; a --no_deps house is run in place)
  lines = read_requirements(requirements) + ([] if no_deps else build_requirements(repo))
  # roots: what the target installs from the house; resolve: what the house is resolved for,
  # the roots and the requirements the target's own copies of excluded packages must meet
  # (given bare, they are taken to meet requirements.txt; given with a version, that is final).
  roots, resolve = [], []
  for line in lines:
    name = requirement_name(line)
    if name not in exclude:
      roots.append(torch_requirement(line, torch) if name == "torch" else line)
      resolve.append(roots[-1])
    elif exclude[name] is None:
      resolve.append(line)
    elif not _satisfies(line, exclude[name]):
      log(f"warning: the target's {name}=={exclude[name]} does not meet {line!r} of "
          f"{os.path.basename(requirements)}; resolving for {exclude[name]} all the same")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  created = not os.path.exists(out)
  work = tempfile.mkdtemp(prefix=".wheelhouse-", dir=os.path.dirname(os.path.abspath(out)))
  try:
    # A stand-in sorts just above the release it stands for; a stand-in for each release of a
    # name given bare, and a constraint to the one given (name==version), leave pip no reason
    # to take a real wheel of an excluded package.
    stubs = os.path.join(work, "stubs")
    os.makedirs(stubs)
    constraints = os.path.join(work, "constraints.txt")
    with open(constraints, "w") as f:
      for name, version in sorted(exclude.items()):
        versions = [version] if version else index_versions(exe, name, target_args, index_args)
        for v in versions:
          stub_wheel(stubs, name, stub_version(v))
        if version:
          f.write(f"{name}=={version}\n")
    if no_deps:
      pins, stood_in = [], set()
      for line in roots:
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(\S+)", line)
        if not m:
          raise ConfigError(f"--no_deps: {line!r} in {requirements} is not name==version; "
                            "pin every wheel of the house")
        pins.append((canonical(m.group(1)), m.group(2)))
      log(f"{len(pins)} wheels as listed (no dependencies resolved); left out: "
          f"{', '.join(sorted(exclude)) or 'nothing'}")
    else:
      log(f"resolving {len(resolve)} requirements for Python {python} ({exe}); "
          f"left out: {', '.join(sorted(exclude)) or 'nothing'}")
      pins, stood_in = _resolve(exe, work, stubs, constraints, resolve, roots, target_args,
                                index_args, torch, python)
    real = sorted(n for n, _ in pins if n in exclude)
    if real:
      raise RunError(f"pip resolved a real {real[0]} although it is excluded (its stand-ins do "
                     f"not fit what the other packages require of {real[0]}); give the "
                     f"target's version, --exclude={real[0]}==X.Y, or leave it in")
    log(f"downloading {len(pins)} wheels")
    dl = os.path.join(work, "download")
    _pip(exe, ["download", "--quiet", "--no-deps", "-d", dl, *target_args, *index_args,
               *[f"{n}==={v}" for n, v in pins]], "downloading the wheels")
    files = {wheel_name(f): os.path.join(dl, f) for f in sorted(os.listdir(dl))}
    missing = sorted({n for n, _ in pins} - set(files))
    if missing:
      raise RunError(f"pip downloaded no wheel for {', '.join(missing)}")
    os.makedirs(out, exist_ok=True)
    info = dict(python=python, glibc=glibc, arch=arch, interpreter=exe, torch=torch,
                torch_index=torch_index, no_deps=no_deps, lean=lean, lzma=lzma,
                excluded=dict(sorted(exclude.items())),
                stood_in=sorted(stood_in), roots=roots, max_file_mb=max_file_mb,
                pins=[f"{n}=={v}" for n, v in pins], repacked=[], files={})
    profiles = {"mani-skill": (MANISKILL_DROP, MANISKILL_KEEP_LEAN if lean else MANISKILL_KEEP)}
    if lean:
      profiles["sapien"] = (SAPIEN_DROP_LEAN, ())
    for name, path in sorted(files.items()):
      drop, keep = profiles.get(name, ((), ())) if repack else ((), ())
      if drop or lzma:
        summary = repack_wheel(path, out, drop, keep, lzma=lzma)
        problems = check_record(summary.pop("path"))
        if problems:
          raise RunError(f"the repacked {os.path.basename(path)} is inconsistent: {problems[0]}")
        info["repacked"].append(summary)
        if drop:
          log(f"repacked {summary['wheel']}: {_human(summary['original_bytes'])} -> "
              f"{_human(summary['repacked_bytes'])} ({summary['files_dropped']} files out)")
      else:
        shutil.move(path, os.path.join(out, os.path.basename(path)))
    joined = {}
    for f in sorted(os.listdir(out)):
      path = os.path.join(out, f)
      if os.path.getsize(path) >= max_bytes:
        joined[f] = sha256_file(path)
        parts = split_file(path, out, max_bytes)
        os.remove(path)
        log(f"split {f} ({_human(sum(os.path.getsize(p) for p in parts))}) into {len(parts)} "
            "parts")
    if joined:
      write_sums(os.path.join(out, JOINED), joined)
    with open(os.path.join(out, "requirements.txt"), "w") as f:
      f.write("# What `wheelhouse.sh install` asks pip for; excluded: "
              f"{', '.join(sorted(exclude)) or 'nothing'}\n" + "".join(r + "\n" for r in roots))
    with open(os.path.join(out, "pins.txt"), "w") as f:
      f.write("".join(f"{n}=={v}\n" for n, v in pins))
    script = os.path.join(repo, "scripts", "wheelhouse.sh")
    if os.path.exists(script):
      shutil.copy(script, os.path.join(out, "wheelhouse.sh"))
    info["files"] = {f: os.path.getsize(os.path.join(out, f)) for f in sorted(os.listdir(out))}
    info["joined"] = joined
    with open(os.path.join(out, "wheelhouse.json"), "w") as f:
      json.dump(info, f, indent=1)
      f.write("\n")
    write_sums(os.path.join(out, SUMS),
               {f: sha256_file(os.path.join(out, f)) for f in sorted(os.listdir(out))})
  except BaseException:
    if created:  # no half-built wheelhouse left behind to be carried by mistake
      shutil.rmtree(out, ignore_errors=True)
    raise
  finally:
    shutil.rmtree(work, ignore_errors=True)
  problems = check_folder(out, max_bytes)
  if problems:
    raise RunError(f"the wheelhouse in {out} failed its check: {problems[0]}")
  return info


def size_table(folder: str) -> str:
  """A markdown table of a wheelhouse's files and sizes, with the total and the largest."""
  files = sorted((f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))),
                 key=lambda f: -os.path.getsize(os.path.join(folder, f)))
  sizes = {f: os.path.getsize(os.path.join(folder, f)) for f in files}
  rows = ["| file | MB |", "|---|---:|"] + [f"| {f} | {sizes[f] / MB:.2f} |" for f in files]
  total = sum(sizes.values())
  rows.append(f"| **total: {len(files)} files** | **{total / MB:.1f}** |")
  if files:
    rows.append(f"\nlargest file: {files[0]} ({sizes[files[0]] / MB:.2f} MB)")
  return "\n".join(rows)


def _define_flags():
  # Defined only when run as a command, so that tests and other code import the functions
  # above without touching absl's global flags (rpd_jax.tools.plot has an --out flag too).
  from absl import flags
  flags.DEFINE_string("python", None, "build: the target's Python, 3.N (e.g. 3.11, 3.12).")
  flags.DEFINE_string("out", None, "build: the new wheelhouse folder; repack, split, join: "
                      "where the results go.")
  flags.DEFINE_string("requirements", None, "build: requirements file (default: the project's "
                      "requirements.txt).")
  flags.DEFINE_list("exclude", [], "build: packages the target already has, left out with "
                    "their own dependencies: name or name==version (e.g. torch,jax,jaxlib).")
  flags.DEFINE_string("exclude_from", None, "build: a file of packages the target has, e.g. "
                      "its `pip list --format=freeze`.")
  flags.DEFINE_enum("torch", "cpu", ["cpu", "cuda"], "build: torch's build: cpu (X+cpu), or "
                    "cuda (PyPI's build, with its nvidia-* wheels: several GB).")
  flags.DEFINE_string("torch_index", None, "build: an extra index for torch's CPU build, e.g. "
                      "https://download.pytorch.org/whl/cpu.")
  flags.DEFINE_string("glibc", "2.28", "build: the target's glibc (`ldd --version`): wheels "
                      "for manylinux up to it.")
  flags.DEFINE_string("arch", "x86_64", "build: the target's machine (`uname -m`).")
  flags.DEFINE_string("interpreter", None, "build: a Python of the target's version to resolve "
                      "with (default: found on PATH or under ~/.pyenv).")
  flags.DEFINE_float("max_file_mb", MAX_FILE_MB, "build, split, check: every file must be "
                     "under this many MB (1e6 bytes); bigger ones are split into parts.")
  flags.DEFINE_bool("repack", True, "build: repack mani_skill without unused assets.")
  flags.DEFINE_bool("no_deps", False, "build: the requirements are every wheel, as "
                    "name==version; resolve nothing (install with --pins -- --no-deps).")
  flags.DEFINE_bool("lean", False, "build: leave out also what the eight tasks never read but "
                    "other uses may (Panda camera assets, SAPIEN's headers and depth-sensor "
                    "patterns): the GPU check's wheelhouse.")
  flags.DEFINE_bool("lzma", False, "build: recompress every wheel with LZMA (smaller; pip "
                    "reads it).")
  flags.DEFINE_list("drop", list(MANISKILL_DROP), "repack: globs of files to leave out.")
  flags.DEFINE_list("keep", list(MANISKILL_KEEP), "repack: globs kept although --drop matches.")


COMMANDS = ("build", "repack", "split", "check", "join")


def main(args: list[str]) -> None:
  from absl import flags
  f = flags.FLAGS
  if not args or args[0] not in COMMANDS:
    got = f"got {args[0]!r}" if args else "got none"
    raise ConfigError(f"give a command first: {', '.join(COMMANDS)} ({got}); e.g. "
                      "build --python=3.12 --out=DIR")
  command, rest = args[0], args[1:]
  max_bytes = int(f.max_file_mb * MB)

  def need(flag: str, example: str):
    if not getattr(f, flag):
      raise ConfigError(f"{command} needs --{flag}, e.g. --{flag}={example}")
    return getattr(f, flag)

  def one(what: str) -> str:
    if len(rest) != 1:
      raise ConfigError(f"{command} takes one {what}; got {len(rest)}: {' '.join(rest)}")
    if not os.path.exists(rest[0]):
      raise FileNotFoundError(f"{command}: no such {what}: {rest[0]}")
    return rest[0]

  if command == "build":
    if rest:
      raise ConfigError(f"build takes flags only; got {' '.join(rest)}")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = need("out", "/tmp/wheelhouse-py312")
    build(need("python", "3.12"), out,
          f.requirements or os.path.join(repo, "requirements.txt"),
          parse_exclusions(f.exclude, f.exclude_from), torch=f.torch,
          torch_index=f.torch_index, glibc=f.glibc, arch=f.arch, max_file_mb=f.max_file_mb,
          interpreter=f.interpreter, repack=f.repack, no_deps=f.no_deps, lean=f.lean,
          lzma=f.lzma)
    print(size_table(out))
    print(f"\nwheelhouse: {out}; install with: bash {out}/wheelhouse.sh install {out}")
  elif command == "repack":
    summary = repack_wheel(one("wheel"), need("out", "/tmp/repacked"), f.drop, f.keep)
    print(f"{summary['path']}: {_human(summary['original_bytes'])} -> "
          f"{_human(summary['repacked_bytes'])}, {summary['files_dropped']} files dropped")
  elif command == "split":
    parts = split_file(one("file"), need("out", "/tmp/parts"), max_bytes)
    print(f"{len(parts)} parts in {f.out}; sha256 {sha256_file(rest[0])}")
  elif command == "check":
    folder = one("folder")
    problems = check_folder(folder, max_bytes)
    with tempfile.TemporaryDirectory() as scratch:
      try:
        join_all(folder, scratch)
      except ConfigError as e:
        problems.append(str(e))
    if problems:
      raise ConfigError(f"{folder}: " + "; ".join(problems))
    print(size_table(folder))
    print(f"\n{folder}: every file matches {SUMS}, is under {f.max_file_mb:g} MB, and the "
          "split wheels join to their sha256")
  elif command == "join":
    for path in join_all(one("folder"), need("out", "/tmp/joined")):
      print(path)


if __name__ == "__main__":
  from rpd_jax import cli
  _define_flags()
  cli.run(main, positional=True)
