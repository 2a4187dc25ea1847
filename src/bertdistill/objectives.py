"""Training objectives: trainable modules whose ``forward(batch, targets)`` returns loss terms.

The trainer wraps one of these in DDP, so the loss is computed inside ``forward`` and every
trainable parameter (student and projection) takes part in it. Teacher work is separate:
``teacher_targets(teacher, batch)`` runs under ``torch.inference_mode`` in the trainer and
returns only the tensors the loss needs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .losses import attention_loss, embedding_loss, hidden_loss, layer_map, soft_cross_entropy, value_relation_loss
from .model import BertConfig, BertPreTrainedModel
from .settings import BackboneLossConfig

Batch = dict[str, torch.Tensor]


def make_projection(student: BertConfig, teacher: BertConfig, seed: int | None = None) -> nn.Linear | None:
    """The learned student→teacher projection (``fit_dense``), N(0, 0.02) with zero bias; None if widths match."""
    if student.hidden_size == teacher.hidden_size:
        return None
    proj = nn.Linear(student.hidden_size, teacher.hidden_size)
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        proj.weight.normal_(0.0, student.initializer_range, generator=g)
        proj.bias.zero_()
    return proj


def _inputs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    return batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")


class BackboneObjective(nn.Module):
    """Attention / value-relation / hidden / embedding distillation of mapped layer pairs."""

    def __init__(
        self,
        student: BertPreTrainedModel,
        teacher_config: BertConfig,
        projection: nn.Linear | None,
        losses: BackboneLossConfig | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.projection = projection
        self.losses = losses or BackboneLossConfig()
        s_cfg = student.config
        if s_cfg.num_attention_heads != teacher_config.num_attention_heads and (
            self.losses.attention or self.losses.value
        ):
            raise ValueError(
                f"attention and value-relation losses compare heads one to one: student has "
                f"{s_cfg.num_attention_heads}, teacher {teacher_config.num_attention_heads}"
            )
        self.pairs = layer_map(s_cfg.num_hidden_layers, teacher_config.num_hidden_layers, self.losses.layer_map)
        self.num_heads = s_cfg.num_attention_heads
        self.teacher_heads = teacher_config.num_attention_heads

    def _requests(self, side: int) -> dict[str, Any]:
        layers = sorted({p[side] for p in self.pairs})
        return {
            "output_attention_scores": layers if self.losses.attention else False,
            "output_context": layers if self.losses.value else False,
            "output_hidden_states": bool(self.losses.hidden or self.losses.embedding),
        }

    def teacher_targets(self, teacher: BertPreTrainedModel, batch: Batch) -> dict[str, Any]:
        out = teacher.backbone(*_inputs(batch), **self._requests(1))
        targets: dict[str, Any] = {}
        for s, t in self.pairs:
            if self.losses.attention:
                targets[f"scores{s}"] = out.attention_scores[t]
            if self.losses.value:
                targets[f"context{s}"] = out.context_layers[t]
            if self.losses.hidden:
                targets[f"hidden{s}"] = out.hidden_states[t + 1]
        if self.losses.embedding:
            targets["embedding"] = out.hidden_states[0]
        return targets

    def forward(self, batch: Batch, targets: dict[str, Any]) -> dict[str, torch.Tensor]:
        mask = batch.get("attention_mask")
        cfg = self.losses
        out = self.student.backbone(*_inputs(batch), **self._requests(0))
        terms: dict[str, torch.Tensor] = {}
        for s, _ in self.pairs:
            if cfg.attention:
                v = attention_loss(out.attention_scores[s], targets[f"scores{s}"], mask, cfg.attention, cfg.masking)
                terms["attention"] = terms.get("attention", 0) + v
            if cfg.value:
                # Student and teacher have the same head count (checked); d differs, the relation is L×L.
                v = value_relation_loss(
                    out.context_layers[s], targets[f"context{s}"], self.num_heads, mask, cfg.masking
                )
                terms["value"] = terms.get("value", 0) + v
            if cfg.hidden:
                v = hidden_loss(
                    out.hidden_states[s + 1], targets[f"hidden{s}"], self.projection, mask, cfg.hidden, cfg.masking
                )
                terms["hidden"] = terms.get("hidden", 0) + v
        if cfg.embedding:
            terms["embedding"] = embedding_loss(
                out.hidden_states[0], targets["embedding"], self.projection, mask, cfg.embedding, cfg.masking
            )
        terms["loss"] = sum(cfg.weights.get(k, 1.0) * v for k, v in terms.items())
        return terms


def student_logits(model: BertPreTrainedModel, batch: Batch) -> torch.Tensor:
    """Logits as one tensor: ``[B, C]`` for classification, ``[B, 2, L]`` (start, end) for QA."""
    out = model(*_inputs(batch))
    if out.start_logits is not None:
        return torch.stack([out.start_logits, out.end_logits], dim=1)
    return out.logits


class PredictionObjective(nn.Module):
    """Soft cross-entropy against teacher logits (live or cached in ``batch["teacher_logits"]``).

    For QA the loss is SCE(start) + SCE(end) over all positions, as the reference.
    """

    def __init__(self, student: BertPreTrainedModel, temperature: float = 1.0) -> None:
        super().__init__()
        self.student = student
        self.projection = None
        self.temperature = temperature

    def teacher_targets(self, teacher: BertPreTrainedModel | None, batch: Batch) -> dict[str, Any]:
        if "teacher_logits" in batch:
            return {"logits": batch["teacher_logits"]}
        return {"logits": student_logits(teacher, batch)}

    def forward(self, batch: Batch, targets: dict[str, Any]) -> dict[str, torch.Tensor]:
        s = student_logits(self.student, batch)
        t = targets["logits"]
        if s.dim() == 3:  # QA: start and end
            loss = soft_cross_entropy(s[:, 0], t[:, 0], self.temperature) + soft_cross_entropy(
                s[:, 1], t[:, 1], self.temperature
            )
        else:
            loss = soft_cross_entropy(s, t, self.temperature)
        return {"prediction": loss, "loss": loss}


class _LabelObjective(nn.Module):
    """Objectives trained on the batch's own labels: no teacher, no projection."""

    def __init__(self, model: BertPreTrainedModel) -> None:
        super().__init__()
        self.student = model
        self.projection = None

    def teacher_targets(self, teacher: Any, batch: Batch) -> dict[str, Any]:
        return {}


class SupervisedObjective(_LabelObjective):
    """Hard-label fine-tuning (teacher fine-tuning): CE on labels, or (CE(start) + CE(end)) / 2 for QA."""

    def forward(self, batch: Batch, targets: dict[str, Any]) -> dict[str, torch.Tensor]:
        s = student_logits(self.student, batch)
        if s.dim() == 3:
            n = s.shape[-1]
            start = batch["start_positions"].clamp(0, n - 1)
            end = batch["end_positions"].clamp(0, n - 1)
            loss = (F.cross_entropy(s[:, 0].float(), start) + F.cross_entropy(s[:, 1].float(), end)) / 2
        else:
            loss = F.cross_entropy(s.float(), batch["labels"])
        return {"ce": loss, "loss": loss}


class MaskedLMObjective(_LabelObjective):
    """Masked-LM training: cross-entropy at the masked positions (``labels`` ≥ 0) only, so the
    vocabulary projection runs for those positions alone."""

    def forward(self, batch: Batch, targets: dict[str, Any]) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        where = labels >= 0
        logits = self.student(*_inputs(batch), masked_positions=where).logits
        loss = F.cross_entropy(logits.float(), labels[where])
        return {"mlm": loss, "loss": loss}
