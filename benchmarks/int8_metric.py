"""What moves the INT8 graph's metric: 7- or 8-bit weights, calibrated activation scales and the
evaluation batch, on a finished run.

For each task and model (student, teacher) of a finished run (``results/{task}_onnx/{model}/model.onnx``,
the fp32 export), the graph is quantised with the export stage's own function (one scale per
output channel) in each ``--variants``: dynamic INT8 (activations quantised per batch at run
time) with ``reduce_range`` on (``int8_7bit``: 7-bit weights, the default, safe from the 16-bit
overflow of 8-bit products on CPUs without VNNI) and off (``int8_8bit``), and static INT8 with
7-bit weights and activation scales calibrated (``export.int8_activations``) on
``--calibration-features`` training features (``static_minmax``, ``static_percentile``). Each
graph, and the fp32 one, is scored on dev and test at each ``--batches`` size by the evaluation
code the pipeline uses. Dynamic INT8's metric depends on which features share a batch; the fp32
and static ones do not (printed per batch as a check). With ``--timing``, each graph's median
seconds for one batch of 128 x 128 random tokens, interleaved over the graphs.

Run from the workflow's folder (it reads ``config/config.yaml`` for the splits and batch sizes).
Prints one JSON object: per task, model and split, the fp32 metric and each variant's change
against it (INT8 minus fp32, in points), and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bertdistill.benchmark import machine_info
from bertdistill.export import OnnxModel, calibration_batches, quantize_int8
from bertdistill.inference import predict_logits
from bertdistill.tasks import get_task, read_h5

sys.path.insert(0, str(Path(__file__).parent))
from _workflow import split_paths, teacher_dir, workflow_config  # noqa: E402

VARIANTS = {  # name: (reduce_range, export.int8_activations)
    "int8_7bit": (True, "dynamic"),
    "int8_8bit": (False, "dynamic"),
    "static_minmax": (True, "minmax"),
    "static_percentile": (True, "percentile"),
}


def timings(sessions: dict[str, OnnxModel], rounds: int = 5) -> dict[str, float]:
    """Median seconds of one 128 x 128 batch per graph, after a warm-up, the graphs interleaved."""
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(1000, 20000, (128, 128)))
    mask = torch.ones_like(ids)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(rounds + 1):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s(ids, mask)
            if r:  # round 0 warms up
                times[k].append(time.perf_counter() - t0)
    return {k: round(float(np.median(v)), 3) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results"), help="a finished run's results folder")
    p.add_argument("--tasks", nargs="+", default=["sst2", "squad"])
    p.add_argument("--models", nargs="+", default=["student", "teacher"])
    p.add_argument("--batches", type=int, nargs="+", help="evaluation batch sizes (default: the task's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--calibration-features", type=int, default=256, help="static: training features drawn")
    p.add_argument("--calibration-seed", type=int, default=0, help="static: seed of that draw (the export's: 0)")
    p.add_argument("--timing", action="store_true", help="also time each graph at batch 128, seq 128")
    a = p.parse_args()
    config = workflow_config()

    out: dict[str, object] = {"settings": vars(a) | {"results": str(a.results)}, "machine": machine_info()}
    with tempfile.TemporaryDirectory() as tmp:
        for task in a.tasks:
            t, cfg = get_task(task), config["tasks"][task]
            batches = a.batches or [cfg["eval_batch_size"]]
            vocab = teacher_dir(a.results, task, cfg) / "vocab.txt"  # the export stage scores with the teacher's vocab
            features = a.results / task / "features"
            paths = split_paths(a.results, task, cfg)
            splits = {s: read_h5(features / f"{s}.hdf5")[0] for s in paths}
            # The export rule's choice: the original training data, not an augmented copy.
            train = features / "train_original.hdf5"
            train = train if train.exists() else features / "train.hdf5"
            calibration = calibration_batches(read_h5(train)[0], 32, a.calibration_features, a.calibration_seed)
            for model in a.models:
                fp32 = a.results / f"{task}_onnx" / model / "model.onnx"
                graphs = {"fp32": fp32}
                for name in a.variants:
                    reduce_range, activations = VARIANTS[name]
                    graphs[name] = Path(tmp) / f"{task}-{model}-{name}.onnx"
                    quantize_int8(fp32, graphs[name], True, reduce_range, activations, calibration)
                sessions = {k: OnnxModel(g, a.threads) for k, g in graphs.items()}
                record: dict[str, object] = {}
                for split, arrays in splits.items():
                    data = paths[split]
                    for batch in batches:
                        scores = {
                            k: t.evaluate_logits(
                                predict_logits(s, arrays, batch),
                                arrays,
                                data,
                                vocab,
                                cfg["n_best"],
                                cfg["max_answer_length"],
                            )[0][t.metric]
                            for k, s in sessions.items()
                        }
                        base = scores.pop("fp32")
                        record[f"{split}@{batch}"] = {"fp32": round(base, 2)} | {
                            k: round(v - base, 2) for k, v in scores.items()
                        }
                if a.timing:
                    record["seconds_b128_s128"] = timings(sessions)
                out[f"{task}/{model}"] = record
    print(json.dumps(out))


if __name__ == "__main__":
    main()
