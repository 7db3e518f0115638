"""Where a Vulkan device comes from, per machine: lavapipe without NVIDIA; on NVIDIA machines
the ICD file written where only it is missing, and the container capability named where the
driver's graphics libraries are missing (file trees and a fake nvidia-smi stand in for them)."""

import json
import os
import pathlib
import subprocess

import pytest

from rpd_jax.envs import vulkan

REPO = pathlib.Path(__file__).resolve().parent.parent
ENV = {"PATH": "", "HOME": "/root"}  # no nvidia-smi, no VK_* variables


def tree(root: pathlib.Path, *files: str, icd: dict | None = None) -> str:
  """A file tree at ``root``: empty ``files``, and ``icd`` as the NVIDIA ICD file if given."""
  for f in files:
    (root / f).parent.mkdir(parents=True, exist_ok=True)
    (root / f).write_text("")
  if icd is not None:
    path = root / "usr/share/vulkan/icd.d/nvidia_icd.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(icd))
  return str(root)


LIBRARY = "usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0"
NVIDIA_ICD = {"file_format_version": "1.0.1", "ICD": {"library_path": "libGLX_nvidia.so.0"}}


def test_without_nvidia_the_fix_is_lavapipe(tmp_path):
  root = tree(tmp_path, "usr/share/vulkan/icd.d/lvp_icd.json")
  machine = vulkan.probe(root, ENV)
  assert not machine.nvidia and machine.nvidia_icd is None
  assert machine.icd_files == (f"{root}/usr/share/vulkan/icd.d/lvp_icd.json",)
  assert "setup_vulkan.sh" in vulkan.advice(machine)
  assert "mesa-vulkan-drivers" in vulkan.advice(machine)


def test_nvidia_library_without_its_icd_file_gets_the_file_written(tmp_path):
  root = tree(tmp_path, "proc/driver/nvidia/version", LIBRARY)
  machine = vulkan.probe(root, ENV)
  assert machine.nvidia and machine.nvidia_library == f"{root}/{LIBRARY}"
  assert machine.nvidia_icd is None
  text = vulkan.advice(machine)
  assert "no Vulkan ICD file names it" in text and "setup_vulkan.sh" in text
  assert '"library_path": "libGLX_nvidia.so.0"' in text  # the file to write, in full
  written = vulkan.write_nvidia_icd(str(tmp_path / "usr/share/vulkan/icd.d"), machine)
  assert json.load(open(written))["ICD"]["library_path"] == "libGLX_nvidia.so.0"
  assert vulkan.probe(root, ENV).nvidia_icd == written  # the loader's search finds it now


def test_nvidia_without_its_graphics_libraries_names_the_container_capability(tmp_path):
  for icd in (None, NVIDIA_ICD):  # a container without them, with or without the ICD file
    root = tree(tmp_path / str(icd is None), "dev/nvidiactl", icd=icd)
    machine = vulkan.probe(root, ENV)
    assert machine.nvidia and machine.nvidia_library is None
    text = vulkan.advice(machine)
    assert "NVIDIA_DRIVER_CAPABILITIES=all" in text and "setup_vulkan.sh" not in text
    with pytest.raises(vulkan.VulkanUnavailableError, match="NVIDIA_DRIVER_CAPABILITIES"):
      vulkan.write_nvidia_icd(str(tmp_path / "icd"), machine)


def test_the_loader_reads_only_vk_icd_filenames_and_finds_libraries_on_ld_library_path(
    tmp_path):
  root = tree(tmp_path, "dev/nvidia0", "opt/nv/lib/libGLX_nvidia.so.0", icd=NVIDIA_ICD)
  (tmp_path / "my_icd.json").write_text(json.dumps({"ICD": {"library_path": "libvulkan_lvp.so"}}))
  machine = vulkan.probe(root, {**ENV, "VK_ICD_FILENAMES": "/my_icd.json",
                                "LD_LIBRARY_PATH": "/opt/nv/lib"})
  assert machine.icd_files == (f"{root}/my_icd.json",) and machine.nvidia_icd is None
  assert machine.nvidia_library == f"{root}/opt/nv/lib/libGLX_nvidia.so.0"


