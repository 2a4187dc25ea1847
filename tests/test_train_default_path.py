"""The trainer on the settings users run: dynamic padding on (the default), uneven last batches,
the gradient's scale, mixed precision against fp32, the fp16 gradient scaler, and resuming with
``keep: best`` and under 2-process DDP.

Each test checks the trainer against an independent reference: a value computed here by hand or
with plain autograd on a single process (``helpers.reference_mean_loss``), or an uninterrupted run.

What dynamic padding changes (pinned by ``test_dynamic_padding_changes_only_padded_length_dependent_losses``):
every micro-batch is cut to its own longest sequence (rounded up to 8), so the padded length ``L``
of a micro-batch depends on which rows it holds. A row's logits (and every real position's hidden
states) do not depend on ``L``: padded keys get an additive −10000, whose softmax weight is exactly
0 in fp32, so they equal the full-length values up to float rounding (1e-6), not bit for bit
(shorter reductions). Losses that are means over rows (classification: hard-label CE, soft CE over
classes) therefore give accumulation and DDP the same loss and gradient as one process with the
whole batch, up to float tolerance. Losses that average over padded positions too (the backbone
losses with ``masking: faithful``, the reference's arithmetic; QA's soft CE over all L positions)
have a per-row value that depends on ``L``: with dynamic padding, k micro-batches (accumulated or
on k ranks) equal one process that cuts the *same* micro-batches, not one process cutting the
whole batch once. The backbone losses with ``masking: masked`` are means over each micro-batch's
real tokens while micro-batches weigh by rows, so they too equal only the same micro-batches
(with or without dynamic padding).

Across micro-batches and ranks the trainer weighs each micro-batch's mean loss by its rows
(``rows × world / rows_in_step``, DDP then averaging over ranks), so the gradient is that of the
mean over the step's rows also when micro-batches or ranks hold unequal shares (the epoch's short
last step, ``global_batch_size`` not a multiple of the processes); the logged loss is that mean.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bertdistill.train as train_module
from bertdistill.train import (
    TensorDataset,
    TrainConfig,
    Trainer,
    epoch_permutation,
    load_snapshot_file,
    trim_padding,
)
from helpers import (
    CHILD,
    DEVICES,
    ENV,
    child,
    classifier_data,
    read_csv,
    reference_mean_loss,
    tiny_classifier,
    tiny_data,
    tiny_objective,
    weights,
)

# n = 23 examples and 8 per step: steps of 8, 8 and 7 rows; the short one splits 4 + 3 over two
# ranks, 3 + 2 + 2 over three micro-batches, 4 + 3 over two.
N, GLOBAL = 23, 8


def _sgd(monkeypatch) -> None:
    """Plain SGD (lr 1, no momentum) in place of the trainer's optimizer: a step moves every weight
    by exactly −gradient, so a wrongly scaled gradient shows (AdamW's update would hide it)."""
    monkeypatch.setattr(
        train_module, "make_optimizer", lambda module, cfg, device: torch.optim.SGD(module.parameters(), lr=1.0)
    )


def _sgd_config(**kw) -> TrainConfig:
    base = dict(schedule="constant", lr=1.0, max_grad_norm=0.0, log_every=1, seed=3, device="cpu")
    return TrainConfig(**{**base, **kw})


def _fit_recording(cfg, tmp_path, objective, data, name="run"):
    """Fit, keeping the weights after every step (and the logged loss terms)."""
    states = [{k: v.to("cpu", copy=True) for k, v in objective.state_dict().items()}]
    terms = []

    def on_step(step, t):
        states.append({k: v.to("cpu", copy=True) for k, v in objective.state_dict().items()})
        terms.append(dict(t))

    result = Trainer(cfg, tmp_path / name, on_step=on_step).fit(objective, data)
    return states, terms, result


def _check_sgd_steps(states, terms, data, seed, per_step=GLOBAL, grouped=False):
    """Every step: the update is −∇(mean over the step's rows of the per-row loss), the logged loss
    that mean; the reference is computed here, row by row at full length, at the step's weights.
    ``grouped``: the rows come in the group_by_length order (checked on its own below)."""
    lengths = data.lengths() if grouped else None
    perm = epoch_permutation(len(data), seed, 0, lengths, per_step)
    for s in range(len(states) - 1):
        rows = perm[s * per_step : (s + 1) * per_step]
        ref = tiny_classifier()
        ref.load_state_dict(states[s])
        loss = reference_mean_loss(ref, data, rows)
        loss.backward()
        assert terms[s]["loss"] == pytest.approx(float(loss.detach()), rel=1e-5), s
        for name, p in ref.named_parameters():
            expected = states[s][name] - (p.grad if p.grad is not None else 0)
            assert torch.allclose(states[s + 1][name], expected, rtol=0, atol=2e-6), (s, name)
        # The step moved the weights: the check is not trivially true.
        assert any(not torch.equal(states[s][k], states[s + 1][k]) for k in states[s])


# ----------------------------------------------------------------------------------------------
# Dynamic padding: what is and is not equal


def test_dynamic_padding_changes_only_padded_length_dependent_losses():
    """Cutting a batch to its longest row (the default) leaves each row's classification loss
    equal to its full-length value up to float tolerance (1e-6, not bit for bit), so a mean over
    rows of micro-batches equals the whole batch's mean; the backbone losses with
    ``masking: faithful`` average over padded positions, so their value depends on the padded
    length: the whole batch cut once differs from its halves cut separately (equal again when
    nothing is cut)."""
    data = classifier_data()
    clf = tiny_classifier()
    by_length = data.tensors["attention_mask"].sum(1).argsort()
    rows = torch.cat([by_length[:4], by_length[-4:]])  # 4 short rows, 4 long ones
    batch = data.batch(rows)
    halves = [trim_padding(data.batch(h)) for h in rows.split(4)]
    assert {h["input_ids"].shape[1] for h in halves} != {trim_padding(batch)["input_ids"].shape[1]}  # lengths differ
    with torch.no_grad():
        full = clf(trim_padding(batch), {})["loss"]
        split = sum(clf(h, {})["loss"] for h in halves) / 2
        assert float(full) == pytest.approx(float(reference_mean_loss(clf, data, rows)), abs=1e-6)
    assert float(full) == pytest.approx(float(split), abs=1e-6)

    objective, teacher = tiny_objective()  # the backbone losses, masking faithful (the reference's)
    tiny = tiny_data()
    by_length = tiny.tensors["attention_mask"].sum(1).argsort()
    rows = torch.cat([by_length[:4], by_length[-4:]])

    def backbone(b):
        with torch.no_grad():
            return float(objective(b, objective.teacher_targets(teacher, b))["loss"])

    whole, parts = tiny.batch(rows), [tiny.batch(h) for h in rows.split(4)]
    assert backbone(whole) == pytest.approx(sum(backbone(p) for p in parts) / 2, rel=1e-6)  # same length L
    cut_whole, cut_parts = trim_padding(whole), [trim_padding(p) for p in parts]
    assert {p["input_ids"].shape[1] for p in cut_parts} != {cut_whole["input_ids"].shape[1]}
    assert abs(backbone(cut_whole) - sum(backbone(p) for p in cut_parts) / 2) > 1e-3


def test_masked_backbone_losses_are_token_means_per_micro_batch():
    """With ``masking: masked`` a backbone loss is a mean over the micro-batch's real tokens, and
    the trainer weighs micro-batches (and ranks) by rows: two halves with unequal token counts
    do not give the whole batch's token mean, even with nothing cut. So for masked losses
    accumulation and DDP equal one process only with the same micro-batches."""
    from bertdistill.settings import BackboneLossConfig

    objective, teacher = tiny_objective()
    objective.losses = BackboneLossConfig(masking="masked")
    tiny = tiny_data()
    by_length = tiny.tensors["attention_mask"].sum(1).argsort()
    rows = torch.cat([by_length[:4], by_length[-4:]])

    def loss(b):
        with torch.no_grad():
            return float(objective(b, objective.teacher_targets(teacher, b))["loss"])

    assert abs(loss(tiny.batch(rows)) - sum(loss(tiny.batch(h)) for h in rows.split(4)) / 2) > 1e-3


@pytest.mark.parametrize(
    "plan", [dict(batch_size=4, grad_accum=2), dict(batch_size=3, global_batch_size=8)], ids=["4+4", "3+3+2"]
)
def test_accumulation_with_dynamic_padding_equals_one_big_batch(tmp_path, plan):
    """Dynamic padding on, AdamW (the defaults): accumulating micro-batches of 4 + 4 (last step
    4 + 3) or 3 + 3 + 2 (last step 3 + 2 + 2), each cut to its own length, gives one process with
    batches of 8 (cut once) the same logged losses (rel 1e-5) and weights (atol 1e-5) over 7 steps
    (an epoch and a half, so the short last batch is included). Not bit-identical: the padded
    lengths, hence the float reductions, differ."""
    runs = {}
    for name, kw in {"big": dict(batch_size=8), "accum": plan}.items():
        objective = tiny_classifier()
        cfg = TrainConfig(max_steps=7, lr=1e-2, log_every=1, seed=3, device="cpu", **kw)
        assert cfg.dynamic_padding
        _, terms, _ = _fit_recording(cfg, tmp_path, objective, classifier_data(), name)
        runs[name] = (terms, objective.state_dict())
    (ta, wa), (tb, wb) = runs["big"], runs["accum"]
    assert [t["loss"] for t in ta] == pytest.approx([t["loss"] for t in tb], rel=1e-5)
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-5) for k in wa)


