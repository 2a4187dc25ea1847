"""Pre-training shards: sentence pairs as Google's ``create_pretraining_data`` builds them,
optional static masking, HDF5 in NVIDIA's legacy schema; readers for those shards and for LDDL
Parquet shards (what the reference actually trains on).

A shard is a pure function of (sentences file, vocab, shard index, number of shards, seed,
settings): documents ``i, i + n, i + 2n, ...`` go to shard ``i`` and its random generator is
seeded from (seed, i), so running shards as separate jobs changes speed, never content.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import read_vocab
from ..settings import ShardSettings
from ..tokenization import load_tokenizer
from .corpus import CorpusError, read_sentence_documents

# NVIDIA legacy HDF5 schema: dataset -> (dtype, per-example shape key)
HDF5_SCHEMA = {
    "input_ids": ("int32", "seq"),
    "input_mask": ("int8", "seq"),
    "segment_ids": ("int8", "seq"),
    "masked_lm_positions": ("int32", "pred"),
    "masked_lm_ids": ("int32", "pred"),
    "next_sentence_labels": ("int8", None),
}
LDDL_COLUMNS = ("A", "B", "is_random_next")


class ShardError(ValueError):
    """A shard that cannot be read; the message names the file and the fix."""


@dataclass
class Instance:
    tokens: list[int]
    segment_ids: list[int]
    is_random_next: bool
    masked_positions: list[int]
    masked_ids: list[int]


def vocab_sha256(vocab_file: str | Path) -> str:
    return hashlib.sha256(Path(vocab_file).read_bytes()).hexdigest()


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    """Trim the longer segment, randomly from the front or the back, until the pair fits."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def _mask(tokens: list[int], s: ShardSettings, rng: random.Random, special: set[int], mask_id: int, vocab_size: int):
    """Static masking: max(1, round(len·p)) positions (capped by max_predictions); 80% [MASK],
    10% unchanged, 10% a random vocabulary id. [CLS]/[SEP] are never masked."""
    candidates = [i for i, t in enumerate(tokens) if t not in special]
    rng.shuffle(candidates)
    n = min(s.max_predictions, max(1, int(round(len(tokens) * s.masked_lm_prob))))
    output = list(tokens)
    picked = sorted(candidates[:n])
    for i in candidates[:n]:  # draw in shuffled order, as the reference does
        if rng.random() < 0.8:
            output[i] = mask_id
        elif rng.random() >= 0.5:
            output[i] = rng.randint(0, vocab_size - 1)
    return output, picked, [tokens[i] for i in picked]


def create_instances(
    documents: Sequence[Sequence[list[int]]],
    doc_index: int,
    s: ShardSettings,
    rng: random.Random,
    ids: dict[str, int],
    vocab_size: int,
) -> list[Instance]:
    """Sentence-pair instances of one document (Google's create_instances_from_document)."""
    document = documents[doc_index]
    max_tokens = s.max_seq_length - 3
    target = max_tokens
    if rng.random() < s.short_seq_prob:
        target = rng.randint(2, max_tokens)
    special = {ids["[CLS]"], ids["[SEP]"]}
    instances: list[Instance] = []
    chunk: list[list[int]] = []
    length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            if chunk:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                a = [t for seg in chunk[:a_end] for t in seg]
                b: list[int] = []
                if len(chunk) == 1 or rng.random() < 0.5:
                    is_random = True
                    target_b = target - len(a)
                    for _ in range(10):
                        r = rng.randint(0, len(documents) - 1)
                        if r != doc_index:
                            break
                    other = documents[r]
                    for seg in other[rng.randint(0, len(other) - 1) :]:
                        b.extend(seg)
                        if len(b) >= target_b:
                            break
                    i -= len(chunk) - a_end  # put the unused segments back
                else:
                    is_random = False
                    b = [t for seg in chunk[a_end:] for t in seg]
                _truncate_pair(a, b, max_tokens, rng)
                if a and b:
                    tokens = [ids["[CLS]"], *a, ids["[SEP]"], *b, ids["[SEP]"]]
                    segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
                    if s.masking == "static":
                        tokens, pos, lab = _mask(tokens, s, rng, special, ids["[MASK]"], vocab_size)
                    else:
                        pos, lab = [], []
                    instances.append(Instance(tokens, segments, is_random, pos, lab))
            chunk, length = [], 0
        i += 1
    return instances


