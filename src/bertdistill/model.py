"""One readable BERT, with the parameter names of Hugging Face's ``BertModel`` and heads.

The encoder can hand back the internals that distillation compares (per-layer hidden states,
the embedding output, pre-softmax attention scores with the additive mask, and the attention
context vectors softmax(scores)·V before the output projection). Layers whose internals are not
requested run ``torch.nn.functional.scaled_dot_product_attention`` instead of the explicit path,
so a student or teacher pays for explicit attention only where a loss needs it.

Parameter names match ``transformers`` exactly (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight``, ``cls.predictions.transform.dense.weight``, ...)
so a state dict moves between the two libraries unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The additive mask value of the reference (NVIDIA modeling.py): (1 - mask) * -10000.
# Finite in fp16, and the reference's faithful losses rely on "masked scores <= -100".
MASK_VALUE = -10000.0

HEADS = (None, "mlm", "classification", "qa")


@dataclass
class BertConfig:
    """Hyper-parameters of a BERT encoder; field names are those of ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2
    classifier_dropout: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACT2FN)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        """Build from a ``config.json`` dict; unknown keys are kept in ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        if "id2label" in d and "num_labels" not in d:
            known["num_labels"] = len(d["id2label"])
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        return {**self.extra, **d}

    @classmethod
    def from_json_file(cls, path: str | Path) -> BertConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACT2FN = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": _gelu_new,
    "gelu_pytorch_tanh": _gelu_new,
    "tanh": torch.tanh,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass
class BertOutput:
    """Forward result; field names follow Hugging Face's model outputs.

    ``hidden_states`` has ``num_hidden_layers + 1`` entries (embedding output first).
    ``attention_scores`` and ``context_layers`` have one entry per layer, ``None`` for layers
    whose internals were not requested. Scores are ``[B, H, L, L]`` pre-softmax including the
    additive mask; context vectors are ``[B, L, H*d]``.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attention_scores: list[torch.Tensor | None] | None = None
    context_layers: list[torch.Tensor | None] | None = None
    logits: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None

    @property
    def embedding_output(self) -> torch.Tensor | None:
        return None if self.hidden_states is None else self.hidden_states[0]


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with a uniform-threshold mask.

    Same distribution as ``F.dropout`` (keep with probability 1 − p, scale by 1/(1 − p)), but
    on CPU ``rand`` + compare is about twice as fast as the Bernoulli kernel ``F.dropout`` uses,
    and dropout is a large share of a distillation step when the teacher keeps it on.
    """
    if not training or p == 0.0:
        return x
    keep = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))
    return x * keep


def dropout_add(x: torch.Tensor, residual: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``residual + dropout(x)`` in one fused ``addcmul`` when dropout is active."""
    if not training or p == 0.0:
        return x + residual
    keep = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))
    return torch.addcmul(residual, x, keep)


