"""The offline wheelhouse's pieces on a tiny synthetic wheel: repacking (RECORD rewritten, pip
accepts it), splitting and joining with the sha256 check, and scripts/wheelhouse.sh's install
path (no network: pip runs with --no-index)."""

import base64
import csv
import hashlib
import importlib.util
import io
import os
import subprocess
import sys
import zipfile

import pytest

from rpd_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_wheelhouse():
  """scripts/wheelhouse.py, install tooling outside the package, imported by its path."""
  spec = importlib.util.spec_from_file_location("wheelhouse",
                                                os.path.join(REPO, "scripts", "wheelhouse.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


wheelhouse = _load_wheelhouse()

FILES = {
    "demo/__init__.py": b"VALUE = 42\n",
    "demo/assets/robots/panda/arm.glb": b"panda" * 200,
    "demo/assets/robots/fetch/base.glb": os.urandom(3000),
    "demo/assets/robots/fetch/wheel.stl": os.urandom(500),
    "demo/assets/environment_maps/default.hdr": os.urandom(2000),
    "demo/scenes/table.glb": b"table" * 50,
}


def _digest(data: bytes) -> str:  # written out here, not taken from the module under test
  return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


def make_wheel(folder, files=FILES, bad_record=False) -> str:
  """demo-1.0-py3-none-any.whl with a correct RECORD (or one wrong hash)."""
  meta = {"demo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
          "demo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
                                      b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
  everything = {**files, **meta}
  rows = [[p, _digest(d), len(d)] for p, d in everything.items()]
  if bad_record:
    rows[0][1] = _digest(b"something else")
  rows.append(["demo-1.0.dist-info/RECORD", "", ""])
  record = io.StringIO()
  csv.writer(record, lineterminator="\n").writerows(rows)
  path = os.path.join(folder, "demo-1.0-py3-none-any.whl")
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for p, d in everything.items():
      z.writestr(p, d)
    z.writestr("demo-1.0.dist-info/RECORD", record.getvalue())
  return path


def pip_install(wheel, target):
  return subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                         "--no-compile", "--quiet", "--target", str(target), str(wheel)],
                        capture_output=True, text=True)


def test_repack_rewrites_record_and_pip_installs_it(tmp_path):
  original = make_wheel(tmp_path)
  assert wheelhouse.check_record(original) == []
  summary = wheelhouse.repack_wheel(original, tmp_path / "out",
                                    drop=["demo/assets/robots/*", "demo/assets/environment_maps/*"],
                                    keep=["demo/assets/robots/panda/*"])
  repacked = summary["path"]
  assert os.path.basename(repacked) == os.path.basename(original)  # same name and version
  assert summary["files_dropped"] == 3
  with zipfile.ZipFile(repacked) as z:
    names = set(z.namelist())
    record = list(csv.reader(io.StringIO(z.read("demo-1.0.dist-info/RECORD").decode())))
    contents = {n: z.read(n) for n in names}
  assert "demo/assets/robots/fetch/base.glb" not in names
  assert "demo/assets/environment_maps/default.hdr" not in names
  for kept in ("demo/__init__.py", "demo/assets/robots/panda/arm.glb", "demo/scenes/table.glb"):
    assert contents[kept] == FILES[kept]
  # RECORD lists every file once with its own hash and size, and itself last without either.
  assert sorted(r[0] for r in record) == sorted(names)
  assert record[-1] == ["demo-1.0.dist-info/RECORD", "", ""]
  for path, digest, size in record[:-1]:
    assert (digest, int(size)) == (_digest(contents[path]), len(contents[path])), path
  assert wheelhouse.check_record(repacked) == []

  result = pip_install(repacked, tmp_path / "site")
  assert result.returncode == 0, result.stderr
  site = tmp_path / "site"
  assert (site / "demo" / "assets" / "robots" / "panda" / "arm.glb").read_bytes() == \
      FILES["demo/assets/robots/panda/arm.glb"]
  assert not (site / "demo" / "assets" / "robots" / "fetch").exists()
  assert (site / "demo-1.0.dist-info" / wheelhouse.REPACK_NOTE).exists()


def test_an_lzma_repack_is_smaller_and_pip_installs_it(tmp_path):
  files = {**FILES, "demo/lib.bin": bytes(range(256)) * 4000}  # compressible, like a library
  original = make_wheel(tmp_path, files)
  summary = wheelhouse.repack_wheel(original, tmp_path / "out", drop=[], lzma=True)
  with zipfile.ZipFile(summary["path"]) as z:
    methods = {i.compress_type for i in z.infolist() if not i.filename.endswith("/RECORD")}
  assert zipfile.ZIP_LZMA in methods and summary["repacked_bytes"] < summary["original_bytes"]
  assert wheelhouse.check_record(summary["path"]) == []
  result = pip_install(summary["path"], tmp_path / "site")
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "site" / "demo" / "lib.bin").read_bytes() == files["demo/lib.bin"]


