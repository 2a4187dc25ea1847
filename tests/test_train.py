"""The trainer: schedule, optimizer, resume after SIGKILL/SIGTERM, DDP equivalence, best-checkpoint selection."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bertdistill.train import (
    AdamNoBiasCorrection,
    TensorDataset,
    TrainConfig,
    Trainer,
    lr_at,
    micro_batches,
    param_groups,
    steps_per_epoch,
    trim_padding,
)
from helpers import CHILD, DEVICES, ENV, child, read_csv, tiny_data, tiny_objective, weights


def test_linear_schedule_matches_reference_formula():
    cfg = TrainConfig(max_steps=100, lr=1.0)
    assert lr_at(cfg, 1, 100) == pytest.approx(0.1)  # progress 0.01 / warm-up 0.1
    assert lr_at(cfg, 10, 100) == pytest.approx(1.0)
    assert lr_at(cfg, 55, 100) == pytest.approx(0.5)
    assert lr_at(cfg, 100, 100) == 0.0
    assert lr_at(TrainConfig(max_steps=100, lr=0.3, schedule="constant"), 7, 100) == 0.3


def test_adam_without_bias_correction_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = AdamNoBiasCorrection([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    m = v = torch.zeros(2)
    ref = p.detach().clone()
    for g in ([0.5, -1.0], [0.2, 0.3]):
        g = torch.tensor(g)
        p.grad = g.clone()
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        ref = ref - 0.1 * (m / (v.sqrt() + 1e-8) + 0.01 * ref)
    assert torch.allclose(p.detach(), ref, atol=1e-7)
    # The first update is (1 - b1)/sqrt(1 - b2) ≈ 3.16x Adam's step size.
    assert abs(((1 - 0.9) / math.sqrt(1 - 0.999)) - 3.1623) < 1e-4


def test_no_weight_decay_on_bias_and_layernorm():
    from bertdistill.model import BertConfig, BertModel

    m = BertModel(
        BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    )
    decay, no_decay = param_groups(m, 0.01)
    names = {id(p): n for n, p in m.named_parameters()}
    assert all("bias" not in names[id(p)] and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert any("LayerNorm.weight" in names[id(p)] for p in no_decay["params"])
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0


def test_data_order_is_independent_of_rank_split():
    perm = torch.randperm(23)
    gb = 8
    for step in range(steps_per_epoch(23, gb, 2)):
        one = micro_batches(perm, step, gb, 0, 1, 1)[0]
        two = torch.cat([micro_batches(perm, step, gb, r, 2, 1)[0] for r in range(2)])
        assert torch.equal(one, two)
    assert steps_per_epoch(23, 8, 2) == 3 and steps_per_epoch(17, 8, 2) == 2  # remainder 1 < 2 ranks


def test_trim_padding_rounds_to_eight():
    mask = torch.zeros(2, 32, dtype=torch.long)
    mask[0, :9] = 1
    batch = trim_padding({"input_ids": mask.clone(), "attention_mask": mask, "teacher_logits": torch.zeros(2, 2, 32)})
    assert batch["input_ids"].shape == (2, 16) and batch["teacher_logits"].shape == (2, 2, 16)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_resume_after_sigkill_equals_uninterrupted(tmp_path, device):
    """SIGKILL at step 5, snapshots every 3: the rerun resumes at step 3 and ends where the
    uninterrupted run ends (dropout on, so the RNG states must come back too). Bit for bit on the
    CPU; on CUDA within 1e-5, since the backward of its fused attention kernels accumulates with
    atomics whose order varies from run to run."""
    args = ("--steps", "10", "--snapshot-every", "3", "--device", device)
    full = child(tmp_path / "full", *args)
    assert full.returncode == 0, full.stderr

    proc = child(tmp_path / "killed", *args, "--block-at", "5", wait=False)
    marker = tmp_path / "killed" / "blocked"
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "child never reached step 5"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model").exists()  # nothing that looks finished
    assert (tmp_path / "killed" / "snapshots" / "snapshot.pt").exists()

    resumed = child(tmp_path / "killed", *args)
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(tmp_path / "full"), weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    tol = 0.0 if device == "cpu" else 1e-5  # 0: bit for bit
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=tol) for k in a)
    killed, full = read_csv(tmp_path / "killed" / "train.csv"), read_csv(tmp_path / "full" / "train.csv")
    assert [int(r["step"]) for r in killed] == list(range(1, 11))
    assert [float(r["loss"]) for r in killed] == pytest.approx([float(r["loss"]) for r in full], rel=tol, abs=0)
    assert not (tmp_path / "killed" / "snapshots").exists()  # cleared once the output exists


@pytest.mark.slow
def test_sigterm_snapshots_and_exits_then_resumes(tmp_path):
    full = child(tmp_path / "full", "--steps", "8", "--snapshot-every", "100", "--accum", "2")
    assert full.returncode == 0, full.stderr
    term = child(tmp_path / "t", "--steps", "8", "--snapshot-every", "100", "--accum", "2", "--term-at", "3")
    assert term.returncode != 0
    assert not (tmp_path / "t" / "model").exists()
    snap = torch.load(tmp_path / "t" / "snapshots" / "snapshot.pt", weights_only=False)
    assert snap["step"] == 4  # the flag raised during step 3 is honoured at the end of step 4
    resumed = child(tmp_path / "t", "--steps", "8", "--snapshot-every", "100", "--accum", "2")
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(tmp_path / "full"), weights(tmp_path / "t")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_changed_settings_do_not_resume_a_stale_snapshot(tmp_path):
    proc = child(tmp_path / "r", "--steps", "10", "--snapshot-every", "3", "--block-at", "4", wait=False)
    while not (tmp_path / "r" / "blocked").exists():
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fresh = child(tmp_path / "fresh", "--steps", "10", "--optimizer", "adamw")
    again = child(tmp_path / "r", "--steps", "10", "--optimizer", "adamw")
    assert again.returncode == 0 and fresh.returncode == 0
    a, b = weights(tmp_path / "fresh"), weights(tmp_path / "r")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list(tmp_path.glob("r/snapshots.stale-*"))  # moved aside, not deleted


def _torchrun(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(CHILD)]
    return subprocess.run([*cmd, "--out", str(out), *args], env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("global_batch", [8, 7])
def test_global_batch_size_does_not_depend_on_the_process_count(tmp_path, global_batch):
    """train.global_batch_size: 1 process (accumulating 2 micro-batches of at most 4) and 2
    processes (one each) take the same steps, with dynamic padding (the default) on; 7 examples
    per step split 4 + 3 over the ranks and still give the exact mean over the step's examples."""
    args = [
        "--steps",
        "6",
        "--dropout",
        "0",
        "--optimizer",
        "adamw",
        "--batch",
        "4",
        "--global-batch",
        str(global_batch),
    ]
    one = child(tmp_path / "one", *args)
    assert one.returncode == 0, one.stderr
    two = _torchrun(tmp_path / "two", *args)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    rows_a, rows_b = read_csv(tmp_path / "one" / "train.csv"), read_csv(tmp_path / "two" / "train.csv")
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-4)