# ----------------------------------------------------------------------------------------------
# The gradient's scale (plain SGD) and uneven batches


@pytest.mark.parametrize(
    "plan",
    [
        dict(batch_size=8),
        dict(batch_size=4, grad_accum=2),
        dict(batch_size=3, global_batch_size=8),
        dict(batch_size=4, grad_accum=2, group_by_length=True),
    ],
    ids=["one-batch", "accum-4+4", "accum-3+3+2", "grouped-accum-4+4"],
)
def test_sgd_step_is_minus_the_mean_gradient(tmp_path, monkeypatch, plan):
    """One SGD step of lr 1 moves the weights by exactly −∇ of the mean over the step's rows of
    the per-row loss, computed here with autograd row by row (atol 2e-6); the logged loss is that
    mean. Three steps of 8, 8 and 7 rows: the last one, and the accumulation splits 3 + 3 + 2 and
    3 + 2 + 2, have micro-batches of unequal size, which must weigh by their rows; with
    group_by_length (the embedded default's SQuAD stages) the steps take the grouped rows."""
    _sgd(monkeypatch)
    cfg = _sgd_config(max_steps=3, **plan)
    data = classifier_data(N)
    states, terms, _ = _fit_recording(cfg, tmp_path, tiny_classifier(), data)
    _check_sgd_steps(states, terms, data, cfg.seed, grouped=cfg.group_by_length)


