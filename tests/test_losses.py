"""Each loss against a hand-written, loop-by-loop computation of the recipe's formula (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from bertdistill.losses import (
    attention_loss,
    embedding_loss,
    hidden_loss,
    layer_map,
    soft_cross_entropy,
    value_relation_loss,
)
from bertdistill.model import MASK_VALUE

TOL = 1e-6
B, H, L = 3, 2, 5  # B = 3: a "partial" batch; nothing may assume a configured batch size


def mask_rows():
    m = torch.ones(B, L, dtype=torch.long)
    m[1, 3:] = 0
    m[2, 2:] = 0
    return m


def scores(seed, mask):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, H, L, L, generator=g) * 2
    return s + (1 - mask[:, None, None, :].float()) * MASK_VALUE  # as the model returns them


# ---- hand-written references: plain Python floats, explicit loops ----------------------------


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    z = sum(e)
    return [v / z for v in e]


def kl(t_row, s_row):
    pt, ps = softmax(t_row), softmax(s_row)
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps, strict=True) if a > 0)


def ref_attention(s, t, mask, kind, masking):
    s, t, mask = s.double().tolist(), t.double().tolist(), mask.tolist()
    total, count = 0.0, 0
    for b in range(B):
        real = [j for j in range(L) if mask[b][j]]
        for h in range(H):
            for i in range(L):
                if masking == "masked" and not mask[b][i]:
                    continue
                if masking == "faithful":
                    srow = [0.0 if x <= -100 else x for x in s[b][h][i]]
                    trow = [0.0 if x <= -100 else x for x in t[b][h][i]]
                else:
                    srow = [s[b][h][i][j] for j in real]
                    trow = [t[b][h][i][j] for j in real]
                if kind == "kl":
                    total += kl(trow, srow)
                    count += 1
                else:
                    total += sum((a - c) ** 2 for a, c in zip(srow, trow, strict=True))
                    count += len(srow)
    return total / count


def relation(ctx, b, h, d):
    rows = [ctx[b][i][h * d : (h + 1) * d] for i in range(L)]
    return [
        [sum(x * y for x, y in zip(rows[i], rows[j], strict=True)) / math.sqrt(d) for j in range(L)] for i in range(L)
    ]


def ref_value(cs, ct, mask, masking):
    ds, dt = len(cs[0][0]) // H, len(ct[0][0]) // H
    total, count = 0.0, 0
    for b in range(B):
        real = [j for j in range(L) if mask[b][j]]
        for h in range(H):
            rs, rt = relation(cs, b, h, ds), relation(ct, b, h, dt)
            for i in range(L):
                if masking == "masked":
                    if not mask[b][i]:
                        continue
                    total += kl([rt[i][j] for j in real], [rs[i][j] for j in real])
                else:
                    total += kl(rt[i], rs[i])
                count += 1
    return total / count


def ref_hidden(hs, ht, w, bias, mask, kind, masking):
    total, count = 0.0, 0
    for b in range(B):
        for i in range(L):
            if masking == "masked" and not mask[b][i]:
                continue
            v = [sum(w[o][k] * hs[b][i][k] for k in range(len(hs[b][i]))) + bias[o] for o in range(len(w))]
            t = ht[b][i]
            if kind == "cosine":
                dot = sum(x * y for x, y in zip(v, t, strict=True))
                total += 1 - dot / (math.sqrt(sum(x * x for x in v)) * math.sqrt(sum(y * y for y in t)))
            else:
                total += sum((x - y) ** 2 for x, y in zip(v, t, strict=True)) / len(t)
            count += 1
    return total / count


# ---- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["kl", "mse"])
@pytest.mark.parametrize("masking", ["faithful", "masked"])
def test_attention_loss(kind, masking):
    mask = mask_rows()
    s, t = scores(0, mask), scores(1, mask)
    got = attention_loss(s, t, mask, kind=kind, masking=masking).item()
    assert abs(got - ref_attention(s, t, mask, kind, masking)) < TOL


def test_attention_kl_faithful_is_the_references_expression():
    """docs/reference.md#losses: KLDivLoss(batchmean)(log_softmax(S_s'), softmax(S_t')) / (heads · L)."""
    mask = mask_rows()
    s, t = scores(2, mask), scores(3, mask)
    z = lambda x: torch.where(x <= -100, torch.zeros_like(x), x)  # noqa: E731
    ref = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(z(s), -1), torch.softmax(z(t), -1)) / (H * L)
    assert abs(attention_loss(s, t, mask).item() - ref.item()) < TOL


@pytest.mark.parametrize("masking", ["faithful", "masked"])
def test_value_relation_loss(masking):
    mask = mask_rows()
    g = torch.Generator().manual_seed(4)
    cs = torch.randn(B, L, H * 3, generator=g)  # student d = 3
    ct = torch.randn(B, L, H * 5, generator=g)  # teacher d = 5
    got = value_relation_loss(cs, ct, H, mask, masking=masking).item()
    assert abs(got - ref_value(cs.double().tolist(), ct.double().tolist(), mask.tolist(), masking)) < TOL


@pytest.mark.parametrize("kind", ["cosine", "mse"])
@pytest.mark.parametrize("masking", ["faithful", "masked"])
def test_hidden_and_embedding_loss(kind, masking):
    mask = mask_rows()
    g = torch.Generator().manual_seed(5)
    hs, ht = torch.randn(B, L, 4, generator=g), torch.randn(B, L, 6, generator=g)
    proj = torch.nn.Linear(4, 6)
    ref = ref_hidden(
        hs.double().tolist(),
        ht.double().tolist(),
        proj.weight.double().tolist(),
        proj.bias.double().tolist(),
        mask.tolist(),
        kind,
        masking,
    )
    for fn in (hidden_loss, embedding_loss):
        assert abs(fn(hs, ht, proj, mask, kind=kind, masking=masking).item() - ref) < TOL


