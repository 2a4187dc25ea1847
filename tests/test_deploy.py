"""ONNX export (parity with PyTorch for each head, fusion, INT8 and its dev metric) and the
inference benchmark (summary schema, skipped backends with reasons, ratios from one run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
import yaml

from bertdistill import benchmark as bench
from bertdistill.export import FILES, ExportError, OnnxModel, export_files, ort_session
from bertdistill.inference import predict_logits
from bertdistill.model import BertConfig, build_model
from bertdistill.settings import BACKENDS, BenchmarkSettings, ExportSettings, FeatureSettings
from bertdistill.stages import deploy
from bertdistill.tasks import build_task_features, get_task, write_h5
from helpers import REPO, task_teacher, write_squad, write_sst2

pytest.importorskip("onnxruntime")


def _features(vocab: int, n: int = 7, length: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """Random features with ragged padding and both token types (the shapes dev features have)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (n, length))
    lengths = rng.integers(4, length + 1, n)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    types = ((np.arange(length)[None] >= lengths[:, None] // 2) & (mask == 1)).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types}


@pytest.mark.parametrize(
    "head, shape",
    [
        ("classification", dict(num_hidden_layers=2, hidden_size=48, intermediate_size=96, num_attention_heads=4)),
        ("qa", dict(num_hidden_layers=2, hidden_size=48, intermediate_size=96, num_attention_heads=4)),
        ("classification", dict(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=8)),
    ],
    ids=["student-classification", "student-qa", "teacher-classification"],
)
def test_onnx_graphs_match_pytorch_and_are_fused(tmp_path, head, shape):
    """Every exported graph answers like PyTorch at batch sizes and lengths other than the export's
    (dynamic axes), padding included; the optimizer fuses every attention block."""
    torch.manual_seed(0)
    model = build_model(BertConfig(vocab_size=300, num_labels=3, **shape), head)
    files = export_files(model, tmp_path)
    assert set(files) == {"fp32", "fused", "int8"}
    import onnx

    graph = onnx.load(str(files["fp32"])).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(d.dim_param for i in graph.input for d in i.type.tensor_type.shape.dim)  # batch, sequence
    assert onnx.load(str(files["fp32"])).opset_import[0].version >= 17
    ops = [n.op_type for n in onnx.load(str(files["fused"])).graph.node]
    assert ops.count("Attention") == shape["num_hidden_layers"]
    assert ops.count("SkipLayerNormalization") >= shape["num_hidden_layers"]

    for n, length in ((1, 9), (7, 24)):
        feats = _features(300, n, length)
        reference = predict_logits(model, feats, batch_size=4)
        assert reference.shape == ((n, 3) if head == "classification" else (n, 2, length))
        for kind in ("fp32", "fused"):
            got = predict_logits(OnnxModel(files[kind]), feats, batch_size=4)
            np.testing.assert_allclose(got, reference, atol=1e-4, rtol=0)
        int8 = predict_logits(OnnxModel(files["int8"]), feats, batch_size=4)
        assert int8.shape == reference.shape and np.isfinite(int8).all()
        assert np.abs(int8 - reference).max() > 0  # the INT8 graph is really quantised


def test_int8_copy_has_one_scale_per_output_channel_by_default(tmp_path):
    """The shipped export settings quantise each weight column with its own scale. Where one column
    is much larger than the others (trained weights have such outliers), that is what keeps INT8
    near fp32: one scale per matrix is set by the outlier and rounds the other columns coarsely."""
    import onnx
    from onnx import numpy_helper

    assert ExportSettings().per_channel  # the default users run
    torch.manual_seed(0)
    model = build_model(BertConfig(vocab_size=300, num_labels=3, num_hidden_layers=2, hidden_size=48,
                                   intermediate_size=96, num_attention_heads=4), "classification")  # fmt: skip
    with torch.no_grad():
        # One pooler output channel 100x the others (tanh saturates it): one scale for the whole
        # matrix would round the other channels' weights to a few levels.
        model.bert.pooler.dense.weight[0].mul_(100)
        model.classifier.weight.mul_(50)  # logits of order 1
    feats = _features(300, 7, 24)
    reference = predict_logits(model, feats, batch_size=4)
    diffs = {}
    for per_channel in (True, False):
        # export_files' own default first: the benchmark's random-weight models use it.
        options = {} if per_channel else {"per_channel": False}
        files = export_files(model, tmp_path / str(per_channel), **options)
        scales = {
            i.name: numpy_helper.to_array(i).shape
            for i in onnx.load(str(files["int8"])).graph.initializer
            if i.name.endswith("_scale") and "dense.weight" in i.name
        }
        assert scales, "no quantised dense weight in the INT8 graph"
        for name, shape in scales.items():
            assert shape == (((96,) if "intermediate" in name else (48,)) if per_channel else ()), name
        got = predict_logits(OnnxModel(files["int8"]), feats, batch_size=4)
        diffs[per_channel] = float(np.abs(got - reference).max())
    assert 0 < diffs[True] < diffs[False] / 10, diffs  # measured: 0.04 and 1.7


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_calibrated_int8_answers_each_row_alone(tmp_path, method):
    """With activation scales calibrated beforehand (export.int8_activations minmax / percentile),
    a row's INT8 logits do not depend on the rows batched with it; with dynamic INT8 (scales from
    each batch's range) they do. Both stay near fp32, and the calibrated graph holds fixed scales."""
    import onnx

    from bertdistill.export import calibration_batches

    torch.manual_seed(0)
    model = build_model(BertConfig(vocab_size=300, num_hidden_layers=2, hidden_size=48, intermediate_size=96,
                                   num_attention_heads=4), "qa").eval()  # fmt: skip
    calibration = calibration_batches(_features(300, 40, 24, seed=1), batch_size=8, n=32)
    assert len(calibration) == 4 and {b["input_ids"].shape[1] for b in calibration} == {24}
    files = {
        mode: export_files(model, tmp_path / mode, 17, False, True, True, True, mode, calibration)["int8"]
        for mode in ("dynamic", method)
    }
    ops = [n.op_type for n in onnx.load(str(files[method])).graph.node]
    assert ops.count("QuantizeLinear") >= 4 and "DynamicQuantizeLinear" not in ops
    assert "DynamicQuantizeLinear" in [n.op_type for n in onnx.load(str(files["dynamic"])).graph.node]

    feats = _features(300, 8, 24, seed=2)
    feats["input_ids"][1:] = feats["input_ids"][1:] * 0 + 7 * feats["attention_mask"][1:]  # other rows: one token
    reference = predict_logits(model, feats, batch_size=8, trim=False)
    for mode, path in files.items():
        session = OnnxModel(path)
        batched = predict_logits(session, feats, batch_size=8, trim=False)[0]
        alone = predict_logits(session, {k: v[:1] for k, v in feats.items()}, batch_size=1, trim=False)[0]
        if mode == "dynamic":
            assert np.abs(batched - alone).max() > 1e-4  # the batch changed the row's scales
        else:
            np.testing.assert_allclose(batched, alone, atol=1e-6, rtol=0)
        assert np.abs(batched - reference[0]).max() < 0.1 * np.abs(reference[0]).max()
    with pytest.raises(ExportError, match="needs calibration features"):
        export_files(model, tmp_path / "none", 17, False, True, True, True, method, None)


def _task_folders(tmp_path, task: str):
    """A tiny task: trained-looking student and teacher folders (random weights), dev data and features."""
    head = get_task(task).head
    if task == "sst2":
        dev = write_sst2(tmp_path / "data") / "dev.tsv"
    else:
        dev = write_squad(tmp_path / "data") / "dev-v1.1.json"
    teacher = task_teacher(tmp_path / "teacher", head, seed=0)
    student = task_teacher(tmp_path / "student", head, seed=1)
    settings = FeatureSettings(max_seq_length=64, doc_stride=16, max_query_length=16)
    arrays, attrs = build_task_features(get_task(task), dev, teacher / "vocab.txt", False, settings)
    write_h5(arrays, tmp_path / "dev.hdf5", attrs)
    return student, teacher, dev, tmp_path / "dev.hdf5"


@pytest.mark.parametrize(
    "task, metric, native_bf16", [("sst2", "accuracy", True), ("squad", "f1", True), ("sst2", "accuracy", False)]
)
def test_export_stage_checks_parity_and_evaluates_int8(tmp_path, monkeypatch, task, metric, native_bf16):
    """The export stage writes both models' graphs, records parity within the tolerance, and the
    dev metric of PyTorch (fp32, and bf16 autocast where the CPU has native bf16, else the reason),
    the fused fp32 graph and the INT8 graph by the same evaluation code."""
    # Forced on, PyTorch emulates bf16 where the CPU lacks it: the same numbers, only slower.
    monkeypatch.setattr(deploy, "native_cpu_bf16", lambda: native_bf16)
    student, teacher, dev, dev_h5 = _task_folders(tmp_path, task)
    out = tmp_path / f"{task}_onnx"
    record = deploy.export(task, student, teacher, dev_h5, dev, out, 16, 20, 30, {"parity_features": None})
    assert record == json.loads((out / "export.json").read_text())
    for side in ("student", "teacher"):
        info = record["models"][side]
        assert {f.name for f in (out / side).iterdir()} == set(FILES.values())
        assert info["parity"]["fp32"] <= 1e-3 and info["parity"]["fused"] <= 1e-3
        assert info["parity"]["features"] == len(__import__("h5py").File(dev_h5)["input_ids"])
        dev_metrics = info["metrics"]
        assert set(dev_metrics) == {"pytorch", "onnx_fused", "onnx_int8"} | ({"pytorch_bf16"} if native_bf16 else set())
        if native_bf16:
            # Really computed in bf16 (logits differ from fp32), and close to fp32.
            assert 0 < info["parity"]["bf16"] < 0.1
            change = dev_metrics["pytorch_bf16"][metric] - dev_metrics["pytorch"][metric]
            assert info["bf16_metric_change"] == pytest.approx(change, abs=1e-4)
        else:
            assert "bf16" not in info["parity"] and "no native bf16" in info["bf16_skipped"]
        # fp32 ONNX gives the same predictions as PyTorch, so the same metric.
        assert dev_metrics["onnx_fused"][metric] == pytest.approx(dev_metrics["pytorch"][metric], abs=1e-9)
        assert 0.0 <= dev_metrics["onnx_int8"][metric] <= 100.0
        change = dev_metrics["onnx_int8"][metric] - dev_metrics["onnx_fused"][metric]
        assert info["int8_metric_change"] == pytest.approx(change, abs=1e-4)
        assert info["fused_operators"]["Attention"] == 2
        assert info["source"] == str({"student": student, "teacher": teacher}[side])


def test_export_stage_calibrates_int8_on_training_features(tmp_path):
    """export.int8_activations minmax: the stage draws calibration batches from the training
    features it is given, writes an INT8 graph with fixed activation scales and scores it; without
    training features it stops with the key and the fix."""
    import onnx

    student, teacher, dev, dev_h5 = _task_folders(tmp_path, "squad")
    settings = {"int8_activations": "minmax", "bf16": False}
    with pytest.raises(ExportError, match="export.int8_activations: minmax calibrates on training features"):
        deploy.export("squad", student, teacher, dev_h5, dev, tmp_path / "no", 16, 20, 30, settings)
    assert not (tmp_path / "no").exists()
    out = tmp_path / "squad_onnx"
    record = deploy.export(
        "squad", student, teacher, dev_h5, dev, out, 16, 20, 30, settings, calibration_features=dev_h5
    )
    assert record["settings"]["int8_activations"] == "minmax"
    for side in ("student", "teacher"):
        ops = [n.op_type for n in onnx.load(str(out / side / FILES["int8"])).graph.node]
        assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
        info = record["models"][side]
        change = info["metrics"]["onnx_int8"]["f1"] - info["metrics"]["onnx_fused"]["f1"]
        assert info["int8_metric_change"] == pytest.approx(change, abs=1e-4)


def test_export_fails_when_the_graph_does_not_match(tmp_path, monkeypatch):
    """A graph whose logits differ from the PyTorch model's (here: exported from perturbed weights)
    fails the stage with the file and the difference; nothing is left at the output path."""
    student, teacher, dev, dev_h5 = _task_folders(tmp_path, "sst2")
    real = deploy.export_files

    def wrong(model, folder, *args):
        import copy

        other = copy.deepcopy(model)
        with torch.no_grad():
            other.classifier.bias.add_(0.5)
        return real(other, folder, *args)

    monkeypatch.setattr(deploy, "export_files", wrong)
    with pytest.raises(ExportError, match=r"model\.onnx: ONNX Runtime's logits differ from PyTorch's by 0\.5"):
        deploy.export("sst2", student, teacher, dev_h5, dev, tmp_path / "out", 16, 20, 30, ExportSettings())
    assert not (tmp_path / "out").exists()


TINY_SHAPES = {
    "tiny": {
        "student": {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                    "vocab_size": 2000},
        "teacher": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                    "vocab_size": 2000},
    }
}  # fmt: skip


def test_benchmark_writes_the_summary_and_skips_what_cannot_run(tmp_path, monkeypatch):
    """A tiny task export and a tiny shape pair, 2 timed iterations: every CPU backend x batch x seq
    has a row whose ratios follow from its own numbers; GPU backends are skipped with the reason
    here; a backend without its file is skipped, not faked, and starts no process."""
    student, teacher, dev, dev_h5 = _task_folders(tmp_path, "sst2")
    export_dir = tmp_path / "sst2_onnx"
    deploy.export("sst2", student, teacher, dev_h5, dev, export_dir, 16, 20, 30, {"int8": False})
    # Every backend but the compiled CPU ones (one compilation per model and shape costs ~60 s
    # here; test_cpu_backends_answer_like_pytorch_eager covers them).
    backends = [b for b in BACKENDS if b not in ("torch-compile-cpu", "torch-compile-bf16-cpu")]
    settings = {"backends": backends, "batch_sizes": [1, 3], "seq_lengths": [16], "warmup": 1, "iterations": 2,
                "threads": 1}  # fmt: skip
    out = tmp_path / "benchmark"
    started, start = [], bench.ProcessBackend.__init__

    def counted_start(self, backend, *args):
        started.append(backend)
        start(self, backend, *args)

    monkeypatch.setattr(bench.ProcessBackend, "__init__", counted_start)
    shape_dir = tmp_path / "benchmark_shapes" / "tiny"  # as the workflow does: rule benchmark_shape
    deploy.benchmark_shape("tiny", TINY_SHAPES["tiny"], shape_dir)
    summary = deploy.benchmark(out, settings, [export_dir], shape_exports=[shape_dir])
    assert {p.name for p in out.iterdir()} == {"summary.json", "summary.md", "throughput.svg"}
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (out / "throughput.svg").read_text().lstrip().startswith("<?xml")
    m = summary["machine"]
    assert m["cpu"] and m["threads"] == 1 and "onnxruntime" in m["versions"] and "torch" in m["versions"]
    if Path("/proc/cpuinfo").exists():  # the kernel's flags agree with PyTorch's own CPU detection
        assert bench.native_cpu_bf16() == bool({"amx_bf16", "avx512_bf16"} & set(m["cpu_isa"]))
        assert ("avx2" in m["cpu_isa"]) == (m["cpu_capability"] in ("AVX2", "AVX512"))
        assert ", ".join(m["cpu_isa"]) in (out / "summary.md").read_text()
    assert set(summary["pairs"]) == {"sst2", "tiny"}
    assert summary["pairs"]["tiny"]["teacher"]["layers"] == 2 and summary["pairs"]["sst2"]["kind"] == "task"

    cpu = ["torch", "ort", "ort-fused", "ort-int8"] + (["torch-bf16-cpu"] if bench.native_cpu_bf16() else [])
    # A process per pair for each backend that can run it (no ort-int8 for sst2), none for the others.
    assert sorted(started) == sorted(["torch", "ort", "ort-fused"] + cpu)
    rows = {(r["pair"], r["backend"], r["batch"], r["seq"]): r for r in summary["results"]}
    for b in (1, 3):
        for backend in cpu:
            assert ("tiny", backend, b, 16) in rows
        for backend in ("torch", "ort", "ort-fused"):
            assert ("sst2", backend, b, 16) in rows
        assert ("sst2", "ort-int8", b, 16) not in rows  # not exported: no figure
    for r in summary["results"]:
        s, t = r["student"], r["teacher"]
        assert s["iterations"] == t["iterations"] == 2
        assert s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]
        assert r["speedup"] == pytest.approx(s["seq_per_s"] / t["seq_per_s"], rel=1e-2)
        # The mean is rounded to 1 µs, a few percent of a tiny model's batch: bracket it.
        mean_s = s["latency_ms"]["mean"] / 1000
        assert r["batch"] / (mean_s + 5e-7) * 0.999 <= s["seq_per_s"] <= r["batch"] / max(mean_s - 5e-7, 1e-9) * 1.001
        assert len(s["batch_ms"]) == len(t["batch_ms"]) == 2  # each batch's time, in the order timed
        assert sum(s["batch_ms"]) / 2 == pytest.approx(s["latency_ms"]["mean"], abs=2e-3)
    assert summary["errors"] == []
    skipped = {(s["pair"], s["backend"]): s["reason"] for s in summary["skipped"]}
    assert skipped[("sst2", "ort-int8")] == "no model.int8.onnx was exported (export settings)"
    assert ("tiny", "ort-int8") not in skipped
    skipped = {b: why for (pair, b), why in skipped.items() if pair == "tiny"}
    if not torch.cuda.is_available():
        for backend in ("torch-fp16", "torch-bf16", "torch-compile", "tensorrt-fp16"):
            assert "CUDA" in skipped[backend]
    if "CUDAExecutionProvider" not in bench._ort_providers():
        assert "CUDAExecutionProvider" in skipped["ort-cuda"]
    headline = {(h["pair"], h["batch"]): h for h in summary["headline"]}
    h = headline[("tiny", 3)]
    fp32 = ("torch", "ort", "ort-fused")
    best = max(fp32, key=lambda b: rows[("tiny", b, 3, 16)]["student"]["seq_per_s"])
    assert h["best_fp32"]["student_backend"] == best
    assert h["student_best_fp32_vs_torch_eager"] == pytest.approx(
        rows[("tiny", best, 3, 16)]["student"]["seq_per_s"] / rows[("tiny", "torch", 3, 16)]["student"]["seq_per_s"],
        rel=1e-2,
    )
    # The headline ratio of each round: the teacher's batch time over the student's in that round.
    s_ms = rows[("tiny", best, 3, 16)]["student"]["batch_ms"]
    t_ms = rows[("tiny", h["best_fp32"]["teacher_backend"], 3, 16)]["teacher"]["batch_ms"]
    rounds = h["best_fp32"]["speedup_per_round"]
    assert rounds == pytest.approx([t_ms[i] / s_ms[i] for i in range(2)], rel=1e-3)
    assert min(rounds) * 0.999 <= h["best_fp32"]["speedup"] <= max(rounds) * 1.001
    md = (out / "summary.md").read_text()
    assert "| ort-fused | fp32 | 3 | 16 |" in md and "Skipped backends" in md
    assert f"**{h['best_fp32']['speedup']:.2f}x** (rounds {min(rounds):.2f}-{max(rounds):.2f}x)" in md