def _layer_set(request: bool | Iterable[int], num_layers: int) -> frozenset[int]:
    if request is True:
        return frozenset(range(num_layers))
    if request is False or request is None:
        return frozenset()
    layers = frozenset(int(i) % num_layers for i in request)  # -1 means the last layer
    return layers


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        positions = torch.arange(seq_len, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return dropout(self.LayerNorm(x), self.dropout.p, self.training)


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def query_only(self, x: torch.Tensor, mask: torch.Tensor | None, query_index: torch.Tensor) -> torch.Tensor:
        """Context ``[B, 1, H*d]`` of one query position per row (keys/values of every position):
        the last layer of an MLM needs nothing else when only masked positions are scored."""
        b, n, _ = x.shape
        h, d = self.num_attention_heads, self.attention_head_size
        kv_weight = torch.cat([self.key.weight, self.value.weight])
        kv_bias = torch.cat([self.key.bias, self.value.bias])
        k, v = F.linear(x, kv_weight, kv_bias).view(b, n, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        xq = x[torch.arange(b, device=x.device), query_index][:, None]  # [B, 1, D]
        q = self.query(xq).view(b, 1, h, d).transpose(1, 2)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return context.transpose(1, 2).reshape(b, 1, h * d)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, explicit: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (context [B, L, H*d], pre-softmax scores or None)."""
        if torch.onnx.is_in_onnx_export():
            return self._export_forward(x, mask), None
        b, n, _ = x.shape
        h, d = self.num_attention_heads, self.attention_head_size
        # One fused QKV matmul; the three Linear modules stay for Hugging Face's names.
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        qkv = F.linear(x, weight, bias).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, L, d]
        p = self.dropout.p if self.training else 0.0
        # SDPA when nothing is requested and no dropout is due; with dropout, SDPA falls back to
        # its math kernel on CPU, so the explicit path with the faster dropout is cheaper.
        if explicit or p > 0.0:
            scores = torch.matmul(q, k.transpose(-1, -2)).mul_(1.0 / math.sqrt(d))
            if mask is not None:
                scores = scores + mask
            probs = dropout(torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype), p, True)
            context = torch.matmul(probs, v)
            if not explicit:
                scores = None
        else:
            scores = None
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return context.transpose(1, 2).reshape(b, n, h * d), scores

    def _export_forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Inference attention as Hugging Face's BERT writes it (separate Q/K/V projections, explicit
        softmax): the graph ONNX Runtime's transformer optimizer recognises and fuses into its
        ``Attention`` operator. Same arithmetic as :meth:`forward` in eval mode."""
        b, n, _ = x.shape
        h, d = self.num_attention_heads, self.attention_head_size
        q = self.query(x).view(b, n, h, d).transpose(1, 2)
        k = self.key(x).view(b, n, h, d).permute(0, 2, 3, 1)
        v = self.value(x).view(b, n, h, d).transpose(1, 2)
        scores = torch.matmul(q, k) / math.sqrt(d)
        if mask is not None:
            scores = scores + mask
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        return context.transpose(1, 2).reshape(b, n, h * d)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(dropout_add(self.dense(x), residual, self.dropout.p, self.training))


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class BertOutputLayer(nn.Module):
    """The FFN output sub-layer (Hugging Face calls this class ``BertOutput``)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(dropout_add(self.dense(x), residual, self.dropout.p, self.training))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutputLayer(config)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, explicit: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Return (layer output, attention context, scores or None)."""
        context, scores = self.attention.self(x, mask, explicit)
        attn_out = self.attention.output(context, x)
        out = self.output(self.intermediate(attn_out), attn_out)
        return out, context, scores

    def forward_query(self, x: torch.Tensor, mask: torch.Tensor | None, query_index: torch.Tensor) -> torch.Tensor:
        """Output ``[B, 1, D]`` at one position per row (eval only; same arithmetic per row)."""
        context = self.attention.self.query_only(x, mask, query_index)
        residual = x[torch.arange(x.shape[0], device=x.device), query_index][:, None]
        attn_out = self.attention.output(context, residual)
        return self.output(self.intermediate(attn_out), attn_out)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


class BertPreTrainedModel(nn.Module):
    """Shared initialisation (N(0, initializer_range), zero biases, LayerNorm 1/0)."""

    config: BertConfig
    head: str | None = None

    def init_weights(self) -> None:
        self.apply(self._init_module)

    def _init_module(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, BertLMPredictionHead):
            nn.init.zeros_(module.bias)

    @property
    def backbone(self) -> BertModel:
        """The encoder (``self`` for a bare ``BertModel``)."""
        return self if isinstance(self, BertModel) else self.bert  # type: ignore[attr-defined]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class BertModel(BertPreTrainedModel):
    """Embeddings + encoder (+ pooler). ``forward`` returns a :class:`BertOutput`."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attention_scores: bool | Iterable[int] = False,
        output_context: bool | Iterable[int] = False,
        last_layer_query: torch.Tensor | None = None,
    ) -> BertOutput:
        """Run the encoder.

        ``last_layer_query`` (``[B]`` positions, inference only): the last layer computes its
        output only at that position of each row (``last_hidden_state`` is ``[B, 1, D]``).

        ``output_attention_scores`` / ``output_context``: ``True`` for every layer or an iterable of
        0-based layer indices (negative counts from the end). Only those layers take the explicit
        attention path; the others use SDPA.
        """
        n_layers = self.config.num_hidden_layers
        want_scores = _layer_set(output_attention_scores, n_layers)
        want_context = _layer_set(output_context, n_layers)
        x = self.embeddings(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None:
            mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * MASK_VALUE
        hidden_states = [x] if output_hidden_states else None
        scores_out: list[torch.Tensor | None] | None = [None] * n_layers if want_scores else None
        context_out: list[torch.Tensor | None] | None = [None] * n_layers if want_context else None
        layers = list(self.encoder.layer)
        if last_layer_query is not None:
            if want_scores or want_context or output_hidden_states or self.training:
                raise ValueError("last_layer_query is for inference without internals")
            layers, last = layers[:-1], layers[-1]
        for i, layer in enumerate(layers):
            x, context, scores = layer(x, mask, explicit=i in want_scores or i in want_context)
            if hidden_states is not None:
                hidden_states.append(x)
            if scores_out is not None and i in want_scores:
                scores_out[i] = scores
            if context_out is not None and i in want_context:
                context_out[i] = context
        if last_layer_query is not None:
            x = last.forward_query(x, mask, last_layer_query)
        return BertOutput(
            last_hidden_state=x,
            pooler_output=self.pooler(x) if self.pooler is not None else None,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attention_scores=scores_out,
            context_layers=context_out,
        )


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        # The decoder weight is tied to the word embeddings, its bias to ``bias`` (as in HF).
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)


class _HeadModel(BertPreTrainedModel):
    """Common forward plumbing of the head models: run ``self.bert``, then the head."""

    def _backbone(self, input_ids, attention_mask, token_type_ids, **internals) -> BertOutput:
        return self.bert(input_ids, attention_mask, token_type_ids, **internals)


class BertForMaskedLM(_HeadModel):
    head = "mlm"

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.init_weights()
        self.tie_weights()

    def tie_weights(self) -> None:
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
        **internals: Any,
    ) -> BertOutput:
        """MLM logits ``[B, L, V]``; with a boolean ``masked_positions`` ``[B, L]`` only those
        positions go through the vocabulary projection and ``logits`` is ``[N, V]`` (row-major)."""
        one_per_row = (
            masked_positions is not None
            and not internals
            and not self.training
            and bool((masked_positions.sum(1) == 1).all())
        )
        if one_per_row:
            # Only the masked position of each row is scored, so the last layer runs for it alone.
            query = masked_positions.int().argmax(1)
            out = self._backbone(input_ids, attention_mask, token_type_ids, last_layer_query=query)
            out.logits = self.cls.predictions(out.last_hidden_state[:, 0])
            return out
        out = self._backbone(input_ids, attention_mask, token_type_ids, **internals)
        h = out.last_hidden_state
        if masked_positions is not None:
            h = h[masked_positions]
        out.logits = self.cls.predictions(h)
        return out


class BertForSequenceClassification(_HeadModel):
    head = "classification"

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=True)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **internals) -> BertOutput:
        out = self._backbone(input_ids, attention_mask, token_type_ids, **internals)
        out.logits = self.classifier(self.dropout(out.pooler_output))
        return out


class BertForQuestionAnswering(_HeadModel):
    head = "qa"

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **internals) -> BertOutput:
        out = self._backbone(input_ids, attention_mask, token_type_ids, **internals)
        start, end = self.qa_outputs(out.last_hidden_state).split(1, dim=-1)
        out.start_logits, out.end_logits = start.squeeze(-1), end.squeeze(-1)
        return out


HEAD_CLASSES: dict[str | None, type[BertPreTrainedModel]] = {
    None: BertModel,
    "mlm": BertForMaskedLM,
    "classification": BertForSequenceClassification,
    "qa": BertForQuestionAnswering,
}

HF_ARCHITECTURES = {
    None: "BertModel",
    "mlm": "BertForMaskedLM",
    "classification": "BertForSequenceClassification",
    "qa": "BertForQuestionAnswering",
}


def build_model(config: BertConfig, head: str | None = None, add_pooling_layer: bool = True) -> BertPreTrainedModel:
    """A randomly initialised model with the given head (``None`` = bare encoder)."""
    if head not in HEAD_CLASSES:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head is None:
        return BertModel(config, add_pooling_layer=add_pooling_layer)
    return HEAD_CLASSES[head](config)
