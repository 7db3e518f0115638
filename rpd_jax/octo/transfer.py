"""Copy pretrained parameters into a freshly initialised tree, where paths and shapes match.

Fine-tuning Octo with a new action head, a new action dimension or an added/removed observation
tokenizer means: build the new model, initialise it, then take every parameter the pretrained
checkpoint has under the same path with the same shape (the official ``merge_params`` rule).
``transfer_params`` does that and says what it did, so a silent mismatch (say, a renamed
tokenizer that leaves a pretrained stem unused) shows up in the report instead of in the
results.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import jax.numpy as jnp
from flax import traverse_util

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TransferReport:
  """What ``transfer_params`` did, by parameter path (tuples of keys)."""

  copied: list[Path]  # taken from the pretrained tree
  kept_new: list[Path]  # in the new tree only: keep their fresh initialisation
  # Same path, different shape: kept fresh. Maps path -> (pretrained shape, new shape).
  skipped: dict[Path, tuple[tuple[int, ...], tuple[int, ...]]]
  unused: list[Path]  # in the pretrained tree only: dropped

  def summary(self, max_paths: int = 10) -> str:
    """A few lines for the log: counts, then the first ``max_paths`` paths not copied."""
    join = lambda p: "/".join(p)
    lines = [f"copied {len(self.copied)}, kept new {len(self.kept_new)}, "
             f"skipped (shape mismatch) {len(self.skipped)}, unused pretrained {len(self.unused)}"]
    lines += [f"  new: {join(p)}" for p in self.kept_new[:max_paths]]
    lines += [f"  skipped: {join(p)} pretrained {a} != new {b}"
              for p, (a, b) in list(self.skipped.items())[:max_paths]]
    lines += [f"  unused: {join(p)}" for p in self.unused[:max_paths]]
    return "\n".join(lines)


def _flatten(tree: Mapping[str, Any]) -> dict[Path, Any]:
  return traverse_util.flatten_dict(flax.core.unfreeze(tree))


def transfer_params(pretrained: Mapping[str, Any],
                    fresh: Mapping[str, Any]) -> tuple[dict[str, Any], TransferReport]:
  """Returns (``fresh`` with every leaf whose path and shape match taken from ``pretrained``,
  a report).

  Args:
    pretrained: nested dict of arrays, e.g. a loaded checkpoint's params.
    fresh: nested dict of arrays with the new model's structure, freshly initialised.

  The result has exactly ``fresh``'s structure, shapes and dtypes (copied leaves are cast to the
  fresh leaf's dtype, so a bf16 model stays bf16).
  """
  old, new = _flatten(pretrained), _flatten(fresh)
  merged, copied, kept_new, skipped = {}, [], [], {}
  for path, leaf in new.items():
    if path not in old:
      kept_new.append(path)
      merged[path] = leaf
    elif tuple(old[path].shape) != tuple(leaf.shape):
      skipped[path] = (tuple(old[path].shape), tuple(leaf.shape))
      merged[path] = leaf
    else:
      copied.append(path)
      merged[path] = jnp.asarray(old[path], dtype=leaf.dtype)
  unused = [path for path in old if path not in new]
  report = TransferReport(copied=copied, kept_new=kept_new, skipped=skipped, unused=unused)
  return traverse_util.unflatten_dict(merged), report