def test_shape_export_is_saved_once_and_loads_again_with_its_weights(tmp_path):
    """Rule benchmark_shape writes the random-weight pair once, so a benchmark setting does not
    export it again: each side's config, weights and ONNX files, and shape.json. Loaded again, each
    side answers like a model built from the same seed, and its ONNX graph like it. A folder that
    is not a shape export is refused, naming the file."""
    out = tmp_path / "benchmark_shapes" / "tiny"
    record = deploy.benchmark_shape("tiny", TINY_SHAPES["tiny"], out)
    assert record["name"] == "tiny" and record["spec"] == TINY_SHAPES["tiny"] and record["seed"] == 0
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]  # no scratch folder left beside it
    pair = bench.load_shape_pair(out)
    assert (pair.name, pair.kind) == ("tiny", "shape")
    ids, mask, types = bench._inputs(2, 16, 2000)
    for side in ("student", "teacher"):
        m = getattr(pair, side)
        assert m.name == f"tiny/{side}" and m.onnx == {k: out / side / FILES[k] for k in FILES}
        torch.manual_seed(0)
        fresh = build_model(BertConfig(**TINY_SHAPES["tiny"][side]), "classification").eval()
        with torch.no_grad():
            expected = fresh(ids, mask, types).logits
            torch.testing.assert_close(m.torch_model(ids, mask, types).logits, expected)
        session = ort_session(m.onnx["fp32"])
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds = {i.name: feeds[i.name].numpy() for i in session.get_inputs()}
        np.testing.assert_allclose(session.run(None, feeds)[0], expected.numpy(), atol=1e-4)
    with pytest.raises(FileNotFoundError, match="shape.json: missing"):
        bench.load_shape_pair(tmp_path)


