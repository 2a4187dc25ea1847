"""What moves the INT8 graph's metric: 7- or 8-bit weights and the evaluation batch, on a finished run.

For each task and model (student, teacher) of a finished run (``results/{task}_onnx/{model}/model.onnx``,
the fp32 export), the graph is quantised with the export stage's own function (dynamic INT8, one
scale per output channel) twice: ``reduce_range`` on (7-bit weights, the default, safe from the
16-bit overflow of 8-bit products on CPUs without VNNI) and off. Each graph, and the fp32 one, is
scored on dev and test at each ``--batches`` size by the evaluation code the pipeline uses.
Activations are quantised per batch at run time, so the INT8 metric depends on which features
share a batch; the fp32 metric does not (printed per batch as a check).

Run from the workflow's folder (it reads ``config/config.yaml`` for the splits and batch sizes).
Prints one JSON object: per task, model and split, the fp32 metric and each variant's change
against it (INT8 minus fp32, in points), and the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from bertdistill.benchmark import machine_info
from bertdistill.export import OnnxModel, quantize_int8
from bertdistill.inference import predict_logits
from bertdistill.tasks import get_task, read_h5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results"), help="a finished run's results folder")
    p.add_argument("--tasks", nargs="+", default=["sst2", "squad"])
    p.add_argument("--models", nargs="+", default=["student", "teacher"])
    p.add_argument("--batches", type=int, nargs="+", help="evaluation batch sizes (default: the task's)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    config = yaml.safe_load(Path("config/config.yaml").read_text())

    out: dict[str, object] = {"settings": vars(a) | {"results": str(a.results)}, "machine": machine_info()}
    with tempfile.TemporaryDirectory() as tmp:
        for task in a.tasks:
            t, cfg = get_task(task), config["tasks"][task]
            batches = a.batches or [cfg["eval_batch_size"]]
            vocab = a.results / "teachers" / task / "vocab.txt"  # the export stage scores with the teacher's vocab
            splits = {s: read_h5(a.results / task / "features" / f"{s}.hdf5")[0] for s in ("dev", "test")}
            for model in a.models:
                fp32 = a.results / f"{task}_onnx" / model / "model.onnx"
                graphs = {"fp32": fp32}
                for reduce_range in (True, False):
                    name = f"int8_{7 if reduce_range else 8}bit"
                    graphs[name] = Path(tmp) / f"{task}-{model}-{name}.onnx"
                    quantize_int8(fp32, graphs[name], per_channel=True, reduce_range=reduce_range)
                sessions = {k: OnnxModel(g, a.threads) for k, g in graphs.items()}
                record: dict[str, object] = {}
                for split, arrays in splits.items():
                    data = Path(cfg[split]["path"])
                    for batch in batches:
                        scores = {
                            k: t.evaluate_logits(
                                predict_logits(s, arrays, batch),
                                arrays,
                                data,
                                vocab,
                                cfg.get("n_best", 20),
                                cfg.get("max_answer_length", 30),
                            )[0][t.metric]
                            for k, s in sessions.items()
                        }
                        base = scores.pop("fp32")
                        record[f"{split}@{batch}"] = {"fp32": round(base, 2)} | {
                            k: round(v - base, 2) for k, v in scores.items()
                        }
                out[f"{task}/{model}"] = record
    print(json.dumps(out))


if __name__ == "__main__":
    main()