def make_shard(
    sentences_file: str | Path,
    vocab_file: str | Path,
    output: str | Path,
    shard_index: int,
    num_shards: int,
    seed: int,
    settings: ShardSettings,
) -> int:
    """Build shard ``shard_index`` of ``num_shards`` from its own text shard (``sentences_file``,
    written by the corpus stage) and write it as HDF5; return its size.

    Only this text shard is read, and random next sentences come from its documents (as in
    NVIDIA's pipeline, which draws them per input file; Google's draws from the whole corpus).
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} out of range for {num_shards} shards")
    mine = read_sentence_documents(sentences_file)
    if not mine:
        raise CorpusError(f"{sentences_file}: no sentences; rebuild the corpus from non-empty sources")
    tok = load_tokenizer(vocab_file, lowercase=settings.lowercase)
    vocab = read_vocab(vocab_file)
    ids = {t: i for i, t in reversed(list(enumerate(vocab)))}
    documents = []
    # Encode a few thousand documents at a time: the tokenizer's Encoding objects are far larger
    # than the id lists kept.
    for start in range(0, len(mine), 2000):
        group = mine[start : start + 2000]
        encoded = tok.encode_batch([sent for doc in group for sent in doc], add_special_tokens=False)
        k = 0
        for doc in group:
            sents = [e.ids for e in encoded[k : k + len(doc)] if e.ids]
            k += len(doc)
            if sents:
                documents.append(sents)
    del mine
    rng = random.Random(f"bertdistill-shard-{seed}-{shard_index}")
    instances: list[Instance] = []
    for _ in range(settings.dupe_factor):
        for d in range(len(documents)):
            instances.extend(create_instances(documents, d, settings, rng, ids, len(vocab)))
    rng.shuffle(instances)
    write_hdf5(
        instances,
        output,
        settings,
        attrs={
            "vocab_sha256": vocab_sha256(vocab_file),
            "shard_index": shard_index,
            "num_shards": num_shards,
            "seed": seed,
            "max_seq_length": settings.max_seq_length,
            "masking": settings.masking,
        },
    )
    return len(instances)


def write_hdf5(instances: Sequence[Instance], output: str | Path, s: ShardSettings, attrs: dict | None = None) -> None:
    """Write instances in NVIDIA's legacy schema (gzip), renamed into place when complete."""
    import h5py

    n, L, P = len(instances), s.max_seq_length, max(1, s.max_predictions)
    arrays = {
        k: np.zeros((n, L if shape == "seq" else P) if shape else (n,), dtype=dt)
        for k, (dt, shape) in HDF5_SCHEMA.items()
    }
    for r, inst in enumerate(instances):
        m = len(inst.tokens)
        arrays["input_ids"][r, :m] = inst.tokens
        arrays["input_mask"][r, :m] = 1
        arrays["segment_ids"][r, :m] = inst.segment_ids
        arrays["masked_lm_positions"][r, : len(inst.masked_positions)] = inst.masked_positions
        arrays["masked_lm_ids"][r, : len(inst.masked_ids)] = inst.masked_ids
        arrays["next_sentence_labels"][r] = int(inst.is_random_next)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            for k, a in arrays.items():
                f.create_dataset(k, data=a, compression="gzip", track_times=False)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------
# Readers