def test_gpu_check_script_writes_every_file_and_runs_the_cuda_tests(tmp_path):
    """benchmarks/gpu_check.sh from this checkout, a tiny shape in place of BERT-base: it writes
    the machine's record, the GPU benchmark's JSON and the report of the tests marked cuda, every one of
    them collected (a renamed test file would show here). Without a GPU every GPU backend is
    skipped with the reason, and so is every cuda test; none errors."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"benchmark": {"shapes": TINY_SHAPES}}))
    out = tmp_path / "out"
    bench_args = f"--config {config} --shape tiny --batch-sizes 2 --seq-lengths 16 --warmup 1 --iterations 2"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "BENCH_ARGS": bench_args}
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu_check.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = {"nvidia-smi.txt", "machine.json", "inference_gpu.json", "inference_gpu.log", "pytest_cuda.log",
             "pytest_cuda.xml"}  # fmt: skip
    assert {p.name for p in out.iterdir()} == files
    summary = json.loads((out / "inference_gpu.json").read_text())
    assert summary["errors"] == [] and summary["settings"]["seq_lengths"] == [16]
    (suite,) = ElementTree.parse(out / "pytest_cuda.xml").getroot().iter("testsuite")
    count = {k: int(suite.get(k)) for k in ("tests", "skipped", "errors", "failures")}
    assert count["tests"] >= 19 and count["errors"] == count["failures"] == 0, count
    if not torch.cuda.is_available():
        machine = json.loads((out / "machine.json").read_text())
        assert machine["cuda_available"] is False and "CPUExecutionProvider" in machine["onnxruntime_providers"]
        skipped = {s["backend"]: s["reason"] for s in summary["skipped"]}
        gpu = {"torch-fp16", "torch-bf16", "torch-compile", "ort-cuda-fp16", "ort-tensorrt", "tensorrt-fp16"}
        assert set(skipped) == gpu and summary["results"] == []
        assert all("CUDA" in why or "Tensorrt" in why for why in skipped.values()), skipped
        assert count["skipped"] == count["tests"]


def test_warmup_script_compares_each_first_batch_with_the_later_ones(tmp_path):
    """benchmarks/warmup.py on a tiny shape: every run of each warm-up count, in turn, keeps each
    side's per-batch times, and its ratio is the first batch over the median of the others."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"benchmark": {"shapes": TINY_SHAPES}}))
    args = ["--config", str(config), "--shape", "tiny", "--batch", "2", "--seq", "16", "--iterations", "3",
            "--repeats", "1", "--warmups", "0", "2", "--backends", "torch", "ort", "--threads", "1",
            "--output", str(tmp_path / "w.json")]  # fmt: skip
    script = str(REPO / "benchmarks/warmup.py")
    run = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out == json.loads((tmp_path / "w.json").read_text())
    assert [(r["warmup"], r["backend"], r["side"]) for r in out["runs"]] == [
        (w, b, side) for w in (0, 2) for b in ("torch", "ort") for side in ("student", "teacher")
    ]
    for r in out["runs"]:
        ms = r["batch_ms"]
        assert len(ms) == 3 and r["first_over_rest"] == pytest.approx(ms[0] / ((ms[1] + ms[2]) / 2), rel=1e-2)
    assert set(out["by_warmup"]) == {"0", "2"} and set(out["by_warmup"]["2"]["ort"]) == {"student", "teacher"}
    assert out["machine"]["threads"] == 1


