"""The reference's headline comparison on this machine: a TinyBERT-4L-312D student against BERT-base
(12L-768), random weights of those shapes (``benchmark.shapes`` of config/config.yaml), at batch
128 and seq 128 by default, on every backend available here, student and teacher interleaved.

CPU (default): PyTorch eager fp32, torch.compile fp32, bf16 autocast eager and compiled (where the
CPU has native bf16), ONNX Runtime on the exported, the fused and the INT8 graph.
``--gpu``: PyTorch fp16/bf16 autocast, torch.compile (CUDA graphs), ONNX Runtime CUDA/TensorRT
providers and TensorRT FP16 where present, at seq 128 and 384 (one script, a few minutes).
``--exports results/*_onnx`` adds the INT8 dev-metric change recorded by each task's export.

On the CPU it also times the fp32 ceiling of each model (``fp32_ceiling``): its matrix products
alone, each at the rate PyTorch's BLAS reaches on that shape here, and at the machine's rate on a
4096-cube product. No fp32 backend on this BLAS can run faster than the first, whatever it fuses.

Prints one JSON object: the machine, every measured cell, the skipped backends with reasons,
and the ratios the project's goals are stated in (``ratios``). ``--output`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

from bertdistill.benchmark import cpu_threads, fp32_ceiling, run_benchmark, shape_pair
from bertdistill.settings import BenchmarkSettings

sys.path.insert(0, str(Path(__file__).parent))
from _output import emit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CPU = ["torch", "torch-compile-cpu", "torch-bf16-cpu", "torch-compile-bf16-cpu", "ort", "ort-fused", "ort-int8"]
GPU = ["torch-fp16", "torch-bf16", "torch-compile", "ort-cuda-fp16", "ort-tensorrt", "tensorrt-fp16"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="the GPU backends (fp16) instead of the CPU ones")
    ap.add_argument("--backends", nargs="+", help="override the backend list")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    ap.add_argument("--seq-lengths", type=int, nargs="+", help="default: 128 (CPU), 128 384 (GPU)")
    ap.add_argument("--warmup", type=int, help="default: 2 (CPU), 10 (GPU)")
    ap.add_argument("--iterations", type=int, help="default: 3 (CPU), 50 (GPU)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all this process may use)")
    ap.add_argument("--shape", default="reference-4l-312d", help="an entry of benchmark.shapes in the config")
    ap.add_argument("--config", type=Path, default=REPO / "config/config.yaml")
    ap.add_argument("--exports", type=Path, nargs="*", default=[], help="task export folders (results/{task}_onnx)")
    ap.add_argument("--output", type=Path, help="also write the JSON here")
    args = ap.parse_args()

    settings = BenchmarkSettings(
        backends=args.backends or (GPU if args.gpu else CPU),
        batch_sizes=args.batch_sizes,
        seq_lengths=args.seq_lengths or ([128, 384] if args.gpu else [128]),
        warmup=args.warmup if args.warmup is not None else (10 if args.gpu else 2),
        iterations=args.iterations or (50 if args.gpu else 3),
        threads=args.threads,
    )
    spec = yaml.safe_load(args.config.read_text())["benchmark"]["shapes"][args.shape]
    log = lambda msg: print(msg, flush=True, file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory() as work:
        pair = shape_pair(args.shape, spec, Path(work))
        summary = run_benchmark([pair], settings, Path(work), log=log)
        ceilings = {}
        if not args.gpu:
            # After the timed runs, so the two never share the cores.
            with cpu_threads(settings.threads):
                for b in settings.batch_sizes:
                    for s in settings.seq_lengths:
                        log(f"fp32 ceiling: batch {b}, seq {s}")
                        ceilings[b, s] = {
                            side: fp32_ceiling(getattr(pair, side).config, b, s) for side in ("student", "teacher")
                        }
    ratios = []
    for h in summary["headline"]:
        row = {"batch": h["batch"], "seq": h["seq"]}
        if "best_fp32" in h:
            row["student_vs_teacher_best_fp32"] = h["best_fp32"]["speedup"]
            row["best_fp32_backends"] = [h["best_fp32"]["student_backend"], h["best_fp32"]["teacher_backend"]]
            # The same ratio in each round alone: its noise within this run.
            if "speedup_per_round" in h["best_fp32"]:
                row["student_vs_teacher_best_fp32_per_round"] = h["best_fp32"]["speedup_per_round"]
        for key in ("student_best_fp32_vs_torch_eager", "student_best_fp32_vs_torch_eager_per_round"):
            if key in h:
                row[key] = h[key]
        if (h["batch"], h["seq"]) in ceilings:
            c = ceilings[h["batch"], h["seq"]]
            row["fp32_ceiling"] = c
            eager = {r["backend"]: r for r in summary["results"] if (r["batch"], r["seq"]) == (h["batch"], h["seq"])}
            if "torch" in eager:
                e = eager["torch"]
                # The most any fp32 backend built on this BLAS can gain over eager, and the student
                # against teacher ratio if both ran at their ceilings.
                row["student_fp32_ceiling_vs_torch_eager"] = round(
                    c["student"]["seq_per_s_at_these_shapes"] / e["student"]["seq_per_s"], 3
                )
                row["student_fp32_peak_vs_torch_eager"] = round(
                    c["student"]["seq_per_s_at_peak"] / e["student"]["seq_per_s"], 3
                )
            row["student_vs_teacher_at_fp32_ceiling"] = round(
                c["student"]["seq_per_s_at_these_shapes"] / c["teacher"]["seq_per_s_at_these_shapes"], 3
            )
        for key in ("int8_vs_fp32_onnx", "int8_vs_fp32_onnx_per_round"):
            if key in h:
                row[key] = h[key]
        if "best_bf16" in h:
            b = h["best_bf16"]
            row["student_best_bf16"] = {"backend": b["student_backend"], "seq_per_s": b["student_seq_per_s"]}
            row["student_vs_teacher_best_bf16"] = b["speedup"]
            if "student_best_bf16_vs_torch_eager" in h:
                row["student_best_bf16_vs_torch_eager"] = h["student_best_bf16_vs_torch_eager"]
        if "best_fp16" in h:
            b = h["best_fp16"]
            row["student_best_fp16"] = {"backend": b["student_backend"], "seq_per_s": b["student_seq_per_s"]}
            row["student_vs_teacher_best_fp16"] = b["speedup"]
        ratios.append(row)
    int8_metric = {}
    for folder in args.exports:
        record = json.loads((folder / "export.json").read_text())
        int8_metric[record["task"]] = {
            side: {
                "metric": record["metric"],
                "split": record.get("split", "dev"),
                **m["metrics"],
                "int8_change": m.get("int8_metric_change"),
            }
            for side, m in record["models"].items()
        }
    out = {
        "shape": args.shape,
        "machine": summary["machine"],
        "settings": summary["settings"],
        "pairs": summary["pairs"],
        "results": summary["results"],
        "skipped": summary["skipped"],
        "errors": summary["errors"],
        "ratios": ratios,
        "int8_metric": int8_metric,
    }
    emit(out, args.output)


if __name__ == "__main__":
    main()
