"""Task distillation through Snakemake on a tiny config: SQuAD and SST-2 end to end, a sentence-pair
task (registered, not special-cased) end to end; then no-op and targeted reruns."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from bertdistill.checkpoints import load_model
from bertdistill.data.glue import read_sst2_tsv
from bertdistill.data.squad import load_squad_json, squad_v11_metrics
from bertdistill.settings import TrainConfig
from helpers import PAIR, REPO, planned_jobs, smk, task_teacher, write_glove, write_pair_task, write_squad, write_sst2
from test_envs import conda_packages_of, env_packages, rule_envs


def recomputed(task: str, data, predictions) -> float:
    """The metric from predictions.json and the data file alone (official SQuAD v1.1 F1, or accuracy)."""
    if task == "squad":
        return squad_v11_metrics(load_squad_json(data), predictions)["f1"]
    labels = read_sst2_tsv(data)[1]
    return 100.0 * sum(int(p == y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


def report_scripts(path) -> dict[str, object]:
    """The data a `snakemake --report` HTML embeds: results (files with captions and contents),
    categories, the rule graph and job runtimes (the page renders them with vega)."""
    page = path.read_text()
    out = {}
    for name in ("results", "categories", "rulegraph", "runtimes"):
        found = re.search(rf'<script id="{name}">\s*var \w+ = (.*?);\s*</script>', page, re.S)
        assert found, f"{path}: no {name} in the report"
        out[name] = json.loads(found.group(1))
    return out


def embedded(result: dict) -> str:
    return base64.b64decode(result["data_uri"].split("base64,", 1)[1]).decode()


@pytest.mark.slow
def test_squad_and_sst2_end_to_end(tiny_workdir, tmp_path, monkeypatch):
    wd = tiny_workdir
    config = yaml.safe_load((wd / "config/config.yaml").read_text())
    squad_dir, sst2_dir = write_squad(tmp_path / "squad"), write_sst2(tmp_path / "sst2")
    squad_test = tmp_path / "squad/test-v1.1.json"  # the dev questions under new ids
    squad_test.write_text((squad_dir / "dev-v1.1.json").read_text().replace('"id": "d', '"id": "x'))
    config["teachers"]["squad"] = {"source": {"path": str(task_teacher(tmp_path / "t_squad", "qa"))}, "head": "qa"}
    config["teachers"]["sst2"] = {
        "source": {"path": str(task_teacher(tmp_path / "t_sst2", "classification"))},
        "head": "classification",
    }
    # The default path: dynamic padding on; batches grouped by length (the shipped SQuAD stages).
    common = {"batch_size": 8, "log_every": 1, "group_by_length": True}
    stage = {"train": {**common, "epochs": 1, "lr": 5e-5, "schedule": "constant"}}
    pred = {"train": {**common, "epochs": 2, "lr": 3e-5, "eval_every": 3, "keep": "best"}}
    config["tasks"] = {
        "squad": {
            "teacher": "squad",
            "init": "phase2",
            "train": {"path": str(squad_dir / "train-v1.1.json")},
            "dev": {"path": str(squad_dir / "dev-v1.1.json")},
            "test": {"path": str(squad_test)},
            "features": {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16},
            "backbone": stage,
            "prediction": pred,
        },
        "sst2": {
            "teacher": "sst2",
            "init": "phase1",
            # The recipes' way: the given dev file is held out as test, dev is carved from train.
            "train": {"path": str(sst2_dir / "train.tsv")},
            "dev": {"from_train": 0.25},
            "test": {"path": str(sst2_dir / "dev.tsv")},
            "features": {"max_seq_length": 32},
            "backbone": stage,
            "prediction": pred,
        },
    }
    # Augmentation on for both tasks: an MLM teacher (same vocab) and word vectors.
    config["teachers"]["mlm"] = {"source": {"path": str(task_teacher(tmp_path / "t_mlm", "mlm"))}, "head": "mlm"}
    config["vectors"] = {"source": {"path": str(write_glove(tmp_path / "glove.txt"))}}
    config["augment"] = {"mlm": "mlm", "num_shards": 2, "m": 5}
    config["tasks"]["squad"]["augment"] = {"enabled": True, "n": 3}
    config["tasks"]["sst2"]["augment"] = {"enabled": True, "n": 4}
    # Export and benchmark as the default does, at toy size (the shipped shapes are BERT-base).
    config["benchmark"] = {
        **config.get("benchmark", {}),
        "batch_sizes": [1, 4],
        "seq_lengths": [32],
        "warmup": 1,
        "iterations": 2,
        "shapes": {"toy": {"student": config["student"], "teacher": {**config["student"], "num_hidden_layers": 4}}},
    }
    (wd / "config/config.yaml").write_text(yaml.safe_dump(config))
    dry = smk(wd, "-n", "--cores", "2")
    jobs = planned_jobs(dry)
    assert jobs["task_features"] == 2 and jobs["teacher_logits"] == 2 and jobs["task_backbone"] == 2
    assert jobs["task_prediction"] == 2 and jobs["task_final"] == 2 and jobs["general_phase2"] == 1
    assert jobs["augment_shard"] == 4 and jobs["augment_gather"] == 2 and jobs["word_vectors"] == 1
    assert jobs["export_onnx"] == 2 and jobs["inference_benchmark"] == 1 and jobs["benchmark_shape"] == 1
    assert jobs["test_features"] == 2 and jobs["split_dev"] == 1 and jobs["task_baseline"] == 2
    # Curves of both general phases and of each task's backbone, prediction and baseline stages.
    assert jobs["report_training_curves"] == 8 and jobs["report_metrics"] == 1 and jobs["report_speed"] == 1
    assert jobs["report_augmentation"] == 1

    # Every job records the third-party packages our code imported (tests/import_audit).
    audit = tmp_path / "imports"
    audit.mkdir()
    monkeypatch.setenv("BERTDISTILL_IMPORT_AUDIT", str(audit))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO / "tests/import_audit"), os.environ.get("PYTHONPATH")]))
    )
    smk(wd, "--cores", "2")  # the default target: everything, the benchmark included
    monkeypatch.delenv("BERTDISTILL_IMPORT_AUDIT")
    # Each job's imports are in its rule's conda environment (envs/, for --sdm conda).
    envs, ran = rule_envs(), set()
    for record in map(json.loads, (f.read_text() for f in audit.glob("*.json"))):
        ran.add(record["rule"])
        missing = conda_packages_of(record["imports"]) - set(env_packages(envs[record["rule"]]))
        assert not missing, f"rule {record['rule']} imported {missing}: not in {envs[record['rule']].name}"
    assert sum(jobs.values()) - 1 == len(list(audit.glob("*.json")))  # every job but `all` recorded
    assert {"corpus", "word_vectors", "augment_shard", "task_final", "export_onnx", "report_metrics"} <= ran
    carved = {s: read_sst2_tsv(wd / f"results/sst2/data/{s}.tsv")[0] for s in ("train", "dev")}
    original = read_sst2_tsv(sst2_dir / "train.tsv")[0]
    assert sorted(carved["train"] + carved["dev"]) == sorted(original) and 0 < len(carved["dev"]) < len(original) / 2
    tests = {"squad": squad_test, "sst2": sst2_dir / "dev.tsv"}
    devs = {"squad": squad_dir / "dev-v1.1.json", "sst2": wd / "results/sst2/data/dev.tsv"}
    for task, key, head in (("squad", "f1", "qa"), ("sst2", "accuracy", "classification")):
        final = wd / f"results/{task}_final"
        metrics = json.loads((final / "metrics.json").read_text())
        assert key in metrics["student"] and key in metrics["teacher"]
        # Test reported, dev beside it; every figure follows from predictions.json and the data.
        preds = json.loads((final / "predictions.json").read_text())
        assert metrics["split"] == preds["split"] == "test"
        for side in ("student", "teacher", "no_distillation"):
            assert recomputed(task, tests[task], preds[side]) == pytest.approx(metrics[side][key])
            assert recomputed(task, devs[task], preds["dev"][side]) == pytest.approx(metrics["dev"][side][key])
        assert {"general_phase1", "backbone", "prediction", "features"} <= set(metrics["stage_wall_s"])
        assert metrics["checkpoint_selection"]["keep"] == "best"
        assert load_model(final, head=head).config.hidden_size == 16
        assert (final / "predictions.json").is_file()
    assert "general_phase2" in json.loads((wd / "results/squad_final/metrics.json").read_text())["stage_wall_s"]
    # The task stages trained on the augmented data, which holds originals plus variants.
    sst2_aug = wd / "results/sst2/augmented/train_aug.tsv"
    aug_rows = len(sst2_aug.read_text().strip().splitlines()) - 1
    assert aug_rows > len(carved["train"])  # originals + variants
    stats = json.loads((wd / "results/sst2/augmented/train_aug.tsv.stats.json").read_text())
    n = len(carved["train"])  # the augmented originals: train after dev was carved out
    assert stats["texts"] == n and stats["augmented_examples"] == aug_rows - n and stats["eligible_words"] > 0
    assert json.loads((wd / "results/sst2/augmented/train_aug.tsv.samples.json").read_text())
    import h5py

    with h5py.File(wd / "results/sst2/features/train.hdf5") as f:
        assert f.attrs["source"].endswith("train_aug.tsv") and f["input_ids"].shape[0] == aug_rows
    squad_aug = json.loads((wd / "results/squad/augmented/train_aug.json").read_text())
    for article in squad_aug["data"]:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                a = qa["answers"][0]
                assert p["context"][a["answer_start"] : a["answer_start"] + len(a["text"])] == a["text"]

    for task, metric in (("squad", "f1"), ("sst2", "accuracy")):
        record = json.loads((wd / f"results/{task}_onnx/export.json").read_text())
        for side in ("student", "teacher"):
            info = record["models"][side]
            assert record["split"] == "test"
            assert info["parity"]["fused"] <= 1e-3 and metric in info["metrics"]["onnx_int8"]
            final = json.loads((wd / f"results/{task}_final/metrics.json").read_text())[side]
            assert info["metrics"]["pytorch"][metric] == pytest.approx(final[metric])  # same model, same code
    # benchmarks/group_by_length.py --student-seeds reruns both student stages through their stage
    # functions, each way: with the pipeline's seed and grouping it reproduces the final student.
    study = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/group_by_length.py"), "--tasks", "squad", "sst2"]
        + ["--student-seeds", str(TrainConfig(epochs=1).seed), "--threads", "2"],
        cwd=wd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert study.returncode == 0, study.stderr[-3000:]
    study = json.loads(study.stdout)
    for task, key in (("squad", "f1"), ("sst2", "accuracy")):
        final = json.loads((wd / f"results/{task}_final/metrics.json").read_text())
        runs = {r["grouped"]: r for r in study[task]["runs"]}
        assert set(runs) == {False, True} and study[task]["teacher_grouped"] is None  # a configured teacher
        assert runs[True]["test"][key] == round(final["student"][key], 2), (task, runs, final["student"])
        assert runs[True]["dev"][key] == round(final["dev"]["student"][key], 2), (task, runs, final["dev"])

    summary = json.loads((wd / "results/benchmark/summary.json").read_text())
    assert set(summary["pairs"]) == {"squad", "sst2", "toy"}
    cells = {(r["pair"], r["backend"], r["batch"]) for r in summary["results"]}
    assert {(p, b, n) for p in ("squad", "sst2", "toy") for b in ("torch", "ort", "ort-int8") for n in (1, 4)} <= cells

    # The HTML report of the finished run: the metrics table, the curves, the rule graph, runtimes.
    smk(wd, "--report", "report.html")
    data = report_scripts(wd / "report.html")
    results = data["results"]
    table = embedded(results["results/report/metrics.html"])
    for task in ("squad", "sst2"):
        m = json.loads((wd / f"results/{task}_final/metrics.json").read_text())
        key = m["metric"]
        for side in ("student", "teacher", "no_distillation"):
            assert f"<td>{m[side][key]:.1f}" in table  # the test score as metrics.json has it
        assert f"<td>{100 * m['retention']:.1f}</td>" in table
    assert "no distillation (same student, labels only)" in table and "student INT8 (ONNX)" in table
    curves = [k for k, v in results.items() if k.startswith("results/report/training/")]
    assert len(curves) == 8 and all(results[k]["mime_type"] == "image/svg+xml" for k in curves)
    assert "sst2 prediction" in embedded(results["results/report/training/sst2_prediction.svg"])
    assert "loss" in embedded(results["results/report/training/general_phase1.svg"])
    assert "toy (shape)" in embedded(results["results/report/speed.html"])
    graph = {n["rule"] for d in data["rulegraph"]["data"] if d["name"] == "node-data" for n in d["values"]}
    assert {"general_phase1", "task_backbone", "task_final", "export_onnx", "report_metrics"} <= graph
    runtimes = {r["rule"] for r in data["runtimes"]["data"]["values"]}
    assert {"task_prediction", "inference_benchmark"} <= runtimes

    again = smk(wd, "--cores", "2")
    assert "Nothing to be done" in again.stdout + again.stderr
    # A benchmark setting reruns the benchmark and what shows it only, not the shapes' exports.
    config["benchmark"]["iterations"] = 3
    (wd / "config/config.yaml").write_text(yaml.safe_dump(config))
    rerun = {"inference_benchmark": 1, "report_speed": 1, "all": 1}
    assert planned_jobs(smk(wd, "-n", "--cores", "2")) == rerun
    # An evaluation batch size is not a param of any job: it never retrains the teacher (it did).
    config["tasks"]["sst2"]["eval_batch_size"] = 7
    (wd / "config/config.yaml").write_text(yaml.safe_dump(config))
    assert planned_jobs(smk(wd, "-n", "--cores", "2")) == rerun
    # A shape's spec exports that pair again, then the benchmark.
    config["benchmark"]["shapes"]["toy"]["teacher"]["num_hidden_layers"] = 3
    (wd / "config/config.yaml").write_text(yaml.safe_dump(config))
    assert planned_jobs(smk(wd, "-n", "--cores", "2")) == {**rerun, "benchmark_shape": 1}


@pytest.mark.slow
def test_sentence_pair_task_end_to_end(tiny_workdir, tmp_path):
    """A GLUE sentence-pair task (RTE layout, synthetic data) goes through augmentation, teacher
    fine-tuning, features, backbone, prediction and final like SST-2 does: the task registry is the
    only place that knows it is a pair task."""
    import h5py

    from bertdistill.data.glue import read_glue_tsv

    wd = tiny_workdir
    config = yaml.safe_load((wd / "config/config.yaml").read_text())
    data = write_pair_task(tmp_path / "rte")
    train = {"epochs": 1, "batch_size": 8, "lr": 5e-5, "schedule": "constant", "log_every": 1}
    config["tasks"] = {
        "rte": {
            "teacher": "finetune",
            "init": "phase1",
            "train": {"path": str(data / "train.tsv")},
            "dev": {"path": str(data / "dev.tsv")},
            "features": {"max_seq_length": 48},
            "augment": {"enabled": True, "n": 3},
            "finetune": {"train": {**train, "epochs": 2, "lr": 1e-3, "eval_every": 5, "keep": "best"}},
            "backbone": {"train": train},
            "prediction": {"train": {**train, "epochs": 2, "eval_every": 4, "keep": "best"}},
        }
    }
    config["teachers"]["mlm"] = {"source": {"path": str(task_teacher(tmp_path / "t_mlm", "mlm"))}, "head": "mlm"}
    config["vectors"] = {"source": {"path": str(write_glove(tmp_path / "glove.txt"))}}
    config["augment"] = {"mlm": "mlm", "num_shards": 2, "m": 5}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(config))
    target = "results/rte_final"
    jobs = planned_jobs(smk(wd, "-n", "--cores", "2", target))
    assert {
        k: jobs.get(k)
        for k in (
            "augment_shard",
            "augment_gather",
            "finetune_features",
            "finetune_teacher",
            "task_features",
            "teacher_logits",
            "task_backbone",
            "task_prediction",
            "task_final",
        )
    } == {
        "augment_shard": 2,
        "augment_gather": 1,
        "finetune_features": 1,
        "finetune_teacher": 1,
        "task_features": 1,
        "teacher_logits": 1,
        "task_backbone": 1,
        "task_prediction": 1,
        "task_final": 1,
    }
    smk(wd, "--cores", "2", target)

    # Augmented pairs: the task's own layout, every original row, variants that change one text.
    aug = read_glue_tsv(wd / "results/rte/augmented/train_aug.tsv", PAIR)
    original = read_glue_tsv(data / "train.tsv", PAIR)
    assert set(original.texts) <= set(aug.texts) and len(aug.texts) > len(original.texts)
    label_of = dict(zip(original.texts, original.labels, strict=True))
    for (a, b), y in zip(aug.texts, aug.labels, strict=True):
        assert any(label_of.get(t) == y for t in label_of if t[0] == a or t[1] == b)
    with h5py.File(wd / "results/rte/features/train.hdf5") as f:  # [CLS] a [SEP] b [SEP]: segment ids 0 then 1
        assert f["input_ids"].shape[0] == len(aug.texts) and f["token_type_ids"][:].max() == 1
    final = wd / "results/rte_final"
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and 0 <= metrics["student"]["accuracy"] <= 100
    assert metrics["baseline"]["kind"] == "majority class" and "accuracy" in metrics["teacher"]
    assert load_model(wd / "results/teachers/rte", head="classification").classifier.out_features == 2
    assert len(json.loads((final / "predictions.json").read_text())["student"]) == 12
    assert load_model(final, head="classification").config.hidden_size == 16

    assert "Nothing to be done" in (r := smk(wd, "--cores", "2", target)).stdout + r.stderr
    changed = smk(wd, "-n", "--cores", "2", target, "--config", "tasks={'rte': {'prediction': {'temperature': 2.0}}}")
    assert planned_jobs(changed) == {"task_prediction": 1, "task_final": 1}
