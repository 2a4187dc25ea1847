"""Prediction-stage epoch: cached teacher logits vs recomputing the teacher every batch.

Shapes of the reference: student 4L-312D-1200, teacher 12L-768-3072, 12 heads, SQuAD features of
seq 384 (random weights and ids; lengths vary, padding present). Both sides run the real
trainer (``Trainer.fit`` with ``PredictionObjective``) for one epoch over the same features;
the cached side reads its logits from the HDF5 file the teacher_logits rule writes, and the
one-off cost of computing that file is reported separately (it is paid once, not per epoch).

Prints one JSON object: cached_epoch_s, live_epoch_s, ratio, logits_once_s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--features", type=int, default=48)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=384)
    args = p.parse_args()
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

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        logits = predict_logits(teacher, arrays, batch_size=args.batch, trim=False)
        write_h5({"teacher_logits": logits}, Path(tmp) / "logits.hdf5")
        logits_s = time.perf_counter() - t0

        def epoch(cached: bool) -> float:
            torch.manual_seed(1)
            student = BertForQuestionAnswering(scfg)
            t = time.perf_counter()
            data = dict(tensors)
            if cached:
                import h5py

                with h5py.File(Path(tmp) / "logits.hdf5") as f:
                    data["teacher_logits"] = torch.from_numpy(f["teacher_logits"][:])
            Trainer(TrainConfig(**cfg), Path(tmp) / f"snap{cached}").fit(
                PredictionObjective(student), TensorDataset(data), teacher=None if cached else teacher
            )
            return time.perf_counter() - t

        live = epoch(False)
        cached = epoch(True)
    print(
        json.dumps(
            {
                "cached_epoch_s": round(cached, 3),
                "live_epoch_s": round(live, 3),
                "ratio": round(live / cached, 2),
                "logits_once_s": round(logits_s, 3),
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