def test_hidden_loss_needs_projection_when_widths_differ():
    with pytest.raises(ValueError, match="projection"):
        hidden_loss(torch.zeros(1, 2, 4), torch.zeros(1, 2, 6))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_soft_cross_entropy(temperature):
    g = torch.Generator().manual_seed(6)
    zs, zt = torch.randn(B, 7, generator=g), torch.randn(B, 7, generator=g)
    total = 0.0
    for b in range(B):
        pt = softmax([x / temperature for x in zt[b].double().tolist()])
        ps = softmax([x / temperature for x in zs[b].double().tolist()])
        total += sum(-a * math.log(c) for a, c in zip(pt, ps, strict=True))
    assert abs(soft_cross_entropy(zs, zt, temperature).item() - total / (B * 7)) < TOL


def test_faithful_losses_do_not_depend_on_batch_composition():
    """A batch's loss is the size-weighted mean of its parts' losses: no full-batch assumption."""
    mask = mask_rows()
    s, t = scores(7, mask), scores(8, mask)
    whole = attention_loss(s, t, mask)
    parts = [attention_loss(s[i : i + 1], t[i : i + 1], mask[i : i + 1]) for i in range(B)]
    assert abs(whole.item() - sum(p.item() for p in parts) / B) < TOL


def test_masked_mode_ignores_padding_content():
    mask = mask_rows()
    s, t = scores(9, mask), scores(10, mask)
    s2 = s.clone()
    s2[2, :, 3:, :] += 5.0  # padded query rows of row 2
    assert abs(attention_loss(s, t, mask, masking="masked") - attention_loss(s2, t, mask, masking="masked")) < TOL
    assert abs(attention_loss(s, t, mask) - attention_loss(s2, t, mask)) > 1e-3  # faithful counts them


def test_masked_mode_gradients_are_finite():
    mask = mask_rows()
    s = scores(11, mask).requires_grad_()
    attention_loss(s, scores(12, mask), mask, masking="masked").backward()
    assert torch.isfinite(s.grad).all()


def test_layer_maps():
    assert layer_map(4, 12, "last") == [(3, 11)]
    assert layer_map(4, 12, "uniform") == [(0, 2), (1, 5), (2, 8), (3, 11)]  # teacher 3, 6, 9, 12 (1-based)
    assert layer_map(3, 6, "uniform") == [(0, 1), (1, 3), (2, 5)]
    assert layer_map(2, 6, [1, 5]) == [(0, 1), (1, 5)]
    assert layer_map(2, 6, [[1, 5]]) == [(1, 5)]
    with pytest.raises(ValueError, match="divisible"):
        layer_map(4, 6, "uniform")
    with pytest.raises(ValueError, match="out of range"):
        layer_map(2, 6, [1, 6])


@pytest.mark.parametrize("kind", ["last", "uniform"])
@pytest.mark.parametrize("masking", ["faithful", "masked"])
def test_backbone_objective_sums_mapped_layers(kind, masking):
    """The backbone objective = Σ over mapped (student, teacher) layers of the hand-written losses,
    on real model internals of a partial batch (B = 3)."""
    from bertdistill.model import BertConfig, BertModel
    from bertdistill.objectives import BackboneLossConfig, BackboneObjective, make_projection

    torch.manual_seed(0)
    common = dict(
        vocab_size=30,
        num_attention_heads=H,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    teacher = BertModel(BertConfig(hidden_size=8, num_hidden_layers=4, intermediate_size=8, **common)).eval()
    student = BertModel(
        BertConfig(hidden_size=4, num_hidden_layers=2, intermediate_size=8, **common), add_pooling_layer=False
    ).eval()
    proj = make_projection(student.config, teacher.config, seed=0)
    obj = BackboneObjective(student, teacher.config, proj, BackboneLossConfig(layer_map=kind, masking=masking))
    mask = mask_rows()
    batch = {"input_ids": torch.randint(1, 30, (B, L)) * mask, "attention_mask": mask}
    with torch.no_grad():
        terms = obj(batch, obj.teacher_targets(teacher, batch))
        t_out = teacher(
            batch["input_ids"], mask, output_hidden_states=True, output_attention_scores=True, output_context=True
        )
        s_out = student(
            batch["input_ids"], mask, output_hidden_states=True, output_attention_scores=True, output_context=True
        )
    pairs = [(1, 3)] if kind == "last" else [(0, 1), (1, 3)]
    att = sum(
        ref_attention(s_out.attention_scores[s], t_out.attention_scores[t], mask, "kl", masking) for s, t in pairs
    )
    val = sum(
        ref_value(
            s_out.context_layers[s].double().tolist(), t_out.context_layers[t].double().tolist(), mask.tolist(), masking
        )
        for s, t in pairs
    )
    hid = sum(
        ref_hidden(
            s_out.hidden_states[s + 1].double().tolist(),
            t_out.hidden_states[t + 1].double().tolist(),
            proj.weight.double().tolist(),
            proj.bias.double().tolist(),
            mask.tolist(),
            "cosine",
            masking,
        )
        for s, t in pairs
    )
    assert abs(terms["attention"].item() - att) < 1e-6
    assert abs(terms["value"].item() - val) < 1e-6
    assert abs(terms["hidden"].item() - hid) < 1e-6
    assert abs(terms["loss"].item() - (att + val + hid)) < 1e-5
