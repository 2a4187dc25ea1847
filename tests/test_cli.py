"""``python -m bertdistill``: generated from the stage functions, so it accepts exactly what every
rule passes; stages run through it; errors are one line naming the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bertdistill.checkpoints import load_model, save_model
from bertdistill.cli import build_parser, stage_kwargs
from bertdistill.launch import rule_kwargs
from bertdistill.model import BertConfig, build_model
from bertdistill.stages import STAGES, for_rule
from bertdistill.stages.registry import dataclass_fields, is_settings, unwrap_optional
from helpers import (
    copy_workflow,
    general_student,
    hf_config,
    task_teacher,
    write_glove,
    write_sst2,
    write_vocab,
)

STAGE_NAMES = (
    "download",
    "import-teacher",
    "describe",
    "vectors",
    "sst2-data",
    "squad-cloze",
    "adapt-mlm",
    "augment",
    "augment-gather",
    "corpus",
    "shards",
    "general",
    "features",
    "train-features",
    "test-features",
    "split-dev",
    "teacher-logits",
    "backbone",
    "prediction",
    "finetune",
    "final",
    "export",
    "benchmark-shape",
    "benchmark",
    "hub-model",
    "training-curves",
    "metrics-table",
    "augmentation-report",
    "speed-report",
)


BACKBONE = ["backbone", "--task", "sst2", "--teacher", "t", "--init", "i", "--features", "f", "--output", "o"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "bertdistill", *args], capture_output=True, text=True)


def to_argv(stage: str, kwargs: dict) -> list[str]:
    """Plain keyword arguments as command-line options (as a user would type them)."""
    argv = [stage]
    for k, v in kwargs.items():
        flag = "--" + k.replace("_", "-")
        if v is None:
            continue
        if isinstance(v, bool):
            argv.append(flag if v else f"--no-{flag[2:]}")
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            argv += [flag, *v]
        elif isinstance(v, (dict, list)):
            argv += [flag, json.dumps(v)]
        else:
            argv += [flag, str(v)]
    return argv


def workflow_jobs(wd: Path, config: dict) -> list:
    """Every job of a dry run of the workflow in ``wd`` on ``config`` (Snakemake's Python API)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import DAGSettings, OutputSettings, ResourceSettings

    (wd / "config/config.yaml").write_text(yaml.safe_dump(config))
    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings()) as api:
            wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=wd / "Snakefile", workdir=wd)
            wf.dag(DAGSettings()).execute_workflow(pseudo_executor="dryrun")
            workflow = wf._workflow
            return [j for j in workflow.dag.jobs if j.rule.name != "all"], [r.name for r in workflow.rules]
    finally:
        os.chdir(cwd)


def test_every_rule_passes_only_what_the_cli_accepts(tmp_path):
    """Drift test: every job of the shipped config's DAG (plus a downloaded teacher) is mapped onto
    its stage by name, and the same arguments given on the command line parse to the same
    keyword arguments. Every rule of the workflow runs a registered stage, and every stage is
    reached by some rule."""
    wd = copy_workflow(tmp_path)
    config = yaml.safe_load((wd / "config/config.yaml").read_text())
    config["teachers"]["squad"] = {"source": {"url": "https://example.org/qa.zip", "sha256": "0" * 64}, "head": "qa"}
    config["tasks"]["squad"]["teacher"] = "squad"
    config["tasks"]["sst2"]["dev"] = {"from_train": 0.1}  # the recipes' way: dev carved out of train
    config["export"]["int8_activations"] = "percentile"  # the export then also reads training features
    jobs, rules = workflow_jobs(wd, config)
    parser = build_parser()
    seen = set()
    for job in jobs:
        entry = for_rule(job.rule.name)
        named = {
            "input": dict(job.input.items()),
            "output": dict(job.output.items()),
            "params": dict(job.params.items()),
            "resources": dict(job.resources.items()),
        }
        kwargs = rule_kwargs(entry, job.rule.name, named, dict(job.wildcards.items()))
        assert set(kwargs) == set(named["input"]) | set(named["output"]) | set(named["params"]) | (
            (set(job.wildcards.keys()) | set(named["resources"])) & set(entry.parameters)
        )
        args = parser.parse_args(to_argv(entry.name, kwargs))
        assert stage_kwargs(entry, args, parser) == kwargs, job.rule.name
        seen.add(job.rule.name)
        if job.rule.name == "export_onnx":  # calibration on the original training data, never augmented
            original = "train_original" if job.wildcards["task"] == "sst2" else "train"
            assert kwargs["calibration_features"] == f"results/{job.wildcards['task']}/features/{original}.hdf5"
    assert seen == set(rules) - {"all"}
    assert {s.name for s in STAGES.values() if set(s.rules) & seen} == set(STAGES)