@pytest.mark.slow
def test_ddp_two_processes_match_one_with_double_batch(tmp_path):
    """Backbone losses (masking faithful), dynamic padding off: 2 processes × 4 equal 1 × 8 in
    every loss term and the weights. Off on purpose: faithful losses average over padded
    positions, so with dynamic padding (the default) each rank's own padded length changes the
    loss; the default path is tested in test_train_default_path.py (classifier losses against a
    single process, and 1-process accumulation against 2 processes in
    test_global_batch_size_does_not_depend_on_the_process_count)."""
    pytest.importorskip("torch.distributed")
    args = ["--steps", "6", "--dropout", "0", "--no-dynamic-padding", "--optimizer", "adamw"]
    one = child(tmp_path / "one", *args, "--batch", "8")
    assert one.returncode == 0, one.stderr
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(CHILD),
        "--out",
        str(tmp_path / "two"),
        *args,
        "--batch",
        "4",
    ]
    two = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_csv(tmp_path / "one" / "train.csv"), read_csv(tmp_path / "two" / "train.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for k in ("loss", "attention", "value", "hidden", "embedding"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-4, abs=1e-6), (ra["step"], k)
    wa, wb = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_keep_best_selects_and_records(tmp_path):
    from bertdistill.model import BertConfig, BertForSequenceClassification
    from bertdistill.objectives import SupervisedObjective

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    )
    ids = torch.randint(5, 30, (32, 8))
    data = TensorDataset({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids[:, 1] > 17).long()})
    scores = iter([0.5, 0.9, 0.7])  # evaluation at steps 2, 4, 6: best is step 4
    saved = {}

    def evaluate(student):
        saved[len(saved)] = {k: v.clone() for k, v in student.state_dict().items()}
        return {"metric": next(scores)}

    cfg = TrainConfig(max_steps=6, batch_size=8, lr=1e-2, eval_every=2, keep="best", log_every=1)
    result = Trainer(cfg, tmp_path / "snap").fit(SupervisedObjective(model), data, evaluate=evaluate)
    assert result.selection["keep"] == "best" and result.selection["selected_step"] == 4
    assert [h["step"] for h in result.selection["history"]] == [2, 4, 6]
    assert all(torch.equal(model.state_dict()[k], saved[1][k]) for k in saved[1])


