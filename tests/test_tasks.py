"""Task stages on tiny data: features, cached teacher logits, backbone, prediction, final."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertdistill import stages
from bertdistill.checkpoints import CheckpointError, load_model
from bertdistill.data.glue import GlueError, read_sst2_tsv, write_sst2_tsv
from bertdistill.data.squad import load_squad_json, squad_v11_metrics
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


def test_label_names_follow_each_task_class_order(tmp_path):
    """Models name their classes as GLUE orders them: an RTE/QNLI file's `entailment` row reads as
    class 0, which is named entailment; SST-2 0/1 are negative/positive; SQuAD has no classes."""
    from bertdistill.data.glue import GlueFormat, write_glue_tsv
    from bertdistill.tasks import TASKS, GlueTask

    expected = {
        "sst2": ("negative", "positive"),
        "mrpc": ("not_equivalent", "equivalent"),
        "rte": ("entailment", "not_entailment"),
        "qnli": ("entailment", "not_entailment"),
        "qqp": ("not_duplicate", "duplicate"),
        "squad": (),
    }
    assert {name: t.label_names for name, t in TASKS.items()} == expected
    for name in ("rte", "qnli"):
        t = TASKS[name]
        rows = [("a", "b"), ("c", "d")]
        write_glue_tsv(tmp_path / f"{name}.tsv", t.fmt, rows, [1, 0])
        lines = (tmp_path / f"{name}.tsv").read_text().splitlines()
        assert lines[1].endswith("\tnot_entailment") and lines[2].endswith("\tentailment")
        assert [t.label_names[y] for y in t.read(tmp_path / f"{name}.tsv").labels] == ["not_entailment", "entailment"]
    with pytest.raises(ValueError, match="1 label names for 2 labels"):
        GlueTask("x", GlueFormat(("sentence",)), ("only",))


def _test_split(task: str, dev: Path, folder: Path) -> Path:
    """A test file distinct from dev (ids and order changed), in the task's format."""
    folder.mkdir(parents=True, exist_ok=True)
    if task == "sst2":
        lines = dev.read_text().splitlines(keepends=True)
        out = folder / "test.tsv"
        out.write_text(lines[0] + "".join(reversed(lines[1:])))
        return out
    data = json.loads(dev.read_text())
    for a in data["data"]:
        for p in a["paragraphs"]:
            for qa in p["qas"]:
                qa["id"] = "test-" + qa["id"]
    out = folder / "test-v1.1.json"
    out.write_text(json.dumps(data))
    return out


