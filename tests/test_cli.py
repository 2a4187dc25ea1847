"""``python -m bertdistill``: stages listed, stages run, errors are one line naming the file."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from conftest import hf_config, write_vocab

from bertdistill.checkpoints import load_model, save_model
from bertdistill.model import BertConfig, build_model


def run(*args):
    return subprocess.run([sys.executable, "-m", "bertdistill", *args], capture_output=True, text=True)


def test_help_lists_stages():
    r = run("--help")
    assert r.returncode == 0
    for stage in ("import-teacher", "describe", "corpus", "shards", "general", "features", "teacher-logits",
                  "backbone", "prediction", "final", "vectors", "augment", "augment-gather",
                  "sst2-data", "squad-cloze", "adapt-mlm", "finetune"):
        assert stage in r.stdout


def test_import_and_describe(tmp_path):
    torch.manual_seed(0)
    model = build_model(BertConfig.from_dict(hf_config().to_dict()), "qa")
    save_model(model, tmp_path / "src", vocab=write_vocab(tmp_path / "vocab.txt", 99))
    r = run("import-teacher", "--path", str(tmp_path / "src"), "--head", "qa", "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    again = load_model(tmp_path / "out", head="qa")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    r = run("describe", str(tmp_path / "out"), "--output", str(tmp_path / "d.json"))
    assert r.returncode == 0 and json.loads((tmp_path / "d.json").read_text())["layers"] == 3


def test_error_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("import-teacher", "--path", str(tmp_path / "empty"), "--output", str(tmp_path / "out"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "empty") in lines[0]
    assert not (tmp_path / "out").exists()


def test_task_stages_through_the_cli(tmp_path):
    from taskdata import task_teacher, write_sst2
    from test_tasks import _student_from

    teacher = task_teacher(tmp_path / "teacher", "classification")
    data = write_sst2(tmp_path / "data")
    general = _student_from(tmp_path / "general", teacher, tmp_path)
    f = tmp_path / "f"
    steps = [
        ("features", "--task", "sst2", "--train", str(data / "train.tsv"), "--dev", str(data / "dev.tsv"),
         "--vocab", str(teacher / "vocab.txt"), "--train-output", str(f / "train.hdf5"),
         "--dev-output", str(f / "dev.hdf5"), "--settings", '{"max_seq_length": 32}'),
        ("teacher-logits", "--task", "sst2", "--teacher", str(teacher), "--features", str(f / "train.hdf5"),
         "--output", str(f / "logits.hdf5")),
        ("backbone", "--task", "sst2", "--teacher", str(teacher), "--init", str(general), "--features",
         str(f / "train.hdf5"), "--output", str(tmp_path / "backbone"), "--train", '{"max_steps": 2, "batch_size": 8}'),
        ("prediction", "--task", "sst2", "--teacher", str(teacher), "--backbone", str(tmp_path / "backbone"),
         "--features", str(f / "train.hdf5"), "--dev-features", str(f / "dev.hdf5"), "--dev", str(data / "dev.tsv"),
         "--output", str(tmp_path / "prediction"), "--teacher-logits", str(f / "logits.hdf5"),
         "--train", '{"max_steps": 2, "batch_size": 8, "eval_every": 1, "keep": "best"}'),
        ("final", "--task", "sst2", "--student", str(tmp_path / "prediction"), "--teacher", str(teacher),
         "--dev-features", str(f / "dev.hdf5"), "--dev", str(data / "dev.tsv"), "--output", str(tmp_path / "final")),
    ]
    for args in steps:
        r = run(*args)
        assert r.returncode == 0, (args[0], r.stderr[-2000:])
    metrics = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert "accuracy" in metrics["student"] and "accuracy" in metrics["teacher"]


def test_augmentation_through_the_cli(tmp_path):
    from taskdata import task_teacher, write_glove, write_sst2

    mlm = task_teacher(tmp_path / "mlm", "mlm")
    data = write_sst2(tmp_path / "data", n_train=12)
    assert run("vectors", "--path", str(write_glove(tmp_path / "g.txt")), "--output", str(tmp_path / "v.kv")).returncode == 0
    parts = []
    for i in range(2):
        parts.append(str(tmp_path / f"part_{i}.json"))
        r = run("augment", "--task", "sst2", "--train", str(data / "train.tsv"), "--mlm", str(mlm), "--vectors",
                str(tmp_path / "v.kv"), "--output", parts[-1], "--index", str(i), "--num-shards", "2",
                "--settings", '{"n": 3, "m": 4}')
        assert r.returncode == 0, r.stderr[-2000:]
    r = run("augment-gather", "--task", "sst2", "--train", str(data / "train.tsv"), "--parts", *parts,
            "--output", str(tmp_path / "train_aug.tsv"))
    assert r.returncode == 0, r.stderr[-2000:]
    from bertdistill.data.sst2 import read_sst2_tsv

    sentences, labels = read_sst2_tsv(tmp_path / "train_aug.tsv")
    original, _ = read_sst2_tsv(data / "train.tsv")
    assert len(sentences) > len(original) and set(original) <= set(sentences)
    assert json.loads((tmp_path / "train_aug.tsv.stats.json").read_text())["texts"] == 12
