"""The workflow on a tiny config in a temp dir: dry run, real run, no-op rerun, targeted rerun."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from bertdistill.checkpoints import load_model
from helpers import REPO, copy_workflow, hf_config, ngc_state_dict, planned_jobs, random_batch, smk, write_vocab

pytestmark = pytest.mark.slow  # Snakemake runs


@pytest.fixture
def workdir(tmp_path, http_server):
    wd = copy_workflow(tmp_path)
    torch.manual_seed(0)
    cfg = hf_config(vocab_size=104, hidden_size=32, intermediate_size=64)
    # An NGC-style pre-training checkpoint (local path) and a zipped NGC QA checkpoint (URL).
    base = transformers.BertForPreTraining(cfg).eval()
    ngc = tmp_path / "ngc"
    ngc.mkdir()
    torch.save({"model": ngc_state_dict(base), "epoch": 1}, ngc / "bert_base.pt")
    cfg.to_json_file(ngc / "config.json")
    write_vocab(ngc / "vocab.txt", 100)  # padded to 104 rows, as NVIDIA does
    qa = transformers.BertForQuestionAnswering(cfg).eval()
    root, url = http_server
    with zipfile.ZipFile(root / "qa.zip", "w") as z:
        torch.save({"model": ngc_state_dict(qa)}, tmp_path / "bert_base_qa.pt")
        z.write(tmp_path / "bert_base_qa.pt", "bert_base_qa.pt")
    sha = hashlib.sha256((root / "qa.zip").read_bytes()).hexdigest()
    config = {
        "teachers": {
            "base": {"source": {"path": str(ngc / "bert_base.pt")}},
            "squad": {
                "source": {"url": f"{url}/qa.zip", "sha256": sha},
                "head": "qa",
                "config": {
                    k: cfg.to_dict()[k]
                    for k in (
                        "vocab_size",
                        "hidden_size",
                        "num_hidden_layers",
                        "num_attention_heads",
                        "intermediate_size",
                        "max_position_embeddings",
                    )
                },
                "vocab": str(ngc / "vocab.txt"),
            },
        }
    }
    # Sections the schema requires; these tests only build the teacher assets.
    config.update(
        {
            "corpus": {"sources": [{"path": str(tmp_path / "corpus.txt")}]},
            "student": {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 16, "num_attention_heads": 4},
            "general": {
                "phase1": {"seq": 64, "train": {"max_steps": 1}},
                "phase2": {"seq": 64, "train": {"max_steps": 1}},  # the teacher has 64 positions
            },
        }
    )
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return wd, {"base": base, "squad": qa}


TARGETS = ("resources/teachers/base.json", "resources/teachers/squad.json")


def test_lint_and_format_clean():
    r = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    fmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or shutil.which("snakefmt")
    if fmt is None:
        pytest.skip("snakefmt not installed")
    r = subprocess.run([fmt, "--check", "Snakefile", "rules/"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_run_rerun_and_targeted_rerun(workdir):
    wd, models = workdir
    dry = smk(wd, "-n", "--cores", "2", *TARGETS)
    assert planned_jobs(dry) == {"download_teacher": 1, "import_teacher": 2, "describe_teacher": 2}
    assert smk(wd, *TARGETS, "--dag").stdout.lstrip().startswith("digraph")

    smk(wd, "--cores", "2", *TARGETS)
    ids, types, mask = random_batch(100)
    qa = load_model(wd / "resources/teachers/squad", head="qa")
    with torch.no_grad():
        ref = models["squad"](ids, attention_mask=mask, token_type_ids=types)
        assert (qa(ids, mask, types).start_logits - ref.start_logits).abs().max() < 1e-5
        enc = load_model(wd / "resources/teachers/base")
        ref = models["base"].bert(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        assert (enc(ids, mask, types).last_hidden_state - ref).abs().max() < 1e-5
    summary = json.loads((wd / "resources/teachers/squad.json").read_text())
    assert summary["layers"] == 3 and summary["parameters"] == qa.bert.num_parameters()
    assert (wd / "logs/timing/assets/import_teacher_base.tsv").is_file()

    again = smk(wd, "--cores", "2", *TARGETS)
    assert "Nothing to be done" in again.stdout + again.stderr

    # A changed parameter of one teacher reruns exactly that teacher's import and summary.
    config = yaml.safe_load((wd / "config/config.yaml").read_text())
    config["teachers"]["base"]["head"] = "mlm"
    (wd / "config/config.yaml").write_text(yaml.safe_dump(config))
    dry = smk(wd, "-n", "--cores", "2", *TARGETS)
    assert planned_jobs(dry) == {"import_teacher": 1, "describe_teacher": 1}
    assert "resources/teachers/base" in dry.stdout and "resources/teachers/squad\n" not in dry.stdout


def test_invalid_config_is_rejected(workdir):
    wd, _ = workdir
    config = yaml.safe_load((wd / "config/config.yaml").read_text())
    config["teachers"]["base"]["source"]["package"] = "also_a_package"
    (wd / "config/config.yaml").write_text(yaml.safe_dump(config))
    r = smk(wd, "-n", "--cores", "1", check=False)
    assert r.returncode != 0 and "ValidationError" in r.stdout + r.stderr


def test_corrupt_download_fails_with_message(workdir):
    wd, _ = workdir
    config = yaml.safe_load((wd / "config/config.yaml").read_text())
    config["teachers"]["squad"]["source"]["sha256"] = "0" * 64
    (wd / "config/config.yaml").write_text(yaml.safe_dump(config))
    r = smk(wd, "--cores", "1", "resources/teachers/squad", check=False)
    assert r.returncode != 0
    assert f"not the configured {'0' * 64}" in r.stdout + r.stderr
    assert not (wd / "resources/teachers/squad").exists()
    assert not list((wd / "resources/downloads/squad").glob("*.zip"))


def test_default_config_plans_teachers_on_the_original_data(tmp_path):
    """The embedded default (dry run): a fine-tuned teacher learns from the original training
    split (its own feature rule when augmentation is on), the students from the augmented one."""
    wd = copy_workflow(tmp_path)
    r = smk(wd, "-n", "--cores", "2", "results/sst2_final", "results/squad_final")
    out = r.stdout + r.stderr
    blocks = {}
    for block in out.split("\nrule ")[1:]:
        name, _, body = block.partition(":\n")
        inputs = next((line.split("input: ", 1)[1] for line in body.splitlines() if "input: " in line), "")
        blocks.setdefault(name.strip(), []).append(inputs.split(", "))
    tuned = {
        next(p for p in inputs if p.startswith("results/") and p.endswith(".hdf5"))
        for inputs in blocks["finetune_teacher"]
    }
    assert tuned == {"results/sst2/features/train_original.hdf5", "results/squad/features/train.hdf5"}
    assert blocks["finetune_features"] == [["results/data/sst2/train.tsv", "resources/teachers/base"]]
    assert any("results/sst2/augmented/train_aug.tsv" in inputs for inputs in blocks["task_features"])