def test_missing_backend_is_reported_with_its_reason(tmp_path, monkeypatch):
    """No tensorrt module and an onnxruntime without the CUDA provider: both reported as skipped."""
    import builtins

    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    monkeypatch.setattr(bench, "_cuda", lambda: None)  # as if a GPU were there
    monkeypatch.setattr(bench, "_ort_providers", lambda: ["CPUExecutionProvider"])
    pair = bench.shape_pair("tiny", TINY_SHAPES["tiny"], tmp_path)
    settings = BenchmarkSettings(backends=["tensorrt-fp16", "ort-cuda", "ort"], batch_sizes=[2], seq_lengths=[8],
                                 warmup=0, iterations=1)  # fmt: skip
    summary = bench.run_benchmark([pair], settings, tmp_path)
    skipped = {s["backend"]: s["reason"] for s in summary["skipped"]}
    assert skipped["tensorrt-fp16"].startswith("tensorrt is not importable")
    assert "no CUDAExecutionProvider" in skipped["ort-cuda"]
    assert [r["backend"] for r in summary["results"]] == ["ort"]


TINY = dict(vocab_size=300, num_labels=3, num_hidden_layers=2, hidden_size=48, intermediate_size=96,
            num_attention_heads=4)  # fmt: skip


@pytest.mark.parametrize("backend", ["torch-compile-cpu", "torch-bf16-cpu", "torch-compile-bf16-cpu"])
def test_cpu_backends_answer_like_pytorch_eager(tmp_path, backend):
    """The compiled CPU runner gives eager's logits (Inductor really compiled a graph); the bf16
    ones give them within bf16 rounding and in bf16 (autocast really applied). Where the CPU has no
    native bf16 they are skipped with the reason instead."""
    import torch._dynamo

    torch.manual_seed(0)
    model = build_model(BertConfig(**TINY), "classification").eval()
    ids, mask, types = bench._inputs(3, 16, 300)
    with torch.inference_mode():
        ref = model(ids, mask, types).logits
    side = bench.Model("tiny", model, {})
    if "bf16" in backend and not bench.native_cpu_bf16():
        with pytest.raises(bench.Skip, match="no native bf16"):
            bench.make_runner(side, backend, None, [(3, 16)], tmp_path)
        return
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    out = bench.make_runner(side, backend, None, [(3, 16)], tmp_path)(ids, mask, types)()
    if "compile" in backend:
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    if "bf16" in backend:
        assert out.dtype == torch.bfloat16
        assert torch.allclose(out.float(), ref, atol=0.05)
    else:
        assert out.dtype == torch.float32
        assert torch.allclose(out, ref, atol=1e-5)


