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
    for stage in ("import-teacher", "describe"):
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
