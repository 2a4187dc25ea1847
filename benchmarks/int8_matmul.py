"""Is int8 faster than fp32 on this CPU at all? One product of the shape of a 4L-312D student's
FFN at batch 128 x seq 128 (16384 x 312 x 1200 by default), run through ONNX Runtime as the
INT8 export runs it (DynamicQuantizeLinear + MatMulInteger) and as fp32 MatMul, and through
PyTorch's own dynamic INT8 Linear (``torch.ao.quantization.quantize_dynamic``: FBGEMM/oneDNN
kernels, its default engine) and fp32 Linear: two independent int8 kernel libraries. All four
are interleaved after a warm-up, each round starting one side later, and each timed run follows an
untimed one of the same side, which takes whatever the previous side's threads still spin. The
ONNX Runtime sessions stop spinning when a run returns (as the project's sessions do), and the
script re-executes itself with glibc's allocator keeping freed memory (as the inference benchmark's
workers run), so PyTorch's outputs are not faulted in afresh after ONNX Runtime's runs. Where int8
and fp32 rates are equal, no dynamic-INT8 graph can beat fp32 here.

Prints one JSON object: GOP/s of each side (best of the rounds), the int8/fp32 ratio of each
library, and the faster int8 side against the faster fp32 side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from bertdistill.benchmark import KEEP_FREED_MEMORY, machine_info


def _session(nodes, inputs, initializers, threads: int) -> ort.InferenceSession:
    m, k = inputs
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main() -> None:
    if any(os.environ.get(k) != v for k, v in KEEP_FREED_MEMORY.items()):  # glibc reads them at start
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **KEEP_FREED_MEMORY})
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[16384, 312, 1200], metavar=("M", "K", "N"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    m, k, n = args.shape
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    scale = np.abs(w).max() / 63  # 7-bit weights, as export.reduce_range does
    wq = np.clip(np.round(w / scale), -64, 63).astype(np.int8)
    sessions = {
        "fp32": _session([helper.make_node("MatMul", ["x", "w"], ["y"])], (m, k), [numpy_helper.from_array(w, "w")],
                         args.threads),
        "int8": _session(
            [
                helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["yi"]),
                helper.make_node("Cast", ["yi"], ["y"], to=TensorProto.FLOAT),
            ],
            (m, k),
            [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.array(0, np.int8), "wz")],
            args.threads,
        ),
    }  # fmt: skip
    x = rng.standard_normal((m, k)).astype(np.float32)
    torch.set_num_threads(args.threads)
    linear = torch.nn.Linear(k, n, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w.T))
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated for torchao, yet still ships
        warnings.simplefilter("ignore")
        qlinear = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, torch.qint8)
    xt = torch.from_numpy(x)
    runs = {
        "ort_fp32": lambda: sessions["fp32"].run(None, {"x": x}),
        "ort_int8": lambda: sessions["int8"].run(None, {"x": x}),
        "torch_fp32": lambda: linear(xt),
        "torch_int8": lambda: qlinear(xt),
    }
    seconds = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            run()  # warm-up
        names = list(runs)
        for i in range(args.rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                run = runs[name]
                run()  # lead-in, untimed
                t = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - t)
    gops = {name: round(2 * m * k * n / min(v) / 1e9, 1) for name, v in seconds.items()}
    mc = machine_info()
    print(json.dumps({
        "shape": [m, k, n], "threads": args.threads, "rounds": args.rounds, "gop_per_s": gops,
        "int8_vs_fp32": {lib: round(gops[f"{lib}_int8"] / gops[f"{lib}_fp32"], 3) for lib in ("ort", "torch")},
        "best_int8_vs_best_fp32": round(max(gops["ort_int8"], gops["torch_int8"])
                                        / max(gops["ort_fp32"], gops["torch_fp32"]), 3),
        "machine": {key: mc[key] for key in ("cpu", "cpu_capability", "cpu_isa", "cpu_count")},
        "onnxruntime": ort.__version__, "torch": torch.__version__,
        "torch_quantized_engine": torch.backends.quantized.engine,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
