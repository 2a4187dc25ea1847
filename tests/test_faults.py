"""Faults in training: divergence, snapshots taken on other inputs, planted snapshot files, a full disk.

Each test reproduces a defect a user found on a copy of a real run (issue: faults and bad input).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bertdistill.stages.common import train_and_save
from bertdistill.train import TrainConfig, Trainer, TrainingError, atomic_save
from helpers import tiny_data, tiny_objective


class _Interrupt(Exception):
    """Stands in for a kill after a snapshot (the process dies; the snapshot stays)."""


def _stop_at(step: int):
    def on_step(s, terms):  # noqa: ARG001
        if s == step:
            raise _Interrupt

    return on_step


class _LossAt(torch.nn.Module):
    """The tiny objective, whose loss is replaced by ``value`` (inf, NaN) on the given calls."""

    def __init__(self, objective, calls: set[int], value: float) -> None:
        super().__init__()
        self.inner, self.calls, self.value, self.n = objective, calls, value, 0
        self.student, self.projection = objective.student, objective.projection

    def teacher_targets(self, teacher, batch):
        return self.inner.teacher_targets(teacher, batch)

    def forward(self, batch, targets):
        self.n += 1
        terms = self.inner(batch, targets)
        if self.n in self.calls:
            terms["loss"] = terms["loss"] * self.value
        return terms


def test_huge_lr_stops_with_the_step_named_and_writes_nothing(tmp_path):
    """Before: phase 1 trained on with NaN and every later stage shipped NaN weights (exit 0)."""
    objective, teacher = tiny_objective()
    cfg = TrainConfig(max_steps=10, batch_size=8, lr=1e10, warmup=0.0, snapshot_every=1, log_every=1)
    with pytest.raises(TrainingError) as e:
        train_and_save(
            objective,
            tiny_data(),
            cfg,
            tmp_path / "phase1",
            None,
            record={"stage": "phase1"},
            vocab=None,
            teacher=teacher,
        )
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("phase1: non-finite loss or gradient at step 2 of 10")
    assert "no output written" in msg and "step 1)" in msg and "lower train.lr" in msg
    assert not (tmp_path / "phase1").exists()
    # The snapshot of the last good step stays: a rerun with a sane lr does not resume it (other settings).
    assert (tmp_path / ".phase1.snapshots" / "snapshot.pt").is_file()
    assert all(torch.isfinite(v).all() for v in objective.state_dict().values())  # the NaN update was not applied


def test_non_finite_loss_stops_fp32_at_once(tmp_path):
    objective, teacher = tiny_objective()
    cfg = TrainConfig(max_steps=6, batch_size=8, lr=1e-3, log_every=1, snapshot_every=100)
    with pytest.raises(TrainingError, match="non-finite loss or gradient at step 3 of 6.*last good snapshot: none"):
        Trainer(cfg, tmp_path / "s", name="backbone").fit(_LossAt(objective, {3}, float("nan")), tiny_data(), teacher)


def test_fp16_overflow_steps_are_skipped_and_counted(tmp_path):
    """As GradScaler does: an inf loss in fp16 skips that update and lowers the scale; training goes
    on. (The first step usually overflows by itself: the scale starts at 2^16.)"""
    cfg = TrainConfig(max_steps=8, batch_size=8, lr=1e-3, precision="fp16", log_every=1, snapshot_every=100)
    objective, teacher = tiny_objective()
    plain = Trainer(cfg, tmp_path / "a").fit(objective, tiny_data(), teacher)
    objective, teacher = tiny_objective()
    result = Trainer(cfg, tmp_path / "b").fit(_LossAt(objective, {5, 6}, float("inf")), tiny_data(), teacher)
    assert result.steps == 8 and result.skipped_steps == plain.skipped_steps + 2
    assert all(torch.isfinite(v).all() for v in objective.state_dict().values())


def test_fp16_too_many_skips_in_a_row_stop(tmp_path):
    objective, teacher = tiny_objective()
    cfg = TrainConfig(max_steps=8, batch_size=8, lr=1e-3, precision="fp16", max_skipped_steps=2, snapshot_every=100)
    with pytest.raises(TrainingError, match=r"3 fp16 overflow steps in a row \(max_skipped_steps 2\) at step 7"):
        Trainer(cfg, tmp_path / "s").fit(_LossAt(objective, {5, 6, 7}, float("inf")), tiny_data(), teacher)


def _interrupted(tmp_path: Path, init: Path) -> Path:
    """Train 'from' ``init`` until step 3 with a snapshot at step 2, then die."""
    objective, teacher = tiny_objective()
    cfg = TrainConfig(max_steps=6, batch_size=8, lr=1e-3, snapshot_every=2, log_every=1)
    with pytest.raises(_Interrupt):
        Trainer(cfg, tmp_path / "snap", inputs={"init": init}, on_step=_stop_at(3)).fit(objective, tiny_data(), teacher)
    return tmp_path / "snap"


def test_resume_after_an_upstream_rebuild_starts_from_the_new_init(tmp_path, caplog):
    """Before: the fingerprint compared input PATHS, so a snapshot taken on the old phase 1 was resumed."""
    init = tmp_path / "phase1"
    init.mkdir()
    (init / "model.safetensors").write_bytes(b"old weights")
    (init / "distill.json").write_text("{}")
    _interrupted(tmp_path, init)
    cfg = TrainConfig(max_steps=6, batch_size=8, lr=1e-3, snapshot_every=2, log_every=1)

    # Same content, rewritten (run records differ): the snapshot is resumed.
    (init / "model.safetensors").write_bytes(b"old weights")
    (init / "distill.json").write_text('{"wall_s": 3}')
    objective, teacher = tiny_objective()
    r = Trainer(cfg, tmp_path / "snap", inputs={"init": init}).fit(objective, tiny_data(), teacher)
    assert r.resumed_from == 2
    shutil.rmtree(tmp_path / "snap")  # what train_and_save does once the output is written

    # Phase 1 rebuilt with other weights: the old snapshot is set aside, training starts afresh.
    _interrupted(tmp_path, init)
    (init / "model.safetensors").write_bytes(b"new weights")
    objective, teacher = tiny_objective(seed=1)  # "loaded from the new init"
    with caplog.at_level(logging.WARNING, logger="bertdistill.train"):
        r = Trainer(cfg, tmp_path / "snap", inputs={"init": init}, name="sst2_backbone").fit(
            objective, tiny_data(), teacher
        )
    assert r.resumed_from == 0
    assert "sst2_backbone: not resuming" in caplog.text and "its inputs changed since (init" in caplog.text
    fresh, teacher = tiny_objective(seed=1)
    Trainer(cfg, tmp_path / "fresh", inputs={"init": init}).fit(fresh, tiny_data(), teacher)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in objective.state_dict().items())
    assert len(list(tmp_path.glob("snap.stale-*"))) == 1


def test_planted_code_running_snapshot_is_refused_without_running(tmp_path, caplog):
    """Before: snapshots were read with weights_only=False and a planted file ran os.system."""
    marker = tmp_path / "pwned"
    snap = tmp_path / "snap"
    snap.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"fingerprint": "x", "step": 1, "world": 1, "objective": Evil()}, snap / "snapshot.pt")
    torch.save({"python": Evil()}, snap / "rng_rank0_step1.pt")
    objective, teacher = tiny_objective()
    cfg = TrainConfig(max_steps=2, batch_size=8, lr=1e-3, log_every=1)
    with caplog.at_level(logging.WARNING, logger="bertdistill.train"):
        r = Trainer(cfg, snap).fit(objective, tiny_data(), teacher)
    assert not marker.exists()
    assert r.resumed_from == 0 and r.steps == 2
    assert "cannot be read as a snapshot (UnpicklingError" in caplog.text
    assert list(tmp_path.glob("snap.stale-*"))  # set aside for inspection, not resumed


def test_own_snapshots_load_as_data_only(tmp_path):
    """Every file a snapshot writes (state, RNG, best weights) reads back with weights_only=True."""
    objective, teacher = tiny_objective()
    cfg = TrainConfig(max_steps=4, batch_size=8, lr=1e-3, snapshot_every=2, eval_every=2, keep="best", log_every=1)
    with pytest.raises(_Interrupt):
        Trainer(cfg, tmp_path / "s", on_step=_stop_at(3)).fit(
            objective, tiny_data(), teacher, evaluate=lambda m: {"metric": float(torch.tensor(0.5))}
        )
    files = sorted(p.name for p in (tmp_path / "s").glob("*.pt"))
    assert files == ["best_step2.pt", "rng_rank0_step2.pt", "snapshot.pt"]
    for f in files:
        torch.load(tmp_path / "s" / f, weights_only=True)
    objective, teacher = tiny_objective()
    r = Trainer(cfg, tmp_path / "s").fit(objective, tiny_data(), teacher, evaluate=lambda m: {"metric": 0.5})
    assert r.resumed_from == 2


def test_full_disk_during_a_snapshot_gives_one_line_and_no_leftover(tmp_path):
    """Before: a cryptic torch error and a .tmp-PID file left behind. A real write failure: the
    child process may not write files larger than 64 KiB (RLIMIT_FSIZE; EFBIG like ENOSPC)."""
    code = textwrap.dedent(
        f"""
        import resource, signal, sys, torch
        from pathlib import Path
        from bertdistill.train import TrainingError, atomic_save
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        try:
            atomic_save({{"w": torch.zeros(1 << 16)}}, Path({str(tmp_path / "snapshot.pt")!r}))
        except TrainingError as e:
            print(e)
            sys.exit(3)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    line = proc.stdout.strip()
    assert "\n" not in line and "could not write the snapshot" in line and "free disk space" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the snapshot nor its temporary file
    atomic_save({"w": torch.zeros(4)}, tmp_path / "ok.pt")  # and without the limit it works
    assert torch.load(tmp_path / "ok.pt", weights_only=True)["w"].shape == (4,)


