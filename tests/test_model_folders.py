"""Model folders as a user of transformers meets them: every folder the task stages write names
its labels and no other model, carries tokenizer files, and results/{task}_model (rule hub_model)
holds exactly what a Hub upload should: the student, its tokenizer and a model card whose figures
are the run's records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bertdistill import stages
from bertdistill.checkpoints import load_model
from bertdistill.stages.deploy import MODEL_FILES
from bertdistill.tokenization import load_tokenizer
from helpers import task_teacher, write_id_shards, write_squad, write_sst2

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "The river rises in the northern hills .",
    "Dr. Smith arrived at the station at 5 p.m. on Monday!",
    "bees collect nectar from many kinds of flowers",
]
TRAIN = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "schedule": "constant"}
SELECT = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "eval_every": 3, "keep": "best"}
EVAL = {"eval_batch_size": 64, "n_best": 20, "max_answer_length": 30}
BENCH = {"backends": ["torch"], "batch_sizes": [1], "seq_lengths": [16], "warmup": 0, "iterations": 1}


def two(value: float) -> str:
    """A metric as the card must write it: two decimals (written here, not taken from the module)."""
    return f"{value:.2f}"


def pct(ratio: float) -> str:
    return f"{100 * ratio:.1f}%"


@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory):
    """Every stage of an SST-2 run at toy size, as the workflow chains them: a base teacher whose
    source config names another model, imported; fine-tuned on the task; general distillation,
    backbone, prediction, the no-distillation baseline, final, export, benchmark, hub_model."""
    tmp = tmp_path_factory.mktemp("sst2")
    src = task_teacher(tmp / "source", None)
    config = json.loads((src / "config.json").read_text())
    config.update({"_name_or_path": "someone/another-model", "transformers_version": "4.8.2"})
    (src / "config.json").write_text(json.dumps(config))
    (src / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# tiny-source-teacher\n")
    base = stages.import_teacher({"path": str(src)}, tmp / "teachers/base", None, None, None)
    data = write_sst2(tmp / "data")
    # 7 test examples against 12 dev ones: a figure read from the wrong split shows.
    test = (write_sst2(tmp / "heldout", 4, 7, seed=5) / "dev.tsv").rename(tmp / "heldout/test.tsv")
    train, dev = data / "train.tsv", data / "dev.tsv"
    f = tmp / "sst2/features"
    stages.task_features("sst2", train, dev, base, f / "train.hdf5", f / "dev.hdf5", {"max_seq_length": 32})
    stages.heldout_features("sst2", test, base, f / "test.hdf5", {"max_seq_length": 32})
    teacher = tmp / "teachers/sst2"
    stages.finetune_teacher("sst2", base, f / "train.hdf5", f / "dev.hdf5", dev, teacher, train=SELECT, **EVAL)
    stages.task_teacher_logits("sst2", teacher, f / "train.hdf5", tmp / "sst2/logits.hdf5", batch_size=16)
    shards = write_id_shards(tmp / "shards/seq16", [16, 16], length=16, vocab_size=60)
    phase1 = tmp / "general/phase1"
    student = {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 4}
    stages.general_distill(
        base,
        shards,
        phase1,
        train={"max_steps": 2, "batch_size": 4, "lr": 1e-3},
        losses={"layer_map": "uniform"},
        phase="phase1",
        student=student,
        reader={"workers": 0},
    )
    stages.task_backbone("sst2", teacher, phase1, f / "train.hdf5", tmp / "sst2/backbone", train=TRAIN, losses={})
    stages.task_prediction(
        "sst2",
        teacher,
        tmp / "sst2/backbone",
        f / "train.hdf5",
        f / "dev.hdf5",
        dev,
        tmp / "sst2/prediction",
        train=SELECT,
        temperature=2.0,
        teacher_logits=tmp / "sst2/logits.hdf5",
        **EVAL,
    )
    baseline = tmp / "sst2/no_distillation"
    stages.finetune_teacher("sst2", phase1, f / "train.hdf5", f / "dev.hdf5", dev, baseline, train=SELECT, **EVAL)
    final = tmp / "sst2_final"
    stages.task_final(
        "sst2",
        tmp / "sst2/prediction",
        teacher,
        f / "dev.hdf5",
        dev,
        final,
        general=[phase1],
        features=f / "train.hdf5",
        backbone=tmp / "sst2/backbone",
        test_features=f / "test.hdf5",
        test=test,
        no_distillation=baseline,
        **EVAL,
    )
    onnx = tmp / "sst2_onnx"
    stages.export("sst2", final, teacher, f / "test.hdf5", test, onnx, 16, 20, 30, {"parity_features": 8}, "test")
    stages.benchmark(tmp / "benchmark", BENCH, exports=[onnx])
    model = tmp / "sst2_model"
    facts = stages.STAGES["hub-model"].call(
        task="sst2",
        student=final,
        teacher=teacher,
        output=model,
        license=None,
        base_model=None,
        prediction=tmp / "sst2/prediction",
        backbone=tmp / "sst2/backbone",
        general=[phase1],
        features=f / "train.hdf5",
        dev_features=f / "dev.hdf5",
        test_features=f / "test.hdf5",
        export=onnx,
        benchmark=tmp / "benchmark",
    )
    return {"tmp": tmp, "base": base, "teacher": teacher, "final": final, "model": model, "facts": facts}


@pytest.fixture(scope="module")
def squad_model(tmp_path_factory):
    """A SQuAD final folder from random-weight models (no records of training) and its hub folder."""
    tmp = tmp_path_factory.mktemp("squad")
    teacher = task_teacher(tmp / "teacher", "qa")
    student = task_teacher(tmp / "student", "qa", seed=1)
    dev = write_squad(tmp / "data") / "dev-v1.1.json"
    settings = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16}
    stages.heldout_features("squad", dev, teacher, tmp / "dev.hdf5", settings)
    stages.task_final("squad", student, teacher, tmp / "dev.hdf5", dev, tmp / "squad_final", **EVAL)
    stages.STAGES["hub-model"].call(
        task="squad",
        student=tmp / "squad_final",
        teacher=teacher,
        output=tmp / "squad_model",
        license="mit",
        base_model="someone/tiny-bert",
        dev_features=tmp / "dev.hdf5",
    )
    return tmp / "squad_model"


def _card(folder: Path) -> tuple[dict, str]:
    """The model card's YAML front matter and its body."""
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def test_every_folder_of_a_classification_task_names_its_labels(sst2_run):
    """The fine-tuned teacher, both task stages, the baseline, final and the hub folder call their
    classes negative/positive (not LABEL_0/LABEL_1), and no folder we wrote names the model the base
    teacher's source config came from, or the transformers version that wrote that config."""
    tmp = sst2_run["tmp"]
    folders = [sst2_run["teacher"], tmp / "sst2/backbone", tmp / "sst2/prediction", tmp / "sst2/no_distillation"]
    folders += [sst2_run["final"], sst2_run["model"]]
    for folder in folders:
        config = _config(folder)
        assert config["id2label"] == {"0": "negative", "1": "positive"}, folder
        assert config["label2id"] == {"negative": 0, "positive": 1}, folder
    for folder in [sst2_run["base"], tmp / "general/phase1", *folders]:
        assert not set(_config(folder)) & {"_name_or_path", "transformers_version"}, folder
    assert (sst2_run["base"] / "distill.json").is_file()  # the import recorded its source instead
    record = json.loads((sst2_run["base"] / "distill.json").read_text())
    assert record["source_card"] == {"license": "apache-2.0", "title": "tiny-source-teacher"}


