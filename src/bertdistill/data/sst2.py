"""GLUE SST-2: TSV reader/writer, features (``[CLS] sentence [SEP]`` padded to 128), accuracy."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class Sst2Error(ValueError):
    """A malformed SST-2 file; the message names the file, the line and the fix."""


def read_sst2_tsv(path: str | Path) -> tuple[list[str], list[int]]:
    """Sentences and 0/1 labels of a GLUE ``SST-2/{train,dev}.tsv`` (header row skipped;
    tab-separated without quoting, as the reference reads it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise Sst2Error(f"{path}: no such file (SST-2 TSV)") from None
    except UnicodeDecodeError:
        raise Sst2Error(f"{path}: not UTF-8 text") from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quotechar=None))
    if not rows:
        raise Sst2Error(f"{path}: empty; expected a header row 'sentence<TAB>label' and examples")
    sentences, labels = [], []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 2 or row[1].strip() not in ("0", "1"):
            raise Sst2Error(f"{path}:{n}: expected 'sentence<TAB>label' with label 0 or 1, got {row!r:.80}")
        sentences.append(row[0])
        labels.append(int(row[1]))
    return sentences, labels


def write_sst2_tsv(path: str | Path, sentences: Sequence[str], labels: Sequence[int]) -> None:
    """Write GLUE's SST-2 layout (header, ``sentence<TAB>label``); tabs/newlines in a sentence
    become spaces so the file reads back unchanged. Renamed into place when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        for s, y in zip(sentences, labels, strict=True):
            f.write(f"{' '.join(s.split())}\t{int(y)}\n")
    os.replace(tmp, path)


def build_features(sentences: Sequence[str], labels: Sequence[int], tokenizer, max_seq_length: int = 128) -> dict[str, np.ndarray]:
    """``[CLS] tokens [SEP]``, truncated to ``max_seq_length`` and zero-padded to it; segment 0."""
    tokenizer.enable_truncation(max_length=max_seq_length)
    enc = tokenizer.encode_batch(list(sentences))
    tokenizer.no_truncation()
    n = len(enc)
    ids = np.zeros((n, max_seq_length), dtype=np.int32)
    mask = np.zeros((n, max_seq_length), dtype=np.int8)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(mask),
            "labels": np.asarray(labels, dtype=np.int64)}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of argmax(logits) == label."""
    return float(100.0 * (np.asarray(logits).argmax(-1) == np.asarray(labels)).mean()) if len(labels) else 0.0
