"""Distillation losses, with the reference recipe's exact arithmetic as the default.

Shapes: scores ``[B, H, L, L]`` pre-softmax including the additive mask; context ``[B, L, H*d]``;
hidden ``[B, L, D]``; ``attention_mask`` ``[B, L]`` with 1 for real tokens.

``masking="faithful"`` reproduces the reference (NVIDIA DeepLearningExamples; see
docs/reference.md#losses): masked scores (<= -100) are replaced by 0 before the softmax, so padded keys receive
probability mass, and padded query rows and tokens count in every mean. ``masking="masked"``
excludes padded keys from every softmax and averages over real query rows / tokens only.
Nothing here depends on the configured batch size: B is read from the tensors (the reference
reshapes with ``train_batch_size`` and so needs full batches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .settings import layer_map  # noqa: F401 - re-exported: the losses are defined over its pairs

MASKINGS = ("faithful", "masked")
# Scores at or below this are treated as masked by the reference (it adds -10000 to padded keys).
MASKED_SCORE = -100.0


def _check_masking(masking: str, attention_mask: torch.Tensor | None) -> None:
    if masking not in MASKINGS:
        raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
    if masking == "masked" and attention_mask is None:
        raise ValueError("masking='masked' needs the attention_mask")


def _kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) along the last dim, one value per row (fp32)."""
    log_p_s = F.log_softmax(student_logits.float(), dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float(), dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)


def _mean_over_real_queries(rows: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``rows`` ``[B, H, L]`` over heads and real query positions."""
    q = attention_mask[:, None, :].to(rows.dtype)
    return (rows * q).sum() / (q.sum() * rows.shape[1])


def _mask_keys(scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    # A finite fill: exp() underflows to exactly 0 while log-probabilities stay finite, so
    # 0·(log p_t − log p_s) is 0 and gradients stay free of inf·0.
    return scores.float().masked_fill(attention_mask[:, None, None, :] == 0, -1e9)


def attention_loss(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    kind: str = "kl",
    masking: str = "faithful",
) -> torch.Tensor:
    """Attention-distribution loss of one layer pair.

    ``kl``, faithful: with S' = (S if S > -100 else 0),
        (1 / (B·H·L)) Σ_{b,h,i} KL(softmax(S'_t[b,h,i]) || softmax(S'_s[b,h,i])).
    ``kl``, masked: padded keys get probability 0, the mean runs over heads and real queries.
    ``mse``, faithful (TinyBERT): mean over all elements of (S'_s − S'_t)².
    ``mse``, masked: mean over heads × real queries × real keys of (S_s − S_t)².
    """
    _check_masking(masking, attention_mask)
    if student_scores.shape[:2] != teacher_scores.shape[:2] or student_scores.shape[-1] != teacher_scores.shape[-1]:
        raise ValueError(f"score shapes differ: {tuple(student_scores.shape)} vs {tuple(teacher_scores.shape)}")
    if masking == "faithful":
        s = student_scores.float()
        t = teacher_scores.float()
        s = s.masked_fill(s <= MASKED_SCORE, 0.0)
        t = t.masked_fill(t <= MASKED_SCORE, 0.0)
        if kind == "kl":
            return _kl_rows(s, t).mean()
        if kind == "mse":
            return F.mse_loss(s, t)
    else:
        if kind == "kl":
            rows = _kl_rows(_mask_keys(student_scores, attention_mask), _mask_keys(teacher_scores, attention_mask))
            return _mean_over_real_queries(rows, attention_mask)
        if kind == "mse":
            m = attention_mask.float()
            pair = (m[:, :, None] * m[:, None, :])[:, None]  # [B, 1, L, L]
            diff = (student_scores.float() - teacher_scores.float()) ** 2
            return (diff * pair).sum() / (pair.sum() * student_scores.shape[1])
    raise ValueError(f"attention loss kind must be 'kl' or 'mse', got {kind!r}")


def _relation_logits(context: torch.Tensor, num_heads: int) -> torch.Tensor:
    """softmax input R = C·Cᵀ/√d per head: ``[B, L, H*d]`` -> ``[B, H, L, L]``."""
    b, n, width = context.shape
    d = width // num_heads
    c = context.float().view(b, n, num_heads, d).transpose(1, 2)
    return torch.matmul(c, c.transpose(-1, -2)) / math.sqrt(d)


def value_relation_loss(
    student_context: torch.Tensor,
    teacher_context: torch.Tensor,
    num_heads: int,
    attention_mask: torch.Tensor | None = None,
    masking: str = "faithful",
) -> torch.Tensor:
    """MiniLM-style value-relation KL on attention context vectors.

    With R = C·Cᵀ/√d per head (d = width / heads, different for student and teacher):
    faithful: (1 / (B·H·L)) Σ_{b,h,i} KL(softmax(R_t[b,h,i]) || softmax(R_s[b,h,i])), padding included.
    masked: padded keys excluded from both softmaxes, mean over heads and real queries.
    """
    _check_masking(masking, attention_mask)
    rs = _relation_logits(student_context, num_heads)
    rt = _relation_logits(teacher_context, num_heads)
    if masking == "faithful":
        return _kl_rows(rs, rt).mean()
    rows = _kl_rows(_mask_keys(rs, attention_mask), _mask_keys(rt, attention_mask))
    return _mean_over_real_queries(rows, attention_mask)


def hidden_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    projection: nn.Module | None = None,
    attention_mask: torch.Tensor | None = None,
    kind: str = "cosine",
    masking: str = "faithful",
) -> torch.Tensor:
    """Hidden-state loss through the learned projection (student width -> teacher width).

    ``cosine``: mean over token positions of 1 − cos(W·h_s + b, h_t) (the reference's
    CosineEmbeddingLoss with target +1). ``mse``: mean over elements of (W·h_s + b − h_t)².
    Faithful averages over every position; masked over real tokens only.
    """
    _check_masking(masking, attention_mask)
    hs = projection(student_hidden) if projection is not None else student_hidden
    if hs.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden shapes differ: {tuple(hs.shape)} vs {tuple(teacher_hidden.shape)}; "
            "a projection is needed when student and teacher widths differ"
        )
    hs, ht = hs.float(), teacher_hidden.float()
    if kind == "cosine":
        per_token = 1.0 - F.cosine_similarity(hs, ht, dim=-1, eps=1e-8)
    elif kind == "mse":
        per_token = ((hs - ht) ** 2).mean(-1)
    else:
        raise ValueError(f"hidden loss kind must be 'cosine' or 'mse', got {kind!r}")
    if masking == "faithful":
        return per_token.mean()
    m = attention_mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum()


def embedding_loss(
    student_embedding: torch.Tensor,
    teacher_embedding: torch.Tensor,
    projection: nn.Module | None = None,
    attention_mask: torch.Tensor | None = None,
    kind: str = "cosine",
    masking: str = "faithful",
) -> torch.Tensor:
    """Embedding-output loss: :func:`hidden_loss` applied to the embedding outputs (off in the reference)."""
    return hidden_loss(student_embedding, teacher_embedding, projection, attention_mask, kind, masking)


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over all elements (batch × classes) of −softmax(z_t/T)·log_softmax(z_s/T).

    As the reference: no T² factor, and for SST-2 the value is half the per-example CE.
    """
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return (-p_t * F.log_softmax(student_logits.float() / temperature, dim=-1)).mean()
