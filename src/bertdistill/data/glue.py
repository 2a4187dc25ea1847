"""GLUE-style classification data: TSV reader/writer, features, accuracy.

One reader serves single-sentence tasks (SST-2: ``sentence<TAB>label``) and sentence-pair tasks
(MRPC, RTE, QNLI, QQP, ...): columns are found by their header names, so a task is described by
its text columns, its label column and its label strings (see :data:`bertdistill.tasks.TASKS`).
Files are tab-separated without quoting, as GLUE ships them and the reference reads them.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class GlueError(ValueError):
    """A malformed GLUE TSV file; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class GlueFormat:
    """Where a task's texts and label live in its TSV files.

    Attributes:
        text_columns: header names of the text columns: one (single sentence) or two (pair)
        label_column: header name of the label column
        labels: the label strings, in class-index order
    """

    text_columns: tuple[str, ...]
    label_column: str = "label"
    labels: tuple[str, ...] = ("0", "1")


@dataclass
class GlueData:
    """Examples of one split: ``texts[i]`` is a tuple with one string per text column."""

    texts: list[tuple[str, ...]]
    labels: list[int]


def read_glue_tsv(path: str | Path, fmt: GlueFormat) -> GlueData:
    """Texts and label indices of a GLUE ``train.tsv``/``dev.tsv`` (header row required).

    Blank lines are skipped and a UTF-8 byte order mark is ignored. A file without a header, a
    row with more or fewer columns than it needs, or a label outside ``fmt.labels`` is a one-line
    :class:`GlueError` naming the file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise GlueError(f"{path}: no such file (GLUE TSV)") from None
    try:
        text = raw.decode("utf-8-sig")  # -sig: an editor's byte order mark would rename the first column
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise GlueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quotechar=None))
    wanted = (*fmt.text_columns, fmt.label_column)
    layout = "<TAB>".join(wanted)
    if not rows:
        raise GlueError(f"{path}: empty; expected a header row with {', '.join(wanted)} and examples")
    header = rows[0]
    missing = [c for c in wanted if c not in header]
    if len(missing) == len(wanted) and any(cell.strip() in fmt.labels for cell in header):
        # No column name at all but a label value: the first line is an example, not a header.
        raise GlueError(
            f"{path}:1: no header row (the first line {header!r:.60} looks like an example); "
            f"the first line must be `{layout}`"
        )
    if missing:
        raise GlueError(
            f"{path}: the header {header!r:.80} lacks {', '.join(missing)}; expected tab-separated columns "
            f"{' | '.join(wanted)}"
        )
    where = [header.index(c) for c in wanted]
    label_index = {s: i for i, s in enumerate(fmt.labels)}
    data = GlueData([], [])
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) > len(header):
            # GLUE rows have exactly the header's columns; an extra one is a tab inside a text,
            # which would otherwise shift or cut the text silently.
            raise GlueError(
                f"{path}:{n}: {len(row)} tab-separated columns but the header has {len(header)}; "
                "replace tabs inside texts with spaces"
            )
        if len(row) <= max(where) or row[where[-1]].strip() not in label_index:
            raise GlueError(
                f"{path}:{n}: expected {' <TAB> '.join(wanted)} with {fmt.label_column} in "
                f"{list(fmt.labels)}, got {row!r:.80}"
            )
        data.texts.append(tuple(row[i] for i in where[:-1]))
        data.labels.append(label_index[row[where[-1]].strip()])
    return data


def write_glue_tsv(path: str | Path, fmt: GlueFormat, texts: Sequence[Sequence[str]], labels: Sequence[int]) -> None:
    """Write a header (text columns, then the label column) and one row per example; tabs and
    newlines inside a text become spaces so the file reads back unchanged. Renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\t".join((*fmt.text_columns, fmt.label_column)) + "\n")
        for row, y in zip(texts, labels, strict=True):
            f.write("\t".join(" ".join(t.split()) for t in row) + f"\t{fmt.labels[int(y)]}\n")
    os.replace(tmp, path)


SST2 = GlueFormat(text_columns=("sentence",))


def read_sst2_tsv(path: str | Path) -> tuple[list[str], list[int]]:
    """Sentences and 0/1 labels of a GLUE ``SST-2/{train,dev}.tsv``."""
    data = read_glue_tsv(path, SST2)
    return [t[0] for t in data.texts], data.labels


def write_sst2_tsv(path: str | Path, sentences: Sequence[str], labels: Sequence[int]) -> None:
    """Write GLUE's SST-2 layout (``sentence<TAB>label``)."""
    write_glue_tsv(path, SST2, [(s,) for s in sentences], labels)


def build_features(
    texts: Sequence[tuple[str, ...]], labels: Sequence[int], tokenizer, max_seq_length: int
) -> dict[str, np.ndarray]:
    """``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` (segment ids 0 then 1), truncated longest-first
    to ``max_seq_length`` and zero-padded to it."""
    tokenizer.enable_truncation(max_length=max_seq_length)
    enc = tokenizer.encode_batch([t[0] if len(t) == 1 else tuple(t) for t in texts])
    tokenizer.no_truncation()
    n = len(enc)
    ids = np.zeros((n, max_seq_length), dtype=np.int32)
    mask = np.zeros((n, max_seq_length), dtype=np.int8)
    types = np.zeros((n, max_seq_length), dtype=np.int8)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
        types[i, : len(e.ids)] = e.type_ids
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": types,
        "labels": np.asarray(labels, dtype=np.int64),
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of argmax(logits) == label."""
    return float(100.0 * (np.asarray(logits).argmax(-1) == np.asarray(labels)).mean()) if len(labels) else 0.0