def test_cpu_backends_skip_without_native_bf16_or_a_compiler(tmp_path, monkeypatch):
    """No native bf16 and no C++ compiler on PATH: the CPU bf16 and compiled backends are skipped
    with the reason, and nothing is measured under their names."""
    pair = bench.shape_pair("tiny", TINY_SHAPES["tiny"], tmp_path)
    monkeypatch.setattr(bench, "native_cpu_bf16", lambda: False)
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    backends = ["torch-bf16-cpu", "torch-compile-cpu", "torch-compile-bf16-cpu", "torch"]
    settings = BenchmarkSettings(backends=backends, batch_sizes=[2], seq_lengths=[8], warmup=0, iterations=1)
    summary = bench.run_benchmark([pair], settings, tmp_path)
    skipped = {s["backend"]: s["reason"] for s in summary["skipped"]}
    assert "no native bf16" in skipped["torch-bf16-cpu"] and "no native bf16" in skipped["torch-compile-bf16-cpu"]
    assert "needs a C++ compiler" in skipped["torch-compile-cpu"]
    assert [r["backend"] for r in summary["results"]] == ["torch"]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a thread pool needs 2 cores to spin beside the caller")
def test_onnx_sessions_stop_spinning_when_a_run_returns(tmp_path):
    """ONNX Runtime's threads spin on after a run by default (the control: CPU time is spent while
    the process sleeps), which on 2 cores takes them from the next model the benchmark times. Our
    sessions' threads stop when the run returns: no CPU time while idle."""
    import onnxruntime as ort

    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, num_hidden_layers=2, hidden_size=256, intermediate_size=1024,
                        num_attention_heads=4)  # fmt: skip
    path = export_files(build_model(config, "classification"), tmp_path, optimize=False, int8=False)["fp32"]
    feeds = {k: v[:, :128] for k, v in _features(300, 16, 128).items()}

    def idle_cpu_seconds(session) -> float:
        for _ in range(3):
            session.run(None, feeds)
        start = time.process_time()
        time.sleep(0.2)
        return time.process_time() - start

    default = ort.SessionOptions()
    default.intra_op_num_threads = 2
    assert idle_cpu_seconds(ort.InferenceSession(str(path), default, providers=["CPUExecutionProvider"])) > 0.01
    assert idle_cpu_seconds(ort_session(path, threads=2)) < 0.005