def test_stale_snapshot_folders_do_not_pile_up(tmp_path, caplog):
    for lr in (1e-3, 2e-3, 3e-3):
        objective, teacher = tiny_objective()
        cfg = TrainConfig(max_steps=4, batch_size=8, lr=lr, snapshot_every=2, log_every=1)
        with pytest.raises(_Interrupt):
            Trainer(cfg, tmp_path / "snap", on_step=_stop_at(3)).fit(objective, tiny_data(), teacher)
    stale = list(tmp_path.glob("snap.stale-*"))
    assert len(stale) == 1


def test_features_longer_than_the_positions_fail_in_the_job_with_one_line(tmp_path):
    """Before: a raw IndexError inside the first forward of task_backbone (here: a teacher whose
    config is only known once downloaded, so the Snakefile's check could not see it)."""
    import numpy as np

    from bertdistill.checkpoints import CheckpointError
    from bertdistill.stages.tasks import finetune_teacher
    from bertdistill.tasks import write_h5
    from helpers import tiny_teacher

    teacher = tiny_teacher(tmp_path / "teacher")  # 128 positions
    n, length = 4, 192
    features = tmp_path / "train.hdf5"
    ones = np.ones((n, length), dtype=np.int32)
    write_h5(
        {"input_ids": ones * 5, "attention_mask": ones, "token_type_ids": ones * 0, "labels": np.zeros(n)}, features
    )
    with pytest.raises(CheckpointError) as e:
        finetune_teacher(
            task="sst2",
            teacher=teacher,
            features=features,
            dev_features=tmp_path / "dev.hdf5",
            dev=tmp_path / "dev.tsv",
            output=tmp_path / "out",
            train={"max_steps": 1},
            eval_batch_size=8,
            n_best=20,
            max_answer_length=30,
        )
    assert str(e.value) == (
        f"{features}: sequences of 192 tokens, but {teacher} has max_position_embeddings 128; "
        "rebuild the data with max_seq_length <= 128"
    )
    assert not (tmp_path / "out").exists()
