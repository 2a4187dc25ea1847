"""Prediction-stage epoch: cached teacher logits vs recomputing the teacher every batch.

Shapes of the reference: student 4L-312D-1200, teacher 12L-768-3072, 12 heads, SQuAD features of
seq 384 (random weights and ids; lengths vary, padding present). Both sides run the real
trainer (``Trainer.fit`` with ``PredictionObjective``) for one epoch over the same features;
the cached side reads its logits from the HDF5 file the teacher_logits rule writes, and the
one-off cost of computing that file is reported separately (it is paid once, not per epoch).

Method: every side (the live epoch, the cached epoch and computing the logits file) is first
warmed up on one batch, untimed; then ``--repeats`` rounds time each side once, in an order
that reverses every round (live and cached alternate going first, so neither always meets a
cold cache or a quieter machine). Each round gives its own ratio; the median and the spread
(min, max) over rounds are printed.

Prints one JSON object: cached_epoch_s, live_epoch_s, ratio, logits_once_s (medians), their
per-round values and min/max, and the settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def summary(values: list[float], digits: int = 3) -> dict[str, object]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "all": [round(v, digits) for v in values],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--features", type=int, default=48)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (each side once per round)")
    args = p.parse_args()
    import h5py

    from bertdistill.inference import predict_logits
    from bertdistill.model import BertConfig, BertForQuestionAnswering
    from bertdistill.objectives import PredictionObjective
    from bertdistill.tasks import write_h5
    from bertdistill.train import TensorDataset, TrainConfig, Trainer

    torch.manual_seed(0)
    teacher = BertForQuestionAnswering(
        BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    ).eval()
    scfg = BertConfig(hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200)
    g = torch.Generator().manual_seed(0)
    n, L = args.features, args.seq
    ids = torch.randint(1000, 30522, (n, L), generator=g)
    lengths = torch.randint(L // 3, L + 1, (n,), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    arrays = {
        "input_ids": (ids * mask).numpy().astype(np.int32),
        "attention_mask": mask.numpy().astype(np.int8),
        "token_type_ids": np.zeros((n, L), np.int8),
    }
    tensors = {k: torch.from_numpy(v.astype(np.int64)) for k, v in arrays.items()}
    # The live teacher runs in eval mode too (teacher_dropout=False), so both sides see the same
    # logits and the difference is the teacher forward alone (the reference also keeps dropout on).
    cfg = dict(
        epochs=1,
        batch_size=args.batch,
        lr=3e-5,
        dynamic_padding=False,
        log_every=1000,
        snapshot_every=10**6,
        teacher_dropout=False,
    )
    runs = iter(range(10**6))  # a fresh snapshot folder per epoch: nothing is ever resumed

    with tempfile.TemporaryDirectory() as tmp:
        logits_file = Path(tmp) / "logits.hdf5"

        def logits_once(rows: int) -> float:
            t = time.perf_counter()
            part = {k: v[:rows] for k, v in arrays.items()}
            logits = predict_logits(teacher, part, batch_size=args.batch, trim=False)
            write_h5({"teacher_logits": logits}, logits_file)
            return time.perf_counter() - t

        def epoch(cached: bool, rows: int) -> float:
            torch.manual_seed(1)
            student = BertForQuestionAnswering(scfg)
            t = time.perf_counter()
            data = {k: v[:rows] for k, v in tensors.items()}
            if cached:
                with h5py.File(logits_file) as f:
                    data["teacher_logits"] = torch.from_numpy(f["teacher_logits"][:rows])
            Trainer(TrainConfig(**cfg), Path(tmp) / f"snap{next(runs)}").fit(
                PredictionObjective(student), TensorDataset(data), teacher=None if cached else teacher
            )
            return time.perf_counter() - t

        sides = {
            "logits_once": logits_once,
            "live": lambda rows: epoch(False, rows),
            "cached": lambda rows: epoch(True, rows),
        }
        # Warm-up, untimed: one batch through every side (allocator, oneDNN primitives, h5py).
        for fn in sides.values():
            fn(args.batch)
        times: dict[str, list[float]] = {k: [] for k in sides}
        names = list(sides)
        orders = []
        for r in range(args.repeats):
            # Live and cached alternate going first; round 0 writes the full logits file first.
            order = names if r % 2 == 0 else names[::-1]
            orders.append(order)
            for name in order:
                times[name].append(sides[name](n))
    ratios = [live / cached for live, cached in zip(times["live"], times["cached"], strict=True)]
    print(
        json.dumps(
            {
                "cached_epoch_s": round(statistics.median(times["cached"]), 3),
                "live_epoch_s": round(statistics.median(times["live"]), 3),
                "ratio": round(statistics.median(ratios), 2),
                "logits_once_s": round(statistics.median(times["logits_once"]), 3),
                "cached": summary(times["cached"]),
                "live": summary(times["live"]),
                "logits_once": summary(times["logits_once"]),
                "ratio_per_round": summary(ratios, 2),
                "orders": orders,
                "repeats": args.repeats,
                "warmup": "one untimed batch per side",
                "features": n,
                "seq": L,
                "batch": args.batch,
                "teacher_mode_live": "eval",
                "device": "cpu",
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
