"""Where Octo files are found: checkpoint names, third_party/downloads, the Hugging Face cache.

``resolve_checkpoint(name)`` turns what a user writes (a folder, a shipped teacher's name, a
released checkpoint's name or hub id) into a checkpoint folder. Nothing is downloaded here:
third_party/README.md says how to fetch released checkpoints and the t5-base tokenizer.
"""

from __future__ import annotations

import os
import pathlib
import re

# Released checkpoints by name.
RELEASED = {
    "octo-small": "rail-berkeley/octo-small",
    "octo-base": "rail-berkeley/octo-base",
    "octo-small-1.5": "rail-berkeley/octo-small-1.5",
    "octo-base-1.5": "rail-berkeley/octo-base-1.5",
    "octo-base-1.5-finetuned-maniskill": "Juelg/octo-base-1.5-finetuned-maniskill",
}
# Where third_party/README.md tells users to download files, relative to the repository root.
DOWNLOADS = pathlib.Path(__file__).resolve().parents[2] / "third_party" / "downloads"
# Teachers made by this project's pipeline, shipped in the package (rpd_jax/teachers/checkpoints,
# whose README says how each was made and how it scores).
SHIPPED = pathlib.Path(__file__).resolve().parents[1] / "teachers" / "checkpoints"


def hf_cache_dir() -> pathlib.Path:
  """The Hugging Face hub cache, honouring HF_HUB_CACHE / HUGGINGFACE_HUB_CACHE / HF_HOME."""
  for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    if os.environ.get(var):
      return pathlib.Path(os.environ[var])
  home = os.environ.get("HF_HOME") or pathlib.Path.home() / ".cache" / "huggingface"
  return pathlib.Path(home) / "hub"


def hub_snapshots(hub_id: str) -> list[pathlib.Path]:
  """Cached snapshots of ``hub_id`` ("org/name"), the preferred one last: the one ``refs/main``
  names, else the most recently modified."""
  repo = hf_cache_dir() / ("models--" + hub_id.replace("/", "--"))
  snapshots = repo / "snapshots"
  found = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
  main = repo / "refs" / "main"
  if main.is_file() and (snapshots / main.read_text().strip()) in found:
    found.remove(snapshots / main.read_text().strip())
    found.append(snapshots / main.read_text().strip())
  return found


def shipped() -> list[str]:
  return sorted(p.name for p in SHIPPED.iterdir() if p.is_dir()) if SHIPPED.is_dir() else []


def resolve_checkpoint(checkpoint: str | os.PathLike) -> str:
  """A checkpoint folder for ``checkpoint``: a folder; a shipped teacher's name
  (``octo-tiny-pushcube``); a released name (``octo-small-1.5``) or any hub id ("org/name",
  optionally "hf://"-prefixed), found in ``third_party/downloads/<name>`` or the hub cache."""
  checkpoint = str(checkpoint)
  if os.path.isdir(checkpoint):
    return checkpoint
  if (SHIPPED / checkpoint).is_dir():
    return str(SHIPPED / checkpoint)
  name = checkpoint.removeprefix("hf://").rstrip("/")
  hub_id = RELEASED.get(name, name)
  if not re.fullmatch(r"[\w.-]+/[\w.-]+", hub_id):
    raise FileNotFoundError(
        f"checkpoint={checkpoint!r} is neither a folder, nor a shipped teacher "
        f"({', '.join(shipped()) or 'none'}), nor a released checkpoint "
        f"({', '.join(RELEASED)}), nor a hub id 'org/name'")
  local = DOWNLOADS / hub_id.split("/")[1]
  if local.is_dir():
    return str(local)
  snapshots = hub_snapshots(hub_id)
  if not snapshots:
    raise FileNotFoundError(
        f"checkpoint {hub_id} is not downloaded: found neither {local} nor a snapshot in the "
        f"Hugging Face cache {hf_cache_dir()}; download it as third_party/README.md says "
        f"(`huggingface-cli download {hub_id}`), or pass its folder")
  return str(snapshots[-1])
