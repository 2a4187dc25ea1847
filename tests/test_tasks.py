"""Task stages on tiny data: features, cached teacher logits, backbone, prediction, final."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bertdistill import stages
from bertdistill.checkpoints import load_model
from bertdistill.data.glue import GlueError, read_sst2_tsv, write_sst2_tsv
from bertdistill.objectives import PredictionObjective
from bertdistill.tasks import read_h5
from helpers import general_student, task_teacher, write_squad, write_sst2


def test_tsv_round_trip(tmp_path):
    sents = ["a fine film", "tabs\tand\nnew lines", 'quotes "stay" as they are']
    write_sst2_tsv(tmp_path / "t.tsv", sents, [1, 0, 1])
    s, y = read_sst2_tsv(tmp_path / "t.tsv")
    assert s == ["a fine film", "tabs and new lines", 'quotes "stay" as they are'] and y == [1, 0, 1]
    (tmp_path / "bad.tsv").write_text("sentence\tlabel\ngood\t1\nbroken line\n")
    with pytest.raises(GlueError, match=r"bad.tsv:3: expected"):
        read_sst2_tsv(tmp_path / "bad.tsv")


@pytest.mark.parametrize("task", ["sst2", "squad"])
def test_task_stages_end_to_end(tmp_path, task):
    head = {"sst2": "classification", "squad": "qa"}[task]
    teacher = task_teacher(tmp_path / "teacher", head)
    if task == "sst2":
        d = write_sst2(tmp_path / "data")
        train, dev, settings = d / "train.tsv", d / "dev.tsv", {"max_seq_length": 32}
    else:
        d = write_squad(tmp_path / "data")
        train, dev = d / "train-v1.1.json", d / "dev-v1.1.json"
        settings = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16}
    counts = stages.task_features(
        task, train, dev, teacher / "vocab.txt", tmp_path / "f/train.hdf5", tmp_path / "f/dev.hdf5", settings
    )
    assert counts["train"] > 0 and counts["dev"] > 0
    stages.task_teacher_logits(task, teacher, tmp_path / "f/train.hdf5", tmp_path / "logits.hdf5", batch_size=8)
    general = general_student(tmp_path / "general", teacher)
    stages.task_backbone(
        task,
        teacher,
        general,
        tmp_path / "f/train.hdf5",
        tmp_path / "backbone",
        train={"epochs": 1, "batch_size": 8, "lr": 5e-5, "schedule": "constant", "dynamic_padding": False},
        losses={},
    )
    stages.task_prediction(
        task,
        teacher,
        tmp_path / "backbone",
        tmp_path / "f/train.hdf5",
        tmp_path / "f/dev.hdf5",
        dev,
        tmp_path / "prediction",
        train={"epochs": 2, "batch_size": 8, "lr": 3e-5, "eval_every": 2, "keep": "best", "dynamic_padding": False},
        temperature=1.0,
        eval_batch_size=64,
        n_best=20,
        max_answer_length=30,
        teacher_logits=tmp_path / "logits.hdf5",
    )
    metrics = stages.task_final(
        task,
        tmp_path / "prediction",
        teacher,
        tmp_path / "f/dev.hdf5",
        dev,
        tmp_path / "final",
        eval_batch_size=64,
        n_best=20,
        max_answer_length=30,
        backbone=tmp_path / "backbone",
    )
    key = "accuracy" if task == "sst2" else "f1"
    assert set(metrics["student"]) >= {key} and set(metrics["teacher"]) >= {key}
    assert metrics["student_parameters"] < metrics["teacher_parameters"]
    assert set(metrics["stage_wall_s"]) == {"backbone", "prediction"}
    assert metrics["checkpoint_selection"]["keep"] == "best"
    assert key in metrics["baseline"] and 0 <= metrics["baseline"][key] <= 100
    saved = json.loads((tmp_path / "final/metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert load_model(tmp_path / "final", head=head).config.hidden_size == 16
    preds = json.loads((tmp_path / "final/predictions.json").read_text())
    assert set(preds) == {"student", "teacher"}


def test_cached_logits_give_the_live_teacher_loss(tmp_path):
    """Prediction loss with cached logits == with the live teacher in eval mode (SQuAD, full length)."""
    teacher = task_teacher(tmp_path / "teacher", "qa")
    d = write_squad(tmp_path / "data")
    stages.task_features(
        "squad",
        d / "train-v1.1.json",
        d / "dev-v1.1.json",
        teacher / "vocab.txt",
        tmp_path / "train.hdf5",
        tmp_path / "dev.hdf5",
        {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16},
    )
    stages.task_teacher_logits("squad", teacher, tmp_path / "train.hdf5", tmp_path / "logits.hdf5", batch_size=5)
    arrays, _ = read_h5(tmp_path / "train.hdf5")
    cached, _ = read_h5(tmp_path / "logits.hdf5", required=("teacher_logits",))
    tmodel = load_model(teacher, head="qa").eval()
    torch.manual_seed(0)
    student = load_model(teacher, head="qa").train()
    objective = PredictionObjective(student)
    idx = np.arange(min(8, len(arrays["input_ids"])))
    batch = {
        k: torch.from_numpy(arrays[k][idx].astype(np.int64)) for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    with torch.inference_mode():
        live = objective.teacher_targets(tmodel, batch)
    live = {k: v.clone() for k, v in live.items()}
    from_cache = objective.teacher_targets(
        None, {**batch, "teacher_logits": torch.from_numpy(cached["teacher_logits"][idx])}
    )
    torch.manual_seed(1)
    a = objective(batch, live)["loss"]
    torch.manual_seed(1)
    b = objective(batch, from_cache)["loss"]
    assert abs(a.item() - b.item()) < 1e-6


@pytest.mark.parametrize("head", ["classification", "qa"])
def test_sorted_trimmed_prediction_equals_full_length(tmp_path, head):
    """Longest-first batches cut to their longest row give every row's logits at full length,
    in the input order (padding positions of QA rows are -10000)."""
    from bertdistill.inference import predict_logits

    model = load_model(task_teacher(tmp_path / "t", head), head=head)
    g = torch.Generator().manual_seed(0)
    n, length = 23, 40
    lengths = torch.randint(3, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = torch.randint(5, model.config.vocab_size, (n, length), generator=g) * mask
    arrays = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros((n, length), int)}
    fast = predict_logits(model, arrays, batch_size=4)
    full = predict_logits(model, arrays, batch_size=4, trim=False)
    assert fast.shape == full.shape
    if head == "qa":
        real = np.broadcast_to(mask.numpy()[:, None, :].astype(bool), full.shape)
        assert np.allclose(fast[real], full[real], atol=1e-5)
        assert (fast[~real] == -10000.0).all()
    else:
        assert np.allclose(fast, full, atol=1e-5)


def test_metrics_say_the_teacher_ran_live_with_dropout(tmp_path):
    """Without cached logits the prediction stage runs the teacher every batch, with its dropout
    on by default (the reference's way); metrics.json says so instead of claiming eval mode."""
    teacher = task_teacher(tmp_path / "teacher", "classification")
    d = write_sst2(tmp_path / "data", n_train=16, n_dev=8)
    f = tmp_path / "f"
    stages.task_features("sst2", d / "train.tsv", d / "dev.tsv", teacher, f / "train.hdf5", f / "dev.hdf5", {})
    general = general_student(tmp_path / "general", teacher)
    evaluation = {"eval_batch_size": 8, "n_best": 20, "max_answer_length": 30}
    stages.task_prediction(
        "sst2",
        teacher,
        general,
        f / "train.hdf5",
        f / "dev.hdf5",
        d / "dev.tsv",
        tmp_path / "prediction",
        train={"max_steps": 2, "batch_size": 8},
        temperature=1.0,
        **evaluation,
    )
    metrics = stages.task_final(
        "sst2", tmp_path / "prediction", teacher, f / "dev.hdf5", d / "dev.tsv", tmp_path / "final", **evaluation
    )
    assert (metrics["teacher_logits"], metrics["teacher_logits_mode"]) == ("live", "train (dropout on)")
