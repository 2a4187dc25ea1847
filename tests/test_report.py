"""The report's files, from records of the shapes the stages write: training curves, the metrics
table (every figure from metrics.json / export.json), augmentation examples, the speed page from a
real benchmark run. The report built by Snakemake itself is checked in test_workflow_tasks."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bertdistill.stages import STAGES, deploy

SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(path: Path) -> list[str]:
    return [t.text or "" for t in ET.parse(path).getroot().iter(f"{SVG}text")]


def write_run(folder: Path, columns: dict[str, list[float]], history: list[dict] | None = None) -> Path:
    """A model folder's training records: the trainer's train.csv, distill.json with its selection."""
    folder.mkdir(parents=True)
    with (folder / "train.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(zip(*columns.values(), strict=True))
    selection = {"history": history, "selected_step": history[-2]["step"], "keep": "best"} if history else None
    (folder / "distill.json").write_text(json.dumps({"wall_s": 12.0, "selection": selection}))
    return folder


def test_training_curves_show_every_loss_term_the_lr_and_the_kept_step(tmp_path):
    steps = [2, 4, 6, 8]
    run = write_run(
        tmp_path / "backbone",
        {
            "step": steps,
            "epoch": [0, 0, 1, 1],
            "lr": [1e-4, 7e-5, 4e-5, 1e-5],
            "attention": [3.0, 2.0, 1.5, 1.2],
            "hidden": [1.0, 0.7, 0.6, 0.5],
            "loss": [4.0, 2.7, 2.1, 1.7],
            "seq_per_s": [50, 51, 52, 53],
        },
        history=[
            {"step": 4, "f1": 40.0, "metric": 40.0},
            {"step": 6, "f1": 55.0, "metric": 55.0},
            {"step": 8, "f1": 50.0, "metric": 50.0},
        ],
    )
    out = tmp_path / "report/sst2_backbone.svg"
    shown = STAGES["training-curves"].call(model=run, output=out, run="sst2_backbone")
    assert shown == {"terms": ["attention", "hidden", "loss"], "steps": 4, "evaluations": 3}
    texts = svg_texts(out)
    assert {"attention", "hidden", "loss", "learning rate", "dev metric", "f1", "kept: step 6"} <= set(texts)
    assert "sst2 backbone: 8 steps, 12 s" in texts
    # Not a loss term: throughput and the epoch are not plotted as losses.
    assert "seq_per_s" not in texts and "epoch" not in texts

    # A stage without dev evaluations: two panels, no dev metric.
    plain = write_run(tmp_path / "phase1", {"step": [1, 2], "lr": [1e-4, 5e-5], "loss": [2.0, 1.0]})
    STAGES["training-curves"].call(model=plain, output=tmp_path / "p1.svg", run="general_phase1")
    assert "dev metric" not in svg_texts(tmp_path / "p1.svg")

    with pytest.raises(FileNotFoundError, match="nothing/train.csv"):
        STAGES["training-curves"].call(model=tmp_path / "nothing", output=tmp_path / "x.svg", run="x")


def squad_records(tmp_path: Path) -> tuple[Path, Path]:
    """metrics.json and export.json as task_final and export_onnx write them (SQuAD: F1 and EM)."""
    final, export, teacher = tmp_path / "squad_final", tmp_path / "squad_onnx", tmp_path / "teachers/squad"
    for folder in (final, export, teacher):
        folder.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"\0" * 2_500_000)
    (teacher / "model.safetensors").write_bytes(b"\0" * 4_000_000)
    split = {
        "student": {"exact_match": 68.0, "f1": 76.0},
        "teacher": {"exact_match": 78.0, "f1": 80.0},
        "no_distillation": {"exact_match": 20.0, "f1": 24.0},
        "baseline": {"kind": "first name", "exact_match": 27.0, "f1": 27.5},
    }
    dev = {k: ({**v, "f1": v["f1"] + 1} if k != "baseline" else v) for k, v in split.items()}
    metrics = {
        "task": "squad",
        "metric": "f1",
        "split": "test",
        **split,
        "retention": 76.0 / 80.0,
        "examples": 300,
        "distillation_gain": 52.0,
        "dev": dev,
        "student_parameters": 17_242_754,
        "teacher_parameters": 22_566_146,
    }
    (final / "metrics.json").write_text(json.dumps(metrics))
    int8 = {"exact_match": 67.0, "f1": 72.0}
    bf16 = {"exact_match": 68.0, "f1": 75.6}
    record = {
        "models": {
            "student": {"files": {"int8": {"mb": 16.6}}, "metrics": {"onnx_int8": int8, "pytorch_bf16": bf16}},
            "teacher": {"source": str(teacher), "files": {}, "metrics": {}},
        }
    }
    (export / "export.json").write_text(json.dumps(record))
    return final, export


def test_metrics_table_rows_follow_from_the_records(tmp_path):
    final, export = squad_records(tmp_path)
    html_out, tsv_out = tmp_path / "report/metrics.html", tmp_path / "report/metrics.tsv"
    assert STAGES["metrics-table"].call(finals=[final], output=html_out, table=tsv_out, exports=[export]) == {"rows": 6}
    with tsv_out.open() as f:
        rows = {r["model"]: r for r in csv.DictReader(f, delimiter="\t")}
    assert list(rows) == [
        "teacher",
        "student (distilled)",
        "student INT8 (ONNX)",
        "student bf16 (PyTorch autocast, CPU)",
        "no distillation (same student, labels only)",
        "trivial: first name",
    ]
    student, teacher, int8 = rows["student (distilled)"], rows["teacher"], rows["student INT8 (ONNX)"]
    assert (student["reported"], student["dev"], student["retention_pct"]) == ("76.0 / 68.0", "77.0 / 68.0", "95.0")
    assert (teacher["parameters_M"], teacher["size_MB"], student["size_MB"]) == ("22.6", "4.0", "2.5")
    assert (int8["reported"], int8["size_MB"], int8["retention_pct"]) == ("72.0 / 67.0", "16.6", "90.0")
    bf16 = rows["student bf16 (PyTorch autocast, CPU)"]  # the fp32 weights, cast at run time
    assert (bf16["reported"], bf16["size_MB"], bf16["retention_pct"]) == ("75.6 / 68.0", "2.5", "94.5")
    nd = rows["no distillation (same student, labels only)"]
    assert (nd["reported"], nd["dev"], nd["retention_pct"]) == ("24.0 / 20.0", "25.0 / 20.0", "30.0")
    page = html_out.read_text()
    assert "distillation gain over the no-distillation baseline +52.0 points (test)" in page
    assert "<th>test F1 / EM</th>" in page and "300 test examples" in page


def test_augmentation_page_shows_statistics_and_escaped_examples(tmp_path):
    aug = tmp_path / "sst2/augmented/train_aug.tsv"
    aug.parent.mkdir(parents=True)
    aug.write_text("sentence\tlabel\n")
    Path(f"{aug}.stats.json").write_text(json.dumps({"texts": 3, "eligible_words": 11, "augmented_examples": 6}))
    samples = [{"original": "a <b> film", "augmented": ["a <b> movie", "the <b> film"]}]
    Path(f"{aug}.samples.json").write_text(json.dumps(samples))
    out = tmp_path / "augmentation.html"
    assert STAGES["augmentation-report"].call(augmented=[aug], output=out)["sst2"]["eligible_words"] == 11
    page = out.read_text()
    assert "<h3>sst2</h3>" in page and "eligible_words</td><td>11" in page
    assert "a &lt;b&gt; film" in page and "the &lt;b&gt; film" in page and "<b> movie" not in page


def test_speed_page_from_a_real_benchmark_run(tmp_path):
    shape = {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}
    shapes = {"tiny": {"student": shape, "teacher": {**shape, "num_hidden_layers": 2}}}
    settings = {"batch_sizes": [2], "seq_lengths": [16], "warmup": 1, "iterations": 2, "threads": 1}
    settings["backends"] = ["torch", "ort", "torch-fp16"]  # one that cannot run on CPU: listed as skipped
    bench = tmp_path / "benchmark"
    summary = deploy.benchmark(bench, settings, [], shapes)
    out, plot = tmp_path / "speed.html", tmp_path / "throughput.svg"
    STAGES["speed-report"].call(benchmark=bench, output=out, plot=plot)
    page = out.read_text()
    for r in summary["results"]:
        assert (
            f"<td>{r['student']['seq_per_s']}</td><td>{r['teacher']['seq_per_s']}</td><td>{r['speedup']:.2f}x" in page
        )
    assert "tiny (shape): student 1L-32H" in page and "teacher 2L-32H" in page
    assert "torch-fp16" in page and "needs a CUDA GPU" in page
    assert ", ".join(summary["machine"]["cpu_isa"] or ["no ISA flags read"]) in page  # which CPU it was
    assert plot.read_bytes() == (bench / "throughput.svg").read_bytes()