def test_the_lean_profiles_keep_what_the_tasks_read():
  lean = lambda path: (wheelhouse._matches(path, wheelhouse.MANISKILL_DROP)  # pylint: disable=protected-access
                       and not wheelhouse._matches(path, wheelhouse.MANISKILL_KEEP_LEAN))  # pylint: disable=protected-access
  panda = "mani_skill/assets/robots/panda/"
  for read in ("panda_v2.urdf", "panda_v3.srdf", "franka_description/meshes/visual/link0.glb",
               "realsense2_description/meshes/d415.stl"):
    assert not lean(panda + read), read
  for unread in ("realsense2_description/d415-pattern-sq.png",
                 "realsense2_description/meshes/d435.dae",
                 "sciurus17_description/meshes/visual/Body.stl"):
    assert lean(panda + unread), unread


def test_check_record_finds_a_wrong_hash(tmp_path):
  problems = wheelhouse.check_record(make_wheel(tmp_path, bad_record=True))
  assert len(problems) == 1 and problems[0].startswith("demo/__init__.py: RECORD says")


def test_repack_refuses_bad_globs(tmp_path):
  original = make_wheel(tmp_path)
  with pytest.raises(ConfigError, match="matches no file"):
    wheelhouse.repack_wheel(original, tmp_path / "a", drop=["demo/assets/nothing/*"])
  with pytest.raises(ConfigError, match="demo/__init__.py"):
    wheelhouse.repack_wheel(original, tmp_path / "b", drop=["demo/*"])


def test_split_and_join_check_the_sha(tmp_path):
  data = os.urandom(1000)
  big = tmp_path / "big.whl"
  big.write_bytes(data)
  digest = hashlib.sha256(data).hexdigest()
  house = tmp_path / "house"
  parts = wheelhouse.split_file(str(big), str(house), max_bytes=300)
  assert [os.path.basename(p) for p in parts] == [f"big.whl.part00{i}" for i in range(4)]
  assert all(os.path.getsize(p) < 300 for p in parts)
  assert b"".join(open(p, "rb").read() for p in parts) == data
  wheelhouse.write_sums(str(house / wheelhouse.SUMS),
                        {os.path.basename(p): wheelhouse.sha256_file(p) for p in parts})
  assert wheelhouse.check_folder(str(house), max_bytes=300) == []
  assert wheelhouse.check_folder(str(house), max_bytes=250) != []  # parts of 250 bytes

  joined = wheelhouse.join_parts(str(house), "big.whl", digest, str(tmp_path / "j"))
  assert open(joined, "rb").read() == data

  damaged = bytearray(open(parts[2], "rb").read())
  damaged[7] ^= 1
  open(parts[2], "wb").write(bytes(damaged))
  with pytest.raises(ConfigError, match=r"big.whl.part002 differs"):
    wheelhouse.join_parts(str(house), "big.whl", digest, str(tmp_path / "k"))
  assert not (tmp_path / "k" / "big.whl").exists()
  assert any("part002" in p for p in wheelhouse.check_folder(str(house)))

  os.remove(parts[1])
  with pytest.raises(ConfigError, match="big.whl.part001 is missing"):
    wheelhouse.join_parts(str(house), "big.whl", digest, str(tmp_path / "m"))
  assert "big.whl.part001: listed in SHA256SUMS, missing" in wheelhouse.check_folder(str(house))