def test_gradient_accumulation_equals_bigger_batch(tmp_path):
    """Backbone losses (masking faithful), dynamic padding off: 2 × 4 accumulated equal 1 × 8.
    With dynamic padding (the default) they would not (each micro-batch's padded length enters
    the faithful means); that path is tested in test_train_default_path.py."""
    runs = {}
    for name, (bs, accum) in {"big": (8, 1), "accum": (4, 2)}.items():
        objective, teacher = tiny_objective()
        cfg = TrainConfig(max_steps=4, batch_size=bs, grad_accum=accum, lr=1e-2, dynamic_padding=False, log_every=1)
        Trainer(cfg, tmp_path / name).fit(objective, tiny_data(), teacher=teacher)
        runs[name] = objective.state_dict()
    assert all(torch.allclose(runs["big"][k], runs["accum"][k], atol=1e-6) for k in runs["big"])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(tmp_path, precision):
    objective, teacher = tiny_objective()
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    cfg = TrainConfig(max_steps=3, batch_size=8, lr=1e-2, precision=precision, log_every=1)
    result = Trainer(cfg, tmp_path / "s", log_csv=tmp_path / "log.csv").fit(objective, tiny_data(), teacher=teacher)
    assert math.isfinite(result.last_terms["loss"])
    # On a GPU machine the trainer runs there (CUDA autocast, GradScaler, fused AdamW).
    assert any(not torch.equal(before[k], v.cpu()) for k, v in objective.state_dict().items())
    assert all(v.dtype == torch.float32 for v in objective.state_dict().values())  # master weights stay fp32


def test_saved_output_records_selection(tmp_path):
    """The stages' train-and-save skeleton: the output holds the student, its projection, train.csv
    and distill.json (settings, selection); the final snapshot stays for the caller to clear."""
    import json

    from bertdistill.stages.common import train_and_save

    objective, teacher = tiny_objective()
    cfg = TrainConfig(max_steps=2, batch_size=8, lr=1e-2, log_every=1)
    result = train_and_save(
        objective,
        tiny_data(),
        train=cfg,
        output=tmp_path / "out",
        snapshot_dir=None,
        record={"stage": "test"},
        vocab=None,
        teacher=teacher,
    )
    out = tmp_path / "out"
    record = json.loads((out / "distill.json").read_text())
    assert record["selection"]["keep"] == "last" and record["selection"]["selected_step"] == 2 == result.steps
    assert record["train"]["lr"] == 1e-2 and record["stage"] == "test"
    assert (out / "projection.safetensors").is_file() and len((out / "train.csv").read_text().splitlines()) == 3
    assert torch.load(tmp_path / ".out.snapshots" / "snapshot.pt", weights_only=True)["step"] == 2


