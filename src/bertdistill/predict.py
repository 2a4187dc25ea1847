"""``bertdistill predict``: answers or labels from a final model folder, with the same feature
building and post-processing as evaluation (transformers 5 dropped its question-answering
pipeline, so this is what a user calls).

Inputs: a question and a context, or sentences (pairs as two columns), from arguments or from a
JSONL file (``{"question", "context"}`` or ``{"text"}`` / ``{"text", "text_b"}`` per line) or a TSV
file with a header row (``question``/``context``, or ``sentence`` / ``sentence1``+``sentence2``
and the other GLUE column names). Output: one JSON object per input.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_FIRST = ("text", "sentence", "sentence1", "question1", "#1 String", "question")
_SECOND = ("text_b", "sentence2", "question2", "#2 String")


def read_inputs(path: str | Path) -> list[dict[str, str]]:
    """Records of a JSONL or TSV input file; a malformed line is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (predict input: JSONL or TSV with a header row)")
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8", newline="") as f:
            return [dict(r) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON object ({e}); one object per line") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{i}: not a JSON object; one object per line")
        records.append(record)
    return records


def _label_names(folder: Path, n: int) -> list[str]:
    config = json.loads((folder / "config.json").read_text())
    id2label = config.get("id2label") or {}
    return [str(id2label.get(str(i), id2label.get(i, i))) for i in range(n)]


def _head(folder: Path) -> str:
    from safetensors import safe_open

    from .checkpoints import _find_weights

    weights = _find_weights(folder)
    if weights.suffix != ".safetensors":
        from .checkpoints import read_state_dict

        keys = list(read_state_dict(weights))
    else:
        with safe_open(str(weights), "pt") as f:
            keys = list(f.keys())
    if any(k.startswith("qa_outputs.") for k in keys):
        return "qa"
    if any(k.startswith("classifier.") for k in keys):
        return "classification"
    raise ValueError(f"{folder}: no task head (classifier or qa_outputs); predict needs a final task model")


def predict(
    folder: str | Path,
    records: Sequence[dict[str, Any]],
    max_seq_length: int | None = None,
    doc_stride: int = 128,
    max_query_length: int = 64,
    n_best: int = 20,
    max_answer_length: int = 30,
    batch_size: int = 32,
    lowercase: bool | None = None,
) -> list[dict[str, Any]]:
    """Predictions of the model in ``folder`` for each record (see the module docstring).
    ``lowercase`` None: the folder's tokenizer_config.json says, else lower-case (BERT uncased)."""
    from .checkpoints import load_model, read_vocab, tokenizer_lowercase, vocab_file
    from .data import squad
    from .data.glue import build_features
    from .inference import predict_logits
    from .tokenization import load_tokenizer

    folder = Path(folder)
    head = _head(folder)
    model = load_model(folder, head=head)
    vocab = vocab_file(folder)
    if lowercase is None:
        lowercase = tokenizer_lowercase(folder) is not False
    tokenizer = load_tokenizer(vocab, lowercase=lowercase)
    limit = model.config.max_position_embeddings
    out: list[dict[str, Any]] = []
    if head == "qa":
        for i, r in enumerate(records):
            if not r.get("question") or not r.get("context"):
                raise ValueError(f"input {i + 1}: a QA model needs 'question' and 'context'")
        examples = [
            squad.SquadExample(str(i), r["question"], squad.split_context(r["context"])[0], answers=[])
            for i, r in enumerate(records)
        ]
        length = min(max_seq_length or 384, limit)
        feats = squad.build_features(examples, tokenizer, length, doc_stride, max_query_length, training=False)
        logits = predict_logits(model, feats.arrays(), batch_size)
        answers = squad.postprocess(
            examples, feats, logits[:, 0], logits[:, 1], read_vocab(vocab), n_best, max_answer_length, lowercase
        )
        for i, r in enumerate(records):
            out.append({"question": r["question"], "answer": answers[str(i)]})
        return out
    texts = []
    for i, r in enumerate(records):
        first = next((r[k] for k in _FIRST if r.get(k)), None)
        if first is None:
            raise ValueError(f"input {i + 1}: no text (a 'text' or 'sentence' field)")
        second = next((r[k] for k in _SECOND if r.get(k)), None)
        texts.append((first,) if second is None else (first, second))
    length = min(max_seq_length or 128, limit)
    arrays = build_features(texts, [0] * len(texts), tokenizer, length)
    logits = predict_logits(model, arrays, batch_size)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    names = _label_names(folder, logits.shape[-1])
    for t, p in zip(texts, probs, strict=True):
        best = int(p.argmax())
        out.append(
            {
                "text": t[0] if len(t) == 1 else list(t),
                "label": names[best],
                "label_id": best,
                "probabilities": {names[k]: round(float(v), 6) for k, v in enumerate(p)},
            }
        )
    return out