def test_each_backend_runs_in_a_process_of_its_own_for_every_pair_and_returns_its_errors(tmp_path):
    """A ProcessBackend builds a pair's runners in a child process from the pickled pair, times real
    batches there, and hands back the child's exceptions as they were: a Skip as a Skip, a model's
    error with its message. The same process then takes the next pair (other shapes: 16 positions,
    so the sequences of 32 it ran for the first pair now fail), times it, and exits cleanly on close."""
    import pickle

    files = {}
    short = {"hidden_size": 64, "intermediate_size": 96, "max_position_embeddings": 16}
    for name in ("tiny", "wider"):
        spec = TINY_SHAPES["tiny"]
        if name == "wider":
            spec = {side: {**spec[side], **short} for side in ("student", "teacher")}
        pair = bench.shape_pair(name, spec, tmp_path)
        if name == "tiny":
            pair.teacher.onnx.pop("int8")
        files[name] = tmp_path / f"{name}.pickle"
        files[name].write_bytes(pickle.dumps(pair))
        # The ONNX backends get the pair without its PyTorch models.
        files[name, "onnx"] = tmp_path / f"{name}.onnx.pickle"
        files[name, "onnx"].write_bytes(pickle.dumps(pair.without_weights()))
        assert pair.without_weights().student.torch_model is None

    torch_side = bench.ProcessBackend("torch", 1, tmp_path)
    int8 = bench.ProcessBackend("ort-int8", 1, tmp_path)
    torch_side.bind(files["tiny"], [(2, 8)])
    torch_side.prepare(2, 8, 300, 1)
    assert torch_side.proc.pid != os.getpid()
    assert all(0 < torch_side.time(side) < 10 for side in (0, 1, 0))
    torch_side.prepare(2, 32, 300, 1)
    with pytest.raises(IndexError, match="index out of range"):  # past the position embeddings
        torch_side.prepare(2, 4096, 300, 1)
    with pytest.raises(bench.Skip, match="no model.int8.onnx was exported"):
        int8.bind(files["tiny", "onnx"], [(2, 8)])

    pids = torch_side.proc.pid, int8.proc.pid
    for b, file in ((torch_side, files["wider"]), (int8, files["wider", "onnx"])):
        b.release()
        b.bind(file, [(2, 8)])
        b.prepare(2, 8, 300, 1)
        assert all(0 < b.time(side) < 10 for side in (0, 1))
    with pytest.raises(IndexError, match="index out of range"):
        torch_side.prepare(2, 32, 300, 1)
    assert (torch_side.proc.pid, int8.proc.pid) == pids and torch_side.alive and int8.alive
    for b in (torch_side, int8):
        b.close()
        assert b.proc.returncode == 0


