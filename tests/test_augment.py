"""Augmentation: candidates equal a straightforward per-word, batch-1 implementation of the reference
algorithm (docs/reference.md#augmentation)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from bertdistill.augment import (
    Augmentor,
    AugmentSettings,
    WordVectors,
    augment_classification,
    augment_squad_paragraphs,
    convert_vectors,
    generate,
)
from bertdistill.checkpoints import load_model, read_vocab
from bertdistill.tokenization import load_tokenizer
from helpers import DOCUMENTS, write_corpus_vocab, write_squad

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reference_augment import NaiveReference  # noqa: E402 - the straightforward implementation

EXTRA = "the riverbanks near the farmhouse flooded while the shepherds gathered sheepskins"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aug")
    vocab = write_corpus_vocab(tmp / "vocab.txt")
    tokens = read_vocab(vocab)
    torch.manual_seed(0)
    hc = transformers.BertConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=1100,
    )
    hf = transformers.BertForMaskedLM(hc).eval()
    (tmp / "mlm").mkdir()
    hf.save_pretrained(tmp / "mlm")
    (tmp / "mlm" / "vocab.txt").write_text(vocab.read_text())
    # GloVe-style vectors: corpus words plus the multi-piece words of EXTRA (not in the vocab).
    words = sorted({w for d in DOCUMENTS + [EXTRA] for w in d.lower().replace(".", " ").replace(",", " ").split()})
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((len(words), 8)).astype(np.float32)
    glove = tmp / "glove.txt"
    glove.write_text(
        "".join(f"{w} " + " ".join(f"{x:.5f}" for x in v) + "\n" for w, v in zip(words, vecs, strict=True))
    )
    kv_path = tmp / "vectors.kv"
    convert_vectors(glove, kv_path)
    ours = Augmentor(
        load_model(tmp / "mlm", head="mlm"),
        load_tokenizer(vocab),
        tokens,
        WordVectors.load(kv_path),
        AugmentSettings(n=8, m=6, p=0.4, max_batch_tokens=2048),
    )
    naive = NaiveReference(hf, vocab, words, np.loadtxt(glove, usecols=range(1, 9), dtype=np.float64), m=6)
    return ours, naive, tmp


def test_candidates_equal_the_straightforward_implementation(setup):
    ours, naive, _ = setup
    texts = [DOCUMENTS[0], DOCUMENTS[1], EXTRA, "a fine film .", "Dr. Smith's café, in Zürich!"]
    got = ours.candidates(texts)
    for text, cand in zip(texts, got, strict=True):
        assert cand.candidates == naive.candidates(text), text
    assert sum(c.vector_words for c in got) > 0 and sum(c.mlm_words for c in got) > 0


def test_texts_over_400_words(setup):
    ours, naive, _ = setup
    # ~850 words, mostly stop words so the batch-1 reference stays quick; content words in all three chunks
    filler = ["the", "and", ",", "of", "."] * 170
    for pos, word in (
        (10, "river"),
        (200, "farmhouse"),
        (399, "bridge"),
        (405, "summer"),
        (610, "riverbanks"),
        (845, "honey"),
    ):
        filler[pos] = word
    long_text = " ".join(filler)
    assert len(ours.words(long_text)) == 850
    cand = ours.candidates([long_text])[0]
    assert sorted(cand.candidates) == [10, 200, 399, 405, 610, 845]  # the reference loses words after 400
    assert cand.candidates == naive.candidates(long_text)
    variants = generate(long_text, cand, AugmentSettings(n=3, m=6), 0)
    assert all(len(v.split(" ")) == len(cand.words) for v in variants[1:])


def test_vector_neighbours_match_numpy(setup):
    ours, naive, _ = setup
    for w in ("riverbanks", "farmhouse", "river", "queen"):
        assert ours.vectors.neighbours([w], 6).get(w, []) == naive.word_distance(w)


def test_output_does_not_depend_on_the_shard_count(setup):
    ours, _, _ = setup
    sentences = [(d.split(".")[0],) for d in DOCUMENTS] + [(EXTRA,)]
    s = AugmentSettings(n=5, m=6, seed=3)
    whole, stats, _ = augment_classification(ours, sentences, list(range(len(sentences))), s)
    parts = [
        g
        for shard in range(3)
        for g in augment_classification(ours, sentences, list(range(shard, len(sentences), 3)), s)[0]
    ]
    assert sorted(parts) == whole  # the same variants for every text, whatever the split
    assert all(rows[0] == list(sentences[i]) for i, rows in whole)
    assert stats.texts == len(sentences)
    assert stats.augmented_examples == sum(len(rows) - 1 for _, rows in whole) > 0


def test_sentence_pairs_augment_each_column_in_turn(setup):
    """A pair task: every variant row changes exactly one of the two texts (TinyBERT augments each
    text column with the other kept), the original row comes first and no row repeats."""
    ours, _, _ = setup
    pairs = [(DOCUMENTS[0].split(".")[0], DOCUMENTS[2].split(".")[0]), (EXTRA, DOCUMENTS[3].split(".")[1])]
    s = AugmentSettings(n=4, m=6, seed=1)
    groups, stats, _ = augment_classification(ours, pairs, [0, 1], s)
    assert stats.texts == 4
    for i, rows in groups:
        assert rows[0] == list(pairs[i]) and len({tuple(r) for r in rows}) == len(rows)
        changed = [[a != b for a, b in zip(r, pairs[i], strict=True)] for r in rows[1:]]
        assert changed and all(sum(c) == 1 for c in changed)
        assert {c.index(True) for c in changed} == {0, 1}  # both columns were augmented
    # The first column of a pair is seeded like a single sentence at index 2*i: same variants.
    single, _, _ = augment_classification(ours, [(p[0],) for p in pairs for _ in (0, 1)], [0, 2], s)
    assert [r[0] for r in groups[1][1] if r[1] == pairs[1][1]] == [r[0] for r in single[1][1]]


def test_squad_answer_spans_always_match(setup, tmp_path):
    ours, _, _ = setup
    data = json.loads((write_squad(tmp_path / "squad") / "train-v1.1.json").read_text())
    paragraphs = [p for a in data["data"] for p in a["paragraphs"]]
    new, stats, samples = augment_squad_paragraphs(
        ours, paragraphs, list(range(len(paragraphs))), AugmentSettings(n=6, m=6, seed=1)
    )
    assert new and stats.augmented_examples == sum(len(p["qas"]) for p in new)
    ids = [qa["id"] for p in new for qa in p["qas"]]
    assert len(ids) == len(set(ids))  # unique ids
    for p in new:
        orig = paragraphs[p["augmented_from"]]
        for qa, oqa in zip(p["qas"], orig["qas"], strict=True):
            a = qa["answers"][0]
            assert p["context"][a["answer_start"] : a["answer_start"] + len(a["text"])] == a["text"]
            assert a["text"] == " ".join(ours.words(oqa["answers"][0]["text"]))
            assert qa["id"].startswith(oqa["id"] + "_aug")
    assert samples and samples[0]["original"] == paragraphs[0]["context"]


def test_answer_nearest_the_original_position_is_chosen(setup):
    from bertdistill.augment import _answer_offsets

    words = "the bridge was old . the bridge was rebuilt".split()
    assert _answer_offsets(words, ["bridge"], expected_word=6) == len("the bridge was old . the ")
    assert _answer_offsets(words, ["bridge"], expected_word=0) == len("the ")
    assert _answer_offsets(words, ["tower"], expected_word=0) is None


def test_vector_formats(tmp_path):
    from gensim.models import KeyedVectors

    (tmp_path / "w2v.txt").write_text("2 3\ncat 1 0 0\ndog 0.9 0.1 0\n")
    assert convert_vectors(tmp_path / "w2v.txt", tmp_path / "a.kv") == 2
    (tmp_path / "glove.txt").write_text("cat 1 0 0\ndog 0.9 0.1 0\nfish 0 0 1\n")
    assert convert_vectors(tmp_path / "glove.txt", tmp_path / "b.kv") == 3
    kv = KeyedVectors.load(str(tmp_path / "b.kv"))
    assert np.allclose(kv["dog"], [0.9, 0.1, 0])
    wv = WordVectors.load(tmp_path / "b.kv")
    assert wv.neighbours(["cat"], 2)["cat"] == ["dog", "fish"]


def test_max_texts_augments_the_first_texts_and_keeps_the_rest(setup, tmp_path):
    """`augment.max_texts`: only the first texts get variants (over every shard); the gathered file
    still holds every original example, in order, with its label."""
    from bertdistill.data.glue import read_sst2_tsv, write_sst2_tsv
    from bertdistill.tasks import get_task

    ours, _, _ = setup
    texts = [d.split(".")[0].lower() for d in DOCUMENTS] + [EXTRA]
    labels = [i % 2 for i in range(len(texts))]
    train = tmp_path / "train.tsv"
    write_sst2_tsv(train, texts, labels)
    task = get_task("sst2")
    s = AugmentSettings(n=5, m=6, seed=3, max_texts=3)
    parts = [task.augment(ours, train, shard, 2, s)[0] for shard in range(2)]
    assert sorted(g[0] for p in parts for g in p["groups"]) == [0, 1, 2]
    out = tmp_path / "aug.tsv"
    task.gather(train, parts, out)
    got_texts, got_labels = read_sst2_tsv(out)
    originals = [i for i, t in enumerate(got_texts) if t in texts]
    assert [got_texts[i] for i in originals] == texts and [got_labels[i] for i in originals] == labels
    # Variants follow their original and only the first three texts have any.
    assert len(got_texts) > len(texts)
    assert originals[3:] == list(range(originals[3], originals[3] + len(texts) - 3))
    assert originals[3] == len(got_texts) - (len(texts) - 3)
