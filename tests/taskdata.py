"""Tiny SQuAD-format and SST-2 data plus tiny task teachers, for stage and workflow tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from textdata import DOCUMENTS, write_vocab

from bertdistill.checkpoints import save_model
from bertdistill.data.sst2 import write_sst2_tsv
from bertdistill.model import BertConfig, build_model

POS = ["a wonderful film", "the music is great", "funny and warm", "a beautiful story", "great acting"]
NEG = ["a boring film", "the music is awful", "dull and cold", "a terrible story", "bad acting"]


def write_sst2(folder: Path, n_train: int = 40, n_dev: int = 12, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [(rng.choice(POS if y else NEG) + " , " + rng.choice(DOCUMENTS[0].split(".")[:2]).strip().lower(), y)
                for y in (rng.randint(0, 1) for _ in range(n))]
        write_sst2_tsv(folder / f"{split}.tsv", [r[0] for r in rows], [r[1] for r in rows])
    return folder


def write_squad(folder: Path, n_train_paragraphs: int = 4) -> Path:
    """Cloze-like questions over DOCUMENTS: the answer is a word of the context."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)

    def make(docs, prefix):
        data = []
        for d, doc in enumerate(docs):
            context = " ".join(doc.split())
            words = [w.strip(".,") for w in context.split() if len(w.strip(".,")) > 4]
            qas = []
            for q in range(3):
                ans = rng.choice(words)
                qas.append({"id": f"{prefix}{d}-{q}", "question": f"which word is {ans[:2]} here ?",
                            "answers": [{"text": ans, "answer_start": context.index(ans)}]})
            data.append({"title": f"doc{d}", "paragraphs": [{"context": context, "qas": qas}]})
        return {"version": "1.1", "data": data}

    (folder / "train-v1.1.json").write_text(json.dumps(make(DOCUMENTS[:n_train_paragraphs], "t")))
    (folder / "dev-v1.1.json").write_text(json.dumps(make(DOCUMENTS[n_train_paragraphs:], "d")))
    return folder


def task_teacher(folder: Path, head: str, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(folder.parent / f"{folder.name}-vocab.txt")
    n = len(vocab.read_text().split("\n")) - 1
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=128)
    return save_model(build_model(cfg, head), folder, vocab=vocab, overwrite=True)


def write_glove(path: Path, dim: int = 8) -> Path:
    """GloVe-format vectors for every word of DOCUMENTS (random but fixed)."""
    import numpy as np

    words = sorted({w.strip(".,;:'\"()").lower() for d in DOCUMENTS for w in d.split()} - {""})
    rng = np.random.default_rng(0)
    path.write_text("".join(f"{w} " + " ".join(f"{x:.4f}" for x in rng.standard_normal(dim)) + "\n" for w in words))
    return path
