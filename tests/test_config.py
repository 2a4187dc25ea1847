"""Config: the shipped configs validate against the schema; CLI strings are coerced by the schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bertdistill.config import coerce_cli_strings

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas/config.schema.yaml"


@pytest.mark.parametrize("path", ["config/config.yaml", "config/recipes/nvidia-4l-312d.yaml"])
def test_shipped_configs_validate(path):
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / path).read_text())
    validate(config, str(SCHEMA))
    assert config["shards"]["short_seq_prob"] == 0.1


def test_recipe_reproduces_the_reference():
    r = yaml.safe_load((REPO / "config/recipes/nvidia-4l-312d.yaml").read_text())
    assert r["student"]["hidden_size"] == 312 and r["student"]["num_hidden_layers"] == 4
    assert r["student"]["intermediate_size"] == 1200 and r["student"]["num_attention_heads"] == 12
    assert r["general"]["losses"] == {
        "attention": "kl",
        "value": "kl",
        "hidden": "cosine",
        "embedding": None,
        "layer_map": "last",
        "masking": "faithful",
    }
    p1, p2 = r["general"]["phase1"], r["general"]["phase2"]
    assert (p1["seq"], p1["train"]["max_steps"], p2["seq"], p2["train"]["max_steps"]) == (128, 68616, 512, 6861)
    for p in (p1, p2):
        t = p["train"]
        assert t["batch_size"] * p["gpus"] == 256 and t["lr"] == 1e-4 and t["schedule"] == "linear"
        assert t["global_batch_size"] == 256  # the reference's global batch on any number of GPUs
        assert t["warmup"] == 0.1 and t["optimizer"] == "adam_nobc" and t["weight_decay"] == 0.01


def test_nested_cli_strings_become_numbers():
    config = {
        "general": {
            "phase2": {"train": {"lr": "0.002", "max_steps": "5", "teacher_dropout": "false"}},
            "teacher": "123",
        },
        "teachers": {"base": {"source": {"path": "007"}}},
    }
    coerce_cli_strings(config, SCHEMA)
    train = config["general"]["phase2"]["train"]
    assert train == {"lr": 0.002, "max_steps": 5, "teacher_dropout": False}
    assert config["general"]["teacher"] == "123" and config["teachers"]["base"]["source"]["path"] == "007"


def test_recipe_tasks_reproduce_the_reference():
    r = yaml.safe_load((REPO / "config/recipes/nvidia-4l-312d.yaml").read_text())
    sq, ss = r["tasks"]["squad"], r["tasks"]["sst2"]
    assert (sq["init"], ss["init"]) == ("phase2", "phase1")
    assert sq["augment"] == {"enabled": True, "n": 15} and ss["augment"] == {"enabled": True, "n": 20}
    assert (r["augment"]["m"], r["augment"]["p"], r["augment"]["vector_vocab"]) == (15, 0.4, 100000)
    assert sq["features"] == {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}
    assert ss["features"]["max_seq_length"] == 128
    for t, back_epochs, pred_epochs, every in ((sq, 9, 10, 2000), (ss, 10, 3, 100)):
        b, p = t["backbone"]["train"], t["prediction"]["train"]
        assert (b["epochs"], b["lr"], b["schedule"]) == (back_epochs, 5e-5, "constant")
        assert (p["epochs"], p["lr"], p["schedule"], p["warmup"]) == (pred_epochs, 3e-5, "linear", 0.1)
        assert (p["eval_every"], p["keep"]) == (every, "best") and t["prediction"]["temperature"] == 1.0
        assert b["batch_size"] * t["backbone"]["gpus"] == 256


def _resolve(node: dict, schema: dict) -> dict:
    while "$ref" in node:
        target = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def test_every_schema_key_is_described():
    schema = yaml.safe_load(SCHEMA.read_text())
    missing = []

    def walk(node, path):
        node = _resolve(node, schema)
        for key, sub in node.get("properties", {}).items():
            if not _resolve(sub, schema).get("description"):
                missing.append(f"{path}.{key}")
            walk(sub, f"{path}.{key}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "config")
    assert not missing, missing


SCHEMA_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


@pytest.mark.parametrize(
    "cls, where, skip",
    [
        ("TrainConfig", "$defs/train", ()),
        ("BackboneLossConfig", "$defs/losses", ()),
        ("ReaderSettings", "properties/general/properties/reader", ()),
        (
            "ShardSettings",
            "properties/shards",
            ("max_seq_length", "max_predictions", "num_shards", "bytes_per_shard", "seed"),
        ),
        ("AugmentSettings", "properties/augment", ("n", "mlm", "num_shards", "gpus", "threads", "runtime")),
        (
            "AugmentSettings",
            "$defs/task/properties/augment",
            ("m", "p", "seed", "vector_vocab", "max_batch_tokens", "max_texts", "enabled"),
        ),
        ("FeatureSettings", "$defs/task/properties/features", ()),
        ("ClozeSettings", "properties/data/properties/squad_cloze", ("exclude_from_corpus",)),
        ("ExportSettings", "properties/export", ("runtime",)),
        ("BenchmarkSettings", "properties/benchmark", ("shapes", "gpus", "runtime")),
    ],
)
def test_settings_dataclasses_equal_their_schema_blocks(cls, where, skip):
    """One source of defaults: each settings dataclass and its schema block have the same fields,
    types, choices and defaults (the schema's defaults are what Snakemake fills in)."""
    import typing

    from bertdistill import settings
    from bertdistill.settings import literal_choices
    from bertdistill.stages.registry import dataclass_fields, unwrap_optional

    schema = yaml.safe_load(SCHEMA.read_text())
    node = schema
    for part in where.split("/"):
        node = node[part]
    props = {k: _resolve(v, schema) for k, v in node["properties"].items() if k not in skip}
    fields = {k: v for k, v in dataclass_fields(getattr(settings, cls)).items() if k not in skip}
    assert set(props) == set(fields)
    for name, (hint, default, doc) in fields.items():
        prop = props[name]
        assert doc, f"{cls}.{name} has no description in the docstring"
        if default is not None or "default" in prop:
            expected = list(default) if isinstance(default, tuple) else default
            assert prop.get("default") == expected, (cls, name)
        choices = literal_choices(hint)
        if choices is not None:
            assert set(prop["enum"]) == set(choices), (cls, name)
            continue
        base, optional = unwrap_optional(hint)
        types = prop.get("type", [])
        types = {types} if isinstance(types, str) else set(types)
        if base in SCHEMA_TYPES:
            allowed = {SCHEMA_TYPES[base]} | ({"integer"} if base is float else set())
            assert types - {"null"} <= allowed and types & allowed, (cls, name, types)
            assert ("null" in types) <= optional, (cls, name)  # null only where the field takes None
            assert "null" in types or not (optional and prop.get("default", 0) is None), (cls, name)
        elif typing.get_origin(base) in (tuple, list):
            assert types == {"array"} or "oneOf" in prop, (cls, name)


def test_shipped_config_is_explicit():
    """config/config.yaml spells out every setting the schema has a default for (outside train
    blocks, which give what they change from TrainConfig's defaults, asset sources, the resource
    keys gpus/threads/runtime, and SQuAD-only keys of classification tasks)."""
    from bertdistill.tasks import get_task

    schema = yaml.safe_load(SCHEMA.read_text())
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    implicit = []

    def walk(value, node, path):
        ref = node.get("$ref", "")
        if ref in ("#/$defs/train", "#/$defs/source", "#/$defs/corpus_source", "#/$defs/teacher"):
            return
        node = _resolve(node, schema)
        if isinstance(value, dict):
            for key, sub in node.get("properties", {}).items():
                if key in value:
                    walk(value[key], sub, f"{path}.{key}")
                elif "default" in sub and key not in ("augmented", "gpus", "threads", "runtime"):
                    task = path.split(".")[2] if path.startswith("config.tasks.") else None
                    squad_only = _resolve(sub, schema).get("description", "").startswith("SQuAD:")
                    if not (squad_only and task and get_task(task).head != "qa"):
                        implicit.append(f"{path}.{key}")
            extra = node.get("additionalProperties")
            if isinstance(extra, dict):
                for key, sub in value.items():
                    walk(sub, extra, f"{path}.{key}")
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                walk(item, node["items"], f"{path}[{i}]")

    walk(config, schema, "config")
    assert not implicit, implicit


@pytest.mark.parametrize(
    "where, key, value",
    [
        ("backbone", "temperature", 2.0),  # a prediction-stage setting
        ("prediction", "losses", {}),  # a backbone-stage setting
        ("backbone", "losses", {"attention": "cosine"}),  # task losses are validated like general.losses
        ("backbone", "losses", {"weights": {"atention": 2.0}}),
    ],
)
def test_a_key_a_stage_does_not_use_is_an_error(where, key, value):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["tasks"]["sst2"][where][key] = value
    with pytest.raises(WorkflowError):
        validate(config, str(SCHEMA))


def test_unregistered_task_is_a_one_line_error():
    from bertdistill.config import check_config
    from bertdistill.tasks import TaskError

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["tasks"]["sst5"] = config["tasks"]["sst2"]
    with pytest.raises(TaskError, match="unknown task 'sst5'; known tasks: squad, sst2"):
        check_config(config)


def test_group_by_length_where_it_cannot_work_is_a_config_error():
    """Caught when the Snakefile is read, not when a job starts: group_by_length on a stage that
    streams its shards, or without dynamic padding. The shipped config passes."""
    from bertdistill.config import ConfigError, check_train_blocks

    shipped = yaml.safe_load((REPO / "config/config.yaml").read_text())
    check_train_blocks(shipped)
    assert shipped["tasks"]["squad"]["backbone"]["train"]["group_by_length"]  # the check saw it on
    for where, message in (
        (("general", "phase1"), "general.phase1.train.group_by_length: this stage streams"),
        (("adapt_mlm",), "adapt_mlm.train.group_by_length: this stage streams"),
    ):
        config = yaml.safe_load((REPO / "config/config.yaml").read_text())
        block = config
        for k in where:
            block = block[k]
        block["train"]["group_by_length"] = True
        with pytest.raises(ConfigError, match=message):
            check_train_blocks(config)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["tasks"]["squad"]["prediction"]["train"]["dynamic_padding"] = False
    with pytest.raises(ConfigError, match=r"tasks\.squad\.prediction\.train: group_by_length needs dynamic_padding"):
        check_train_blocks(config)


def test_a_config_that_cannot_run_fails_the_dry_run(tmp_path):
    """Before, `snakemake -n` planned all jobs and the error came when the stage started, after its
    upstream jobs had run, without naming the config key. Now the dry run fails naming it."""
    import subprocess
    import sys

    from bertdistill.config import ConfigError, check_train_blocks
    from helpers import copy_workflow

    wd = copy_workflow(tmp_path)
    # max_steps on top of the shipped epochs: each is valid alone, so the schema lets both through.
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config"]
    run = subprocess.run(
        [*cmd, "tasks={sst2: {backbone: {train: {max_steps: 5}}}}"], cwd=wd, capture_output=True, text=True, timeout=300
    )
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "tasks.sst2.backbone.train: give exactly one of max_steps and epochs" in out, out[
        -2000:
    ]
    assert "Job stats" not in out  # nothing was planned
    # use_augmented without an augmented file (SQuAD's own augmentation is off in the shipped config).
    run = subprocess.run(
        [*cmd, "tasks={squad: {use_augmented: true}}"], cwd=wd, capture_output=True, text=True, timeout=300
    )
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "tasks.squad.use_augmented is true but tasks.squad.augmented is not set" in out
    # A block given without its train settings (a config file replaces the whole block), where a
    # job reads them; the shipped SST-2 teacher is fine-tuned here, so its finetune block is read.
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert config["tasks"]["sst2"]["teacher"] == "finetune"
    config["tasks"]["sst2"]["finetune"] = {"gpus": 0}
    with pytest.raises(ConfigError, match=r"tasks.sst2.finetune.train: missing; a block given"):
        check_train_blocks(config)
    config["tasks"]["sst2"]["teacher"] = "base"  # a given teacher: the finetune block is not read
    check_train_blocks(config)


def _local_paths(node, key=None):
    """Every local file a config names (asset `path`s and teacher `vocab`s)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _local_paths(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _local_paths(v, key)
    elif isinstance(node, str) and key in ("path", "vocab"):
        yield node


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "config/recipes").glob("*.yaml")))
def test_recipe_dry_run_as_users_call_it(tmp_path, recipe):
    """`snakemake --configfile config/recipes/X.yaml -n` plans the whole DAG. Before, the recipe was
    merged over the default and failed validation (a teacher with both `path` and `package`)."""
    import subprocess
    import sys

    from helpers import copy_workflow, planned_jobs

    wd = copy_workflow(tmp_path)
    for rel in _local_paths(yaml.safe_load((wd / "config/recipes" / recipe).read_text())):
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).touch()  # a dry run checks that inputs exist, not what they hold
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", f"config/recipes/{recipe}"]
    run = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    jobs = planned_jobs(run)
    assert jobs["general_phase1"] == jobs["general_phase2"] == 1 and jobs["task_final"] >= 1, jobs
    assert jobs.get("sst2_data", 0) == 0 and jobs.get("squad_cloze", 0) == 0  # nothing of the embedded default


def test_shard_count_follows_corpus_size(tmp_path):
    from bertdistill.config import ConfigError, shard_count

    (tmp_path / "a.txt").write_text("x" * 250)
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "b.txt").write_text("y" * 100)
    (folder / "notes.md").write_text("z" * 1000)  # a folder source contributes its *.txt files only
    sources = [{"path": str(tmp_path / "a.txt")}, {"path": str(folder)}]
    config = {"corpus": {"sources": sources}, "shards": {"num_shards": "auto", "bytes_per_shard": 100}}
    assert shard_count(config) == 4  # 350 bytes / 100, rounded up
    config["shards"]["bytes_per_shard"] = 350
    assert shard_count(config) == 1
    config["shards"]["num_shards"] = 7
    assert shard_count(config) == 7
    url = {"url": "https://example.org/dump.xml.bz2", "sha256": "0" * 64}
    auto = {"corpus": {"sources": [url]}, "shards": {"num_shards": "auto", "bytes_per_shard": 100}}
    with pytest.raises(ConfigError, match="https://example.org/dump.xml.bz2 is not; download it first or set"):
        shard_count(auto)


@pytest.mark.slow
def test_auto_shard_count_plans_that_many_shard_jobs(tmp_path):
    from helpers import copy_workflow, planned_jobs, smk, tiny_config

    wd = copy_workflow(tmp_path)
    config = tiny_config(tmp_path)
    corpus_bytes = Path(config["corpus"]["sources"][0]["path"]).stat().st_size
    config["shards"].update(num_shards="auto", bytes_per_shard=-(-corpus_bytes // 3))
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    jobs = planned_jobs(smk(wd, "-n", "--cores", "1", "results/general/phase2"))
    assert jobs["corpus"] == 1 and jobs["pretraining_shard"] == 2 * 3  # 3 shards per sequence length


def test_every_schema_key_is_described_in_config_readme():
    """Every key of the schema has a description, and config/README.md is the reference generated
    from it (so a new key cannot ship undocumented) and names every key."""
    from bertdistill.config_docs import README, config_reference, load_schema, missing_descriptions, schema_keys

    schema = load_schema()
    assert missing_descriptions(schema) == []
    text = README.read_text(encoding="utf-8")
    assert text == config_reference(schema), "config/README.md is stale: run `python -m bertdistill.config_docs`"
    documented = set(re.findall(r"^\| `([^`]+)`", text, flags=re.M))
    named = {part for path in documented for part in path.split(".")}
    assert set(schema_keys(schema)) <= named
    for key in ("test", "dev.from_train", "data.squad_cloze.exclude_from_corpus", "corpus.exclude"):
        assert key in documented