def test_output_lost_after_training_is_rewritten_from_the_final_snapshot(tmp_path):
    """A SLURM time limit that lands after a stage wrote its output but before Snakemake recorded
    the job: Snakemake deletes the output and retries. Before, the stage had already removed its
    snapshots and the retry trained from step 0 (or from the last periodic snapshot). Now the retry
    resumes at the last step, trains nothing, and writes the same weights; the snapshot goes only
    when the caller knows the output is recorded."""
    import json
    import shutil

    from bertdistill.checkpoints import load_model
    from bertdistill.snapshots import clear_finished_snapshots
    from bertdistill.stages.common import train_and_save

    cfg = TrainConfig(max_steps=5, batch_size=8, lr=1e-2, snapshot_every=2, log_every=1)
    out = tmp_path / "phase1"

    def run():
        objective, teacher = tiny_objective()
        train_and_save(objective, tiny_data(), cfg, out, None, record={"stage": "phase1"}, vocab=None, teacher=teacher)
        return json.loads((out / "distill.json").read_text()), load_model(out).state_dict()

    first, weights_first = run()
    losses_first = [r["loss"] for r in read_csv(out / "train.csv")]
    assert first["steps"] == 5 and first["resumed_from_step"] == 0 and len(losses_first) == 5
    shutil.rmtree(out)  # what Snakemake does with the output of a job that did not end in success
    retry, weights_retry = run()
    assert retry["steps"] == 5 and retry["resumed_from_step"] == 5  # not 0, not the periodic snapshot at 4
    assert all(torch.equal(weights_first[k], weights_retry[k]) for k in weights_first)
    assert [r["loss"] for r in read_csv(out / "train.csv")] == losses_first  # the log of the run that trained
    # Once the outputs are recorded (Snakemake's onsuccess, or a CLI stage that returned), the
    # folders of existing outputs go; one whose output is missing (a job still to retry) stays.
    kept = shutil.copytree(tmp_path / ".phase1.snapshots", tmp_path / ".phase2.snapshots")
    assert clear_finished_snapshots(tmp_path) == [tmp_path / ".phase1.snapshots"]
    assert kept.is_dir() and not (tmp_path / ".phase1.snapshots").exists()


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_training_matches_eager(tmp_path, device):
    """train.compile (torch.compile of the objective and the teacher targets) gives the eager
    run's loss curve and weights on ``device``; dynamic padding compiles each padded length once."""
    from torch._dynamo.utils import counters

    counters.clear()
    runs = {}
    for mode in (None, "default"):
        objective, teacher = tiny_objective()
        cfg = TrainConfig(max_steps=3, batch_size=8, lr=1e-2, log_every=1, compile=mode, device=device)
        Trainer(cfg, tmp_path / f"s{mode}", log_csv=tmp_path / f"{mode}.csv").fit(
            objective, tiny_data(), teacher=teacher
        )
        final = {k: v.cpu() for k, v in objective.state_dict().items()}
        runs[mode] = ([float(r["loss"]) for r in read_csv(tmp_path / f"{mode}.csv")], final)
    (eager, we), (compiled, wc) = runs[None], runs["default"]
    assert len(eager) == 3 and all(abs(a - b) <= 1e-4 * max(1.0, abs(a)) for a, b in zip(eager, compiled, strict=True))
    assert all(torch.allclose(we[k], wc[k], atol=1e-4) for k in we)
    assert counters["stats"]["unique_graphs"] >= 2  # it did compile: objective and teacher targets
