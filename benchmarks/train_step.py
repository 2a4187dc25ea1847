"""Backbone-stage training step: ours vs a plain Hugging Face transformers implementation.

Same shapes (teacher 12L-768-3072, student 4L-312-1200, 12 heads, seq 128, batch 16 with padding),
same losses (last-layer attention KL, value-relation KL, hidden cosine through a projection),
same optimizer (AdamW), clipping and teacher dropout setting. The transformers side uses
``output_attentions=True, output_hidden_states=True``, eager attention, the teacher under
``no_grad`` and a forward hook for the context vectors, as a hand-written script would. Steps are
timed in interleaved rounds so machine noise hits both sides alike. It also measures the fp32
matmul peak (a large ``torch.mm``) and reports model FLOPs utilisation of our step.

Prints one JSON object: ours_s, hf_s, ratio (hf_s / ours_s), mfu, and the settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def bert_forward_flops(layers: int, hidden: int, inter: int, batch: int, seq: int) -> float:
    """Matmul FLOPs of one encoder forward: projections + FFN + QKᵀ and PV."""
    tokens = batch * seq
    linear = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inter)
    attention = 2 * 2 * batch * seq * seq * hidden
    return layers * (linear + attention)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def make_batch(batch: int, seq: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    lengths[0] = seq  # the longest fills the window; the rest are padded
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    return {
        "input_ids": (ids * mask).to(device),
        "attention_mask": mask.to(device),
        "token_type_ids": torch.zeros_like(ids).to(device),
    }


def hf_side(args, device, batch):
    import transformers

    def cfg(layers, hidden, inter):
        c = transformers.BertConfig(
            vocab_size=30522,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=12,
            intermediate_size=inter,
        )
        c._attn_implementation = "eager"
        return c

    torch.manual_seed(0)
    teacher = transformers.BertModel(cfg(12, 768, 3072), add_pooling_layer=False).to(device).train()
    student = transformers.BertModel(cfg(4, 312, 1200), add_pooling_layer=False).to(device).train()
    proj = torch.nn.Linear(312, 768).to(device)
    captured = {}
    teacher.encoder.layer[-1].attention.output.dense.register_forward_hook(
        lambda m, i, o: captured.__setitem__("t", i[0])
    )
    student.encoder.layer[-1].attention.output.dense.register_forward_hook(
        lambda m, i, o: captured.__setitem__("s", i[0])
    )
    params = list(student.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=device.type == "cuda")
    amp = torch.bfloat16 if args.precision == "bf16" else None

    def relation(c):
        b, n, w = c.shape
        c = c.view(b, n, 12, w // 12).transpose(1, 2)
        return c @ c.transpose(-1, -2) / (w // 12) ** 0.5

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            with torch.no_grad():
                t = teacher(**batch, output_attentions=True, output_hidden_states=True)
                ct = captured["t"]
            s = student(**batch, output_attentions=True, output_hidden_states=True)
            cs = captured["s"]
            n = batch["input_ids"].shape[1]
            att = F.kl_div(
                torch.log(s.attentions[-1].float().clamp_min(1e-12)), t.attentions[-1].float(), reduction="batchmean"
            ) / (12 * n)
            val = F.kl_div(
                F.log_softmax(relation(cs.float()), -1), F.softmax(relation(ct.float()), -1), reduction="batchmean"
            ) / (12 * n)
            hid = (
                1 - F.cosine_similarity(proj(s.hidden_states[-1]).float(), t.hidden_states[-1].float(), dim=-1)
            ).mean()
            loss = att + val + hid
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def ours_side(args, device, batch):
    from bertdistill.model import BertConfig, BertModel
    from bertdistill.objectives import BackboneLossConfig, BackboneObjective, make_projection
    from bertdistill.train import TrainConfig, compile_for_training, make_optimizer

    torch.manual_seed(0)
    tcfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    scfg = BertConfig(hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200)
    teacher = BertModel(tcfg, add_pooling_layer=False).to(device).train()
    objective = (
        BackboneObjective(
            BertModel(scfg, add_pooling_layer=False), tcfg, make_projection(scfg, tcfg, 0), BackboneLossConfig()
        )
        .to(device)
        .train()
    )
    cfg = TrainConfig(max_steps=10, precision=args.precision, optimizer="adamw", compile=args.compile)
    opt = make_optimizer(objective, cfg, device)
    model, teacher_targets = objective, objective.teacher_targets
    if cfg.compile:  # what Trainer.fit does with train.compile set
        model, teacher_targets = compile_for_training(objective, teacher_targets, cfg.compile)
    amp = torch.bfloat16 if args.precision == "bf16" else None

    # The trainer's inner step (train.Trainer.fit) without its bookkeeping.
    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            with torch.inference_mode():
                targets = teacher_targets(teacher, batch)
            targets = {k: v.clone() for k, v in targets.items()}
            loss = model(batch, targets)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="steps per side per round")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument(
        "--compile",
        choices=["default", "reduce-overhead", "max-autotune"],
        default=None,
        help="train.compile for our side (the transformers side stays eager, as a plain script)",
    )
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    batch = make_batch(args.batch, args.seq, 30522, device)
    sides = {"ours": ours_side(args, device, batch), "hf": hf_side(args, device, batch)}
    times: dict[str, list[float]] = {k: [] for k in sides}
    warm = 5 if args.compile else 2  # compilation and CUDA-graph recording happen here, untimed
    for fn in sides.values():  # warm-up
        for _ in range(warm):
            fn()
    for _ in range(args.rounds):
        for name, fn in sides.items():
            for _ in range(args.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
    ours_s, hf_s = statistics.median(times["ours"]), statistics.median(times["hf"])
    flops = bert_forward_flops(12, 768, 3072, args.batch, args.seq) + 3 * bert_forward_flops(
        4, 312, 1200, args.batch, args.seq
    )
    peak = matmul_peak(device, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    print(
        json.dumps(
            {
                "ours_s": round(ours_s, 4),
                "hf_s": round(hf_s, 4),
                "ratio": round(hf_s / ours_s, 3),
                "mfu": round(flops / ours_s / peak, 3),
                "hf_mfu": round(flops / hf_s / peak, 3),
                "step_gflop": round(flops / 1e9, 1),
                "peak_gflops": round(peak / 1e9, 1),
                "device": str(device),
                "threads": torch.get_num_threads(),
                "precision": args.precision,
                "compile": args.compile,
                "batch": args.batch,
                "seq": args.seq,
                "samples": len(times["ours"]),
            }
        )
    )


if __name__ == "__main__":
    main()
