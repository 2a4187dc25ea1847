"""The streaming shard reader of general distillation: files per rank, a bounded shuffle window,
prefetching, and resume at a step (bertdistill.data.stream)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import torch

from bertdistill.data.pretraining import ShardError, load_shards
from bertdistill.data.stream import ShardStream, assign_files, step_shares
from helpers import CHILD, ENV, child, read_csv, row_id, weights, write_id_shards

SIZES = [24, 16, 20]  # 60 sequences; unequal files


def ids_of(batches) -> list[int]:
    return [row_id(row) for parts in batches for b in parts for row in b["input_ids"]]


def test_files_are_dealt_disjoint_and_balanced():
    assert assign_files([24, 16, 20], 1) == [[0, 1, 2]]
    assert assign_files([24, 16, 20, 20], 2) == [[0, 1], [2, 3]]  # 40 and 40
    dealt = assign_files([5, 9, 1, 7, 3, 8, 2], 3)
    assert sorted(i for r in dealt for i in r) == list(range(7))
    loads = [sum([5, 9, 1, 7, 3, 8, 2][i] for i in r) for r in dealt]
    assert max(loads) - min(loads) <= 2
    with pytest.raises(ShardError, match="2 shard files for 3 ranks"):
        assign_files([4, 4], 3)


def test_fewer_files_than_ranks_are_cut_into_row_ranges(tmp_path):
    write_id_shards(tmp_path, [10, 7])
    stream = ShardStream([tmp_path], None, seed=3, shuffle_buffer=4, workers=0)
    seen = []
    for rank in range(3):  # 3 ranks, 2 files: each file in 2 row ranges, dealt 2 / 1 / 1
        n = sum(f.rows for f in stream.rank_files(rank, 3))
        seen += ids_of(s for s, _ in zip(stream.batches(rank, 3, 0, [1]), range(n), strict=False))
    assert sorted(seen) == list(range(17))


def test_step_shares_split_like_the_in_memory_path():
    # 10 examples over 3 ranks: 4, 3, 3 (torch.tensor_split); each cut into 2 micro-batches
    assert step_shares(10, 3, 2) == [[2, 2], [2, 1], [2, 1]]
    assert step_shares(8, 1, 1) == [[8]]


def test_an_epoch_is_every_sequence_once_and_batches_equal_the_shards(tmp_path):
    paths = write_id_shards(tmp_path, SIZES)
    stream = ShardStream([tmp_path], None, seed=3, shuffle_buffer=7, workers=0)
    assert len(stream) == 60
    steps = stream.batches(0, 1, 0, [4])
    seen = ids_of(next(steps) for _ in range(15))
    assert sorted(seen) == list(range(60))  # one epoch: each sequence exactly once
    assert seen != list(range(60))  # shuffled
    # the second epoch is another order of the same sequences
    second = ids_of(next(steps) for _ in range(15))
    assert sorted(second) == list(range(60)) and second != seen
    # the tensors are those of the in-memory reader, row for row (padding trimmed to 8s)
    ref = load_shards(paths)
    by_id = {row_id(r): i for i, r in enumerate(ref.input_ids)}
    batch = next(stream.batches(0, 1, 0, [5]))[0]
    want = ref.batch(torch.tensor([by_id[row_id(r)] for r in batch["input_ids"]]))
    assert batch.keys() == want.keys()
    assert all(torch.equal(batch[k], want[k]) for k in batch)


def test_the_shuffle_window_bounds_how_far_a_sequence_moves(tmp_path):
    write_id_shards(tmp_path, SIZES)
    stream = ShardStream([tmp_path], None, seed=3, shuffle_buffer=10, workers=0)
    starts = np.cumsum([0, *SIZES])
    order = [int(f.path.stem.split("_")[1]) for f in stream.epoch_order(0, 1, 0)]
    concat = [i for f in order for i in range(starts[f], starts[f] + SIZES[f])]  # the epoch's files in order
    seen = ids_of(s for s, _ in zip(stream.batches(0, 1, 0, [10]), range(6), strict=False))
    mixed = 0
    for w in range(6):  # window w delivers exactly rows w*10 .. w*10+9 of the concatenation, permuted
        window = concat[w * 10 : w * 10 + 10]
        assert sorted(seen[w * 10 : w * 10 + 10]) == sorted(window)
        mixed += len({np.searchsorted(starts, i, side="right") for i in window}) > 1
    # a window over a file boundary mixes the neighbouring files
    inside = [e for e in np.cumsum([SIZES[f] for f in order])[:-1] if e % 10]
    assert mixed == len(inside) >= 1


@pytest.mark.parametrize("start", [0, 5, 13, 21])
def test_resuming_at_a_step_continues_the_same_stream(tmp_path, start):
    write_id_shards(tmp_path, SIZES)
    stream = ShardStream([tmp_path], None, seed=3, shuffle_buffer=7, workers=0)
    full = ids_of(s for s, _ in zip(stream.batches(0, 1, 0, [2, 2]), range(25), strict=False))
    resumed = ids_of(s for s, _ in zip(stream.batches(0, 1, start, [2, 2]), range(25 - start), strict=False))
    assert resumed == full[start * 4 :]


def test_the_background_reader_delivers_the_same_batches(tmp_path):
    write_id_shards(tmp_path, SIZES)
    inline = ShardStream([tmp_path], None, seed=3, shuffle_buffer=7, workers=0)
    background = ShardStream([tmp_path], None, seed=3, shuffle_buffer=7, workers=1)
    a = inline.steps(3, 4, 2, 0, 1)
    b = background.steps(3, 4, 2, 0, 1)
    for _ in range(20):
        x, y = next(a), next(b)
        assert len(x) == len(y) == 2
        assert all(torch.equal(p[k], q[k]) for p, q in zip(x, y, strict=True) for k in p)
    b.close()


def test_a_corrupt_shard_is_a_one_line_error_from_the_reader(tmp_path):
    write_id_shards(tmp_path, [40, 40])
    stream = ShardStream([tmp_path], None, seed=3, shuffle_buffer=8, workers=1)
    data = (tmp_path / "shard_1.hdf5").read_bytes()
    # damage the compressed chunks (past the HDF5 metadata at the start of the file)
    (tmp_path / "shard_1.hdf5").write_bytes(data[:3000] + bytes(len(data) - 3000))
    with pytest.raises(ShardError) as e:
        for _ in zip(stream.steps(0, 8, 1, 0, 1), range(50), strict=False):  # an epoch is 10 steps
            pass
    assert "shard_1.hdf5" in str(e.value) and "\n" not in str(e.value)


def test_position_names_epoch_file_and_row(tmp_path):
    write_id_shards(tmp_path, SIZES)
    stream = ShardStream([tmp_path], None, seed=3, shuffle_buffer=7, workers=0)
    order = stream.epoch_order(0, 1, 0)
    pos = stream.position(9, 0, 1)  # window 1 (rows 7..13), offset 2
    assert (pos["epoch"], pos["window"], pos["offset_in_window"]) == (0, 1, 2)
    assert pos["file"] == str(order[0].path) and pos["row"] == 7
    later = stream.position(60 + 7 * 4, 0, 1)  # second epoch, window 4 starts at row 28
    assert later["epoch"] == 1 and later["window"] == 4


@pytest.mark.slow
def test_two_ddp_ranks_read_disjoint_files_and_see_an_epoch_once(tmp_path):
    """Two gloo ranks under torchrun, through the trainer: each rank reads its own files, and in
    one epoch (15 steps of 4) the two together deliver every sequence exactly once."""
    shards = tmp_path / "shards"
    write_id_shards(shards, [14, 16, 12, 18])  # dealt as {18, 12} and {16, 14}: 30 each
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(CHILD)]
    args = ["--out", str(tmp_path / "two"), "--stream", str(shards), "--steps", "15", "--global-batch", "4"]
    run = subprocess.run([*cmd, *args, "--batch", "2"], env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    files = [set((tmp_path / "two" / f"files_rank{r}.txt").read_text().split()) for r in range(2)]
    assert files[0] and files[1] and not files[0] & files[1]
    assert files[0] | files[1] == {str(p) for p in sorted(shards.glob("*.hdf5"))}
    seen = [[int(x) for x in (tmp_path / "two" / f"seen_rank{r}.txt").read_text().split()] for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 30
    assert Counter(seen[0] + seen[1]) == Counter(range(60))
    # each rank's sequences come from its own files only
    starts = np.cumsum([0, 14, 16, 12])
    owner = {i: f"shard_{f}.hdf5" for f, n in enumerate([14, 16, 12, 18]) for i in range(starts[f], starts[f] + n)}
    for r in range(2):
        assert {owner[i] for i in seen[r]} == {p.split("/")[-1] for p in files[r]}


@pytest.mark.slow
@pytest.mark.parametrize(
    "block_at, where",
    [
        (5, "mid-epoch: the snapshot at step 3 (12 of 60 sequences) is inside a window and a file"),
        (11, "the snapshot at step 9 (36 of 60) is in a window that straddles two files"),
    ],
)
def test_kill_and_resume_with_the_stream_equals_uninterrupted(tmp_path, block_at, where):
    shards = tmp_path / "shards"
    write_id_shards(shards, SIZES)
    args = ["--stream", str(shards), "--buffer", "10", "--steps", "20", "--snapshot-every", "3", "--batch", "4"]
    full = child(tmp_path / "full", *args)
    assert full.returncode == 0, full.stderr
    proc = child(tmp_path / "killed", *args, "--block-at", str(block_at), wait=False)
    marker = tmp_path / "killed" / "blocked"
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"child never reached step {block_at}"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    snap_step = block_at - block_at % 3
    rng = torch.load(tmp_path / "killed" / "snapshots" / f"rng_rank0_step{snap_step}.pt", weights_only=True)
    pos = rng["data_position"]
    stream = ShardStream([shards], None, seed=3, shuffle_buffer=10, workers=0)
    assert pos == stream.position(snap_step * 4, 0, 1) and pos["epoch"] == 0
    lo = pos["window"] * 10
    ends = np.cumsum([f.rows for f in stream.epoch_order(0, 1, 0)])
    straddles = any(lo < e < lo + 10 for e in ends)
    assert straddles == (block_at == 11), where
    resumed = child(tmp_path / "killed", *args)
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(tmp_path / "full"), weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in read_csv(tmp_path / "killed" / "train.csv")] == [
        r["loss"] for r in read_csv(tmp_path / "full" / "train.csv")
    ]
    # the run crossed into the second epoch (20 steps of 4 > 60 sequences), and the resumed
    # process delivered exactly what the uninterrupted one did from the snapshot on
    full_seen = (tmp_path / "full" / "seen_rank0.txt").read_text().splitlines()
    killed_seen = (tmp_path / "killed" / "seen_rank0.txt").read_text().splitlines()
    assert killed_seen[-(20 - snap_step) :] == full_seen[snap_step:]


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_job_snapshots_then_resumes(tmp_path):
    """As SLURM at a time limit: the trainer and its background reader both get SIGTERM. The
    reader exits cleanly, the trainer snapshots from prefetched batches and stops; the rerun
    resumes to the weights of an uninterrupted run."""
    shards = tmp_path / "shards"
    write_id_shards(shards, SIZES)
    args = ["--stream", str(shards), "--steps", "12", "--snapshot-every", "100", "--batch", "4"]
    full = child(tmp_path / "full", *args)
    assert full.returncode == 0, full.stderr
    cmd = [sys.executable, str(CHILD), "--out", str(tmp_path / "t"), *args, "--term-group-at", "5"]
    term = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, start_new_session=True)
    assert term.returncode != 0 and not (tmp_path / "t" / "model").exists()
    assert "exited unexpectedly" not in term.stderr and "killed by signal" not in term.stderr, term.stderr[-2000:]
    snap = torch.load(tmp_path / "t" / "snapshots" / "snapshot.pt", weights_only=True)
    assert snap["step"] == 6  # the flag raised during step 5 is honoured at the end of step 6
    resumed = child(tmp_path / "t", *args)
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(tmp_path / "full"), weights(tmp_path / "t")
    assert all(torch.equal(a[k], b[k]) for k in a)