class PretrainingData:
    """Examples of HDF5 shards (ours or NVIDIA's) or LDDL Parquet shards, held in memory in
    compact dtypes; ``batch(indices)`` returns the tensors the trainer uses, padded only to the
    longest sequence of the batch rounded up to a multiple of 8.

    Batch keys: ``input_ids``, ``token_type_ids``, ``attention_mask``, ``labels`` (−1 where not
    masked), ``next_sentence_labels``.
    """

    def __init__(
        self,
        input_ids: np.ndarray,
        segment_ids: np.ndarray,
        input_mask: np.ndarray,
        labels: np.ndarray,
        nsp: np.ndarray,
    ) -> None:
        self.input_ids, self.segment_ids, self.input_mask = input_ids, segment_ids, input_mask
        self.labels, self.nsp = labels, nsp

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return batch_tensors(self.compact(np.asarray(indices)))

    def compact(self, idx: np.ndarray | slice) -> np.ndarray:
        """The rows ``idx`` cut to the longest sequence rounded up to 8 (``keep`` tokens), packed
        into one int32 array ``[rows, 4 * keep + 1]``: input ids, segment ids, attention mask,
        labels, next-sentence label. One array crosses from the background reader at a time."""
        mask = self.input_mask[idx]
        longest = int(mask.sum(1).max()) if len(mask) else 0
        keep = min(mask.shape[1], max(8, -(-longest // 8) * 8))
        out = np.empty((len(mask), 4 * keep + 1), np.int32)
        out[:, :keep] = self.input_ids[idx, :keep]
        out[:, keep : 2 * keep] = self.segment_ids[idx, :keep]
        out[:, 2 * keep : 3 * keep] = mask[:, :keep]
        out[:, 3 * keep : 4 * keep] = self.labels[idx, :keep]
        out[:, -1] = self.nsp[idx]
        return out

    def take(self, indices: np.ndarray) -> PretrainingData:
        """The examples at ``indices``, as compact arrays."""
        return PretrainingData(
            self.input_ids[indices],
            self.segment_ids[indices],
            self.input_mask[indices],
            self.labels[indices],
            self.nsp[indices],
        )

    @classmethod
    def concat(cls, parts: Sequence[PretrainingData]) -> PretrainingData:
        if not parts:
            raise ShardError("no shards given")
        if len(parts) == 1:
            return parts[0]
        width = max(p.input_ids.shape[1] for p in parts)

        def pad(a, fill=0):
            return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill) if a.shape[1] < width else a

        return cls(
            np.concatenate([pad(p.input_ids) for p in parts]),
            np.concatenate([pad(p.segment_ids) for p in parts]),
            np.concatenate([pad(p.input_mask) for p in parts]),
            np.concatenate([pad(p.labels, -1) for p in parts]),
            np.concatenate([p.nsp for p in parts]),
        )


def batch_tensors(packed: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    """The trainer's batch (int64 tensors) from a :meth:`PretrainingData.compact` array."""
    packed = torch.as_tensor(packed)
    keep = (packed.shape[1] - 1) // 4
    ids, seg, mask, labels = (packed[:, i * keep : (i + 1) * keep].long() for i in range(4))
    return {
        "input_ids": ids,
        "token_type_ids": seg,
        "attention_mask": mask,
        "labels": labels,
        "next_sentence_labels": packed[:, -1].long(),
    }


def open_hdf5_shard(path: Path, expected_vocab_sha256: str | None = None):
    """An open h5py file of a BERT pre-training shard: readable, with every dataset of NVIDIA's
    schema, made with the expected vocab (when the shard records one); else a one-line error."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ShardError(f"{path}: not a readable HDF5 file ({e}); rebuild the shard") from None
    missing = [k for k in HDF5_SCHEMA if k not in f]
    got = f.attrs.get("vocab_sha256")
    if missing:
        f.close()
        raise ShardError(
            f"{path}: missing dataset(s) {', '.join(missing)}; not a BERT pre-training shard "
            f"(expected {', '.join(HDF5_SCHEMA)})"
        )
    if expected_vocab_sha256 is not None and got is not None and got != expected_vocab_sha256:
        f.close()
        raise ShardError(
            f"{path}: made with another vocab.txt than the teacher's; rebuild the shards with the teacher's vocab"
        )
    return f


def read_hdf5_shard(path: str | Path, expected_vocab_sha256: str | None = None) -> PretrainingData:
    """Read one HDF5 shard. Masked positions are expanded to a −1-filled label row; as in
    NVIDIA's reader, the first 0 in ``masked_lm_positions`` ends the list."""
    path = Path(path)
    with open_hdf5_shard(path, expected_vocab_sha256) as f:
        return hdf5_arrays(f, path, slice(None))


def hdf5_arrays(f, path: Path, rows: slice) -> PretrainingData:
    """Rows ``rows`` of an open HDF5 shard as compact arrays (labels expanded from positions)."""
    ids, mask, seg, pos, mids, nsp = (
        _read_dataset(f, k, path, rows)
        for k in (
            "input_ids",
            "input_mask",
            "segment_ids",
            "masked_lm_positions",
            "masked_lm_ids",
            "next_sentence_labels",
        )
    )
    if not (len(ids) == len(mask) == len(seg) == len(pos) == len(mids) == len(nsp)):
        raise ShardError(f"{path}: datasets have different lengths; rebuild the shard")
    labels = np.full(ids.shape, -1, dtype=np.int32)
    # A row's predictions end at its first 0 position (position 0 is [CLS], never masked).
    valid = np.cumprod(pos != 0, axis=1).astype(bool)
    outside = valid & ((pos < 0) | (pos >= ids.shape[1]))
    if outside.any():  # an IndexError below, or for negatives a silent wrap-around to the row's end
        r, c = np.argwhere(outside)[0]
        raise ShardError(
            f"{path}: masked_lm_positions[{r + (rows.start or 0)}] holds {int(pos[r, c])}, outside rows of "
            f"{ids.shape[1]} tokens; the shard is inconsistent: rebuild it"
        )
    rows_idx = np.nonzero(valid)[0]
    labels[rows_idx, pos[valid]] = mids[valid]
    return PretrainingData(ids.astype(np.int32), seg.astype(np.int8), mask.astype(np.int8), labels, nsp.astype(np.int8))


def _read_dataset(f, name: str, path: Path, rows: slice = slice(None)) -> np.ndarray:
    """Rows of a dataset; a gzip chunk that fails to decompress (bytes damaged on disk) raises a bare
    OSError naming no file, made here into a one-line error."""
    try:
        return f[name][rows]
    except OSError as e:
        raise ShardError(
            f"{path}: dataset {name!r} cannot be read ({' '.join(str(e).split())}); "
            "the file is corrupt: delete it and rerun to rebuild it"
        ) from None


def _deserialize_positions(value) -> np.ndarray:
    """LDDL stores masked positions as a serialized numpy array (``np.save`` bytes)."""
    if isinstance(value, (bytes, bytearray)):
        return np.load(io.BytesIO(value), allow_pickle=False).astype(np.int64)
    return np.asarray(value, dtype=np.int64)


def read_lddl_parquet(paths: Sequence[str | Path], vocab_file: str | Path) -> PretrainingData:
    """Read LDDL Parquet shards (columns A, B, is_random_next[, masked_lm_positions,
    masked_lm_labels]): WordPiece tokens as text, mapped to ids with the vocab."""
    import pyarrow.parquet as pq

    vocab = read_vocab(vocab_file)
    ids = {t: i for i, t in reversed(list(enumerate(vocab)))}
    parts = []
    for path in paths:
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types
            raise ShardError(f"{path}: not a readable Parquet file ({e})") from None
        missing = [c for c in LDDL_COLUMNS if c not in table.column_names]
        if missing:
            raise ShardError(f"{path}: missing column(s) {', '.join(missing)}; not an LDDL BERT pre-training shard")
        rows = table.to_pylist()
        if rows:
            parts.append(lddl_rows(rows, ids, Path(path), vocab_file))
    if not parts:
        raise ShardError(f"{', '.join(map(str, paths))}: no rows")
    return PretrainingData.concat(parts)


def lddl_rows(rows: Sequence[dict], ids: dict[str, int], path: Path, vocab_file: str | Path) -> PretrainingData:
    """LDDL rows (dicts of one Parquet file or row group) as compact arrays."""
    unknown: set[str] = set()

    def to_ids(tokens: list[str]) -> list[int]:
        out = []
        for t in tokens:
            if t not in ids:
                unknown.add(t)
            out.append(ids.get(t, ids.get("[UNK]", 0)))
        return out

    longest = max(len(r["A"].split()) + len(r["B"].split()) + 3 for r in rows)
    n = len(rows)
    input_ids = np.zeros((n, longest), np.int32)
    seg = np.zeros((n, longest), np.int8)
    mask = np.zeros((n, longest), np.int8)
    labels = np.full((n, longest), -1, np.int32)
    nsp = np.zeros(n, np.int8)
    for r, row in enumerate(rows):
        a, b = row["A"].split(), row["B"].split()
        tokens = to_ids(["[CLS]", *a, "[SEP]", *b, "[SEP]"])
        m = len(tokens)
        input_ids[r, :m] = tokens
        seg[r, len(a) + 2 : m] = 1
        mask[r, :m] = 1
        nsp[r] = int(bool(row["is_random_next"]))
        if row.get("masked_lm_positions") is not None:
            pos = _deserialize_positions(row["masked_lm_positions"])
            labels[r, pos] = to_ids(row["masked_lm_labels"].split())
    if unknown:
        sample = ", ".join(sorted(unknown)[:5])
        raise ShardError(
            f"{path}: {len(unknown)} tokens not in {vocab_file} (e.g. {sample}); "
            "use the vocab the shards were made with"
        )
    return PretrainingData(input_ids, seg, mask, labels, nsp)


def load_shards(paths: Sequence[str | Path], vocab_file: str | Path | None = None) -> PretrainingData:
    """Read HDF5 (``.hdf5``/``.h5``) or LDDL Parquet (``.parquet``, or folders of them) shards."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.parquet")) + sorted(p.glob("*.hdf5")) if p.is_dir() else [p])
    for f in files:
        if not f.is_file():
            raise ShardError(f"{f}: no such shard")
    parquet = [f for f in files if f.suffix == ".parquet"]
    hdf5 = [f for f in files if f.suffix != ".parquet"]
    expected = vocab_sha256(vocab_file) if vocab_file is not None else None
    parts = [read_hdf5_shard(f, expected) for f in hdf5]
    if parquet:
        if vocab_file is None:
            raise ShardError(f"{parquet[0]}: LDDL shards hold tokens as text; a vocab.txt is needed to read them")
        parts.append(read_lddl_parquet(parquet, vocab_file))
    return PretrainingData.concat(parts)