def test_backends_are_interleaved_so_a_machine_that_slows_down_keeps_their_ratios(tmp_path, monkeypatch):
    """Four backends whose batches cost known times on a clock that runs twice as slow for the
    second half of the timed batches (another job starting): every round times each model of each
    backend once, so the INT8 / fp32 and backend / eager ratios come out exact. Measured one
    backend after the other, the fused graph and INT8 would have run on the slow machine only,
    and shown 1.0x eager and 1.0x fp32 instead of 1.25x and 2x. A backend that fails on one shape
    is reported for that shape; the others go on. Each timed batch follows a one-sequence lead-in
    of the same model, which takes the spinning of the previous model's threads."""
    cost = {("torch", 0): 1.0, ("torch", 1): 10.0, ("ort", 0): 1.0, ("ort", 1): 10.0,
            ("ort-int8", 0): 0.5, ("ort-int8", 1): 5.0, ("ort-fused", 0): 0.8, ("ort-fused", 1): 8.0}  # fmt: skip
    clock, calls = [0.0], []

    def fake_runner(model, backend, threads, shapes, workdir):
        side = 0 if model.name == "student" else 1

        def bind(ids, mask, types):
            if backend == "ort-fused" and ids.shape[0] == 3:
                raise RuntimeError("no kernel for this shape")

            def run():
                calls.append((backend, side, ids.shape[0]))
                timed = 4 * (8 if ids.shape[0] == 2 else 6)  # batch 3: ort-fused fails to bind
                slow = 2.0 if sum(c[2] == ids.shape[0] for c in calls) > timed / 2 else 1.0
                clock[0] += cost[backend, side] * slow / 1000  # ms: seq/s are rounded to 0.01

            return run

        return bind

    monkeypatch.setattr(bench, "make_runner", fake_runner)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    model = build_model(BertConfig(**TINY), "classification")
    pair = bench.Pair("p", "shape", bench.Model("student", model, {}), bench.Model("teacher", model, {}))
    settings = BenchmarkSettings(backends=["torch", "ort", "ort-fused", "ort-int8"], batch_sizes=[2, 3],
                                 seq_lengths=[8], warmup=0, iterations=4)  # fmt: skip
    summary = bench.run_benchmark([pair], settings, tmp_path, log=lambda msg: None, isolate=False)  # fakes: in process

    timed = [c[:2] for c in calls if c[2] == 2]
    assert len(timed) == 4 * 8
    # Each timed batch follows an untimed one-sequence batch of the same model (CPU backends).
    assert all(calls[j - 1] == (*c[:2], 1) for j, c in enumerate(calls) if c[2] == 2)
    first = [(b, side) for b in settings.backends for side in (0, 1)]
    for i in range(4):  # each round: every model of every backend once, starting one model later
        assert timed[8 * i : 8 * i + 8] == first[i:] + first[:i]
    (h,) = (h for h in summary["headline"] if h["batch"] == 2)
    assert h["int8_vs_fp32_onnx"] == {"student": 2.0, "teacher": 2.0}
    assert h["best_fp32"]["student_backend"] == "ort-fused" and h["student_best_fp32_vs_torch_eager"] == 1.25
    # Each round alone gives the same ratios, in the slow rounds as in the fast ones.
    assert h["int8_vs_fp32_onnx_per_round"] == {"student": [2.0] * 4, "teacher": [2.0] * 4}
    assert h["student_best_fp32_vs_torch_eager_per_round"] == [1.25] * 4
    assert h["best_fp32"]["speedup_per_round"] == [10.0] * 4
    rows = {(r["backend"], r["batch"]): r for r in summary["results"]}
    assert rows["ort-int8", 2]["student"]["seq_per_s"] == pytest.approx(2 * 4 / (2 * 0.5 + 2 * 1.0) * 1000, rel=1e-5)
    assert rows["torch", 2]["speedup"] == 10.0
    # batch 3: ort-fused fails to bind; the other three are still measured, interleaved.
    assert summary["errors"] == [{"pair": "p", "backend": "ort-fused", "batch": 3, "seq": 8,
                                  "error": "RuntimeError('no kernel for this shape')"}]  # fmt: skip
    assert {b for b, batch in rows if batch == 3} == {"torch", "ort", "ort-int8"}
    (h,) = (h for h in summary["headline"] if h["batch"] == 3)
    assert h["int8_vs_fp32_onnx"] == {"student": 2.0, "teacher": 2.0}


def test_headline_picks_the_best_backend_per_precision_by_hand():
    """Best fp32 and best bf16 of each side, their ratios, and each against PyTorch eager fp32."""

    def row(backend, precision, student, teacher):
        device = bench.BACKEND_INFO[backend][1]
        return {"pair": "p", "backend": backend, "precision": precision, "device": device, "batch": 8, "seq": 128,
                "student": {"seq_per_s": student}, "teacher": {"seq_per_s": teacher}}  # fmt: skip

    results = [
        row("torch", "fp32", 100.0, 10.0),
        row("torch-compile-cpu", "fp32", 120.0, 9.0),
        row("ort", "fp32", 90.0, 8.0),
        row("ort-int8", "int8", 180.0, 20.0),
        row("torch-bf16-cpu", "bf16", 200.0, 15.0),
        row("torch-compile-bf16-cpu", "bf16", 300.0, 25.0),
    ]
    (h,) = bench.headline(results)
    assert h["best_fp32"] == {"student_backend": "torch-compile-cpu", "student_seq_per_s": 120.0,
                              "teacher_backend": "torch", "teacher_seq_per_s": 10.0, "speedup": 12.0}  # fmt: skip
    assert h["student_best_fp32_vs_torch_eager"] == 1.2
    assert h["best_bf16"]["student_backend"] == "torch-compile-bf16-cpu" and h["best_bf16"]["speedup"] == 12.0
    assert h["student_best_bf16_vs_torch_eager"] == 3.0
    assert h["int8_vs_fp32_onnx"] == {"student": 2.0, "teacher": 2.5}
    assert "best_fp16" not in h
    # A GPU backend can be the best of its precision, but CPU eager is compared with the CPU's best.
    (h,) = bench.headline([*results, row("torch-bf16", "bf16", 5000.0, 900.0), row("ort-cuda", "fp32", 800.0, 90.0)])
    assert h["best_bf16"]["student_backend"] == "torch-bf16" and h["best_fp32"]["student_backend"] == "ort-cuda"
    assert h["student_best_fp32_vs_torch_eager"] == 1.2 and h["student_best_bf16_vs_torch_eager"] == 3.0


