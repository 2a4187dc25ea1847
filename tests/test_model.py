"""Our BERT against transformers' BERT on random weights and padded random inputs (fp32)."""

from __future__ import annotations

import pytest
import torch
import transformers

from bertdistill.model import BertConfig, build_model
from helpers import hf_config, random_batch

TOL = 1e-5

HF_CLASSES = {
    None: transformers.BertModel,
    "mlm": transformers.BertForMaskedLM,
    "classification": transformers.BertForSequenceClassification,
    "qa": transformers.BertForQuestionAnswering,
}


def pair(head, **overrides):
    torch.manual_seed(0)
    hc = hf_config(**overrides)
    hf = HF_CLASSES[head](hc).eval()
    ours = build_model(BertConfig.from_dict(hc.to_dict()), head).eval()
    result = ours.load_state_dict(hf.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return hf, ours


def context_hooks(hf_model):
    """Capture the input of each layer's attention output projection = softmax(scores)·V."""
    captured = []
    for layer in hf_model.base_model.encoder.layer:
        layer.attention.output.dense.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    return captured


@pytest.mark.parametrize("head", [None, "mlm", "classification", "qa"])
@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_heads_match_transformers(head, act):
    hf, ours = pair(head, hidden_act=act)
    ids, types, mask = random_batch(hf.config.vocab_size)
    captured = context_hooks(hf)
    with torch.no_grad():
        a = hf(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True, output_attentions=True)
        b = ours(ids, mask, types, output_hidden_states=True, output_attention_scores=True, output_context=True)
    if head is None:
        assert (a.last_hidden_state - b.last_hidden_state).abs().max() < TOL
        assert (a.pooler_output - b.pooler_output).abs().max() < TOL
    elif head == "qa":
        assert (a.start_logits - b.start_logits).abs().max() < TOL
        assert (a.end_logits - b.end_logits).abs().max() < TOL
    else:
        assert a.logits.shape == b.logits.shape
        assert (a.logits - b.logits).abs().max() < TOL
    assert len(a.hidden_states) == len(b.hidden_states) == hf.config.num_hidden_layers + 1
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert (x - y).abs().max() < TOL
    for x, y in zip(a.attentions, b.attention_scores, strict=True):
        assert (x - torch.softmax(y, dim=-1)).abs().max() < TOL
    for x, y in zip(captured, b.context_layers, strict=True):
        assert (x - y).abs().max() < TOL


def test_scores_carry_the_additive_mask():
    _, ours = pair(None)
    ids, types, mask = random_batch(ours.config.vocab_size)
    with torch.no_grad():
        out = ours(ids, mask, types, output_attention_scores=[0])
    s = out.attention_scores[0]
    assert out.attention_scores[1] is None and out.attention_scores[2] is None
    # Padded keys of row 2 (positions >= 5) carry the reference's -10000 offset, real keys do not.
    assert (s[2, :, :, 5:] < -9000).all()
    assert (s[2, :, :, :5] > -100).all()


def test_sdpa_path_equals_explicit_path():
    _, ours = pair("qa")
    ids, types, mask = random_batch(ours.config.vocab_size)
    with torch.no_grad():
        fast = ours(ids, mask, types)
        slow = ours(ids, mask, types, output_attention_scores=True)
        mixed = ours(ids, mask, types, output_context=[-1], output_hidden_states=True)
    assert fast.attention_scores is None and fast.hidden_states is None
    for o in (slow, mixed):
        assert (fast.start_logits - o.start_logits).abs().max() < TOL
    assert mixed.context_layers[2] is not None and mixed.context_layers[0] is None


def test_mlm_masked_positions_only():
    _, ours = pair("mlm")
    ids, types, mask = random_batch(ours.config.vocab_size)
    pick = torch.zeros_like(mask, dtype=torch.bool)
    pick[0, 3] = pick[1, 1] = pick[2, 4] = True
    with torch.no_grad():
        full = ours(ids, mask, types).logits
        part = ours(ids, mask, types, masked_positions=pick).logits
    assert part.shape == (3, ours.config.vocab_size)
    assert (full[pick] - part).abs().max() < TOL


def test_mlm_decoder_is_tied_to_word_embeddings():
    _, ours = pair("mlm")
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight


def test_training_mode_dropout_and_gradients():
    _, ours = pair("classification")
    ours.train()
    ids, types, mask = random_batch(ours.config.vocab_size)
    a = ours(ids, mask, types).logits
    b = ours(ids, mask, types).logits
    assert not torch.allclose(a, b)  # dropout active in both attention paths
    a.sum().backward()
    assert all(p.grad is not None for p in ours.parameters() if p.requires_grad)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="multiple of"):
        BertConfig(hidden_size=50, num_attention_heads=4)


@pytest.mark.parametrize("with_mask", [False, True])
def test_mlm_last_layer_at_masked_position_only(with_mask):
    _, ours = pair("mlm")
    ids, types, mask = random_batch(ours.config.vocab_size)
    pick = torch.zeros_like(mask, dtype=torch.bool)
    pick[0, 3] = pick[1, 1] = pick[2, 4] = True  # exactly one per row -> last-layer shortcut
    m = mask if with_mask else None
    with torch.no_grad():
        full = ours(ids, m, types).logits[pick]
        fast = ours(ids, m, types, masked_positions=pick)
    assert fast.last_hidden_state.shape == (3, 1, ours.config.hidden_size)
    assert (full - fast.logits).abs().max() < TOL