@pytest.mark.parametrize(("n", "global_batch"), [(1003, 8), (23, 8), (16, 8)])
def test_group_by_length_batches_similar_lengths_in_a_shuffled_order(n, global_batch):
    """group_by_length, rebuilt here by hand from its description: the seeded permutation (the
    plain order, unchanged without lengths) is cut into windows of 50 global batches, each sorted
    by length rounded up to 8, longest first (stable: ties in the permutation's order); the full
    batches are those runs, in a shuffled order (not long to short), and the short last batch
    stays last. Same order for the same (seed, epoch); another epoch, other batches (also when all
    data fits one window). On lengths spread evenly over 5-64, batches need under 0.65 of the
    padded tokens of the plain order."""
    g = torch.Generator().manual_seed(7)
    lengths = torch.randint(5, 65, (n,), generator=g)
    seed, epoch = 3, 1
    plain = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    assert epoch_permutation(n, seed, epoch).tolist() == plain
    window = 50 * global_batch
    by_hand = []
    for start in range(0, n, window):
        by_hand += sorted(plain[start : start + window], key=lambda i: -math.ceil(int(lengths[i]) / 8))
    full = n // global_batch

    order = epoch_permutation(n, seed, epoch, lengths, global_batch).tolist()
    assert sorted(order) == list(range(n))
    batches = [order[i * global_batch : (i + 1) * global_batch] for i in range(full)]
    expected = [by_hand[i * global_batch : (i + 1) * global_batch] for i in range(full)]
    assert sorted(batches) == sorted(expected)
    assert order[full * global_batch :] == by_hand[full * global_batch :]
    assert order == epoch_permutation(n, seed, epoch, lengths, global_batch).tolist()
    if full > 2:  # the batches' order is shuffled: not the windows' long-to-short order
        assert batches != expected
    other = epoch_permutation(n, seed, epoch + 1, lengths, global_batch).tolist()
    other_batches = [sorted(other[i * global_batch : (i + 1) * global_batch]) for i in range(full)]
    assert sorted(other_batches) != sorted(sorted(b) for b in batches)

    def padded(o):  # tokens after trim_padding: each batch cut to its longest row, rounded up to 8
        cut = [o[i : i + global_batch] for i in range(0, n, global_batch)]
        return sum(math.ceil(int(lengths[b].max()) / 8) * 8 * len(b) for b in cut)

    if n > window:
        assert padded(order) < 0.65 * padded(plain)