def test_hub_folder_holds_the_model_and_nothing_of_the_run(sst2_run):
    """results/{task}_model: exactly the model, its tokenizer and the card; the run's records stay
    in results/{task}_final, which keeps them."""
    names = {p.name for p in sst2_run["model"].iterdir()}
    assert names == set(MODEL_FILES)
    assert not names & {"metrics.json", "predictions.json", "distill.json", ".snakemake_timestamp", "train.csv"}
    final = {p.name for p in sst2_run["final"].iterdir()}
    assert {"metrics.json", "predictions.json", "distill.json", "tokenizer.json", "tokenizer_config.json"} <= final
    a, b = load_model(sst2_run["final"], head="classification"), load_model(sst2_run["model"], head="classification")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("which", ["model", "final", "teacher"])
def test_classifier_loads_in_transformers_with_our_ids_and_logits(sst2_run, which):
    """AutoTokenizer + AutoModelForSequenceClassification on the folder: the fast tokenizer gives our
    WordPiece's ids (pairs too), lower-cases, truncates to max_position_embeddings, and the logits
    are our model's."""
    folder = sst2_run[which]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    ours_tok = load_tokenizer(folder / "vocab.txt", lowercase=True)
    ours = load_model(folder, head="classification")
    for text in SENTENCES:
        assert tok(text)["input_ids"] == ours_tok.encode(text).ids
    assert tok(SENTENCES[0], SENTENCES[1])["input_ids"] == ours_tok.encode(SENTENCES[0], SENTENCES[1]).ids
    assert tok("THE RIVER Rises")["input_ids"] == tok("the river rises")["input_ids"]
    limit = ours.config.max_position_embeddings
    assert tok.model_max_length == limit
    assert len(tok(" ".join(["river"] * (2 * limit)), truncation=True)["input_ids"]) == limit
    assert hf.config.id2label == {0: "negative", 1: "positive"}
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
        got = hf(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_qa_folder_loads_in_transformers_with_our_logits(squad_model):
    """The same for a SQuAD student: AutoModelForQuestionAnswering's start/end logits are ours."""
    tok = transformers.AutoTokenizer.from_pretrained(squad_model)
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(squad_model).eval()
    ours = load_model(squad_model, head="qa")
    assert tok.model_max_length == ours.config.max_position_embeddings
    assert {p.name for p in squad_model.iterdir()} == set(MODEL_FILES)
    batch = tok(["which word is ri here ?"], [SENTENCES[0]], return_tensors="pt")
    with torch.no_grad():
        expected = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        got = hf(**batch)
    torch.testing.assert_close(got.start_logits, expected.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.end_logits, expected.end_logits, atol=1e-5, rtol=0)


def test_model_card_metadata(sst2_run, squad_model):
    """Front matter: license (the teacher's, from its source's card, unless configured), language,
    library, pipeline tag, tags, base_model only when configured, and model-index with the
    student's metrics of metrics.json on the reported split."""
    meta, _ = _card(sst2_run["model"])
    metrics = json.loads((sst2_run["final"] / "metrics.json").read_text())
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert {"distillation", "tinybert"} <= set(meta["tags"]) and "base_model" not in meta
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["split"] == metrics["split"] == "test" and result["dataset"]["type"] == "test.tsv"
    assert result["metrics"] == [
        {"type": "accuracy", "value": round(metrics["student"]["accuracy"], 2), "name": "test accuracy"}
    ]
    meta, body = _card(squad_model)
    assert meta["license"] == "mit" and meta["base_model"] == "someone/tiny-bert"
    assert meta["pipeline_tag"] == "question-answering"
    metrics = json.loads((squad_model.parent / "squad_final/metrics.json").read_text())
    assert metrics["split"] == "dev" and "dev (reported)" in body
    values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {k: round(v, 2) for k, v in metrics["student"].items()} and set(values) == {"exact_match", "f1"}
    assert "AutoModelForQuestionAnswering" in body and "Not measured" in body


def test_model_card_figures_are_the_records(sst2_run):
    """Every figure the card states is read from a record: metrics.json (student, teacher, retention,
    baseline, no-distillation and gain on test and dev), export.json (the INT8 graph, bf16), the benchmark's
    summary.json (seq/s of this task's pair), each stage's distill.json (steps, learning rate,
    temperature) and the feature files (split sizes)."""
    import h5py

    _, body = _card(sst2_run["model"])
    tmp = sst2_run["tmp"]
    m = json.loads((sst2_run["final"] / "metrics.json").read_text())
    assert m["student"] != m["dev"]["student"] and m["teacher"] != m["dev"]["teacher"]  # splits tell apart
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")[1:] for line in body.splitlines()}
    assert rows["student accuracy"] == [two(m["student"]["accuracy"]), two(m["dev"]["student"]["accuracy"])]
    assert rows["teacher accuracy"] == [two(m["teacher"]["accuracy"]), two(m["dev"]["teacher"]["accuracy"])]
    assert rows["retention (student / teacher accuracy)"] == [pct(m["retention"]), pct(m["dev"]["retention"])]
    assert rows["trivial baseline (majority class) accuracy"] == [
        two(m["baseline"]["accuracy"]),
        two(m["dev"]["baseline"]["accuracy"]),
    ]
    assert rows["no distillation (the same student fine-tuned on labels) accuracy"] == [
        two(m["no_distillation"]["accuracy"]),
        two(m["dev"]["no_distillation"]["accuracy"]),
    ]
    assert rows["distillation gain (points)"] == [two(m["distillation_gain"]), two(m["dev"]["distillation_gain"])]
    export = json.loads((tmp / "sst2_onnx/export.json").read_text())
    assert rows["student as INT8 ONNX accuracy"] == [
        two(export["models"]["student"]["metrics"]["onnx_int8"]["accuracy"]),
        "-",
    ]
    bf16 = export["models"]["student"]["metrics"].get("pytorch_bf16")  # only where the CPU has native bf16
    if bf16:
        assert rows["student in bf16 (PyTorch autocast, CPU) accuracy"] == [two(bf16["accuracy"]), "-"]
    else:
        assert "student in bf16 (PyTorch autocast, CPU) accuracy" not in rows
    summary = json.loads((tmp / "benchmark/summary.json").read_text())
    (head,) = [h for h in summary["headline"] if h["pair"] == "sst2"]
    best = head["best_fp32"]
    assert rows["1"] == [  # batch 1
        "16",
        f"{best['student_seq_per_s']:,.1f} ({best['student_backend']})",
        f"{best['teacher_seq_per_s']:,.1f} ({best['teacher_backend']})",
        f"{best['speedup']:.2f}x",
    ]
    assert summary["machine"]["cpu"] in body
    isa = summary["machine"]["cpu_isa"]  # a model name alone does not tell the speed
    assert not isa or f"({', '.join(isa)}; " in body
    for stage, prefix in (("prediction", "task prediction distillation"), ("backbone", "task backbone distillation")):
        record = json.loads((tmp / "sst2" / stage / "distill.json").read_text())
        cells = rows[prefix]
        assert cells[0] == f"{record['examples']} sst2 training features" and cells[1].startswith(
            f"{record['steps']} steps"
        )
        assert cells[2] == str(record["train"]["batch_size"]) and cells[3].startswith(f"{record['train']['lr']} ")
        assert cells[4] == "32"
    assert "temperature 2.0" in rows["task prediction distillation"][5]
    general = json.loads((tmp / "general/phase1/distill.json").read_text())
    cells = rows["general distillation phase1"]
    assert cells[1].startswith(f"{general['steps']} steps") and cells[4] == "16"  # shards under seq16/
    teacher = json.loads((sst2_run["teacher"] / "distill.json").read_text())
    assert rows["teacher fine-tuning"][0] == f"{teacher['examples']} sst2 training features, not augmented"
    for split, name in (("train", "train"), ("dev", "dev (selects checkpoints)"), ("test", "test (reported)")):
        with h5py.File(tmp / f"sst2/features/{split}.hdf5") as f:
            examples = int(f.attrs["examples"])
        assert f"- {name}: {examples:,} examples" in body
    s, t = sst2_run["facts"]["student"], sst2_run["facts"]["teacher"]
    assert rows["parameters"] == [f"{m['student_parameters']:,}", f"{m['teacher_parameters']:,}"]
    assert rows["layers"] == [str(s["layers"]), str(t["layers"])] == ["2", "2"]
    assert "**tiny-source-teacher** (license apache-2.0)" in body and "fine-tuned here on" in body
    assert "Labels: 0 = `negative`, 1 = `positive`." in body and "lower-cased" in body


def test_predict_and_inspect_read_the_hub_folder(sst2_run):
    """`bertdistill predict` labels texts with the folder's label names, as the final folder does;
    `bertdistill inspect` describes it (labels, tokenizer, files)."""

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bertdistill", *args], capture_output=True, text=True)

    texts = ["a wonderful film", "dull and cold"]
    outs = []
    for which in ("model", "final"):
        r = cli("predict", str(sst2_run[which]), "--text", texts[0], "--text", texts[1])
        assert r.returncode == 0, r.stderr
        outs.append([json.loads(line) for line in r.stdout.splitlines()])
    assert outs[0] == outs[1] and {o["label"] for o in outs[0]} <= {"negative", "positive"}
    assert set(outs[0][0]["probabilities"]) == {"negative", "positive"}
    r = cli("inspect", str(sst2_run["model"]))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["labels"] == ["negative", "positive"] and set(info["files"]) == set(MODEL_FILES)
    assert info["tokenizer"] == {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 128}
