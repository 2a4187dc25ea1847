"""SQuAD v1.1: official metric by hand, features that map predicted spans back to answer text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertdistill.data.squad import (
    SquadError,
    build_features,
    get_final_text,
    load_squad_json,
    postprocess,
    read_squad_examples,
    squad_v11_metrics,
)
from bertdistill.tokenization import load_tokenizer
from helpers import write_corpus_vocab


def test_metric_by_hand():
    dataset = [
        {
            "paragraphs": [
                {
                    "context": "x",
                    "qas": [
                        {"id": "q1", "question": "?", "answers": [{"text": "The Eiffel Tower", "answer_start": 0}]},
                        {
                            "id": "q2",
                            "question": "?",
                            "answers": [{"text": "in 1998", "answer_start": 0}, {"text": "1998", "answer_start": 3}],
                        },
                        {"id": "q3", "question": "?", "answers": [{"text": "red apples and pears", "answer_start": 0}]},
                        {
                            "id": "q4",
                            "question": "?",
                            "answers": [{"text": "Paris", "answer_start": 0}],
                        },  # no prediction
                    ],
                }
            ]
        }
    ]
    preds = {
        "q1": "eiffel tower!",  # normalisation: case, punctuation, article -> exact
        "q2": "1998.",  # matches the second gold exactly
        "q3": "green apples",  # overlap 1 token: p = 1/2, r = 1/4 -> f1 = 1/3
    }
    m = squad_v11_metrics(dataset, preds)
    assert m["exact_match"] == pytest.approx(100 * 2 / 4)
    assert m["f1"] == pytest.approx(100 * (1 + 1 + 1 / 3 + 0) / 4)


def test_metric_edge_cases():
    data = [
        {
            "paragraphs": [
                {"context": "", "qas": [{"id": "a", "question": "", "answers": [{"text": "the", "answer_start": 0}]}]}
            ]
        }
    ]
    # normalises to "" on both sides: exact match, but F1 has no common tokens -> 0 (as the official script)
    assert squad_v11_metrics(data, {"a": "a"}) == {"exact_match": 100.0, "f1": 0.0}


PARAGRAPHS = [
    (
        "The Normans (Norman: Nourmands; French: Normands) were the people who in the 10th and 11th centuries "
        "gave their name to Normandy, a region in France. They were descended from Norse raiders and pirates "
        "from Denmark, Iceland and Norway.",
        [
            ("In what country is Normandy located?", "France"),
            ("When were the Normans in Normandy?", "10th and 11th centuries"),
            ("From which countries did the Norse originate?", "Denmark, Iceland and Norway"),
        ],
    ),
    (
        'Café culture in Zürich dates from 1850; the first coffee-house, "Zum Kropf", opened near the lake.',
        [
            ("When does café culture in Zürich date from?", "1850"),
            ("What was the first coffee-house called?", "Zum Kropf"),
        ],
    ),
]


def squad_json(paragraphs, repeat_long=0):
    data, n = [], 0
    for context, qas in paragraphs:
        if repeat_long:  # a long context split into several windows: answers far from the start
            context = ("Filler sentence number one about nothing in particular. " * repeat_long) + context
        items = []
        for q, a in qas:
            items.append({"id": f"q{n}", "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]})
            n += 1
        data.append({"title": "t", "paragraphs": [{"context": context, "qas": items}]})
    return {"version": "1.1", "data": data}


def _vocab(tmp_path):
    from helpers import DOCUMENTS

    extra = " ".join(c for c, _ in PARAGRAPHS) + " Filler sentence number one about nothing in particular"
    DOCUMENTS.append(extra)
    try:
        return write_corpus_vocab(tmp_path / "vocab.txt")
    finally:
        DOCUMENTS.pop()


@pytest.mark.parametrize("repeat_long", [0, 60])
def test_gold_spans_map_back_to_answer_text(tmp_path, repeat_long):
    vocab = _vocab(tmp_path)
    tok = load_tokenizer(vocab)
    (tmp_path / "d.json").write_text(json.dumps(squad_json(PARAGRAPHS, repeat_long)))
    data = load_squad_json(tmp_path / "d.json")
    examples, dropped = read_squad_examples(data, training=True)
    assert dropped == 0 and len(examples) == 5
    feats = build_features(examples, tok, max_seq_length=64, doc_stride=16, max_query_length=16, training=True)
    if repeat_long:
        assert len(feats) > 3 * len(examples)  # long contexts -> many windows
    # Logits that point at the gold start/end of the window where the answer has maximal context
    words = [line for line in vocab.read_text().split("\n")]
    start_logits = np.full(feats.input_ids.shape, -10.0)
    end_logits = np.full(feats.input_ids.shape, -10.0)
    for f in range(len(feats)):
        s, e = feats.start_positions[f], feats.end_positions[f]
        if s > 0 and feats.max_context[f, s]:
            start_logits[f, s] = end_logits[f, e] = 10.0
    preds = postprocess(examples, feats, start_logits, end_logits, words, max_answer_length=30)
    golds = {qa["id"]: qa["answers"][0]["text"] for art in data for p in art["paragraphs"] for qa in p["qas"]}
    assert preds == golds  # exact original text, including case, accents and punctuation
    assert squad_v11_metrics(data, preds) == {"exact_match": 100.0, "f1": 100.0}


def test_windows_respect_stride_and_length(tmp_path):
    vocab = _vocab(tmp_path)
    (tmp_path / "d.json").write_text(json.dumps(squad_json(PARAGRAPHS, 40)))
    examples, _ = read_squad_examples(load_squad_json(tmp_path / "d.json"), training=False)
    feats = build_features(examples, load_tokenizer(vocab), max_seq_length=64, doc_stride=16, max_query_length=16)
    assert feats.attention_mask.sum(1).max() <= 64
    for f in range(len(feats)):
        ex = examples[feats.example_index[f]]
        doc = feats.token_to_orig[f][feats.token_to_orig[f] >= 0]
        assert (np.diff(doc) >= 0).all() and doc.max() < len(ex.doc_tokens)
        # every document token of a question has max context in exactly one window
    for ex_i in range(len(examples)):
        fs = np.nonzero(feats.example_index == ex_i)[0]
        counts = sum(feats.max_context[f].sum() for f in fs)
        total_tokens = len(
            load_tokenizer(vocab)
            .encode_batch([examples[ex_i].doc_tokens], is_pretokenized=True, add_special_tokens=False)[0]
            .ids
        )
        assert counts == total_tokens


def test_get_final_text_restores_original_form():
    assert get_final_text("zurich", "Zürich,") == "Zürich"
    assert get_final_text("1850", "(1850);") == "1850"
    assert get_final_text("steve smith", "Steve Smith's") == "Steve Smith"
    assert get_final_text("not there", "Other words") == "Other words"


def test_answer_not_in_context_is_dropped(tmp_path):
    d = squad_json(PARAGRAPHS)
    d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3  # wrong offset
    (tmp_path / "d.json").write_text(json.dumps(d))
    examples, dropped = read_squad_examples(load_squad_json(tmp_path / "d.json"), training=True)
    assert dropped == 1 and len(examples) == 4


def test_malformed_squad_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SquadError, match="malformed JSON"):
        load_squad_json(tmp_path / "bad.json")
    (tmp_path / "wrong.json").write_text(json.dumps({"data": [{"paragraphs": [{"context": "x"}]}]}))
    with pytest.raises(SquadError, match="not a SQuAD v1.1 file") as e:
        load_squad_json(tmp_path / "wrong.json")
    assert str(tmp_path / "wrong.json") in str(e.value)