def test_group_by_length_needs_dynamic_padding_and_lengths(tmp_path):
    """A setting that cannot work fails before training, naming itself: group_by_length without
    dynamic padding, or on data that holds no lengths (a pre-training stream)."""
    from bertdistill.settings import SettingsError

    with pytest.raises(SettingsError, match="group_by_length needs dynamic_padding"):
        TrainConfig(epochs=1, dynamic_padding=False, group_by_length=True)

    class NoLengths:
        def __len__(self):
            return 8

        def batch(self, indices):
            return classifier_data(8).batch(indices)

    cfg = TrainConfig(max_steps=1, batch_size=4, group_by_length=True, device="cpu")
    with pytest.raises(SettingsError, match="group_by_length: false"):
        Trainer(cfg, tmp_path / "run").fit(tiny_classifier(), NoLengths())
    unmasked = TensorDataset({k: v for k, v in classifier_data(8).tensors.items() if k != "attention_mask"})
    with pytest.raises(SettingsError, match="group_by_length needs an attention_mask"):
        Trainer(cfg, tmp_path / "run2").fit(tiny_classifier(), unmasked)


def _torchrun(out: Path, *args: str, wait: bool = True):
    """train_child.py under torchrun with 2 processes on the CPU (gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(CHILD)]
    cmd += ["--out", str(out), *args]
    if wait:
        return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sgd_step_two_ranks_uneven_last_batch(tmp_path):
    """2 processes (gloo, dynamic padding on) with plain SGD of lr 1: each step moves the weights
    by −∇ of the mean over the step's rows, computed here in one process; the last step's 7 rows
    split 4 + 3 over the ranks, so a mean of the two ranks' means would weigh rank 1's rows 4/3
    too much and fail."""
    out = tmp_path / "two"
    args = ["--objective", "classifier", "--examples", str(N), "--sgd", "--dump-steps", "--batch", "4"]
    two = _torchrun(out, *args, "--steps", "3", "--snapshot-every", "100")
    assert two.returncode == 0, two.stderr[-3000:]
    data = classifier_data(N)
    start = tiny_classifier().state_dict()
    states = [start] + [torch.load(out / f"step{s}.pt", weights_only=True) for s in (1, 2, 3)]
    terms = [{"loss": float(r["loss"])} for r in read_csv(out / "train.csv")]
    _check_sgd_steps(states, terms, data, seed=3)


@pytest.mark.slow
def test_ddp_with_dynamic_padding_matches_one_process(tmp_path):
    """Dynamic padding on, AdamW: 2 processes with micro-batches of 4 (each rank cuts its own
    padding; the last step of each epoch splits 4 + 3) give one process with batches of 8 the
    same logged losses (rel 1e-5) and weights (atol 1e-5) over 7 steps, for the classifier (a
    mean over rows). Not bit-identical: padded lengths and the all-reduce order differ."""
    args = ["--objective", "classifier", "--examples", str(N), "--optimizer", "adamw", "--steps", "7"]
    one = child(tmp_path / "one", *args, "--batch", "8", wait=False)
    two = _torchrun(tmp_path / "two", *args, "--batch", "4")
    assert one.wait(timeout=300) == 0, one.communicate()[1][-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_csv(tmp_path / "one" / "train.csv"), read_csv(tmp_path / "two" / "train.csv")
    assert [float(r["loss"]) for r in a] == pytest.approx([float(r["loss"]) for r in b], rel=1e-5)
    wa = torch.load(tmp_path / "one" / "objective.pt", weights_only=True)
    wb = torch.load(tmp_path / "two" / "objective.pt", weights_only=True)
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-5) for k in wa)


# ----------------------------------------------------------------------------------------------
# Mixed precision


def _one_sgd_step(tmp_path, precision, name, device="cpu"):
    cfg = _sgd_config(max_steps=1, batch_size=GLOBAL, precision=precision, lr=0.1, device=device)
    # Weights of std 0.3: logits far from 0, so the loss is not stuck near ln 3 (std 0.02's).
    states, terms, _ = _fit_recording(cfg, tmp_path, tiny_classifier(init=0.3), classifier_data(N), name)
    delta = {k: states[1][k] - states[0][k] for k in states[0]}
    return terms[0]["loss"], delta, states[1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("precision", "loss_rel", "step_rel"), [("bf16", 5e-3, 3e-2), ("fp16", 1e-3, 1e-2)])
def test_mixed_precision_loss_and_step_close_to_fp32(tmp_path, monkeypatch, precision, loss_rel, step_rel, device):
    """Under autocast on ``device`` (the CPU; CUDA on a GPU machine) the first loss is within
    ``loss_rel`` of the CPU's fp32 loss (bf16 5e-3, fp16 1e-3) and one SGD step's update (all
    weights as one vector) within ``step_rel`` of fp32's in L2 norm (bf16 3e-2, fp16 1e-2); master
    weights stay fp32. Measured on CPU over 4 seeds: loss at most 6e-4 (bf16) and 2e-4 (fp16),
    update 5e-3 and 1.4e-3, so the bounds hold 6x or more of margin. fp16's update passes through
    the gradient scaler (scale 2^16, unscaled before the step): a scale left in the gradient would
    fail by far."""
    _sgd(monkeypatch)
    ref_loss, ref_delta, _ = _one_sgd_step(tmp_path, "fp32", "fp32")
    loss, delta, after = _one_sgd_step(tmp_path, precision, precision, device)
    assert loss == pytest.approx(ref_loss, rel=loss_rel)
    flat = torch.cat([delta[k].flatten() for k in delta])
    ref = torch.cat([ref_delta[k].flatten() for k in ref_delta])
    assert float(ref.norm()) > 1e-3  # a real step
    assert float((flat - ref).norm()) <= step_rel * float(ref.norm())
    assert all(v.dtype == torch.float32 for v in after.values())


class _Overflow(torch.nn.Module):
    """The classifier objective whose loss is multiplied by ``factor`` while ``armed``: 1e30
    scaled by 2^16 overflows fp16 gradients (as a loss spike would) though the loss is finite."""

    def __init__(self, inner, factor=1e30):
        super().__init__()
        self.inner, self.student, self.projection = inner, inner.student, None
        self.armed, self.factor = False, factor

    def forward(self, batch, targets):
        terms = self.inner(batch, targets)
        if self.armed:
            terms = {**terms, "loss": terms["loss"] * self.factor}
        return terms


@pytest.mark.parametrize("device", DEVICES)
def test_grad_scaler_skips_an_overflow_step_and_goes_on(tmp_path, device):
    """fp16 (AdamW, clipping on: the defaults; fused AdamW on CUDA): a step whose scaled gradients
    overflow is skipped: weights and the optimizer's state unchanged, the scale halved
    (2^16 → 2^15), counted in ``skipped_steps``; the next steps update the weights again."""
    objective = _Overflow(tiny_classifier())
    snap = tmp_path / "snap"
    seen = []

    def on_step(step, terms):
        state = load_snapshot_file(snap / "snapshot.pt")
        seen.append(({k: v.to("cpu", copy=True) for k, v in objective.state_dict().items()}, state))
        objective.armed = step == 1  # step 2 overflows

    cfg = TrainConfig(
        max_steps=4, batch_size=GLOBAL, lr=1e-2, precision="fp16", snapshot_every=1, log_every=1, device=device
    )
    result = Trainer(cfg, snap, on_step=on_step).fit(objective, classifier_data(N))
    scales = [s["scaler"]["scale"] for _, s in seen]
    assert scales == [2.0**16, 2.0**15, 2.0**15, 2.0**15]
    (w1, s1), (w2, s2), (w3, s3), _ = seen
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # skipped
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)  # and going on
    adam_steps = [float(s["optimizer"]["state"][0]["step"]) for s in (s1, s2, s3)]
    assert adam_steps == [1.0, 1.0, 2.0]
    assert result.skipped_steps == 1 and s2["skipped"] == 1


# ----------------------------------------------------------------------------------------------
# Resume: keep best, and under 2-process DDP


def _wait_for(proc: subprocess.Popen, marker: Path, what: str) -> None:
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, what
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["random", "grouped"])
def test_resume_keep_best_after_sigkill_selects_the_same_checkpoint(tmp_path, order):
    """keep: best, evaluations every 2 steps, snapshots every 3, dropout on, dynamic padding on,
    batches in random order or grouped by length (the embedded default's SQuAD stages):
    a run SIGKILLed at step 8 and rerun (resuming the step-6 snapshot) selects the same step with
    the same metric, has the same evaluation history, and ends with bit-identical weights as the
    uninterrupted run. The best step (4, by the scripted scores) comes before the snapshot, so only
    the snapshot's best-so-far state can bring it back; each metric adds 1e-3 × an irregular
    function of the weights (``scripted_metric``), so equal histories mean the evaluated weights
    were bit-identical too."""
    args = ["--steps", "10", "--snapshot-every", "3", "--eval-every", "2", "--keep", "best"]
    args += ["--group-by-length"] if order == "grouped" else []
    full = child(tmp_path / "full", *args, wait=False)  # side by side with the interrupted run
    proc = child(tmp_path / "killed", *args, "--block-at", "8", wait=False)
    _wait_for(proc, tmp_path / "killed" / "blocked", "child never reached step 8")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert full.wait(timeout=300) == 0, full.communicate()[1][-3000:]
    assert load_snapshot_file(tmp_path / "killed" / "snapshots" / "snapshot.pt")["step"] == 6
    resumed = child(tmp_path / "killed", *args)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full" / "selection.json").read_text())
    b = json.loads((tmp_path / "killed" / "selection.json").read_text())
    assert a == b
    assert a["keep"] == "best" and a["selected_step"] == 4 and a["final_step"] == 10
    assert [h["step"] for h in a["history"]] == [h["evaluated_step"] for h in a["history"]] == [2, 4, 6, 8, 10]
    wa, wb = weights(tmp_path / "full"), weights(tmp_path / "killed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["random", "grouped"])
def test_ddp_resume_after_sigterm_equals_uninterrupted(tmp_path, order):
    """2 processes (gloo), dynamic padding on, batches in random order or grouped by length,
    dropout on, keep: best with an evaluation every
    step: SIGTERM to both ranks at step 5 writes a snapshot at the end of step 6 and stops;
    rerunning resumes there and ends with bit-identical weights, the same evaluation history and
    the same selected step (step 4: before the snapshot, so it must come from it) as the
    uninterrupted 2-process run, on rank 0 and on rank 1 (only rank 0 evaluates: the other rank
    must receive the selection and the best weights)."""
    args = ["--steps", "8", "--snapshot-every", "100", "--eval-every", "1", "--keep", "best", "--dropout", "0.1"]
    args += ["--group-by-length"] if order == "grouped" else []
    # The uninterrupted and the interrupted run side by side (each is mostly start-up).
    full = _torchrun(tmp_path / "full", *args, wait=False)
    term = _torchrun(tmp_path / "t", *args, "--term-at", "5")
    assert full.wait(timeout=300) == 0, full.communicate()[1][-3000:]
    assert term.returncode != 0
    assert not (tmp_path / "t" / "model").exists()
    assert load_snapshot_file(tmp_path / "t" / "snapshots" / "snapshot.pt")["step"] == 6
    resumed = _torchrun(tmp_path / "t", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "full" / "selection.json").read_text())
    b = json.loads((tmp_path / "t" / "selection.json").read_text())
    assert a == b and a["keep"] == "best" and a["selected_step"] == 4
    assert [h["step"] for h in a["history"]] == [h["evaluated_step"] for h in a["history"]] == list(range(1, 9))
    wa, wb = weights(tmp_path / "full"), weights(tmp_path / "t")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # Every rank ends with rank 0's selection and weights, resumed or not.
    for out in (tmp_path / "full", tmp_path / "t"):
        ranks = [torch.load(out / f"final_rank{r}.pt", weights_only=True) for r in (0, 1)]
        assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0]), out.name
        assert json.loads((out / "selection_rank1.json").read_text()) == a, out.name
