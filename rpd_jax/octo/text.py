"""Octo's language input: the t5-base SentencePiece tokenizer.

Octo conditions on the T5-base encoder's last hidden state of the instruction, tokenised the way
its training did (Hugging Face ``T5TokenizerFast(padding="max_length", truncation=True,
max_length=16)``): SentencePiece pieces, truncated to 15, then EOS (id 1), then pad (id 0) up to
16. Only the tokenizer's ``spiece.model`` is needed here; the encoder's weights are inside every
Octo checkpoint. An instruction is fixed per task, so its embedding is computed once
(``OctoModel.embed_instructions``) instead of running T5 on every teacher call.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from rpd_jax.octo import hub

MAX_LENGTH = 16  # Octo's text_processor: max_length 16, padded to 16
SPIECE = "spiece.model"
# Hugging Face hub ids of the tokenizer (t5-base moved to google-t5/t5-base; both names cache).
HUB_IDS = ("google-t5/t5-base", "t5-base")
# Where third_party/README.md tells users to download it, relative to the repository root.
DOWNLOAD_DIR = hub.DOWNLOADS / "t5-base"


class T5Tokenizer:
  """T5 SentencePiece tokenizer with Octo's fixed-length padding.

  ``tokenizer(texts)`` gives ``{"input_ids": int32 [B, 16], "attention_mask": int32 [B, 16]}``,
  the same ids as HF's T5TokenizerFast with ``padding="max_length", truncation=True,
  max_length=16`` for ordinary text.
  """

  def __init__(self, model_proto: bytes, max_length: int = MAX_LENGTH):
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.max_length = max_length
    self.eos_id = self._sp.eos_id()
    self.pad_id = self._sp.pad_id()
    if self.eos_id < 0 or self.pad_id < 0:
      raise ValueError(
          f"the SentencePiece model has eos_id={self.eos_id}, pad_id={self.pad_id}; T5's "
          "spiece.model defines both (pad 0, eos 1): pass the t5-base tokenizer file")

  @classmethod
  def from_file(cls, path: str | os.PathLike, **kwargs) -> T5Tokenizer:
    """From a ``spiece.model`` file."""
    return cls(pathlib.Path(path).read_bytes(), **kwargs)

  @classmethod
  def from_folder(cls, path: str | os.PathLike, **kwargs) -> T5Tokenizer:
    """From a folder holding ``spiece.model`` (a download or a HF snapshot of t5-base)."""
    file = pathlib.Path(path) / SPIECE
    if not file.is_file():
      raise FileNotFoundError(f"no {SPIECE} in {path}; see third_party/README.md for t5-base")
    return cls.from_file(file, **kwargs)

  @classmethod
  def find(cls, folder: str | os.PathLike | None = None, **kwargs) -> T5Tokenizer:
    """From ``folder`` if given, else the first of ``find_t5_folders()``."""
    if folder is not None:
      return cls.from_folder(folder, **kwargs)
    found = find_t5_folders()
    if not found:
      raise FileNotFoundError(
          f"found no t5-base {SPIECE} in {DOWNLOAD_DIR} or in the Hugging Face cache; download "
          "it as third_party/README.md says, or pass its folder explicitly")
    return cls.from_folder(found[0], **kwargs)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def __call__(self, texts: str | Sequence[str]) -> dict[str, np.ndarray]:
    """Tokenises B texts to ``input_ids``/``attention_mask``, int32 [B, max_length]."""
    if isinstance(texts, str):
      texts = [texts]
    ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
    mask = np.zeros((len(texts), self.max_length), np.int32)
    for row, pieces in enumerate(self._sp.encode(list(texts))):
      # Truncation keeps room for EOS, as HF's tokenizer does.
      pieces = pieces[:self.max_length - 1] + [self.eos_id]
      ids[row, :len(pieces)] = pieces
      mask[row, :len(pieces)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def find_t5_folders(hub_ids: Iterable[str] = HUB_IDS) -> list[pathlib.Path]:
  """Folders with a t5-base ``spiece.model``: the download folder, then HF cache snapshots."""
  found = [DOWNLOAD_DIR] if (DOWNLOAD_DIR / SPIECE).is_file() else []
  for hub_id in hub_ids:
    found += [p for p in hub.hub_snapshots(hub_id) if (p / SPIECE).is_file()]
  return found
