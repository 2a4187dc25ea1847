"""Task distillation: features, cached teacher logits, backbone and prediction stages, the final
evaluation; and fine-tuning a task teacher. Every task-specific step goes through the task
registry (:data:`bertdistill.tasks.TASKS`)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoints import VOCAB_NAME, CheckpointError, check_same_vocab, load_model, save_model, vocab_file
from ..settings import BackboneLossConfig, FeatureSettings, TrainConfig
from ..tasks import build_task_features, features_lowercase, get_task, read_h5, write_h5
from .common import check_positions, dev_evaluator, train_and_save
from .registry import TaskName, describe, stage


def _features(
    task: TaskName, source: Path, vocab: Path, output: Path, training: bool, settings: FeatureSettings
) -> int:
    t0 = time.time()
    arrays, attrs = build_task_features(get_task(task), source, vocab_file(vocab), training, settings)
    attrs["wall_s"] = round(time.time() - t0, 3)
    write_h5(arrays, output, attrs)
    return int(attrs["features"])


@stage("features", rules=("task_features",))
def task_features(
    task: TaskName,
    train: Path,
    dev: Path,
    vocab: Path,
    train_output: Path,
    dev_output: Path,
    settings: FeatureSettings,
) -> dict[str, int]:
    """Feature files (HDF5) of the training and dev splits: their own stage, never inside training.

    Args:
        task: the task
        train: training data (SQuAD v1.1 JSON or GLUE TSV), possibly augmented
        dev: dev data
        vocab: vocab.txt, or a model folder holding one
        train_output: training features
        dev_output: dev features
        settings: feature windows (unset fields: the task's defaults)
    """
    return {
        "train": _features(task, train, vocab, train_output, True, settings),
        "dev": _features(task, dev, vocab, dev_output, False, settings),
    }


@stage("train-features", rules=("finetune_features",))
def train_features(task: TaskName, train: Path, vocab: Path, output: Path, settings: FeatureSettings) -> int:
    """Features of one training split, e.g. the original data a teacher is fine-tuned on while the
    students train on the augmented copy; returns the number of features.

    Args:
        task: the task
        train: training data (SQuAD v1.1 JSON or GLUE TSV)
        vocab: vocab.txt, or a model folder holding one
        output: the HDF5 feature file
        settings: feature windows (unset fields: the task's defaults)
    """
    return _features(task, train, vocab, output, True, settings)


@stage("test-features", rules=("test_features",))
def heldout_features(task: TaskName, test: Path, vocab: Path, output: Path, settings: FeatureSettings) -> int:
    """Features of the held-out test split (what the final metrics report); returns their number.

    Args:
        task: the task
        test: test data (SQuAD v1.1 JSON or GLUE TSV)
        vocab: vocab.txt, or a model folder holding one
        output: the HDF5 feature file
        settings: feature windows (unset fields: the task's defaults)
    """
    return _features(task, test, vocab, output, False, settings)


@stage("split-dev", rules=("split_dev",))
def split_dev(task: TaskName, train: Path, train_output: Path, dev_output: Path, fraction: float, seed: int) -> dict:
    """Carve a dev split out of the training data (``dev: {from_train: ...}``), so that a task
    whose official dev file serves as its test split still has a set to select checkpoints on.
    SQuAD: whole articles (by title), so no context is shared; GLUE TSV: rows, by their text.
    A fixed split by a hash: it does not depend on file order.

    Args:
        task: the task
        train: the training data (SQuAD v1.1 JSON or GLUE TSV)
        train_output: what remains for training
        dev_output: the dev split
        fraction: share of articles (SQuAD) or rows (GLUE) that go to dev
        seed: seed of the hash
    """
    from ..data.builders import split_of

    t = get_task(task)
    if t.data_ext == "json":
        from ..data.squad import load_squad_json

        parts: dict[str, list] = {"train": [], "dev": []}
        for i, article in enumerate(load_squad_json(train)):
            first = article["paragraphs"][0]["context"][:200] if article["paragraphs"] else str(i)
            key = article.get("title") or first
            parts[split_of(str(key), fraction, 0.0, seed)].append(article)
        texts = {k: json.dumps({"version": "1.1", "data": v}, ensure_ascii=False) for k, v in parts.items()}
        counts = {k: sum(len(p["qas"]) for a in v for p in a["paragraphs"]) for k, v in parts.items()}
    else:
        lines = train.read_text(encoding="utf-8").splitlines(keepends=True)
        if not lines:
            raise ValueError(f"{train}: empty; a GLUE TSV needs a header row and examples")
        rows: dict[str, list[str]] = {"train": [lines[0]], "dev": [lines[0]]}
        for line in lines[1:]:
            if line.strip():
                rows[split_of(line.rstrip("\r\n"), fraction, 0.0, seed)].append(line)
        texts = {k: "".join(v) for k, v in rows.items()}
        counts = {k: len(v) - 1 for k, v in rows.items()}
    if not counts["dev"] or not counts["train"]:
        raise ValueError(
            f"{train}: dev.from_train={fraction} leaves {counts['train']} training and {counts['dev']} dev "
            "examples; choose a fraction that leaves both non-empty"
        )
    for key, out in (("train", train_output), ("dev", dev_output)):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(texts[key], encoding="utf-8")
        os.replace(tmp, out)
    return counts


@stage("teacher-logits", rules=("teacher_logits",))
def task_teacher_logits(
    task: TaskName, teacher: Path, features: Path, output: Path, batch_size: int, device: str = "auto"
) -> Path:
    """The task teacher's logits over the training features, computed once in eval mode (the
    reference recomputes them every batch with dropout on; the mode is recorded in the file).

    Args:
        task: the task
        teacher: the task teacher's folder (with its head)
        features: training features
        output: HDF5 file with dataset teacher_logits
        batch_size: inference batch size
        device: auto (CUDA when available), cpu or cuda[:N]
    """
    import torch

    from ..inference import predict_logits
    from ..train import content_digest

    t = get_task(task)
    t0 = time.time()
    arrays, attrs = read_h5(features)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    model = load_model(teacher, head=t.head)
    check_positions(features, arrays["input_ids"].shape[1], (teacher, model))
    # QA: full-length inputs, since the prediction loss's softmax runs over every position, padding
    # included. Classification reads [CLS] only, which padding does not change: trimmed batches.
    logits = predict_logits(model, arrays, batch_size, dev, trim=t.head != "qa")
    write_h5(
        {"teacher_logits": logits.astype(np.float32)},
        output,
        {
            "task": task,
            "teacher": str(teacher),
            "features": str(features),
            "teacher_mode": "eval",
            # what the logits belong to: the prediction stage refuses them for any other pair
            "teacher_sha256": content_digest(teacher),
            "features_sha256": content_digest(features),
            "features_vocab_sha256": attrs.get("vocab_sha256", ""),
            "wall_s": round(time.time() - t0, 3),
        },
    )
    return output


def _task_dataset(features: Path, logits: Path | None = None, keys: tuple[str, ...] = (), teacher: Path | None = None):
    """Training features (and cached teacher logits) as the trainer's dataset. Cached logits are
    used only if they were computed by ``teacher`` over these very ``features`` (their recorded
    digests): logits of another teacher, or of other features with the same row count, would
    otherwise train the student on the wrong targets without a sign."""
    import torch

    from ..train import TensorDataset, content_digest

    arrays, _ = read_h5(features)
    tensors = {
        k: torch.from_numpy(arrays[k].astype(np.int64))
        for k in ("input_ids", "attention_mask", "token_type_ids", *keys)
        if k in arrays
    }
    if logits is not None:
        la, lattrs = read_h5(logits, required=("teacher_logits",))
        for name, path in (("features", features), ("teacher", teacher)):
            if path is None:
                continue
            recorded = str(lattrs.get(f"{name}_sha256", ""))
            if recorded != content_digest(path):
                why = "records no digest (an older file)" if not recorded else f"were computed for another {name}"
                raise CheckpointError(
                    f"{logits}: these teacher logits {why}, not {path}; rebuild them "
                    "(delete the file; Snakemake's rule teacher_logits or `python -m bertdistill teacher-logits`)"
                )
        if len(la["teacher_logits"]) != len(arrays["input_ids"]):
            raise CheckpointError(
                f"{logits}: {len(la['teacher_logits'])} rows for {len(arrays['input_ids'])} "
                f"features in {features}; rebuild the teacher logits"
            )
        tensors["teacher_logits"] = torch.from_numpy(la["teacher_logits"])
    return TensorDataset(tensors)


@stage("finetune", rules=("finetune_teacher", "task_baseline"), distributed=True)
def finetune_teacher(
    task: TaskName,
    teacher: Path,
    features: Path,
    dev_features: Path,
    dev: Path,
    output: Path,
    train: TrainConfig,
    eval_batch_size: int,
    n_best: int,
    max_answer_length: int,
    snapshot_dir: Path | None = None,
) -> dict[str, Any]:
    """Fine-tune a model on a task's hard labels (a new classification or start/end head),
    keeping the best dev checkpoint; the dev metric is recorded in ``distill.json``. Rule
    finetune_teacher fine-tunes the base teacher; rule task_baseline fine-tunes the general student
    with the prediction stage's settings: the no-distillation baseline.

    Args:
        task: the task
        teacher: the model to fine-tune (the base teacher, or the general student for the baseline)
        features: training features
        dev_features: dev features
        dev: dev data
        output: the fine-tuned teacher's folder
        train: training settings
        eval_batch_size: dev inference batch size
        n_best: SQuAD: start/end candidates searched per feature
        max_answer_length: SQuAD: longest answer in tokens
        snapshot_dir: resumable snapshots (default: .{output}.snapshots next to the output)
    """
    import torch

    from ..objectives import SupervisedObjective

    t = get_task(task)
    torch.manual_seed(train.seed)
    model = load_model(teacher, head=t.head, init_head=True, num_labels=t.num_labels)
    data = _task_dataset(features, keys=("labels", "start_positions", "end_positions"))
    check_positions(features, data.tensors["input_ids"].shape[1], (teacher, model))
    vocab = teacher / VOCAB_NAME
    evaluate = dev_evaluator(t, dev_features, dev, vocab, eval_batch_size, n_best, max_answer_length)
    record = {"stage": f"finetune_{task}", "teacher": str(teacher), "examples": len(data)}
    result = train_and_save(
        SupervisedObjective(model),
        data,
        train,
        output,
        snapshot_dir,
        record=record,
        vocab=vocab,
        evaluate=evaluate,
        inputs={"teacher": teacher, "features": features, "dev_features": dev_features},
        labels=t.label_names,
        lowercase=features_lowercase(features),
    )
    return result.selection


@stage("backbone", rules=("task_backbone",), distributed=True)
def task_backbone(
    task: TaskName,
    teacher: Path,
    init: Path,
    features: Path,
    output: Path,
    train: TrainConfig,
    losses: BackboneLossConfig,
    snapshot_dir: Path | None = None,
) -> Path:
    """Backbone (intermediate-layer) distillation on task data, from a general student with its
    projection (SQuAD from phase 2, SST-2 from phase 1).

    Args:
        task: the task
        teacher: the task teacher's folder
        init: the general student to start from (with projection.safetensors)
        features: training features
        output: the student's folder
        train: training settings
        losses: which backbone losses, layer map and masking
        snapshot_dir: resumable snapshots (default: .{output}.snapshots next to the output)
    """
    from ..checkpoints import load_projection
    from ..objectives import BackboneObjective

    t = get_task(task)
    check_same_vocab(init, teacher)
    tmodel = load_model(teacher)
    tmodel.pooler = None
    student = load_model(init)
    student.pooler = None
    data = _task_dataset(features)
    check_positions(features, data.tensors["input_ids"].shape[1], (teacher, tmodel), (init, student))
    objective = BackboneObjective(student, tmodel.config, load_projection(init), losses)
    record = {
        "stage": f"{task}_backbone",
        "teacher": str(teacher),
        "init": str(init),
        "features": str(features),
        "losses": describe(losses),
        "examples": len(data),
    }
    vocab = teacher / VOCAB_NAME
    train_and_save(
        objective,
        data,
        train,
        output,
        snapshot_dir,
        record=record,
        vocab=vocab,
        teacher=tmodel,
        inputs={"teacher": teacher, "init": init, "features": features},
        labels=t.label_names,
        lowercase=features_lowercase(features),
    )
    return output


@stage("prediction", rules=("task_prediction",), distributed=True)
def task_prediction(
    task: TaskName,
    teacher: Path,
    backbone: Path,
    features: Path,
    dev_features: Path,
    dev: Path,
    output: Path,
    train: TrainConfig,
    temperature: float,
    eval_batch_size: int,
    n_best: int,
    max_answer_length: int,
    teacher_logits: Path | None = None,
    snapshot_dir: Path | None = None,
) -> Path:
    """Prediction-layer distillation: soft cross-entropy against the teacher's logits (cached, or
    the live teacher), a new head on the backbone student, dev evaluation every ``eval_every``
    steps, the best or last checkpoint kept (recorded in ``distill.json``).

    Args:
        task: the task
        teacher: the task teacher's folder (runs every batch when teacher_logits is not given)
        backbone: the backbone stage's student
        features: training features
        dev_features: dev features
        dev: dev data (SQuAD post-processing reads its contexts)
        output: the student's folder (with its head)
        train: training settings
        temperature: soft cross-entropy temperature
        eval_batch_size: dev inference batch size
        n_best: SQuAD: start/end candidates searched per feature
        max_answer_length: SQuAD: longest answer in tokens
        teacher_logits: cached teacher logits (the teacher_logits stage); without them the teacher runs every batch
        snapshot_dir: resumable snapshots (default: .{output}.snapshots next to the output)
    """
    import torch

    from ..objectives import PredictionObjective

    t = get_task(task)
    check_same_vocab(backbone, teacher)
    torch.manual_seed(train.seed)
    student = load_model(backbone, head=t.head, init_head=True, num_labels=t.num_labels)
    tmodel = None if teacher_logits is not None else load_model(teacher, head=t.head)
    data = _task_dataset(features, teacher_logits, teacher=teacher)
    check_positions(features, data.tensors["input_ids"].shape[1], (backbone, student))
    vocab = teacher / VOCAB_NAME
    evaluate = dev_evaluator(t, dev_features, dev, vocab, eval_batch_size, n_best, max_answer_length)
    record = {
        "stage": f"{task}_prediction",
        "teacher": str(teacher),
        "backbone": str(backbone),
        "features": str(features),
        "teacher_logits": str(teacher_logits),
        "temperature": temperature,
        "examples": len(data),
    }
    objective = PredictionObjective(student, temperature)
    train_and_save(
        objective,
        data,
        train,
        output,
        snapshot_dir,
        record=record,
        vocab=vocab,
        teacher=tmodel,
        evaluate=evaluate,
        inputs={
            "teacher": teacher,
            "backbone": backbone,
            "features": features,
            "dev_features": dev_features,
            "teacher_logits": teacher_logits,
        },
        labels=t.label_names,
        lowercase=features_lowercase(features),
    )
    return output


def _teacher_logits_record(record: dict[str, Any]) -> dict[str, Any]:
    """How the prediction stage got its teacher logits, from its ``distill.json`` record: the
    cached file (and the mode it was computed in) or the live teacher (dropout on or off)."""
    cached = record.get("teacher_logits")
    if cached not in (None, "None"):
        mode = (
            read_h5(cached, required=("teacher_logits",))[1].get("teacher_mode", "eval")
            if Path(cached).is_file()
            else "eval"
        )
        return {"teacher_logits": "cached", "teacher_logits_mode": str(mode)}
    dropout = record.get("train", {}).get("teacher_dropout", True)
    return {"teacher_logits": "live", "teacher_logits_mode": "train (dropout on)" if dropout else "eval"}


@stage("final", rules=("task_final",))
def task_final(
    task: TaskName,
    student: Path,
    teacher: Path,
    dev_features: Path,
    dev: Path,
    output: Path,
    eval_batch_size: int,
    n_best: int,
    max_answer_length: int,
    general: list[Path] | None = None,
    features: Path | None = None,
    backbone: Path | None = None,
    test_features: Path | None = None,
    test: Path | None = None,
    no_distillation: Path | None = None,
) -> dict[str, Any]:
    """``results/{task}_final``: the student with its head, ``metrics.json`` (student and teacher
    metrics by the same code, the trivial baseline, sizes, retention, wall time per stage) and
    ``predictions.json``.

    Checkpoints were selected on dev, so the headline (``split``, ``student``, ``teacher``,
    ``retention``, ``baseline``) is the held-out test split when the task has one; the dev
    figures sit under ``dev``. Without a test split the headline is dev, and says so.

    Args:
        task: the task
        student: the prediction stage's student
        teacher: the task teacher's folder
        dev_features: dev features
        dev: dev data
        output: the final folder
        eval_batch_size: dev inference batch size
        n_best: SQuAD: start/end candidates searched per feature
        max_answer_length: SQuAD: longest answer in tokens
        general: general-distillation folders the student went through (for their wall time)
        features: the training feature file (for its wall time)
        backbone: the backbone stage's folder (for its wall time)
        test_features: test features (the reported split; none: dev is reported)
        test: test data
        no_distillation: the no-distillation baseline's folder (task_baseline), evaluated beside the student
    """
    t = get_task(task)
    vocab = teacher / VOCAB_NAME
    s_model = load_model(student, head=t.head)
    t_model = load_model(teacher, head=t.head)
    b_model = load_model(no_distillation, head=t.head) if no_distillation is not None else None
    key = t.metric
    splits = {"dev": (dev_features, dev)}
    if test_features is not None and test is not None:
        splits["test"] = (test_features, test)
    results: dict[str, dict[str, Any]] = {}
    predictions: dict[str, dict[str, Any]] = {}
    for name, (feature_file, data) in splits.items():
        arrays, _ = read_h5(feature_file)
        s_metrics, s_preds = t.evaluate(s_model, arrays, data, vocab, eval_batch_size, n_best, max_answer_length)
        t_metrics, t_preds = t.evaluate(t_model, arrays, data, vocab, eval_batch_size, n_best, max_answer_length)
        results[name] = {
            "student": s_metrics,
            "teacher": t_metrics,
            "retention": (s_metrics[key] / t_metrics[key]) if t_metrics[key] else None,
            "baseline": t.baseline(arrays, data),
            "examples": len(s_preds),
        }
        predictions[name] = {"student": s_preds, "teacher": t_preds}
        if b_model is not None:
            b_metrics, b_preds = t.evaluate(b_model, arrays, data, vocab, eval_batch_size, n_best, max_answer_length)
            results[name]["no_distillation"] = b_metrics
            results[name]["distillation_gain"] = s_metrics[key] - b_metrics[key]
            predictions[name]["no_distillation"] = b_preds
    reported = "test" if "test" in results else "dev"
    stages = {
        **{f"general_{Path(p).name}": p for p in general or []},
        "features": features,
        "backbone": backbone,
        "prediction": student,
        "no_distillation": no_distillation,
    }
    wall = {}
    for name, path in stages.items():  # model folders (distill.json) or HDF5 files (attrs)
        if path is None:
            continue
        if (path / "distill.json").is_file():
            wall[name] = json.loads((path / "distill.json").read_text()).get("wall_s")
        elif path.is_file():
            wall[name] = float(read_h5(path)[1].get("wall_s", float("nan")))
    record = json.loads((student / "distill.json").read_text()) if (student / "distill.json").is_file() else {}
    metrics = {
        "task": task,
        "metric": key,
        "split": reported,
        **results[reported],
        "dev": results["dev"],
        "student_parameters": s_model.num_parameters(),
        "teacher_parameters": t_model.num_parameters(),
        "stage_wall_s": wall,
        "checkpoint_selection": record.get("selection"),
        **(
            {"no_distillation_selection": json.loads((no_distillation / "distill.json").read_text()).get("selection")}
            if no_distillation is not None and (no_distillation / "distill.json").is_file()
            else {}
        ),
        **_teacher_logits_record(record),
    }
    tmp = output.with_name(f".{output.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(
        s_model,
        tmp,
        vocab=vocab,
        settings={"stage": f"{task}_final", "from": str(student)},
        labels=t.label_names,
        lowercase=features_lowercase(dev_features),
    )
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (tmp / "predictions.json").write_text(
        json.dumps({"split": reported, **predictions[reported], "dev": predictions["dev"]}, indent=1) + "\n"
    )
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    return metrics
