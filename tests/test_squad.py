"""SQuAD v1.1: official metric by hand, features that map predicted spans back to answer text, and
the n-best post-processing's edge cases on hand-built features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertdistill.data.squad import (
    SquadError,
    SquadExample,
    SquadFeatures,
    basic_tokenize,
    build_features,
    candidate_spans,
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


# ----------------------------------------------------------------------------------------------
# Post-processing edge cases, on hand-built features (no tokenizer, no model): every expected
# span and text below is worked out by hand from the layout written next to DOC_WORDS.

PP_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "where", "?", "the", "eiffel", "tower", "(", "1889", ")"]
PP_VOCAB += ["stands", "in", "paris", "##ian", "soil", ",", "not", "zurich", "."]
DOC_WORDS = ["The", "Eiffel", "Tower", "(1889)", "stands", "in", "Parisian", "soil,", "not", "Zürich."]
# The context's WordPieces and the word each belongs to:
#   piece  0 the  1 eiffel  2 tower  3 (  4 1889  5 )  6 stands  7 in  8 paris  9 ##ian
#         10 soil 11 ,  12 not  13 zurich  14 .
DOC_PIECES = "the eiffel tower ( 1889 ) stands in paris ##ian soil , not zurich .".split()
PIECE_WORD = [0, 1, 2, 3, 3, 3, 4, 5, 6, 6, 7, 7, 8, 9, 9]
QUESTION = ["where", "?"]
PP_LEN = 24
# A feature is [CLS] where ? [SEP] <pieces> [SEP] [PAD]...: position 4 holds its first piece.
# With all 15 pieces (one window): 4 the, 5 eiffel, 6 tower, 7 (, 8 1889, 9 ), 10 stands,
# 11 in, 12 paris, 13 ##ian, 14 soil, 15 ",", 16 not, 17 zurich, 18 ".", 19 [SEP], 20-23 [PAD].


def pp_features(windows):
    """``windows``: (first piece, piece count, pieces with max context) per feature, all of one
    question (example 0)."""
    ids = {t: i for i, t in enumerate(PP_VOCAB)}
    n = len(windows)
    input_ids = np.zeros((n, PP_LEN), dtype=np.int32)
    mask = np.zeros((n, PP_LEN), dtype=np.int8)
    types = np.zeros((n, PP_LEN), dtype=np.int8)
    t2o = np.full((n, PP_LEN), -1, dtype=np.int32)
    maxc = np.zeros((n, PP_LEN), dtype=bool)
    for f, (first, count, max_pieces) in enumerate(windows):
        pieces = DOC_PIECES[first : first + count]
        row = ["[CLS]", *QUESTION, "[SEP]", *pieces, "[SEP]"]
        input_ids[f, : len(row)] = [ids[t] for t in row]
        mask[f, : len(row)] = 1
        types[f, 4 : len(row)] = 1
        for j in range(count):
            t2o[f, 4 + j] = PIECE_WORD[first + j]
            maxc[f, 4 + j] = first + j in max_pieces
    zeros = np.zeros(n, dtype=np.int32)
    return SquadFeatures(input_ids, mask, types, zeros, zeros, zeros, t2o, maxc)


def one_window():
    return pp_features([(0, 15, range(15))])


def two_windows():
    # Pieces 0-9 and 6-14; of the shared pieces 6-9, "stands" and "in" have their max context
    # (min(left, right) + 0.01 * length) in the first window, "paris" and "##ian" in the second.
    return pp_features([(0, 10, range(8)), (6, 9, range(8, 15))])


def pp_logits(feats, start, end, fill=-10.0):
    """Start/end logits ``fill`` everywhere except ``{(feature, position): logit}``."""
    s = np.full(feats.input_ids.shape, fill, dtype=np.float32)
    e = np.full(feats.input_ids.shape, fill, dtype=np.float32)
    for (f, p), v in start.items():
        s[f, p] = v
    for (f, p), v in end.items():
        e[f, p] = v
    return s, e


def predict(feats, s, e, **kw):
    example = SquadExample("q0", "Where?", DOC_WORDS)
    return postprocess([example], feats, s, e, PP_VOCAB, **kw)["q0"]


def test_layout_of_the_hand_built_feature():
    f = one_window()
    assert [PP_VOCAB[i] for i in f.input_ids[0, 4:19]] == DOC_PIECES
    assert PP_VOCAB[f.input_ids[0, 19]] == "[SEP]" and f.attention_mask[0].sum() == 20
    assert (f.token_to_orig[0, :4] == -1).all() and (f.token_to_orig[0, 19:] == -1).all()


def test_span_whose_end_is_before_its_start_is_rejected():
    feats = one_window()
    # start: tower 5, eiffel 1; end: eiffel 4, tower 2. The best sum, start tower + end eiffel
    # = 9, ends before it starts; the other three pairs are valid.
    s, e = pp_logits(feats, {(0, 6): 5, (0, 5): 1}, {(0, 5): 4, (0, 6): 2})
    assert candidate_spans(feats, [0], s, e, n_best=2) == [(7.0, 0, 6, 6), (5.0, 0, 5, 5), (3.0, 0, 5, 6)]
    assert predict(feats, s, e, n_best=2) == "Tower"


def test_span_longer_than_max_answer_length_is_rejected():
    feats = one_window()
    # start: the (4) 3; end: "." (18) 3 -> 15 tokens, sum 6; in (11) 1 -> 8 tokens, sum 4.
    s, e = pp_logits(feats, {(0, 4): 3}, {(0, 18): 3, (0, 11): 1})
    assert candidate_spans(feats, [0], s, e, n_best=2, max_answer_length=15) == [(6.0, 0, 4, 18), (4.0, 0, 4, 11)]
    assert predict(feats, s, e, n_best=2, max_answer_length=15) == " ".join(DOC_WORDS)
    # 8 tokens is the limit: allowed at 8, rejected at 7.
    assert candidate_spans(feats, [0], s, e, n_best=2, max_answer_length=8) == [(4.0, 0, 4, 11)]
    assert predict(feats, s, e, n_best=2, max_answer_length=8) == "The Eiffel Tower (1889) stands in"
    assert candidate_spans(feats, [0], s, e, n_best=2, max_answer_length=7) == []
    assert predict(feats, s, e, n_best=2, max_answer_length=7) == ""


def test_start_outside_its_max_context_window_is_rejected():
    feats = two_windows()
    # Window 0: start paris (piece 8, position 12) 6, stands (piece 6, position 10) 0;
    # end ##ian (piece 9, position 13) 6. Window 1: start paris (position 6) 1, end ##ian (7) 1.
    s, e = pp_logits(feats, {(0, 12): 6, (0, 10): 0, (1, 6): 1}, {(0, 13): 6, (1, 7): 1})
    # "paris" has its max context in window 1, so window 0's best pair (sum 12) is out; the end
    # token's context is not checked, so window 0's "stands in Parisian" (sum 6) stays.
    assert candidate_spans(feats, [0, 1], s, e, n_best=2) == [(6.0, 0, 10, 13), (2.0, 1, 6, 7)]
    assert predict(feats, s, e, n_best=2) == "stands in Parisian"


def test_spans_in_question_special_tokens_or_padding_are_rejected():
    feats = one_window()
    outside = {(0, p): 9.0 for p in (0, 1, 2, 3, 19, 20, 23)}  # [CLS], where, ?, [SEP], [SEP], [PAD], [PAD]
    s, e = pp_logits(feats, {**outside, (0, 5): 1}, {**outside, (0, 6): 1})
    # With n_best 8 the only start and end inside the document are eiffel and tower.
    assert candidate_spans(feats, [0], s, e, n_best=8) == [(2.0, 0, 5, 6)]
    assert predict(feats, s, e, n_best=8) == "Eiffel Tower"
    # n_best counts positions, not valid ones: with 7 the document positions are not reached
    # (the reference's padding logits take such slots too; our evaluation sets them to -10000).
    assert candidate_spans(feats, [0], s, e, n_best=7) == []


def test_no_valid_span_predicts_the_empty_string():
    feats = one_window()
    # The two best starts are [CLS] and the question; the best end is before every start.
    s, e = pp_logits(feats, {(0, 0): 5, (0, 1): 4, (0, 10): -20}, {(0, 5): 5, (0, 2): 4})
    assert candidate_spans(feats, [0], s, e, n_best=2) == []
    # Ours is "", deliberately: the reference writes the placeholder "empty" (docs/reference.md).
    assert predict(feats, s, e, n_best=2) == ""
    # A question with no feature at all also gets "" (and scores 0).
    examples = [SquadExample("q0", "Where?", DOC_WORDS), SquadExample("q1", "Who?", DOC_WORDS)]
    s, e = pp_logits(feats, {(0, 5): 1}, {(0, 6): 1})
    assert postprocess(examples, feats, s, e, PP_VOCAB) == {"q0": "Eiffel Tower", "q1": ""}
    data = [{"paragraphs": [{"context": " ".join(DOC_WORDS), "qas": []}]}]
    for q in ("q0", "q1"):
        data[0]["paragraphs"][0]["qas"].append({"id": q, "question": "?", "answers": [{"text": "Eiffel Tower"}]})
    assert squad_v11_metrics(data, {"q0": "Eiffel Tower", "q1": ""}) == {"exact_match": 50.0, "f1": 50.0}


def test_n_best_is_ordered_by_start_plus_end_logit():
    feats = one_window()
    # start: the 5, eiffel 4; end: tower 3, eiffel 1. Sums: the-tower 8, eiffel-tower 7,
    # the-eiffel 6, eiffel-eiffel 5: not the order of the start logits alone.
    s, e = pp_logits(feats, {(0, 4): 5, (0, 5): 4}, {(0, 6): 3, (0, 5): 1})
    assert candidate_spans(feats, [0], s, e, n_best=2) == [
        (8.0, 0, 4, 6),
        (7.0, 0, 5, 6),
        (6.0, 0, 4, 5),
        (5.0, 0, 5, 5),
    ]
    assert predict(feats, s, e, n_best=2) == "The Eiffel Tower"


def test_best_span_over_windows_ties_and_near_ties():
    feats = two_windows()
    stands_in = ({(0, 10): 2.0}, {(0, 11): 2.0})  # window 0, pieces 6-7 at positions 10-11
    soil = ({(1, 8): 2.5}, {(1, 8): 2.5})  # window 1, piece 10 ("soil") at position 8
    s, e = pp_logits(feats, {**stands_in[0], **soil[0]}, {**stands_in[1], **soil[1]})
    assert candidate_spans(feats, [0, 1], s, e, n_best=2) == [(5.0, 1, 8, 8), (4.0, 0, 10, 11)]
    assert predict(feats, s, e, n_best=2) == "soil"  # the later window wins on its score
    # An exact tie: the earlier window first (the reference's stable sorts keep feature order),
    # although its span starts at a later position.
    s[1, 8] = e[1, 8] = 2.0
    assert candidate_spans(feats, [0, 1], s, e, n_best=2) == [(4.0, 0, 10, 11), (4.0, 1, 8, 8)]
    assert predict(feats, s, e, n_best=2) == "stands in"
    # Float32 logits whose sums differ below float32 precision: 1 + 0 in window 0 against
    # (1 - 2^-24) + (2^-24 + 2^-26) = 1 + 2^-26 in window 1. The reference adds them as Python
    # floats, so window 1 wins; a float32 sum rounds both to 1.0 and would pick window 0.
    s[0, 10], e[0, 11] = 1.0, 0.0
    s[1, 8], e[1, 8] = 1.0 - 2**-24, 2**-24 + 2**-26
    assert np.float32(s[1, 8]) + np.float32(e[1, 8]) == np.float32(1.0)  # the float32 tie
    assert [c[1:] for c in candidate_spans(feats, [0, 1], s, e, n_best=2)] == [(1, 8, 8), (0, 10, 11)]
    assert predict(feats, s, e, n_best=2) == "soil"


@pytest.mark.parametrize(
    ("start", "end", "text"),
    [
        (5, 6, "Eiffel Tower"),  # case restored
        (8, 8, "1889"),  # inside "(1889)": no brackets
        (7, 9, "(1889)"),
        (12, 12, "Paris"),  # the first piece of "Parisian"
        (13, 13, "ian"),  # a continuation piece alone
        (12, 13, "Parisian"),
        (14, 14, "soil"),  # "soil," without its comma
        (17, 17, "Zürich"),  # accent restored
        (16, 18, "not Zürich."),
    ],
)
def test_answer_is_the_original_form_of_the_span(start, end, text):
    feats = one_window()
    s, e = pp_logits(feats, {(0, start): 1}, {(0, end): 1})
    assert candidate_spans(feats, [0], s, e, n_best=1) == [(2.0, 0, start, end)]
    assert predict(feats, s, e, n_best=1) == text


def test_basic_tokenize_differs_from_berts_python_basic_tokenizer_only_where_documented():
    """The word splitting used by augmentation and get_final_text, against BERT's original Python
    BasicTokenizer as the reference configures it (special tokens never split); the two
    differences are listed in docs/reference.md#tokenizer-edge-cases."""
    from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer

    ref = BasicTokenizer(do_lower_case=True, never_split=["[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"])
    same = "Café-owners' résumés (1998–2004), naïve coöperation! 日本語 E=mc² x[MASK]y [mask] ΑΣΑ"
    assert basic_tokenize(same) == ref.tokenize(same)
    # Greek final sigma: Python's str.lower() gives ς at the end of a word, the Rust normaliser σ.
    assert ref.tokenize("ΟΔΟΣ ΑΣ!") == ["οδος", "ας", "!"]
    assert basic_tokenize("ΟΔΟΣ ΑΣ!") == ["οδοσ", "ασ", "!"]
    # A [MASK] standing between spaces: one word for the reference, split here.
    assert ref.tokenize("a [MASK] b") == ["a", "[MASK]", "b"]
    assert basic_tokenize("a [MASK] b") == ["a", "[", "mask", "]", "b"]