def test_a_rule_cannot_pass_what_its_stage_does_not_take():
    """The adapter refuses a named item that is not a parameter of the stage (before running it)."""
    from bertdistill.stages import StageError

    entry = for_rule("task_backbone")
    with pytest.raises(StageError, match="params 'temperature' is not a parameter of stage backbone"):
        rule_kwargs(entry, "task_backbone", {"params": {"temperature": 1.0}}, {"task": "sst2"})
    assert rule_kwargs(entry, "task_backbone", {"output": {"output": "o"}}, {"task": "sst2", "ext": "tsv"}) == {
        "output": "o",
        "task": "sst2",
    }


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_help_lists_every_parameter_with_help_text(stage):
    """`bertdistill STAGE --help` shows an option with help text for every parameter, and for
    every field of a settings group."""
    entry = STAGES[stage]
    text = build_parser()._subparsers._group_actions[0].choices[stage].format_help()
    for name in entry.parameters:
        assert f"--{name.replace('_', '-')}" in text, name
        assert entry.docs.get(name), f"{stage}: parameter {name} has no help text in the docstring"
        base, _ = unwrap_optional(entry.hints[name])
        if is_settings(base):
            for field, (_, _, doc) in dataclass_fields(base).items():
                assert f"--{name.replace('_', '-')}.{field.replace('_', '-')}" in text and doc, (stage, field)
    if entry.distributed:
        assert "--nproc" in text


def test_help_lists_stages():
    r = run("--help")
    assert r.returncode == 0
    assert set(STAGE_NAMES) == set(STAGES)
    for stage in STAGE_NAMES:
        assert stage in r.stdout
    r = run("final", "--help")
    assert r.returncode == 0 and "--max-answer-length" in r.stdout and "--n-best" in r.stdout


def test_settings_from_yaml_and_dotted_keys():
    """A settings group from YAML and field options (the fields win); underscores work too."""
    parser = build_parser()
    entry = STAGES["backbone"]
    args = parser.parse_args(
        [
            *BACKBONE,
            "--train",
            "{epochs: 1, lr: 1e-4, batch_size: 8}",
            "--train.lr",
            "2e-4",
            "--train.keep",
            "best",
            "--losses.layer_map",
            "[0, 2]",
            "--no-train.dynamic-padding",
        ]
    )
    kwargs = stage_kwargs(entry, args, parser)
    assert kwargs["train"] == {"epochs": 1, "lr": 2e-4, "batch_size": 8, "keep": "best", "dynamic_padding": False}
    assert kwargs["losses"] == {"layer_map": [0, 2]}
    with pytest.raises(SystemExit):
        parser.parse_args(["backbone", "--train.schedule", "cosine"])  # not a choice