def _recomputed(task: str, data: Path, predictions: dict) -> float:
    """The metric recomputed from predictions.json and the data file alone: the official SQuAD
    v1.1 metric, or accuracy against the TSV's labels."""
    if task == "squad":
        return squad_v11_metrics(load_squad_json(data), predictions)["f1"]
    _, labels = read_sst2_tsv(data)
    return 100.0 * sum(int(p == y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


@pytest.mark.parametrize("task", ["sst2", "squad"])
def test_task_stages_end_to_end(tmp_path, task):
    """Every task stage on its default path (dynamic padding), then task_final: test reported,
    dev beside it, and every figure recomputed from predictions.json and the data files."""
    head = {"sst2": "classification", "squad": "qa"}[task]
    teacher = task_teacher(tmp_path / "teacher", head)
    if task == "sst2":
        d = write_sst2(tmp_path / "data")
        train, dev, settings = d / "train.tsv", d / "dev.tsv", {"max_seq_length": 32}
    else:
        d = write_squad(tmp_path / "data")
        train, dev = d / "train-v1.1.json", d / "dev-v1.1.json"
        settings = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16}
    test = _test_split(task, dev, tmp_path / "test")
    counts = stages.task_features(
        task, train, dev, teacher / "vocab.txt", tmp_path / "f/train.hdf5", tmp_path / "f/dev.hdf5", settings
    )
    assert counts["train"] > 0 and counts["dev"] > 0
    assert stages.heldout_features(task, test, teacher / "vocab.txt", tmp_path / "f/test.hdf5", settings) > 0
    stages.task_teacher_logits(task, teacher, tmp_path / "f/train.hdf5", tmp_path / "logits.hdf5", batch_size=8)
    general = general_student(tmp_path / "general", teacher)
    stages.task_backbone(
        task,
        teacher,
        general,
        tmp_path / "f/train.hdf5",
        tmp_path / "backbone",
        train={"epochs": 1, "batch_size": 8, "lr": 5e-5, "schedule": "constant"},
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
        train={"epochs": 2, "batch_size": 8, "lr": 3e-5, "eval_every": 2, "keep": "best"},
        temperature=1.0,
        eval_batch_size=64,
        n_best=20,
        max_answer_length=30,
        teacher_logits=tmp_path / "logits.hdf5",
    )
    # The no-distillation baseline: the general student fine-tuned on the labels, same budget.
    stages.finetune_teacher(
        task,
        general,
        tmp_path / "f/train.hdf5",
        tmp_path / "f/dev.hdf5",
        dev,
        tmp_path / "baseline",
        train={"epochs": 2, "batch_size": 8, "lr": 3e-5, "eval_every": 2, "keep": "best"},
        eval_batch_size=64,
        n_best=20,
        max_answer_length=30,
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
        test_features=tmp_path / "f/test.hdf5",
        test=test,
        no_distillation=tmp_path / "baseline",
    )
    key = "accuracy" if task == "sst2" else "f1"
    assert metrics["split"] == "test" and set(metrics["dev"]) >= {"student", "teacher", "retention", "baseline"}
    assert set(metrics["student"]) >= {key} and set(metrics["teacher"]) >= {key}
    assert metrics["student_parameters"] < metrics["teacher_parameters"]
    assert set(metrics["stage_wall_s"]) == {"backbone", "prediction", "no_distillation"}
    assert metrics["checkpoint_selection"]["keep"] == "best"
    assert metrics["no_distillation_selection"]["keep"] == "best"
    assert key in metrics["baseline"] and 0 <= metrics["baseline"][key] <= 100
    for split in (metrics, metrics["dev"]):
        gain = split["student"][key] - split["no_distillation"][key]
        assert split["distillation_gain"] == pytest.approx(gain)
    saved = json.loads((tmp_path / "final/metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert load_model(tmp_path / "final", head=head).config.hidden_size == 16
    preds = json.loads((tmp_path / "final/predictions.json").read_text())
    assert preds["split"] == "test" and set(preds["dev"]) == {"student", "teacher", "no_distillation"}
    for side in ("student", "teacher", "no_distillation"):
        assert _recomputed(task, test, preds[side]) == pytest.approx(metrics[side][key])
        assert _recomputed(task, dev, preds["dev"][side]) == pytest.approx(metrics["dev"][side][key])
        if task == "squad":  # test ids are the test file's own
            assert all(k.startswith("test-") for k in preds[side])


def test_cached_logits_refused_for_another_teacher_or_other_features(tmp_path):
    """The logit cache records the teacher's and the features' digests: logits of another teacher,
    or of other features with the same row count, are refused (a row-count check accepted both)."""
    teacher = task_teacher(tmp_path / "teacher", "classification")
    other = task_teacher(tmp_path / "other", "classification", seed=1)
    d = write_sst2(tmp_path / "data", n_train=16, n_dev=8)
    f = tmp_path / "f"
    stages.task_features("sst2", d / "train.tsv", d / "dev.tsv", teacher, f / "train.hdf5", f / "dev.hdf5", {})
    shifted = write_sst2(tmp_path / "shifted", n_train=16, n_dev=8, seed=3)
    stages.train_features("sst2", shifted / "train.tsv", teacher, f / "shifted.hdf5", {})
    general = general_student(tmp_path / "general", teacher)
    evaluation = {"eval_batch_size": 8, "n_best": 20, "max_answer_length": 30}

    def prediction(logits, features=f / "train.hdf5"):
        return stages.task_prediction(
            "sst2",
            teacher,
            general,
            features,
            f / "dev.hdf5",
            d / "dev.tsv",
            tmp_path / "prediction",
            train={"max_steps": 1, "batch_size": 8},
            temperature=1.0,
            teacher_logits=logits,
            **evaluation,
        )

    stages.task_teacher_logits("sst2", other, f / "train.hdf5", tmp_path / "other.hdf5", batch_size=8)
    with pytest.raises(CheckpointError, match=r"other.hdf5: these teacher logits were computed for another teacher"):
        prediction(tmp_path / "other.hdf5")
    stages.task_teacher_logits("sst2", teacher, f / "shifted.hdf5", tmp_path / "shifted.hdf5", batch_size=8)
    with pytest.raises(CheckpointError, match=r"were computed for another features"):
        prediction(tmp_path / "shifted.hdf5")
    stages.task_teacher_logits("sst2", teacher, f / "train.hdf5", tmp_path / "right.hdf5", batch_size=8)
    assert prediction(tmp_path / "right.hdf5").is_dir()


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