def test_exclusions_stubs_and_flags(tmp_path):
  assert wheelhouse.parse_exclusions(["torch", "Jax==0.11.2", " "], None) == {
      "torch": None, "jax": "0.11.2"}
  freeze = tmp_path / "freeze.txt"
  freeze.write_text("numpy==2.5.2\n# a comment\nopt_einsum==3.4.0\n")
  assert wheelhouse.parse_exclusions([], str(freeze)) == {"numpy": "2.5.2", "opt-einsum": "3.4.0"}
  with pytest.raises(ConfigError, match="torch>=2"):
    wheelhouse.parse_exclusions(["torch>=2"], None)
  assert wheelhouse.stub_version("2.13.0") == "2.13.0+wheelhousestub"
  assert wheelhouse.stub_version("2.11.0+cu130") == "2.11.0+cu130.wheelhousestub"
  assert wheelhouse.torch_requirement("torch==2.13.0", "cpu") == "torch==2.13.0+cpu"
  assert wheelhouse.torch_requirement("torch==2.13.0", "cuda") == "torch===2.13.0"
  with pytest.raises(ConfigError, match="pin torch"):
    wheelhouse.torch_requirement("torch>=2", "cpu")
  tags = wheelhouse.platform_tags("2.28", "x86_64")
  assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags
  with pytest.raises(ConfigError, match="--glibc=2.5"):
    wheelhouse.platform_tags("2.5", "x86_64")
  with pytest.raises(ConfigError, match="--python=312"):
    wheelhouse.pip_target_args("312", "2.28", "x86_64")
  stub = wheelhouse.stub_wheel(str(tmp_path), "torch", "2.13.0+wheelhousestub")
  assert wheelhouse.check_record(stub) == []


def _house(tmp_path):
  """A wheelhouse as build leaves one, by hand: the demo wheel split in two, sums, requirements."""
  wheel = make_wheel(tmp_path)
  house = tmp_path / "house"
  wheelhouse.split_file(wheel, str(house), max_bytes=os.path.getsize(wheel) // 2 + 10)
  wheelhouse.write_sums(str(house / wheelhouse.JOINED),
                        {"demo-1.0-py3-none-any.whl": wheelhouse.sha256_file(wheel)})
  (house / "requirements.txt").write_text("demo==1.0\n")
  (house / "pins.txt").write_text("demo==1.0\n")
  wheelhouse.write_sums(str(house / wheelhouse.SUMS),
                        {f: wheelhouse.sha256_file(str(house / f)) for f in os.listdir(house)})
  return house


def _install(repo_root, house, target):
  return subprocess.run(["bash", os.path.join(repo_root, "scripts", "wheelhouse.sh"), "install",
                         str(house), "--python", sys.executable, "--", "--no-deps", "--quiet",
                         "--no-compile", "--target", str(target)], capture_output=True, text=True)


def test_script_install_joins_checks_and_installs_offline(tmp_path, repo_root):
  house = _house(tmp_path)
  assert len(list(house.glob("*.part*"))) == 2
  result = _install(repo_root, house, tmp_path / "site")
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "site" / "demo" / "__init__.py").read_bytes() == FILES["demo/__init__.py"]

  part = house / "demo-1.0-py3-none-any.whl.part001"
  part.write_bytes(part.read_bytes()[:-1] + b"x")
  result = _install(repo_root, house, tmp_path / "site2")
  assert result.returncode == 2
  assert "error: files in" in result.stderr and "part001: FAILED" in result.stderr
  assert not (tmp_path / "site2").exists()
