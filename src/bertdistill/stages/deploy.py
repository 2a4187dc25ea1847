"""Deployment: ONNX export of each task's student and teacher (with a parity check and the INT8
copy's metric on the reported split), the inference benchmark over every backend, and the
Hub-ready model folder with its model card."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..benchmark import BF16_SKIP, native_cpu_bf16
from ..checkpoints import CONFIG_NAME, VOCAB_NAME, load_model, save_model, tokenizer_lowercase
from ..export import FILES, ExportError, OnnxModel, calibration_batches, export_files, file_mb, max_abs_diff, subset
from ..inference import predict_logits
from ..modelcard import MODEL_FILES
from ..settings import BenchmarkSettings, ExportSettings
from ..tasks import features_lowercase, get_task, read_h5, write_json
from .registry import TaskName, stage


def _export_model(
    folder: Path,
    out: Path,
    task: TaskName,
    eval_arrays: dict,
    eval_data: Path,
    vocab: Path,
    eval_batch_size: int,
    n_best: int,
    max_answer_length: int,
    settings: ExportSettings,
    calibration: list[dict] | None = None,
) -> dict[str, Any]:
    t = get_task(task)
    model = load_model(folder, head=t.head)
    files = export_files(
        model,
        out,
        settings.opset,
        settings.optimize,
        settings.int8,
        settings.per_channel,
        settings.reduce_range,
        settings.int8_activations,
        calibration,
    )
    fused = {}
    if "fused" in files:
        from onnx import load

        ops = [n.op_type for n in load(str(files["fused"]), load_external_data=False).graph.node]
        fused = {op: ops.count(op) for op in ("Attention", "SkipLayerNormalization", "BiasGelu", "Gelu", "FastGelu")}
    # One pass over the evaluation split per graph: its metric, and the first parity_features rows
    # for the check.
    n = len(eval_arrays["input_ids"]) if settings.parity_features is None else settings.parity_features
    record: dict[str, Any] = {
        "source": str(folder),
        "parameters": model.num_parameters(),
        "layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "fused_operators": fused,
        "files": {k: {"path": f"{out.name}/{p.name}", "mb": file_mb(p)} for k, p in files.items()},
        "parity": {"features": min(n, len(eval_arrays["input_ids"])), "tolerance": settings.tolerance},
        "metrics": {},
    }

    def metric(logits):
        return t.evaluate_logits(logits, eval_arrays, eval_data, vocab, n_best, max_answer_length)[0]

    reference = predict_logits(model, eval_arrays, eval_batch_size)
    record["metrics"]["pytorch"] = metric(reference)
    if settings.bf16:
        # The precision of the torch-bf16-cpu backend: what its speed-up costs in metric.
        if native_cpu_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = predict_logits(model, eval_arrays, eval_batch_size)
            record["parity"]["bf16"] = max_abs_diff(reference[:n], logits[:n])
            record["metrics"]["pytorch_bf16"] = metric(logits)
            change = record["metrics"]["pytorch_bf16"][t.metric] - record["metrics"]["pytorch"][t.metric]
            record["bf16_metric_change"] = round(change, 4)
        else:
            record["bf16_skipped"] = BF16_SKIP
    for kind, path in files.items():
        # The plain graph is only checked (its metric would repeat the fused one's).
        evaluated = kind in ("fused", "int8") or "fused" not in files
        arrays = eval_arrays if evaluated else subset(eval_arrays, n)
        logits = predict_logits(OnnxModel(path, settings.threads), arrays, eval_batch_size)
        diff = max_abs_diff(reference[:n], logits[:n])
        record["parity"][kind] = diff
        if kind != "int8" and not diff <= settings.tolerance:
            raise ExportError(
                f"{path}: ONNX Runtime's logits differ from PyTorch's by {diff:.3g} on {record['parity']['features']} "
                f"features of {eval_data.name} (tolerance {settings.tolerance}); the export is wrong, "
                "report it with this file"
            )
        if evaluated:
            record["metrics"][f"onnx_{kind}"] = metric(logits)
    if "int8" in files:
        key = t.metric
        best_fp32 = record["metrics"].get("onnx_fused", record["metrics"].get("onnx_fp32"))
        record["int8_metric_change"] = round(record["metrics"]["onnx_int8"][key] - best_fp32[key], 4)
    return record


@stage("export", rules=("export_onnx",))
def export(
    task: TaskName,
    student: Path,
    teacher: Path,
    eval_features: Path,
    eval_data: Path,
    output: Path,
    eval_batch_size: int,
    n_best: int,
    max_answer_length: int,
    settings: ExportSettings,
    split: str = "dev",
    calibration_features: Path | None = None,
) -> dict[str, Any]:
    """``results/{task}_onnx``: the final student and its teacher as ONNX (``student/`` and
    ``teacher/``: model.onnx, model.opt.onnx, model.int8.onnx), checked against PyTorch on the
    evaluation split's features, and ``export.json`` (parity, fused operators, sizes, and under
    ``metrics`` the metric of PyTorch in fp32 and bf16 autocast, the fp32 and the INT8 ONNX graphs
    by the same evaluation code, on the split ``task_final`` reports: test when the task has one).

    Args:
        task: the task
        student: the final student folder
        teacher: the task teacher's folder
        eval_features: features of the evaluation split (parity check and metric)
        eval_data: the evaluation split's data (metric)
        output: the export folder
        eval_batch_size: inference batch size
        n_best: SQuAD: start/end candidates searched per feature
        max_answer_length: SQuAD: longest answer in tokens
        settings: opset, parity tolerance, fusion and INT8 options
        split: which split eval_features holds (test or dev), recorded
        calibration_features: training features, for INT8 with calibrated activation scales
            (``settings.int8_activations`` minmax or percentile; ``settings.calibration_features`` drawn)
    """
    t0 = time.time()
    eval_arrays, _ = read_h5(eval_features)
    calibration = None
    if settings.int8 and settings.int8_activations != "dynamic":
        if calibration_features is None:
            raise ExportError(
                f"export.int8_activations: {settings.int8_activations} calibrates on training features; "
                "give calibration_features (the rule does) or use dynamic"
            )
        calibration = calibration_batches(read_h5(calibration_features)[0], 32, settings.calibration_features)
    vocab = teacher / VOCAB_NAME
    tmp = output.with_name(f".{output.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    models = {}
    for side, folder in (("student", student), ("teacher", teacher)):
        models[side] = _export_model(
            folder,
            tmp / side,
            task,
            eval_arrays,
            eval_data,
            vocab,
            eval_batch_size,
            n_best,
            max_answer_length,
            settings,
            calibration,
        )
    record = {
        "task": task,
        "split": split,
        "head": get_task(task).head,
        "metric": get_task(task).metric,
        "settings": settings.__dict__,
        "models": models,
        "wall_s": round(time.time() - t0, 1),
    }
    write_json(record, tmp / "export.json", indent=2)
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    return record


@stage("benchmark-shape", rules=("benchmark_shape",))
def benchmark_shape(shape: str, spec: dict[str, Any], output: Path) -> dict[str, Any]:
    """``results/benchmark_shapes/{shape}``: a random-weight student and teacher of the shapes in
    ``spec``, saved and exported to ONNX (fp32, fused, INT8) for the benchmark. Its own rule, so a
    benchmark setting does not export BERT-base again (about 40 s on 2 cores).

    Args:
        shape: the pair's name (an entry of ``benchmark.shapes``)
        spec: ``{student: {...}, teacher: {...}}`` with config.json fields
        output: the folder (``student/``, ``teacher/``, ``shape.json``)
    """
    from ..benchmark import SHAPE_RECORD, export_shape

    output = Path(output)
    tmp = output.with_name(f".{output.name}.tmp")
    if tmp.exists():  # an interrupted run's
        shutil.rmtree(tmp)
    export_shape(shape, spec, tmp)
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    return json.loads((output / SHAPE_RECORD).read_text())


@stage("benchmark", rules=("inference_benchmark",))
def benchmark(
    output: Path,
    settings: BenchmarkSettings,
    exports: list[Path] | None = None,
    shapes: dict[str, Any] | None = None,
    shape_exports: list[Path] | None = None,
) -> dict[str, Any]:
    """``results/benchmark``: sequences/s and latency p50/p90/p99 of every student and its teacher
    on every available backend (``summary.json`` with the machine, ``summary.md`` speedup tables,
    ``throughput.svg``). Unavailable backends are listed as skipped with the reason.

    Args:
        output: the benchmark folder
        settings: backends, batch sizes, sequence lengths, warm-up and timed iterations, threads
        exports: task export folders (``results/{task}_onnx``): their student and teacher
        shapes: random-weight pairs by name, exported here into scratch space, each
            ``{student: {...}, teacher: {...}}`` with config.json fields
        shape_exports: random-weight pairs exported by ``benchmark-shape`` (``results/benchmark_shapes/{shape}``)
    """
    from ..benchmark import load_shape_pair, run_benchmark, scratch_dir, shape_pair, task_pair, write_summary

    output = Path(output)
    with scratch_dir(output) as work:
        pairs = [task_pair(Path(d)) for d in exports or []]
        pairs += [load_shape_pair(Path(d)) for d in shape_exports or []]
        pairs += [shape_pair(name, spec, work) for name, spec in (shapes or {}).items()]
        if not pairs:
            raise ExportError("benchmark: nothing to measure; give task exports or shapes")
        summary = run_benchmark(pairs, settings, work)
    for p in summary["pairs"].values():  # the files of a shape exported here were scratch: keep their kinds
        if p["kind"] == "shape":
            for side in ("student", "teacher"):
                p[side]["onnx"] = sorted(p[side]["onnx"])
    tmp = output.with_name(f".{output.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    write_summary(summary, tmp)
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    print(json.dumps(summary["headline"]))
    return summary


@stage("hub-model", rules=("hub_model",))
def hub_model(
    task: TaskName,
    student: Path,
    teacher: Path,
    output: Path,
    license: str | None,
    base_model: str | None,
    prediction: Path | None = None,
    backbone: Path | None = None,
    general: list[Path] | None = None,
    features: Path | None = None,
    dev_features: Path | None = None,
    test_features: Path | None = None,
    augmented: Path | None = None,
    augment: Mapping[str, Any] | None = None,
    export: Path | None = None,
    benchmark: Path | None = None,
) -> dict[str, Any]:
    """``results/{task}_model``: what a Hugging Face Hub upload of the distilled student holds
    (config.json with the task's label names, model.safetensors, vocab.txt, the tokenizer files)
    and a model card, README.md, written from the run's records: architecture, teacher and its
    provenance, data, every stage's settings, metrics on test with dev beside, the INT8 graph's
    metric, speed from the benchmark. The run's records stay in ``results/{task}_final``.

    Args:
        task: the task
        student: the final folder (results/{task}_final: the student, metrics.json)
        teacher: the task teacher's folder (its distill.json says where it came from)
        output: the model folder
        license: the card's license (null: the teacher's, from its source's model card, else other)
        base_model: Hub id the card names as base_model (null: left out)
        prediction: the prediction stage's folder (its settings)
        backbone: the backbone stage's folder (its settings)
        general: the general-distillation folders the student went through (their settings)
        features: training features (size, sequence length)
        dev_features: dev features (size)
        test_features: test features (size)
        augmented: the augmentation statistics (train_aug.*.stats.json) when the task was augmented
        augment: the augmentation settings (n, m, p, max_texts) when it was
        export: the export folder (export.json: the INT8 graph's metric)
        benchmark: the benchmark folder (summary.json: speed; none: not measured)
    """
    from ..modelcard import collect, render

    t = get_task(task)
    model = load_model(student, head=t.head)
    lowercase = features_lowercase(dev_features) if dev_features is not None else None
    if lowercase is None:
        lowercase = tokenizer_lowercase(student)
    tmp = output.with_name(f".{output.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tmp, vocab=student / VOCAB_NAME, labels=t.label_names, lowercase=lowercase)
    config = json.loads((tmp / CONFIG_NAME).read_text())
    facts = collect(
        t,
        student,
        teacher,
        config,
        tokenizer_lowercase(tmp) is not False,
        license=license,
        base_model=base_model,
        prediction=prediction,
        backbone=backbone,
        general=general or [],
        features=features,
        dev_features=dev_features,
        test_features=test_features,
        augmented=augmented,
        augment=augment,
        export=export,
        benchmark=benchmark,
    )
    (tmp / "README.md").write_text(render(facts), encoding="utf-8")
    written = sorted(p.name for p in tmp.iterdir())
    if written != sorted(MODEL_FILES):  # an upload must hold the model and nothing of the run
        raise ExportError(f"{output}: wrote {written}, expected exactly {sorted(MODEL_FILES)}")
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    # What the job log shows: the card's headline facts (the card itself has the rest).
    return {
        "output": str(output),
        "files": written,
        "license": facts["license"],
        "labels": facts["labels"],
        "student": facts["student"],
        "teacher": {k: v for k, v in facts["teacher"].items() if k != "origin"},
        "metrics": {k: facts["metrics"].get(k) for k in ("split", "student", "teacher", "retention")},
        "speed": "measured" if facts["speed"] else "not measured",
    }


__all__ = ["FILES", "MODEL_FILES", "benchmark", "export", "hub_model"]
