"""Config: the shipped configs validate against the schema; CLI strings are coerced by the schema."""

from __future__ import annotations

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
    assert r["general"]["losses"] == {"attention": "kl", "value": "kl", "hidden": "cosine", "embedding": None,
                                      "layer_map": "last", "masking": "faithful"}
    p1, p2 = r["general"]["phase1"], r["general"]["phase2"]
    assert (p1["seq"], p1["train"]["max_steps"], p2["seq"], p2["train"]["max_steps"]) == (128, 68616, 512, 6861)
    for p in (p1, p2):
        t = p["train"]
        assert t["batch_size"] * p["gpus"] == 256 and t["lr"] == 1e-4 and t["schedule"] == "linear"
        assert t["warmup"] == 0.1 and t["optimizer"] == "adam_nobc" and t["weight_decay"] == 0.01


def test_nested_cli_strings_become_numbers():
    config = {"general": {"phase2": {"train": {"lr": "0.002", "max_steps": "5", "teacher_dropout": "false"}},
                          "teacher": "123"},
              "teachers": {"base": {"source": {"path": "007"}}}}
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


def test_conda_env_matches_pyproject():
    """envs/torch.yaml (for --sdm conda users) lists every runtime dependency of pyproject.toml."""
    import re
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!\[ ]", d, maxsplit=1)[0].lower() for d in deps} - {"snakemake"}  # the runner itself
    env = yaml.safe_load((REPO / "envs/torch.yaml").read_text())
    conda = {re.split(r"[<>=! ]", d, maxsplit=1)[0].lower() for d in env["dependencies"] if isinstance(d, str)}
    conda = {"torch" if n == "pytorch" else n for n in conda}
    assert names <= conda, names - conda
