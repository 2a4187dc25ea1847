"""A streaming reader of pre-training shards for general distillation, in bounded memory.

English Wikipedia makes ~17.6 million phase-1 sequences (~13 GB as compact arrays): too much to
hold on every rank. :class:`ShardStream` reads instead:

* **Files per rank.** The shard files are dealt to ranks once, balanced by row count, so ranks
  read disjoint files. Each rank passes over its own files epoch after epoch, in an order
  reshuffled every epoch (``seed``, epoch, rank).
* **A bounded shuffle across files.** A rank's epoch is the concatenation of its files in that
  order, cut into windows of ``shuffle_buffer`` sequences; each window is read (a slice of one or
  two files, HDF5 row ranges or Parquet row groups) and permuted. Shards are already shuffled
  inside when built; the window mixes neighbouring files. Memory: one window, plus the next one
  being prefetched, whatever the corpus size.
* **Prefetch.** A ``torch.utils.data`` worker process reads, permutes and pads batches ahead of
  the trainer (pinned memory on GPU).
* **Exact resume.** The stream is a pure function of (files, seed, rank, world, window size):
  after ``step`` optimizer steps a rank has consumed ``step × its share of the global batch``
  sequences, which fixes epoch, window and offset. A snapshot records that position (epoch,
  file, row) and the resumed stream starts there, bit for bit.

Batches never stop at an epoch's end (a step may take the end of one epoch and the start of the
next), so every step has the full global batch. With files of unequal size a rank that holds
fewer sequences starts its next pass a little earlier; within its own pass every sequence of its
files comes exactly once.
"""

from __future__ import annotations

import atexit
import functools
import signal
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import read_vocab
from .pretraining import (
    HDF5_SCHEMA,
    LDDL_COLUMNS,
    PretrainingData,
    ShardError,
    batch_tensors,
    hdf5_arrays,
    lddl_rows,
    open_hdf5_shard,
    vocab_sha256,
)

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ShardFile:
    """One shard file, or rows ``offset .. offset + rows`` of it when there are fewer files than
    ranks: its path, format and number of sequences (``groups``: the file's Parquet row-group sizes)."""

    path: Path
    rows: int
    parquet: bool = False
    groups: tuple[int, ...] = ()
    offset: int = 0

    def split(self, parts: int) -> list[ShardFile]:
        """This file as ``parts`` row ranges of near-equal size."""
        sizes = [len(x) for x in np.array_split(np.arange(self.rows), parts)]
        starts = np.cumsum([0, *sizes[:-1]])
        return [
            ShardFile(self.path, n, self.parquet, self.groups, self.offset + int(a))
            for a, n in zip(starts, sizes, strict=True)
        ]


def list_shard_files(paths: Sequence[str | Path]) -> list[Path]:
    """HDF5 (``.hdf5``/``.h5``) and LDDL Parquet files given directly or inside folders."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.parquet")) + sorted(p.glob("*.hdf5")) if p.is_dir() else [p])
    if not files:
        raise ShardError(f"{', '.join(map(str, paths)) or '(none)'}: no shard files; build or point at the shards")
    for f in files:
        if not f.is_file():
            raise ShardError(f"{f}: no such shard")
    return files


def inspect_shard(path: Path, expected_vocab_sha256: str | None) -> ShardFile:
    """Row count from metadata only (nothing decompressed); HDF5 shards made with another vocab
    and files of neither format are refused here, before training starts."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types
            raise ShardError(f"{path}: not a readable Parquet file ({e})") from None
        names = set(meta.schema.names)
        missing = [c for c in LDDL_COLUMNS if c not in names]
        if missing:
            raise ShardError(f"{path}: missing column(s) {', '.join(missing)}; not an LDDL BERT pre-training shard")
        groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        return ShardFile(path, sum(groups), parquet=True, groups=groups)
    with open_hdf5_shard(path, expected_vocab_sha256) as f:
        lengths = {len(f[k]) for k in HDF5_SCHEMA}
    if len(lengths) != 1:
        raise ShardError(f"{path}: datasets have different lengths; rebuild the shard")
    return ShardFile(path, lengths.pop())