def test_ldd_output_gives_the_missing_libraries_and_their_packages(tmp_path):
  ldd = ("\tlinux-vdso.so.1 (0x00007ffd)\n\tlibGLdispatch.so.0 => not found\n"
         "\tlibdl.so.2 => /lib/x86_64-linux-gnu/libdl.so.2 (0x00007f)\n"
         "\tlibXext.so.6 => not found\n")
  assert vulkan.parse_ldd_missing(ldd) == ("libGLdispatch.so.0", "libXext.so.6")
  machine = vulkan.Machine(True, (), None, "/usr/lib/libGLX_nvidia.so.0",
                           ("libGLdispatch.so.0", "libXext.so.6"))
  assert "apt-get install libglvnd0 libxext6" in vulkan.advice(machine)
  with pytest.raises(vulkan.VulkanUnavailableError, match="libGLdispatch.so.0"):
    vulkan.write_nvidia_icd(str(tmp_path), machine)


def test_sapiens_device_summary_tells_cuda_devices_apart():
  summary = ("GPU: NVIDIA H100 80GB HBM3\n  Supported: 1\n  Present:   0\n  cudaId:    0\n"
             "  rayTrace:  1\n  cudaMode   1\n"
             "GPU: llvmpipe (LLVM 15.0.6, 256 bits)\n  Supported: 1\n  Present:   0\n"
             "  cudaId:    -1\n  rayTrace:  1\n  cudaMode   -1\n")
  assert vulkan._supported_devices(summary) == ["NVIDIA H100 80GB HBM3",
                                                "llvmpipe (LLVM 15.0.6, 256 bits)"]
  assert vulkan.cuda_devices(summary) == ["NVIDIA H100 80GB HBM3"]
  assert vulkan.cuda_devices(summary.split("GPU: llvmpipe")[0].replace("0\n  rayTrace", "-1\n"
                                                                          "  rayTrace")) == []


def fake_nvidia(tmp_path, library: bool) -> dict[str, str]:
  """An environment with an nvidia-smi that sees a GPU, and NVIDIA's Vulkan library where
  ``library`` (an empty file: the dynamic linker is not asked to load it)."""
  bin_dir, lib_dir = tmp_path / "bin", tmp_path / "lib"
  bin_dir.mkdir()
  lib_dir.mkdir()
  smi = bin_dir / "nvidia-smi"
  smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
  smi.chmod(0o755)
  if library:
    (lib_dir / "libGLX_nvidia.so.0").write_text("")
  return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
          "LD_LIBRARY_PATH": str(lib_dir), "RPD_JAX_ICD_DIR": str(tmp_path / "icd.d")}


def run_setup_vulkan(env):
  return subprocess.run(["bash", str(REPO / "scripts" / "setup_vulkan.sh")], env=env,
                        capture_output=True, text=True, timeout=120)


def test_setup_vulkan_in_a_container_without_graphics_says_what_to_add(tmp_path):
  proc = run_setup_vulkan(fake_nvidia(tmp_path, library=False))
  assert proc.returncode == 1, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: This machine has an NVIDIA driver but not its Vulkan library")
  assert "NVIDIA_DRIVER_CAPABILITIES=all" in last
  assert not (tmp_path / "icd.d").exists()


def test_setup_vulkan_writes_the_missing_nvidia_icd_file(tmp_path):
  proc = run_setup_vulkan(fake_nvidia(tmp_path, library=True))
  written = tmp_path / "icd.d" / "nvidia_icd.json"
  assert f"writing {written}" in proc.stderr
  assert json.loads(written.read_text())["ICD"]["library_path"] == "libGLX_nvidia.so.0"
  # The fake library is no driver: SAPIEN still finds no NVIDIA device, and says so.
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: SAPIEN found no Vulkan device")
