"""Task data for SQuAD v1.1 and SST-2: feature files, batched inference, evaluation.

Feature files are HDF5 with one dataset per tensor (``input_ids``, ``attention_mask``,
``token_type_ids``; ``labels`` for SST-2; ``start_positions``, ``end_positions``,
``example_index``, ``token_to_orig``, ``max_context`` for SQuAD). They are built once by their
own rule (the reference builds them on rank 0 inside training and times out: NVIDIA issue
1111) and read by every later stage.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import squad, sst2
from .data.pretraining import vocab_sha256
from .tokenization import load_tokenizer

TASKS = ("squad", "sst2")
HEAD = {"squad": "qa", "sst2": "classification"}
METRIC = {"squad": "f1", "sst2": "accuracy"}


class TaskError(ValueError):
    """Task data that cannot be used; the message names the file and the fix."""


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}; expected one of {TASKS}")


def write_h5(arrays: Mapping[str, np.ndarray], output: str | Path, attrs: Mapping[str, Any] | None = None) -> None:
    """Write arrays to HDF5, renamed into place when complete."""
    import h5py

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            for k, a in arrays.items():
                f.create_dataset(k, data=a, track_times=False)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v if not isinstance(v, (dict, list)) else json.dumps(v)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_h5(path: str | Path, required: tuple[str, ...] = ("input_ids", "attention_mask")) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in required if k not in f]
            if missing:
                raise TaskError(f"{path}: missing dataset(s) {', '.join(missing)}; rebuild it with rule task_features")
            return {k: f[k][:] for k in f}, dict(f.attrs)
    except OSError as e:
        raise TaskError(f"{path}: not a readable HDF5 file ({e})") from None


def build_task_features(task: str, source: str | Path, vocab: str | Path, training: bool,
                        settings: Mapping[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and attributes of the feature file of one split."""
    _check_task(task)
    s = dict(settings or {})
    tok = load_tokenizer(vocab, lowercase=s.get("lowercase", True))
    attrs: dict[str, Any] = {"task": task, "source": str(source), "vocab_sha256": vocab_sha256(vocab), "training": training}
    if task == "sst2":
        sentences, labels = sst2.read_sst2_tsv(source)
        arrays = sst2.build_features(sentences, labels, tok, s.get("max_seq_length", 128))
        attrs["examples"] = len(sentences)
    else:
        data = squad.load_squad_json(source)
        examples, dropped = squad.read_squad_examples(data, training=training)
        feats = squad.build_features(examples, tok, s.get("max_seq_length", 384), s.get("doc_stride", 128),
                                     s.get("max_query_length", 64), training=training)
        arrays = feats.arrays()
        attrs.update(examples=len(examples), dropped_examples=dropped)
    attrs["features"] = len(arrays["input_ids"])
    attrs["settings"] = s
    return arrays, attrs


def model_inputs(arrays: Mapping[str, np.ndarray], idx: slice | np.ndarray) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(arrays[k][idx].astype(np.int64)) for k in ("input_ids", "attention_mask", "token_type_ids")}


@torch.inference_mode()
def predict_logits(model, arrays: Mapping[str, np.ndarray], batch_size: int = 64, device: str | torch.device = "cpu",
                   trim: bool = True) -> np.ndarray:
    """Logits of ``model`` (eval mode) over all features: ``[N, C]`` or ``[N, 2, L]`` for QA.

    ``trim`` runs the features longest first and cuts each batch to its longest sequence (a
    speed-up that leaves logits of real tokens unchanged; rows come back in the input order).
    With ``trim``, QA logits at each row's padding positions are −10000: they are not answer
    positions, and the value no longer depends on which rows shared the batch.
    """
    was_training = model.training
    model.eval().to(device)
    n, length = arrays["input_ids"].shape
    lengths = arrays["attention_mask"].sum(1)
    order = np.argsort(-lengths, kind="stable") if trim else np.arange(n)
    out = []
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = model_inputs(arrays, idx)
        keep = int(lengths[idx].max()) if trim else length
        batch = {k: v[:, :keep].to(device) for k, v in batch.items()}
        res = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        if res.start_logits is not None:
            logits = torch.full((len(idx), 2, length), -10000.0)
            logits[:, 0, :keep] = res.start_logits.float().cpu()
            logits[:, 1, :keep] = res.end_logits.float().cpu()
            if trim:
                pad = torch.arange(length)[None] >= torch.from_numpy(lengths[idx].astype(np.int64))[:, None]
                logits.masked_fill_(pad[:, None, :], -10000.0)
        else:
            logits = res.logits.float().cpu()
        out.append(logits.numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0,))
    result = np.empty((n, *out[0].shape[1:]), dtype=np.float32)
    result[order] = np.concatenate(out)
    return result


def evaluate(task: str, model, dev_features: Mapping[str, np.ndarray], dev_source: str | Path, vocab: str | Path,
             batch_size: int = 64, n_best: int = 20, max_answer_length: int = 30,
             device: str | torch.device = "cpu") -> tuple[dict[str, float], Any]:
    """Dev metrics of ``model`` and its predictions (answer text per question id for SQuAD,
    predicted labels for SST-2). Teacher and student go through this same function."""
    _check_task(task)
    logits = predict_logits(model, dev_features, batch_size, device)
    if task == "sst2":
        labels = dev_features["labels"]
        return {"accuracy": sst2.accuracy(logits, labels)}, logits.argmax(-1).tolist()
    from .checkpoints import read_vocab

    data = squad.load_squad_json(dev_source)
    examples, _ = squad.read_squad_examples(data, training=False)
    feats = squad.SquadFeatures(**{k: dev_features[k] for k in squad.SquadFeatures.__dataclass_fields__})
    preds = squad.postprocess(examples, feats, logits[:, 0], logits[:, 1], read_vocab(vocab), n_best, max_answer_length)
    return squad.squad_v11_metrics(data, preds), preds
