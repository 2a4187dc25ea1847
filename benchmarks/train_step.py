"""Backbone-stage training step: ours vs a plain Hugging Face transformers implementation.

Same shapes (teacher 12L-768-3072, student 4L-312-1200, 12 heads, seq 128, batch 16 with padding),
same losses (last-layer attention KL, value-relation KL, hidden cosine through a projection),
clipping and teacher dropout setting, and the same optimizer on both sides: the trainer's
``make_optimizer`` (AdamW, its lr/betas/eps/weight decay, no decay on biases and LayerNorm, the
fused kernel where torch has one: CUDA, and fp32 on CPU since torch 2.4), built for our objective
and for the transformers student + projection alike; the JSON records both and checks they match.
The transformers side uses ``output_attentions=True, output_hidden_states=True``, eager attention,
the teacher under ``no_grad`` and a forward hook for the context vectors, as a hand-written script
would.

Method: every side is warmed up (untimed steps; compilation happens there), then ``--rounds``
rounds time ``--steps`` steps of each side; the order reverses every round, so each side goes
first as often as the other. With ``--compile MODE`` both sides are also compiled (ours with
``train.compile``: objective and teacher targets; transformers: its teacher forward and its
student forward + losses, same mode, ``dynamic=False``) and timed in the same rounds, so the
JSON has eager-vs-eager and compiled-vs-compiled side by side. Medians, min/max and IQR of the
step times and the per-round ratios are printed. It also measures the matmul peak (a large
``torch.mm``) and reports model FLOPs utilisation.

Prints one JSON object: ours_s, hf_s, ratio (hf_s / ours_s, eager), the compiled pair when asked,
per-side spreads, mfu, the optimizer settings and the other settings.
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


def hf_side(args, device, batch, compile_mode):
    import transformers

    from bertdistill.train import TrainConfig, make_optimizer

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
    trained = torch.nn.ModuleList([student, proj])
    params = list(trained.parameters())
    # The very optimizer our side gets (same settings, same decay groups, same fused choice).
    opt = make_optimizer(trained, TrainConfig(max_steps=10, precision=args.precision, optimizer="adamw"), device)
    amp = torch.bfloat16 if args.precision == "bf16" else None

    def relation(c):
        b, n, w = c.shape
        c = c.view(b, n, 12, w // 12).transpose(1, 2)
        return c @ c.transpose(-1, -2) / (w // 12) ** 0.5

    def teacher_forward(batch):
        t = teacher(**batch, output_attentions=True, output_hidden_states=True)
        return t.attentions[-1], t.hidden_states[-1], captured["t"]

    def student_loss(batch, t_att, t_hid, ct):
        s = student(**batch, output_attentions=True, output_hidden_states=True)
        cs = captured["s"]
        n = batch["input_ids"].shape[1]
        att = F.kl_div(torch.log(s.attentions[-1].float().clamp_min(1e-12)), t_att.float(), reduction="batchmean") / (
            12 * n
        )
        val = F.kl_div(
            F.log_softmax(relation(cs.float()), -1), F.softmax(relation(ct.float()), -1), reduction="batchmean"
        ) / (12 * n)
        hid = (1 - F.cosine_similarity(proj(s.hidden_states[-1]).float(), t_hid.float(), dim=-1)).mean()
        return att + val + hid

    if compile_mode:
        mode = None if compile_mode == "default" else compile_mode
        teacher_forward = torch.compile(teacher_forward, mode=mode, dynamic=False)
        student_loss = torch.compile(student_loss, mode=mode, dynamic=False)

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            with torch.no_grad():
                t_att, t_hid, ct = teacher_forward(batch)
            loss = student_loss(batch, t_att, t_hid, ct)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, opt


def ours_side(args, device, batch, compile_mode):
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
    cfg = TrainConfig(max_steps=10, precision=args.precision, optimizer="adamw", compile=compile_mode)
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

    return step, opt


def optimizer_settings(opt: torch.optim.Optimizer) -> dict[str, object]:
    d = opt.defaults
    return {
        "class": type(opt).__name__,
        "lr": d["lr"],
        "betas": list(d["betas"]),
        "eps": d["eps"],
        "fused": bool(d.get("fused")),
        "foreach": bool(d.get("foreach")),
        "weight_decay_groups": [g["weight_decay"] for g in opt.param_groups],
        "numel_per_group": [sum(p.numel() for p in g["params"]) for g in opt.param_groups],
    }


def spread(values: list[float], digits: int = 4) -> dict[str, float]:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "iqr": [round(q[0], digits), round(q[2], digits)],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="steps per side per round")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per side (default 2, 3 with --compile)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument(
        "--compile",
        choices=["default", "reduce-overhead", "max-autotune"],
        default=None,
        help="also compile both sides (train.compile for ours, torch.compile for transformers) and time "
        "compiled-vs-compiled next to eager-vs-eager",
    )
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    batch = make_batch(args.batch, args.seq, 30522, device)
    sides, opts = {}, {}
    for name, make, mode in [("ours", ours_side, None), ("hf", hf_side, None)] + (
        [("ours_compiled", ours_side, args.compile), ("hf_compiled", hf_side, args.compile)] if args.compile else []
    ):
        sides[name], opts[name] = make(args, device, batch, mode)
    settings = {k: optimizer_settings(o) for k, o in opts.items()}
    # Settings and the number of elements per decay group: the same parameters decayed alike.
    same_optimizer = all(s == settings["ours"] for s in settings.values())

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    peak_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak(device, peak_dtype)  # measured before and after the steps; the best counts
    warm = args.warmup if args.warmup is not None else (3 if args.compile else 2)
    warmup_s = {}
    for name, fn in sides.items():  # compilation and CUDA-graph recording happen here, untimed
        warmup_s[name] = round(sum(timed(fn) for _ in range(warm)), 2)
    times: dict[str, list[float]] = {k: [] for k in sides}
    per_round: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:  # each side goes first every other round
            t = [timed(sides[name]) for _ in range(args.steps)]
            times[name] += t
            per_round[name].append(statistics.median(t))
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = bert_forward_flops(12, 768, 3072, args.batch, args.seq) + 3 * bert_forward_flops(
        4, 312, 1200, args.batch, args.seq
    )
    peak = max(peak, matmul_peak(device, peak_dtype))

    def ratio(a: str, b: str) -> dict[str, float]:
        """b / a: the median over all steps, and the spread of the per-round ratios."""
        rounds = [y / x for x, y in zip(per_round[a], per_round[b], strict=True)]
        return {
            "median": round(med[b] / med[a], 3),
            "round_min": round(min(rounds), 3),
            "round_max": round(max(rounds), 3),
        }

    out = {
        "ours_s": round(med["ours"], 4),
        "hf_s": round(med["hf"], 4),
        "ratio": round(med["hf"] / med["ours"], 3),
        "ratio_eager": ratio("ours", "hf"),
        "mfu": round(flops / med["ours"] / peak, 3),
        "hf_mfu": round(flops / med["hf"] / peak, 3),
    }
    if args.compile:
        out |= {
            "ours_compiled_s": round(med["ours_compiled"], 4),
            "hf_compiled_s": round(med["hf_compiled"], 4),
            "ratio_compiled": ratio("ours_compiled", "hf_compiled"),
            "compile_speedup_ours": ratio("ours_compiled", "ours"),
            "compile_speedup_hf": ratio("hf_compiled", "hf"),
            "mfu_compiled": round(flops / med["ours_compiled"] / peak, 3),
            "hf_mfu_compiled": round(flops / med["hf_compiled"] / peak, 3),
        }
    out |= {
        "step_s": {k: spread(v) for k, v in times.items()},
        "warmup_steps": warm,
        "warmup_s": warmup_s,
        "optimizer": settings["ours"],
        "same_optimizer_settings": same_optimizer,
        **({} if same_optimizer else {"optimizer_per_side": settings}),
        "step_gflop": round(flops / 1e9, 1),
        "peak_gflops": round(peak / 1e9, 1),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "compile": args.compile,
        "batch": args.batch,
        "seq": args.seq,
        "rounds": args.rounds,
        "samples": len(times["ours"]),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