def test_ratios_per_round_show_an_outlier_that_the_totals_hide():
    """Three rounds in which the student's last batch took three times its usual 10 ms (the
    machine, not the model): over the totals the student runs 6x its teacher, round by round
    10x, 10x and 3.33x; the summary prints that spread beside the ratio. Cells without per-batch
    times (summaries written before they were kept) give no spread instead of a wrong one."""

    def cell(backend, student_ms, teacher_ms):
        sides = {side: bench.latency_stats([t / 1000 for t in ms], 8)
                 for side, ms in (("student", student_ms), ("teacher", teacher_ms))}  # fmt: skip
        return {"pair": "p", "backend": backend, "precision": bench.BACKEND_INFO[backend][0], "device": "cpu",
                "batch": 8, "seq": 128, **sides, "speedup": 1.0}  # fmt: skip

    results = [cell("torch", [10, 10, 30], [100, 100, 100]), cell("ort", [20, 20, 20], [200, 200, 200]),
               cell("ort-int8", [10, 10, 10], [100, 100, 200])]  # fmt: skip
    (h,) = bench.headline(results)
    assert h["best_fp32"]["speedup"] == pytest.approx(6.0, rel=1e-3)
    assert h["best_fp32"]["speedup_per_round"] == [10.0, 10.0, 3.333]
    assert h["student_best_fp32_vs_torch_eager_per_round"] == [1.0, 1.0, 1.0]
    assert h["int8_vs_fp32_onnx_per_round"] == {"student": [2.0, 2.0, 2.0], "teacher": [2.0, 2.0, 1.0]}
    summary = {"machine": {"cpu": "x", "threads": 2, "cpu_count": 2, "cpu_isa": ["avx2"], "versions": {}},
               "settings": {"warmup": 1, "iterations": 3}, "results": results, "headline": [h],
               "skipped": [], "errors": [],
               "pairs": {"p": {"kind": "shape", **{s: {"layers": 1, "hidden_size": 8, "parameters": 1e6}
                                                    for s in ("student", "teacher")}}}}  # fmt: skip
    md = bench.summary_markdown(summary)
    assert "**6.00x** (rounds 3.33-10.00x)" in md and "INT8 / fp32 ONNX student 2.00x (rounds 2.00-2.00x)" in md
    for r in results:
        for side in ("student", "teacher"):
            del r[side]["batch_ms"]
    (h,) = bench.headline(results)
    assert "speedup_per_round" not in h["best_fp32"] and "int8_vs_fp32_onnx_per_round" not in h
    assert "student_best_fp32_vs_torch_eager_per_round" not in h


def test_latency_stats_by_hand():
    stats = bench.latency_stats([0.1, 0.2, 0.3, 0.4], batch=8)
    assert stats["batch_ms"] == pytest.approx([100.0, 200.0, 300.0, 400.0])
    assert stats["seq_per_s"] == pytest.approx(32 / 1.0)
    assert stats["latency_ms"]["mean"] == pytest.approx(250.0)
    assert stats["latency_ms"]["p50"] == pytest.approx(250.0)
    assert stats["latency_ms"]["p90"] == pytest.approx(370.0)
    assert stats["iterations"] == 4


def test_unknown_backend_is_a_settings_error():
    from bertdistill.settings import SettingsError

    with pytest.raises(SettingsError, match="unknown .*tensorflow.*known backends: torch"):
        BenchmarkSettings(backends=["tensorflow"])


@pytest.mark.parametrize("head", ["classification", "qa"])
def test_fp32_ceiling_counts_every_matrix_product_of_the_forward_pass(head):
    """The ceiling's products are the model's: their FLOPs equal what PyTorch's own FLOP counter
    sees in a forward pass (explicit attention, which the counter can see into), and the ceiling
    is the batch over their summed times."""
    from torch.utils.flop_counter import FlopCounterMode

    config = BertConfig(vocab_size=300, num_labels=3, num_hidden_layers=2, hidden_size=48, intermediate_size=96,
                        num_attention_heads=4)  # fmt: skip
    model = build_model(config, head).eval()
    ids = torch.randint(5, 300, (3, 16))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(ids, torch.ones_like(ids), torch.zeros_like(ids), output_attention_scores=True)
    shapes = bench.matmul_shapes(config, 3, 16, head)
    assert bench.matmul_flops(shapes) == counter.get_total_flops()
    c = bench.fp32_ceiling(config, 3, 16, head, repeats=1)
    assert c["gflop_per_seq"] == pytest.approx(counter.get_total_flops() / 3 / 1e9, rel=1e-3)
    assert c["seq_per_s_at_these_shapes"] == pytest.approx(3 / c["matmul_s_per_batch"], rel=0.01)
    assert c["seq_per_s_at_peak"] == pytest.approx(c["peak_gflop_per_s"] / c["gflop_per_seq"], rel=0.01)