def assign_files(rows: Sequence[int], world: int) -> list[list[int]]:
    """Deal files to ranks, largest first to the rank with the fewest rows (ties: lowest rank), so
    ranks read disjoint files with near-equal row counts. Needs at least one file per rank."""
    if len(rows) < world:
        raise ShardError(f"{len(rows)} shard files for {world} ranks: every rank needs its own files")
    load = [0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(rows)), key=lambda i: (-rows[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        out[r].append(i)
        load[r] += rows[i]
    return [sorted(x) for x in out]


def step_shares(global_batch: int, world: int, accum: int) -> list[list[int]]:
    """Per rank, its micro-batch sizes in one optimizer step (the split the in-memory path uses)."""
    per_rank = [len(x) for x in np.array_split(np.arange(global_batch), world)]
    return [[len(m) for m in np.array_split(np.arange(n), accum) if len(m)] for n in per_rank]


class ShardStream:
    """Pre-training shards read as a stream (see the module docstring). ``len()`` is the number of
    sequences in all files; :meth:`steps` yields, per optimizer step, this rank's micro-batches.

    Args:
        paths: HDF5 / Parquet shard files or folders of them
        vocab_file: the teacher's vocab.txt (HDF5 shards are checked against it; Parquet holds text)
        seed: the data-order seed
        shuffle_buffer: sequences per shuffle window (memory: about two windows per rank)
        workers: background reader processes (0: read in the training process)
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        vocab_file: str | Path | None,
        seed: int,
        shuffle_buffer: int = 16384,
        workers: int = 1,
    ) -> None:
        if shuffle_buffer < 1:
            raise ShardError(f"shuffle_buffer {shuffle_buffer}: must be at least 1")
        self.vocab_file = Path(vocab_file) if vocab_file is not None else None
        expected = vocab_sha256(vocab_file) if vocab_file is not None else None
        self.files = [inspect_shard(p, expected) for p in list_shard_files(paths)]
        if any(f.parquet for f in self.files) and vocab_file is None:
            first = next(f.path for f in self.files if f.parquet)
            raise ShardError(f"{first}: LDDL shards hold tokens as text; a vocab.txt is needed to read them")
        empty = [f.path for f in self.files if f.rows == 0]
        if empty:
            raise ShardError(f"{empty[0]}: no sequences in this shard; rebuild it or leave it out")
        self.seed, self.shuffle_buffer, self.workers = seed, shuffle_buffer, workers
        self._ids: dict[str, int] | None = None
        self._cache: tuple[tuple[Path, int], PretrainingData] | None = None

    def __len__(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def max_seq_length(self) -> int:
        """Width of the HDF5 shards' rows (Parquet rows are as long as their text)."""
        import h5py

        widths = [0]
        for f in self.files:
            if not f.parquet:
                with h5py.File(f.path, "r") as h:
                    widths.append(h["input_ids"].shape[1])
        return max(widths)

    def describe(self) -> dict[str, Any]:
        """What fixes the data order (for the snapshot fingerprint and distill.json)."""
        return {"reader": "stream", "seed": self.seed, "shuffle_buffer": self.shuffle_buffer, "files": len(self.files)}

    # -- the order ------------------------------------------------------------------------------
    def units(self, world: int) -> list[ShardFile]:
        """The files, each cut into row ranges when there are fewer files than ranks."""
        if len(self.files) >= world:
            return self.files
        parts = -(-world // len(self.files))
        return [u for f in self.files for u in f.split(parts)]

    def rank_files(self, rank: int, world: int) -> list[ShardFile]:
        """The files (or row ranges of files) this rank reads, fixed for the run."""
        units = self.units(world)
        return [units[i] for i in assign_files([u.rows for u in units], world)[rank]]

    def epoch_order(self, rank: int, world: int, epoch: int) -> list[ShardFile]:
        """This rank's files in the order of one epoch."""
        mine = self.rank_files(rank, world)
        g = np.random.default_rng([self.seed, epoch, rank, world, 1])
        return [mine[i] for i in g.permutation(len(mine))]

    def position(self, consumed: int, rank: int, world: int) -> dict[str, Any]:
        """Where a rank stands after ``consumed`` sequences: epoch, window, the file and row the
        next window starts in, offset in the window (recorded in snapshots)."""
        n = sum(f.rows for f in self.rank_files(rank, world))
        epoch, offset = divmod(consumed, n)
        window, in_window = divmod(offset, self.shuffle_buffer)
        start, row = window * self.shuffle_buffer, 0
        for f in self.epoch_order(rank, world, epoch):
            if start < row + f.rows:
                return {
                    "consumed": consumed,
                    "epoch": epoch,
                    "window": window,
                    "offset_in_window": in_window,
                    "file": str(f.path),
                    "row": f.offset + start - row,
                }
            row += f.rows
        raise AssertionError("position past the end of the epoch")

    def _window(self, rank: int, world: int, epoch: int, window: int) -> PretrainingData:
        """Window ``window`` of this rank's epoch ``epoch``, read and permuted."""
        order = self.epoch_order(rank, world, epoch)
        n = sum(f.rows for f in order)
        lo, hi = window * self.shuffle_buffer, min((window + 1) * self.shuffle_buffer, n)
        parts, row = [], 0
        for f in order:
            a, b = max(lo, row), min(hi, row + f.rows)
            if a < b:
                parts.append(self._read(f, a - row, b - row))
            row += f.rows
        data = PretrainingData.concat(parts)
        perm = np.random.default_rng([self.seed, epoch, rank, world, 2, window]).permutation(len(data))
        return data.take(perm)

    # -- reading ----------------------------------------------------------------------------------
    def _read(self, f: ShardFile, a: int, b: int) -> PretrainingData:
        """Rows ``a:b`` of one file (or row range): an HDF5 slice, or the Parquet row groups that hold them."""
        a, b = a + f.offset, b + f.offset
        if not f.parquet:
            import h5py

            try:
                with h5py.File(f.path, "r") as h:
                    return hdf5_arrays(h, f.path, slice(a, b))
            except ShardError:
                raise
            except Exception as e:  # noqa: BLE001 - h5py raises OSError, RuntimeError, KeyError, ...
                raise ShardError(
                    f"{f.path}: rows {a}-{b} cannot be read ({' '.join(str(e).split())}); "
                    "the file is corrupt: delete it and rerun to rebuild it"
                ) from None
        parts, start = [], 0
        for g, size in enumerate(f.groups):
            if start < b and a < start + size:
                data = self._row_group(f, g)
                parts.append(data.take(np.arange(max(a, start) - start, min(b, start + size) - start)))
            start += size
        return PretrainingData.concat(parts)

    def _row_group(self, f: ShardFile, g: int) -> PretrainingData:
        """One Parquet row group as arrays; the last one is kept (windows cut row groups in two)."""
        if self._cache is not None and self._cache[0] == (f.path, g):
            return self._cache[1]
        import pyarrow.parquet as pq

        if self._ids is None:
            self._ids = {t: i for i, t in reversed(list(enumerate(read_vocab(self.vocab_file))))}
        try:
            rows = pq.ParquetFile(f.path).read_row_group(g).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types
            raise ShardError(f"{f.path}: row group {g} cannot be read ({e}); the file is corrupt") from None
        data = lddl_rows(rows, self._ids, f.path, self.vocab_file)
        self._cache = ((f.path, g), data)
        return data

    def sequences(self, rank: int, world: int, start: int = 0) -> Iterator[PretrainingData]:
        """This rank's stream from its ``start``-th sequence on, as consecutive pieces (endless)."""
        n = sum(f.rows for f in self.rank_files(rank, world))
        consumed = start
        while True:
            epoch, offset = divmod(consumed, n)
            window, skip = divmod(offset, self.shuffle_buffer)
            data = self._window(rank, world, epoch, window)
            yield data.take(np.arange(skip, len(data))) if skip else data
            consumed += len(data) - skip

    def compact_batches(
        self, rank: int, world: int, start_step: int, sizes: Sequence[int]
    ) -> Iterator[list[np.ndarray]]:
        """Per optimizer step from ``start_step`` on, this rank's micro-batches (``sizes`` rows
        each) as packed compact arrays, cut to the longest sequence rounded up to 8."""
        per_step = sum(sizes)
        pieces = self.sequences(rank, world, start_step * per_step)
        buf, pos = next(pieces), 0
        while True:
            step = []
            for k in sizes:
                if len(buf) - pos >= k:  # the usual case: one slice of the current window
                    step.append(buf.compact(slice(pos, pos + k)))
                    pos += k
                    continue
                got: list[PretrainingData] = []
                while k:
                    if pos == len(buf):
                        buf, pos = next(pieces), 0
                    t = min(k, len(buf) - pos)
                    got.append(buf.take(np.arange(pos, pos + t)))
                    pos += t
                    k -= t
                part = PretrainingData.concat(got)
                step.append(part.compact(slice(None)))
            yield step

    def batches(self, rank: int, world: int, start_step: int, sizes: Sequence[int]) -> Iterator[list[Batch]]:
        """:meth:`compact_batches` as the trainer's int64 tensors."""
        for step in self.compact_batches(rank, world, start_step, sizes):
            yield [batch_tensors(part) for part in step]

    def steps(
        self, start_step: int, global_batch: int, accum: int, rank: int, world: int, pin_memory: bool = False
    ) -> Iterator[list[Batch]]:
        """What the trainer iterates: per step this rank's micro-batches, prefetched by
        ``workers`` background processes. Read errors arrive as one-line :class:`ShardError`."""
        sizes = step_shares(global_batch, world, accum)[rank]
        if self.workers == 0:
            yield from self.batches(rank, world, start_step, sizes)
            return
        loader = torch.utils.data.DataLoader(
            _Steps(self, rank, world, start_step, sizes),
            batch_size=None,
            num_workers=1,
            prefetch_factor=4,
            worker_init_fn=_ignore_sigterm,
            # Its own generator: the loader draws a worker seed, which from the global RNG would
            # shift the dropout masks of a resumed run against an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )
        it = iter(loader)
        # Registered after multiprocessing's own exit handler, so it runs first (LIFO).
        stop = functools.partial(_stop_reader, weakref.ref(it))
        atexit.register(stop)
        try:
            for item in it:
                if isinstance(item, str):
                    raise ShardError(item)
                batches = [batch_tensors(part) for part in item]
                if pin_memory:  # page-locked, for asynchronous copies to the GPU
                    batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
                yield batches
        finally:
            atexit.unregister(stop)
            del it  # stops the worker


def _ignore_sigterm(_worker_id: int) -> None:
    """SLURM signals every process of a job. The trainer snapshots on SIGTERM from batches the
    reader already prefetched, which only a living reader can hand over (their shared memory is
    passed on request), so the reader outlives the signal; the trainer stops it when it stops, and
    a reader whose trainer died exits on its own (DataLoader's watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _return_large_frees_to_the_os()


def _return_large_frees_to_the_os() -> None:
    """glibc raises its mmap threshold after each large free, so the reader's window-sized arrays
    (tens of MB, allocated and freed every window) move onto the heap, whose freed space is not
    always given back: memory then creeps up by a few windows. A fixed 1 MB threshold keeps them
    as mmaps, unmapped when freed. Only where glibc is the allocator."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _stop_reader(ref: weakref.ref) -> None:
    """At interpreter exit, stop a reader that was never closed: multiprocessing would otherwise
    wait forever for a worker that ignores its SIGTERM."""
    it = ref()
    if it is not None:
        it._shutdown_workers()


class _Steps(torch.utils.data.IterableDataset):
    """The stream as a DataLoader dataset; an error is passed on as its one-line message."""

    def __init__(self, stream: ShardStream, rank: int, world: int, start_step: int, sizes: Sequence[int]) -> None:
        self.args = (stream, rank, world, start_step, list(sizes))

    def __iter__(self):
        stream, rank, world, start_step, sizes = self.args
        try:
            yield from stream.compact_batches(rank, world, start_step, sizes)
        except (ShardError, OSError) as e:
            yield " ".join(str(e).split())
