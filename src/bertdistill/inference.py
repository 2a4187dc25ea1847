"""Batched inference over feature arrays: logits of every feature, longest-first batches."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .logs import progress


def model_inputs(arrays: Mapping[str, np.ndarray], idx: slice | np.ndarray) -> dict[str, torch.Tensor]:
    return {
        k: torch.from_numpy(arrays[k][idx].astype(np.int64)) for k in ("input_ids", "attention_mask", "token_type_ids")
    }


@torch.inference_mode()
def predict_logits(
    model, arrays: Mapping[str, np.ndarray], batch_size: int = 64, device: str | torch.device = "cpu", trim: bool = True
) -> np.ndarray:
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
    bar = progress(n, "inference", "seq")
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
        if bar:
            bar.update(len(idx))
    if bar:
        bar.close()
    model.train(was_training)
    if not out:
        return np.zeros((0,))
    result = np.empty((n, *out[0].shape[1:]), dtype=np.float32)
    result[order] = np.concatenate(out)
    return result


def mlm_accuracy(model, data, batch_size: int, max_examples: int | None) -> dict[str, float]:
    """Top-1 and top-5 accuracy of masked-token predictions (labels >= 0) over the first
    ``max_examples`` of ``data`` (all when None)."""
    model.eval()
    hit1 = hit5 = total = 0
    n = len(data) if max_examples is None else min(len(data), max_examples)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            b = data.batch(torch.arange(start, min(start + batch_size, n)))
            where = b["labels"] >= 0
            if not where.any():
                continue
            logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], masked_positions=where).logits
            gold = b["labels"][where]
            top = logits.topk(5, dim=1).indices
            hit1 += int((top[:, 0] == gold).sum())
            hit5 += int((top == gold[:, None]).any(1).sum())
            total += int(gold.numel())
    return {
        "masked_tokens": total,
        "top1_accuracy": 100.0 * hit1 / max(total, 1),
        "top5_accuracy": 100.0 * hit5 / max(total, 1),
    }