def test_import_and_describe(tmp_path):
    torch.manual_seed(0)
    model = build_model(BertConfig.from_dict(hf_config().to_dict()), "qa")
    save_model(model, tmp_path / "src", vocab=write_vocab(tmp_path / "vocab.txt", 99))
    r = run("import-teacher", "--source", str(tmp_path / "src"), "--head", "qa", "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    again = load_model(tmp_path / "out", head="qa")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    r = run("describe", "--model", str(tmp_path / "out"), "--output", str(tmp_path / "d.json"))
    assert r.returncode == 0 and json.loads((tmp_path / "d.json").read_text())["layers"] == 3


def test_error_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("import-teacher", "--source", str(tmp_path / "empty"), "--output", str(tmp_path / "out"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "empty") in lines[0]
    assert not (tmp_path / "out").exists()
    r = run(
        *BACKBONE,
        "--train",
        "{epochs: 1, warmup_steps: 3}",
    )
    assert r.returncode == 2 and "unknown key(s) warmup_steps" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # Field by field, a field that does not exist names the fields that do; other options stay argparse's.
    r = run(*BACKBONE, "--train.warmup_steps", "3")
    assert r.returncode == 2 and "--train has no field warmup-steps; its fields: batch-size, betas," in r.stderr
    r = run(*BACKBONE, "--bogus", "3")
    assert r.returncode == 2 and "unrecognized arguments: --bogus 3" in r.stderr


@pytest.mark.slow
def test_task_stages_through_the_cli(tmp_path):
    teacher = task_teacher(tmp_path / "teacher", "classification")
    data = write_sst2(tmp_path / "data")
    general = general_student(tmp_path / "general", teacher)
    f = tmp_path / "f"
    evaluation = ("--eval-batch-size", "64", "--n-best", "20", "--max-answer-length", "30")
    steps = [
        (
            "features",
            "--task",
            "sst2",
            "--train",
            str(data / "train.tsv"),
            "--dev",
            str(data / "dev.tsv"),
            "--vocab",
            str(teacher),
            "--train-output",
            str(f / "train.hdf5"),
            "--dev-output",
            str(f / "dev.hdf5"),
            "--settings.max-seq-length",
            "32",
        ),
        (
            "teacher-logits",
            "--task",
            "sst2",
            "--teacher",
            str(teacher),
            "--features",
            str(f / "train.hdf5"),
            "--output",
            str(f / "logits.hdf5"),
            "--batch-size",
            "16",
        ),
        (
            "backbone",
            "--task",
            "sst2",
            "--teacher",
            str(teacher),
            "--init",
            str(general),
            "--features",
            str(f / "train.hdf5"),
            "--output",
            str(tmp_path / "backbone"),
            "--train",
            '{"max_steps": 2, "batch_size": 8}',
        ),
        (
            "prediction",
            "--task",
            "sst2",
            "--teacher",
            str(teacher),
            "--backbone",
            str(tmp_path / "backbone"),
            "--features",
            str(f / "train.hdf5"),
            "--dev-features",
            str(f / "dev.hdf5"),
            "--dev",
            str(data / "dev.tsv"),
            "--output",
            str(tmp_path / "prediction"),
            "--teacher-logits",
            str(f / "logits.hdf5"),
            "--temperature",
            "1",
            *evaluation,
            "--train",
            "{max_steps: 2, batch_size: 8, eval_every: 1, keep: best}",
        ),
        (
            "final",
            "--task",
            "sst2",
            "--student",
            str(tmp_path / "prediction"),
            "--teacher",
            str(teacher),
            "--dev-features",
            str(f / "dev.hdf5"),
            "--dev",
            str(data / "dev.tsv"),
            "--output",
            str(tmp_path / "final"),
            *evaluation,
            "--backbone",
            str(tmp_path / "backbone"),
            "--features",
            str(f / "train.hdf5"),
        ),
    ]
    for args in steps:
        r = run(*args)
        assert r.returncode == 0, (args[0], r.stderr[-2000:])
    metrics = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert "accuracy" in metrics["student"] and "accuracy" in metrics["teacher"]
    assert set(metrics["stage_wall_s"]) == {"features", "backbone", "prediction"}
    assert (metrics["teacher_logits"], metrics["teacher_logits_mode"]) == ("cached", "eval")


@pytest.mark.slow
def test_augmentation_through_the_cli(tmp_path):
    mlm = task_teacher(tmp_path / "mlm", "mlm")
    data = write_sst2(tmp_path / "data", n_train=12)
    r = run(
        "vectors",
        "--source",
        str(write_glove(tmp_path / "g.txt")),
        "--format",
        "auto",
        "--output",
        str(tmp_path / "v.kv"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    parts = []
    for i in range(2):
        parts.append(str(tmp_path / f"part_{i}.json"))
        r = run(
            "augment",
            "--task",
            "sst2",
            "--train",
            str(data / "train.tsv"),
            "--mlm",
            str(mlm),
            "--vectors",
            str(tmp_path / "v.kv"),
            "--output",
            parts[-1],
            "--shard-index",
            str(i),
            "--num-shards",
            "2",
            "--settings",
            '{"n": 3, "m": 4}',
        )
        assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "train_aug.tsv"
    r = run(
        "augment-gather",
        "--task",
        "sst2",
        "--train",
        str(data / "train.tsv"),
        "--parts",
        *parts,
        "--output",
        str(out),
        "--stats-output",
        f"{out}.stats.json",
        "--samples-output",
        f"{out}.samples.json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    from bertdistill.data.glue import read_sst2_tsv

    sentences, labels = read_sst2_tsv(out)
    original, _ = read_sst2_tsv(data / "train.tsv")
    assert len(sentences) > len(original) and set(original) <= set(sentences)
    assert json.loads((tmp_path / "train_aug.tsv.stats.json").read_text())["texts"] == 12


def test_inspect_describes_each_kind_of_file(tmp_path):
    """`bertdistill inspect` on a model folder, its weights file, a pre-training shard, task features,
    a teacher-logit cache, SQuAD JSON and a GLUE TSV: the shapes and counts the files really hold."""
    import h5py

    from bertdistill import stages
    from helpers import task_teacher, write_id_shards, write_squad, write_sst2

    teacher = task_teacher(tmp_path / "teacher", "classification")
    shard = write_id_shards(tmp_path / "shards", [7])[0]
    sst2, squad = write_sst2(tmp_path / "sst2", n_train=10, n_dev=4), write_squad(tmp_path / "squad")
    stages.train_features("sst2", sst2 / "train.tsv", teacher, tmp_path / "f.hdf5", {"max_seq_length": 32})
    stages.task_teacher_logits("sst2", teacher, tmp_path / "f.hdf5", tmp_path / "logits.hdf5", batch_size=4)
    paths = [teacher, teacher / "model.safetensors", shard, tmp_path / "f.hdf5", tmp_path / "logits.hdf5"]
    paths += [squad / "train-v1.1.json", sst2 / "train.tsv"]
    r = run("inspect", *map(str, paths))
    assert r.returncode == 0, r.stderr
    outs = json.loads("[" + r.stdout.replace("}\n{", "},\n{") + "]")
    model, weights, sh, feats, logits, sq, tsv = outs
    config = json.loads((teacher / "config.json").read_text())
    assert model["format"] == "model folder" and model["config"]["num_hidden_layers"] == config["num_hidden_layers"]
    assert model["weights"]["layers"] == config["num_hidden_layers"] and model["weights"]["heads"] == ["classification"]
    assert weights["parameters"] == model["weights"]["parameters"] > 0
    with h5py.File(shard) as f:
        assert sh["format"] == "pre-training shard" and sh["rows"] == 7 == len(f["input_ids"])
    assert feats["format"] == "task features" and feats["rows"] == 10
    assert feats["datasets"]["input_ids"]["shape"][1] <= 32
    assert logits["format"] == "teacher-logit cache" and logits["datasets"]["teacher_logits"]["shape"] == [10, 2]
    assert logits["attrs"]["teacher_mode"] == "eval" and len(logits["attrs"]["features_sha256"]) == 64
    assert sq["format"] == "SQuAD v1.1 JSON" and sq["questions"] == 3 * sq["paragraphs"] > 0
    assert tsv == {**tsv, "format": "GLUE TSV", "columns": ["sentence", "label"], "rows": 10}
    bad = run("inspect", str(tmp_path / "nothing.hdf5"))
    assert bad.returncode == 2 and "nothing.hdf5: no such file or folder" in bad.stderr


def test_predict_classifies_like_transformers_and_answers_like_evaluation(tmp_path):
    """`bertdistill predict`: a classifier's probabilities equal transformers' softmax on the same
    folder and text (its own tokenizer); QA answers equal what the evaluation code answers for the
    same questions in a SQuAD file, and come from the context."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertTokenizerFast

    from bertdistill.checkpoints import load_model
    from bertdistill.data.squad import load_squad_json
    from bertdistill.settings import FeatureSettings
    from bertdistill.tasks import build_task_features, get_task
    from helpers import task_teacher, write_squad

    clf = task_teacher(tmp_path / "clf", "classification")
    texts = ["the music is great , a wonderful film", "dull and cold"]
    r = run("predict", str(clf), "--text", texts[0], "--text", texts[1])
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    hf = AutoModelForSequenceClassification.from_pretrained(clf).eval()
    tok = BertTokenizerFast(str(clf / "vocab.txt"), do_lower_case=True)
    with torch.no_grad():
        probs = hf(**tok(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    for g, p in zip(got, probs, strict=True):
        assert g["label_id"] == int(p.argmax())
        assert list(g["probabilities"].values()) == pytest.approx(p.tolist(), abs=1e-5)

    qa = task_teacher(tmp_path / "qa", "qa")
    dev = write_squad(tmp_path / "squad") / "dev-v1.1.json"
    records = [
        {"question": q["question"], "context": p["context"]}
        for a in load_squad_json(dev)
        for p in a["paragraphs"]
        for q in p["qas"]
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))
    r = run("predict", str(qa), "--input", str(tmp_path / "in.jsonl"), "--max-seq-length", "64", "--doc-stride", "16")
    assert r.returncode == 0, r.stderr
    answers = [json.loads(line)["answer"] for line in r.stdout.splitlines()]
    settings = FeatureSettings(max_seq_length=64, doc_stride=16, max_query_length=64)
    arrays, _ = build_task_features(get_task("squad"), dev, qa / "vocab.txt", False, settings)
    _, expected = get_task("squad").evaluate(load_model(qa, head="qa"), arrays, dev, qa / "vocab.txt", 32, 20, 30)
    assert answers == list(expected.values()) and len(answers) == len(records)
    assert all(a in rec["context"] for a, rec in zip(answers, records, strict=True))
    bad = run("predict", str(qa), "--text", "no question here")
    assert bad.returncode == 2 and "needs 'question' and 'context'" in bad.stderr
