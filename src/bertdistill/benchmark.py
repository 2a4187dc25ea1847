"""Inference benchmark: sequences/s and latency percentiles of a student and its teacher on every
available backend, measured in one run and interleaved, so each ratio between two of them is a
ratio from one run.

A *pair* is a student and a teacher: a task's exported models (``results/{task}_onnx``) or
random-weight models of given shapes (the reference's 4L-312D student against BERT-base). For
each batch size and sequence length, both models of every backend warm up, then every one of
them times one batch per round (:func:`measure_cell`). Each backend runs in a process of its own
(:class:`ProcessBackend`), so no backend's threads or allocator state slow another. Inputs are
random token ids with every position real (no padding), token type 0.

Backends (:data:`BACKENDS`): PyTorch eager fp32; on the CPU ``torch.compile`` (Inductor) fp32 and,
where the CPU computes bf16 natively (AMX or AVX512-BF16), bf16 autocast eager and compiled; on a
CUDA GPU fp16/bf16 autocast and ``torch.compile`` (fp16 autocast, CUDA graphs); ONNX Runtime on
the exported graph, the transformer-fused graph and the INT8 graph (CPU), with the CUDA (fp32,
fp16) and TensorRT execution providers when present; TensorRT FP16 engines built from the ONNX file by its parser.
A backend that cannot run here is reported as skipped with the reason; nothing is estimated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .export import FILES, export_files
from .model import BertConfig, BertPreTrainedModel, build_model
from .settings import BACKENDS, BenchmarkSettings

# Backend -> (precision, device): what the speedup table says about each.
BACKEND_INFO = {
    "torch": ("fp32", "cpu"),
    "torch-fp16": ("fp16", "cuda"),
    "torch-bf16": ("bf16", "cuda"),
    "torch-compile": ("fp16", "cuda"),
    "torch-bf16-cpu": ("bf16", "cpu"),
    "torch-compile-cpu": ("fp32", "cpu"),
    "torch-compile-bf16-cpu": ("bf16", "cpu"),
    "ort": ("fp32", "cpu"),
    "ort-fused": ("fp32", "cpu"),
    "ort-int8": ("int8", "cpu"),
    "ort-cuda": ("fp32", "cuda"),
    "ort-cuda-fp16": ("fp16", "cuda"),
    "ort-tensorrt": ("fp16", "cuda"),
    "tensorrt-fp16": ("fp16", "cuda"),
}
assert set(BACKEND_INFO) == set(BACKENDS)


class Skip(Exception):
    """A backend that cannot run here; the message is the reason."""


@dataclass
class Model:
    """One side of a pair: a PyTorch model and its ONNX files (``FILES`` keys -> paths)."""

    name: str
    torch_model: BertPreTrainedModel | None  # None in the copies sent to the backends that run ONNX
    onnx: dict[str, Path]
    config: BertConfig = None  # the model's

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = self.torch_model.config


@dataclass
class Pair:
    """A student and its teacher, measured side by side."""

    name: str
    kind: str  # "task" (trained models of this run) or "shape" (random weights)
    student: Model
    teacher: Model

    def without_weights(self) -> Pair:
        """The pair without its PyTorch models, for the backends that run its ONNX files (BERT-base's
        weights would add 0.5 GB to each of their processes)."""
        student, teacher = (dataclasses.replace(m, torch_model=None) for m in (self.student, self.teacher))
        return dataclasses.replace(self, student=student, teacher=teacher)


# ---------------------------------------------------------------------------------------------
# Backends: each returns ``bind(input_ids, attention_mask, token_type_ids)``, which prepares one
# batch's inputs (device copies, feeds) untimed and returns ``run()``, which computes the batch
# (on a GPU the timer's CUDA events wait for it).


def _cuda() -> None:
    if not torch.cuda.is_available():
        raise Skip("needs a CUDA GPU (torch.cuda.is_available() is False)")


def _ort_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


BF16_SKIP = "this CPU has no native bf16 (AMX or AVX512-BF16); PyTorch would emulate it, slower than fp32"


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16); elsewhere PyTorch
    emulates it, slower than fp32, which is no figure anyone would deploy."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _raise_recompile_limit() -> None:
    """One compiled graph per benchmarked shape (``dynamic=False``). Past dynamo's recompile limit
    it would silently run eager under the compiled backend's name: raise the limit."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))


def _torch_runner(model: Model, backend: str, threads: int | None) -> Callable:
    m = model.torch_model.eval()
    if backend == "torch" or backend.endswith("-cpu"):  # eager fp32, compiled and/or bf16 on the CPU
        bf16 = "bf16" in backend
        m = m.float().cpu()
        fn = m
        if "compile" in backend:
            _raise_recompile_limit()
            fn = torch.compile(m, dynamic=False)  # Inductor's C++ kernels; compiled in the warm-up

        def bind(ids, mask, types):
            def run():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = fn(ids, mask, types)
                    return out.logits if out.logits is not None else out.start_logits

            return run

        return bind
    m = m.cuda()
    dtype = torch.bfloat16 if backend == "torch-bf16" else torch.float16
    fn = m
    if backend == "torch-compile":
        # CUDA graphs ("reduce-overhead"); one graph per shape, captured during warm-up.
        _raise_recompile_limit()
        fn = torch.compile(m, mode="reduce-overhead", dynamic=False)

    def bind(ids, mask, types):
        ids, mask, types = ids.cuda(), mask.cuda(), types.cuda()  # on the device before timing

        def run():
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
                out = fn(ids, mask, types)
                return out.logits if out.logits is not None else out.start_logits

        return run

    return bind


def _ort_runner(model: Model, backend: str, threads: int | None, workdir: Path) -> Callable:
    from .export import ort_session

    if backend in ("ort", "ort-fused", "ort-int8"):
        session = ort_session(model.onnx[ORT_FILES[backend]], threads)
    elif backend in ("ort-cuda", "ort-cuda-fp16"):
        path = model.onnx.get("fused", model.onnx["fp32"])
        if backend == "ort-cuda-fp16":
            path = _fp16_copy(path, model.config, workdir / f"{model.name}.fp16.onnx")
        session = ort_session(path, threads, ["CUDAExecutionProvider"])
    else:  # ort-tensorrt
        cache = workdir / f"{model.name}.trt-cache"
        cache.mkdir(parents=True, exist_ok=True)
        options = {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
        session = ort_session(model.onnx["fp32"], threads, [("TensorrtExecutionProvider", options)])
    names = {i.name for i in session.get_inputs()}

    def bind(ids, mask, types):
        # Host arrays: with the CUDA/TensorRT providers each run includes the copy to the device.
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds = {k: v.numpy() for k, v in feeds.items() if k in names}
        return lambda: session.run(None, feeds)

    return bind


def _fp16_copy(path: Path, config: BertConfig, dst: Path) -> Path:
    from onnxruntime.transformers import optimizer

    opt = optimizer.optimize_model(
        str(path), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    )
    opt.convert_float_to_float16(keep_io_types=True)
    opt.save_model_to_file(str(dst))
    return dst


def _tensorrt_runner(model: Model, shapes: Sequence[tuple[int, int]]) -> Callable:
    """A TensorRT FP16 engine built from ``model.onnx`` by TensorRT's ONNX parser, with one
    optimisation profile spanning the benchmarked shapes (TensorRT 10 API)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model.onnx["fp32"])):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{model.onnx['fp32']}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    lo = (min(b for b, _ in shapes), min(s for _, s in shapes))
    hi = (max(b for b, _ in shapes), max(s for _, s in shapes))
    for i in range(network.num_inputs):
        profile.set_shape(network.get_input(i).name, lo, hi, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{model.onnx['fp32']}: TensorRT could not build an engine")
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    dtypes = {n: getattr(torch, np.dtype(trt.nptype(engine.get_tensor_dtype(n))).name) for n in names}
    stream = torch.cuda.current_stream()

    def bind(ids, mask, types):
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        buffers = {}  # device tensors, allocated once per shape
        for n in names:
            if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                buffers[n] = feeds[n].to("cuda", dtypes[n])
                context.set_input_shape(n, tuple(buffers[n].shape))
        for n in names:
            if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT:
                shape = tuple(context.get_tensor_shape(n))
                buffers[n] = torch.empty(shape, dtype=dtypes[n], device="cuda")

        def run():
            for n, t in buffers.items():
                context.set_tensor_address(n, t.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            return buffers

        return run

    return bind


ORT_FILES = {"ort": "fp32", "ort-fused": "fused", "ort-int8": "int8"}  # CPU backend -> FILES key


def check_backend(model: Model, backend: str) -> None:
    """Raise :class:`Skip` with the reason where ``model`` cannot run on ``backend`` here: the checks
    that need no runner, so a backend that cannot run starts no process."""
    if backend in ("torch-fp16", "torch-bf16", "torch-compile", "tensorrt-fp16"):
        _cuda()
    if backend == "torch-bf16" and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU does not support bf16")
    if backend in ("torch-bf16-cpu", "torch-compile-bf16-cpu") and not native_cpu_bf16():
        raise Skip(BF16_SKIP)
    if backend in ("torch-compile-cpu", "torch-compile-bf16-cpu") and not any(
        shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c
    ):
        raise Skip("torch.compile on the CPU needs a C++ compiler (g++ or clang++; none on PATH, CXX unset)")
    if backend in ORT_FILES and ORT_FILES[backend] not in model.onnx:
        raise Skip(f"no {FILES[ORT_FILES[backend]]} was exported (export settings)")
    available = _ort_providers() if backend in ("ort-cuda", "ort-cuda-fp16", "ort-tensorrt") else []
    if backend in ("ort-cuda", "ort-cuda-fp16") and "CUDAExecutionProvider" not in available:
        raise Skip(
            f"onnxruntime has no CUDAExecutionProvider (available: {', '.join(available)}; onnxruntime-gpu has it)"
        )
    if backend == "ort-tensorrt" and "TensorrtExecutionProvider" not in available:
        raise Skip(f"onnxruntime has no TensorrtExecutionProvider (available: {', '.join(available)})")
    if backend == "tensorrt-fp16":
        try:
            import tensorrt  # noqa: F401
        except ImportError as e:
            raise Skip(f"tensorrt is not importable ({e}); pip install tensorrt") from None


def make_runner(
    model: Model, backend: str, threads: int | None, shapes: Sequence[tuple[int, int]], workdir: Path
) -> Callable:
    """The runner of ``model`` on ``backend``; raises :class:`Skip` with the reason where it cannot run."""
    check_backend(model, backend)
    if backend.startswith("torch"):
        return _torch_runner(model, backend, threads)
    if backend.startswith("ort"):
        return _ort_runner(model, backend, threads, workdir)
    return _tensorrt_runner(model, shapes)


# ---------------------------------------------------------------------------------------------
# Timing


def _inputs(batch: int, seq: int, vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    high = min(vocab_size, 30000)
    ids = torch.randint(min(1000, high // 2), high, (batch, seq), generator=g)
    ids[:, 0] = 101  # [CLS]
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def _timer(device: str) -> Callable[[Callable[[], Any]], float]:
    """Seconds one call takes: CUDA events around it on a GPU, ``perf_counter`` on a CPU."""
    if device == "cuda":

        def timed(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0

        return timed

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return timed


# ---------------------------------------------------------------------------------------------
# The fp32 ceiling: how fast a model could run if it did nothing but its matrix products, each at
# the rate this machine's BLAS reaches on that product alone. A backend can beat PyTorch eager by
# fusing or skipping the rest (LayerNorm, GELU, softmax, copies), not by more than this.


def matmul_shapes(
    config: BertConfig, batch: int, seq: int, head: str = "classification"
) -> list[tuple[str, int, tuple[int, ...]]]:
    """The matrix products of one forward pass: ``(name, count, shape)`` with ``shape`` ``(m, k, n)``
    or ``(batches, m, k, n)``; each costs ``2 * prod(shape)`` FLOPs. Q, K and V are one product
    (the model's fused projection); attention is two batched products per layer."""
    t, h, i = batch * seq, config.hidden_size, config.intermediate_size
    heads, layers = config.num_attention_heads, config.num_hidden_layers
    d = h // heads
    shapes = [
        ("query/key/value", layers, (t, h, 3 * h)),
        ("attention scores", layers, (batch * heads, seq, d, seq)),
        ("attention context", layers, (batch * heads, seq, seq, d)),
        ("attention output", layers, (t, h, h)),
        ("intermediate", layers, (t, h, i)),
        ("output", layers, (t, i, h)),
    ]
    if head == "qa":
        shapes.append(("qa_outputs", 1, (t, h, 2)))
    elif head == "classification":
        shapes += [("pooler", 1, (batch, h, h)), ("classifier", 1, (batch, h, config.num_labels))]
    return shapes


def matmul_flops(shapes: Sequence[tuple[str, int, tuple[int, ...]]]) -> int:
    """FLOPs of :func:`matmul_shapes` (a multiply-add is 2)."""
    return sum(2 * count * int(np.prod(shape)) for _, count, shape in shapes)


def _matmul_seconds(shape: tuple[int, ...], repeats: int) -> float:
    """Best of ``repeats`` timings of one fp32 product of this shape (after one untimed call)."""
    *b, m, k, n = shape
    x, w = torch.randn(*b, m, k), torch.randn(*b, k, n)
    out = torch.empty(*b, m, n)
    torch.matmul(x, w, out=out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(x, w, out=out)
        best = min(best, time.perf_counter() - t0)
    return best


def fp32_ceiling(
    config: BertConfig, batch: int, seq: int, head: str = "classification", repeats: int = 3
) -> dict[str, Any]:
    """Sequences/s of a forward pass made only of its matrix products, each timed alone in fp32 at
    its own shape with PyTorch's BLAS (this process's threads), and at this machine's large-product
    rate (a 4096-cube product), with the FLOPs per sequence."""
    shapes = matmul_shapes(config, batch, seq, head)
    seconds = sum(count * _matmul_seconds(shape, repeats) for _, count, shape in shapes)
    peak = 2 * 4096**3 / _matmul_seconds((4096, 4096, 4096), repeats)
    flops = matmul_flops(shapes)
    return {
        "gflop_per_seq": float(f"{flops / batch / 1e9:.4g}"),
        "matmul_s_per_batch": float(f"{seconds:.4g}"),
        "gflop_per_s_at_these_shapes": round(flops / seconds / 1e9, 1),
        "seq_per_s_at_these_shapes": round(batch / seconds, 2),
        "peak_gflop_per_s": round(peak / 1e9, 1),
        "seq_per_s_at_peak": round(batch * peak / flops, 2),
    }


def latency_stats(seconds: Sequence[float], batch: int) -> dict[str, Any]:
    """Throughput (sequences/s over all timed batches), per-batch latency percentiles in ms, and
    each batch's ms in the order timed (``batch_ms[i]`` is round ``i`` of :func:`measure_cell`)."""
    s = np.asarray(seconds, dtype=np.float64)
    return {
        "seq_per_s": round(batch * len(s) / float(s.sum()), 2),
        "latency_ms": {
            "mean": round(1000 * float(s.mean()), 3),
            "p50": round(1000 * float(np.percentile(s, 50)), 3),
            "p90": round(1000 * float(np.percentile(s, 90)), 3),
            "p99": round(1000 * float(np.percentile(s, 99)), 3),
        },
        "iterations": len(s),
        "batch_ms": [round(1000 * float(x), 3) for x in s],
    }


def per_round(fast: Mapping[str, Any], slow: Mapping[str, Any]) -> list[float] | None:
    """``slow``'s time over ``fast``'s in each round of one cell (two sides' :func:`latency_stats`,
    same batch): the ratio of sequences/s that round alone gives. Both batches of a round ran
    within one pass over the models, so the spread of these ratios is the noise of the figure
    within one run.
    None where a side has no per-batch times (summaries written before they were kept) or the
    two sides timed different numbers of batches."""
    a, b = fast.get("batch_ms"), slow.get("batch_ms")
    if not a or not b or len(a) != len(b):
        return None
    return [round(y / x, 3) for x, y in zip(a, b, strict=True)]


class LocalBackend:
    """One backend's student and teacher, run in this process."""

    def __init__(self, backend: str, student: Callable, teacher: Callable) -> None:
        self.backend, self.binds = backend, (student, teacher)
        self.cpu = BACKEND_INFO[backend][1] == "cpu"
        self.timer = _timer(BACKEND_INFO[backend][1])

    def prepare(self, batch: int, seq: int, vocab_size: int, warmup: int) -> None:
        """Bind both models to one batch of inputs (and, on the CPU, a one-sequence lead-in) and
        run ``warmup`` untimed batches of each."""
        inputs = _inputs(batch, seq, vocab_size)
        self.runs = tuple(bind(*inputs) for bind in self.binds)
        self.lead = tuple(bind(*(t[:1] for t in inputs)) for bind in self.binds) if self.cpu else ()
        for _ in range(warmup):
            for run in (*self.runs, *self.lead):
                run()
        if not self.cpu:
            torch.cuda.synchronize()

    def time(self, side: int) -> float:
        """Seconds of one batch of the student (0) or teacher (1), after the untimed lead-in on the CPU."""
        if self.lead:
            self.lead[side]()
        return self.timer(self.runs[side])

    def release(self) -> None:
        self.runs = self.lead = ()


# glibc's allocator keeps freed memory instead of handing big buffers back to the kernel (which
# faults them in again on the next batch): the steady state of a long-running server.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(1 << 32), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


class ProcessBackend:
    """One backend in a Python process of its own, driven through pipes: :meth:`bind` builds a
    pair's runners there, :meth:`prepare` and :meth:`time` run them, :meth:`release` frees them
    (the process can then bind another pair).

    In one process, backends disturb each other beyond their thread pools (measured on 2 EPYC
    cores): after ONNX Runtime's first run PyTorch eager faults in 0.2-0.5 GB of fresh pages per
    batch of 4L-312D at 128 x 128 and runs up to 1.7x slower, even with ORT idle, as glibc's
    allocator hands its big buffers back to the kernel. A process per backend runs each as it is
    deployed, alone with its own allocator and threads."""

    def __init__(self, backend: str, threads: int | None, workdir: Path) -> None:
        """Start the process (it imports the libraries while the caller goes on)."""
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[1])  # where this package is found, for the child
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        env.update(KEEP_FREED_MEMORY)
        code = "from bertdistill.benchmark import _worker_main; _worker_main()"
        self.backend = backend
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env)  # fmt: skip
        self._send(("start", backend, threads, workdir))

    def _send(self, message) -> None:
        pickle.dump(message, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()

    def _reply(self):
        try:
            status, value = pickle.load(self.proc.stdout)
        except EOFError:
            raise RuntimeError(f"benchmark worker exited with status {self.proc.wait()}") from None
        if status == "error":
            raise value
        return value

    def _call(self, *message):
        self._send(message)
        return self._reply()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def bind(self, pair_file: Path, shapes: Sequence[tuple[int, int]]) -> None:
        """Build the runners of the pair pickled in ``pair_file`` (written once for all backends);
        raises :class:`Skip` or the worker's error, after which the process takes the next pair."""
        self._call("pair", pair_file, list(shapes))

    def prepare(self, batch: int, seq: int, vocab_size: int, warmup: int) -> None:
        self._call("prepare", batch, seq, vocab_size, warmup)

    def time(self, side: int) -> float:
        return self._call("time", side)

    def release(self) -> None:
        """Free the pair's runners (and, on a GPU, their cached memory)."""
        if self.alive:
            self._call("release")

    def close(self) -> None:
        if self.alive:
            with contextlib.suppress(OSError):
                self._send(("close",))
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _worker_main() -> None:
    """The loop of a :class:`ProcessBackend`'s process: pickled commands on stdin, pickled
    ``(status, value)`` replies on stdout (anything the libraries print goes to stderr)."""
    import gc

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer

    def reply(status: str, value: Any = None) -> None:
        try:
            pickle.dump((status, value), out, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an exception that does not pickle
            pickle.dump((status, RuntimeError(repr(value))), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()

    _, backend, threads, workdir = pickle.load(inp)
    local: LocalBackend | None = None
    with cpu_threads(threads):
        while True:
            try:
                command, *args = pickle.load(inp)
            except EOFError:
                return
            if command == "close":
                return
            try:
                if command in ("pair", "release"):
                    local = None  # the last pair's models go before the next one's come
                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                if command == "pair":
                    pair_file, shapes = args
                    pair = pickle.loads(Path(pair_file).read_bytes())
                    shapes = [tuple(x) for x in shapes]
                    local = LocalBackend(
                        backend,
                        *(make_runner(m, backend, threads, shapes, workdir) for m in (pair.student, pair.teacher)),
                    )
                    del pair
                    reply("ok")
                elif command == "prepare":
                    reply("ok", local.prepare(*args))
                elif command == "time":
                    reply("ok", local.time(*args))
                else:
                    reply("ok")
            except Exception as e:
                reply("error", e)


def measure_cell(
    backends: Mapping[str, LocalBackend | ProcessBackend],
    batch: int,
    seq: int,
    vocab_size: int,
    warmup: int,
    iters: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, Exception]]:
    """One batch x seq cell of every backend, interleaved: bind each backend's student and teacher
    to one batch of inputs and warm them all up, then ``iters`` rounds in which every model of every
    backend times one batch. Each round starts one model later than the one before, so no model
    always runs first or after the same one. A machine whose speed drifts (other jobs, clocks)
    then slows every backend alike, and each ratio (student / teacher, INT8 / fp32, backend /
    eager) compares batches timed minutes apart at most by one round.

    On the CPU each timed batch follows an untimed one-sequence batch of the same model: the
    previous model's threads may still spin for a few milliseconds after it returns (PyTorch's
    OpenMP pool does), and the lead-in takes that, so the timed batch runs as it would among
    batches of its own model.

    Returns the cell of each backend that ran every batch, and the error of each that failed (on
    binding, warm-up or a timed batch; the others go on without it)."""
    failed: dict[str, Exception] = {}
    for backend, b in backends.items():
        try:
            b.prepare(batch, seq, vocab_size, warmup)
        except Exception as e:  # a backend that fails on a shape is reported, not hidden
            failed[backend] = e
    order = [(backend, side) for backend in backends if backend not in failed for side in (0, 1)]
    times: dict[tuple[str, int], list[float]] = {k: [] for k in order}
    for i in range(iters):
        shift = i % len(order) if order else 0
        for backend, side in order[shift:] + order[:shift]:
            if backend in failed:
                continue
            try:
                times[backend, side].append(backends[backend].time(side))
            except Exception as e:
                failed[backend] = e
    cells = {}
    for backend in dict.fromkeys(b for b, _ in order):
        if backend in failed:
            continue
        student, teacher = latency_stats(times[backend, 0], batch), latency_stats(times[backend, 1], batch)
        cells[backend] = {
            "student": student,
            "teacher": teacher,
            "speedup": round(student["seq_per_s"] / teacher["seq_per_s"], 3),
        }
    return cells, failed


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[dict[str, Any]]:
    """Pin this process to ``threads`` cores (the first it may use) and set PyTorch's thread count."""
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    n = threads or len(affinity) or os.cpu_count() or 1
    old_threads = torch.get_num_threads()
    pinned = affinity[:n] if affinity else []
    if affinity and n < len(affinity):
        os.sched_setaffinity(0, pinned)
    torch.set_num_threads(n)
    try:
        yield {"threads": n, "cpu_affinity": pinned}
    finally:
        torch.set_num_threads(old_threads)
        if affinity and n < len(affinity):
            os.sched_setaffinity(0, affinity)


# The /proc/cpuinfo flags that change what a CPU backend can do: fp32 vector width, int8 dot
# products (VNNI) and native bf16.
CPU_ISA_FLAGS = frozenset(
    {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
)


def machine_info() -> dict[str, Any]:
    """CPU model and cores, GPU, library versions: what a figure was measured on."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first CPU's lines
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    cpu = info.get("model name") or platform.processor() or ""
    flags = set(info.get("flags", "").split())
    versions = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    gpu = None
    if torch.cuda.is_available():
        gpu = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(), "cuda": torch.version.cuda}
    return {
        "cpu": cpu,
        # A model name such as "AMD EPYC" spans CPUs 5x apart in fp32 GEMM rate; the vector units
        # PyTorch dispatches to, and the int8/bf16 instructions, say which one it was.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_isa": sorted(flags & CPU_ISA_FLAGS),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "gpu": gpu,
        "versions": versions,
    }


def _measure_pair(
    pair: Pair,
    settings: BenchmarkSettings,
    shapes: list[tuple[int, int]],
    workdir: Path,
    isolate: bool,
    log: Callable[[str], Any],
    results: list[dict[str, Any]],
    skipped: list[dict[str, str]],
    errors: list[dict[str, Any]],
) -> None:
    """Every cell of one pair, its backends interleaved; appends to ``results``, ``skipped`` and
    ``errors``. ``isolate`` runs each backend in a fresh process of its own (closed at the end),
    so that no pair is measured in a process that held another's models."""
    # Every backend of the pair is held at once, so that each cell can interleave them.
    backends: dict[str, LocalBackend | ProcessBackend] = {}
    refused: dict[str, Exception] = {}  # by check_backend, before any process starts
    workers: dict[str, ProcessBackend] = {}
    if isolate:
        for backend in settings.backends:
            try:
                for side in (pair.student, pair.teacher):
                    check_backend(side, backend)
            except Exception as e:  # reported below with the others
                refused[backend] = e
                continue
            workers[backend] = ProcessBackend(backend, settings.threads, workdir)  # they import side by side
        # Only the PyTorch backends need the weights; the others get the ONNX paths.
        pair_files = {}
        for weights in {b.startswith("torch") for b in workers}:
            pair_files[weights] = workdir / f"{pair.name}.{'torch' if weights else 'onnx'}.pickle"
            data = pair if weights else pair.without_weights()
            pair_files[weights].write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    for backend in settings.backends:
        try:
            if backend in refused:
                raise refused[backend]
            if isolate:
                # One backend binds at a time, while the others still import.
                workers[backend].bind(pair_files[backend.startswith("torch")], shapes)
                backends[backend] = workers[backend]
            else:
                student, teacher = (
                    make_runner(m, backend, settings.threads, shapes, workdir) for m in (pair.student, pair.teacher)
                )
                backends[backend] = LocalBackend(backend, student, teacher)
        except Skip as e:
            skipped.append({"pair": pair.name, "backend": backend, "reason": str(e)})
            log(f"{pair.name} {backend}: skipped ({e})")
        except Exception as e:  # e.g. a provider whose libraries are missing: reported, not hidden
            errors.append({"pair": pair.name, "backend": backend, "batch": None, "seq": None, "error": repr(e)})
            log(f"{pair.name} {backend}: error {e!r}")
    if isolate:
        for f in pair_files.values():  # read by every worker by now; BERT-base's is 0.5 GB
            f.unlink()
    vocab = min(pair.student.config.vocab_size, pair.teacher.config.vocab_size)
    try:
        for batch, seq in shapes:
            t0 = time.time()
            cells, failed = measure_cell(backends, batch, seq, vocab, settings.warmup, settings.iterations)
            for backend, e in failed.items():
                errors.append({"pair": pair.name, "backend": backend, "batch": batch, "seq": seq, "error": repr(e)})
                log(f"{pair.name} {backend} b{batch} s{seq}: error {e!r}")
            for backend, cell in cells.items():
                precision, device = BACKEND_INFO[backend]
                results.append(
                    {"pair": pair.name, "backend": backend, "precision": precision, "device": device,
                     "batch": batch, "seq": seq, **cell}
                )  # fmt: skip
                s_rate, t_rate = cell["student"]["seq_per_s"], cell["teacher"]["seq_per_s"]
                log(
                    f"{pair.name} {backend:>13} b{batch:<4} s{seq:<4} student {s_rate:>10.1f}"
                    f" teacher {t_rate:>9.1f} seq/s  x{cell['speedup']:.2f}"
                )
            log(f"{pair.name} b{batch} s{seq}: {len(cells)} backends interleaved in {time.time() - t0:.1f} s")
    finally:
        for w in workers.values():  # which frees their models
            w.close()
        if not isolate:
            for b in backends.values():
                b.release()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def run_benchmark(
    pairs: Sequence[Pair], settings: BenchmarkSettings, workdir: Path, log=print, isolate: bool = True
) -> dict[str, Any]:
    """Every backend x batch x seq for every pair; the summary (see :func:`write_summary`).

    ``isolate`` (the default) runs each backend of each pair in a process of its own
    (:class:`ProcessBackend`); without it all run in this one."""
    shapes = [(b, s) for s in settings.seq_lengths for b in settings.batch_sizes]
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    errors: list[dict[str, str]] = []
    with cpu_threads(settings.threads) as threads:
        for pair in pairs:
            _measure_pair(pair, settings, shapes, workdir, isolate, log, results, skipped, errors)
    return {
        "machine": {**machine_info(), **threads},
        "settings": dataclasses.asdict(settings),
        "pairs": {
            p.name: {
                "kind": p.kind,
                **{side: _describe(getattr(p, side)) for side in ("student", "teacher")},
            }
            for p in pairs
        },
        "results": results,
        "skipped": skipped,
        "errors": errors,
        "headline": headline(results),
    }


def _describe(m: Model) -> dict[str, Any]:
    c = m.config
    return {
        "name": m.name,
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "heads": c.num_attention_heads,
        "parameters": m.torch_model.num_parameters(),
        "onnx": {k: str(v) for k, v in m.onnx.items()},
    }


def headline(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per pair, batch and seq: best fp32 backend of each side and their ratio, the best fp32
    student backend against PyTorch eager fp32, INT8 against the fp32 ONNX graph, the best fp16
    backend of each side (GPU) and the best bf16 one (against PyTorch eager fp32 too). Each ratio
    also comes per round (``..._per_round``, :func:`per_round`), where the cells kept their times."""
    cells: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["pair"], r["batch"], r["seq"]), {})[r["backend"]] = r
    out = []
    for (pair, batch, seq), by in cells.items():
        row: dict[str, Any] = {"pair": pair, "batch": batch, "seq": seq}

        def best(side: str, precision: str, by=by):
            cands = [r for r in by.values() if r["precision"] == precision]
            if not cands:
                return None
            return max(cands, key=lambda r: r[side]["seq_per_s"])

        for precision in ("fp32", "fp16", "bf16"):
            s, t = best("student", precision), best("teacher", precision)
            if s and t:
                s_rate, t_rate = s["student"]["seq_per_s"], t["teacher"]["seq_per_s"]
                row[f"best_{precision}"] = {
                    "student_backend": s["backend"], "student_seq_per_s": s_rate,
                    "teacher_backend": t["backend"], "teacher_seq_per_s": t_rate,
                    "speedup": round(s_rate / t_rate, 3),
                }  # fmt: skip
                rounds = per_round(s["student"], t["teacher"])
                if rounds:
                    row[f"best_{precision}"]["speedup_per_round"] = rounds
        # Against PyTorch eager on the same device: the best CPU backend of the precision.
        for precision in ("fp32", "bf16"):
            cpu = [r for r in by.values() if r["precision"] == precision and r["device"] == "cpu"]
            if "torch" in by and cpu:
                fastest = max(cpu, key=lambda r: r["student"]["seq_per_s"])
                key = f"student_best_{precision}_vs_torch_eager"
                row[key] = round(fastest["student"]["seq_per_s"] / by["torch"]["student"]["seq_per_s"], 3)
                rounds = per_round(fastest["student"], by["torch"]["student"])
                if rounds:
                    row[f"{key}_per_round"] = rounds
        if "ort-int8" in by and "ort" in by:
            sides = ("student", "teacher")
            int8, fp32 = by["ort-int8"], by["ort"]
            row["int8_vs_fp32_onnx"] = {s: round(int8[s]["seq_per_s"] / fp32[s]["seq_per_s"], 3) for s in sides}
            rounds = {s: per_round(int8[s], fp32[s]) for s in sides}
            if all(rounds.values()):
                row["int8_vs_fp32_onnx_per_round"] = rounds
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# Pairs


SHAPE_RECORD = "shape.json"


def export_shape(name: str, spec: Mapping[str, Any], folder: Path, head: str = "classification", seed: int = 0) -> Pair:
    """Random-weight student and teacher of the given shapes (``spec``: ``student`` and ``teacher``
    config fields), each saved under ``folder/{student,teacher}`` (config.json, model.safetensors)
    and exported to ONNX there like a trained model; ``shape.json`` records how."""
    from .checkpoints import save_model

    models = {}
    for side in ("student", "teacher"):
        fields = {k: v for k, v in spec[side].items() if k in BertConfig.__dataclass_fields__}
        torch.manual_seed(seed)
        model = build_model(BertConfig(**fields), head).eval()
        save_model(model, folder / side)
        models[side] = Model(f"{name}/{side}", model, export_files(model, folder / side))
    record = {"name": name, "head": head, "seed": seed, "spec": {k: dict(v) for k, v in spec.items()}}
    (folder / SHAPE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return Pair(name, "shape", models["student"], models["teacher"])


def shape_pair(name: str, spec: Mapping[str, Any], workdir: Path, head: str = "classification", seed: int = 0) -> Pair:
    """:func:`export_shape` into ``workdir/name``."""
    return export_shape(name, spec, workdir / name, head, seed)


def load_shape_pair(folder: Path) -> Pair:
    """A pair written by :func:`export_shape` (rule ``benchmark_shape``), loaded again."""
    record_file = folder / SHAPE_RECORD
    if not record_file.is_file():
        raise FileNotFoundError(f"{record_file}: missing; the folder is not a shape export (rule benchmark_shape)")
    record = json.loads(record_file.read_text())
    student, teacher = (
        _load_side(f"{record['name']}/{side}", folder / side, folder / side, record["head"])
        for side in ("student", "teacher")
    )
    return Pair(record["name"], "shape", student, teacher)


def task_pair(onnx_dir: Path) -> Pair:
    """A task's student and teacher from its export folder (``export.json`` names their sources)."""
    record = json.loads((onnx_dir / "export.json").read_text())
    student, teacher = (
        _load_side(f"{record['task']}/{side}", record["models"][side]["source"], onnx_dir / side, record["head"])
        for side in ("student", "teacher")
    )
    return Pair(record["task"], "task", student, teacher)


def _load_side(name: str, weights: str | Path, onnx_dir: Path, head: str) -> Model:
    """One side of an exported pair: its PyTorch model and the ONNX files found in ``onnx_dir``."""
    from .checkpoints import load_model

    files = {k: onnx_dir / FILES[k] for k in FILES if (onnx_dir / FILES[k]).is_file()}
    return Model(name, load_model(weights, head=head), files)


# ---------------------------------------------------------------------------------------------
# Outputs


def write_summary(summary: Mapping[str, Any], output: Path) -> None:
    """``summary.json``, ``summary.md`` (speedup tables) and ``throughput.svg`` into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output / "summary.md").write_text(summary_markdown(summary))
    plot_throughput(summary, output / "throughput.svg")


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _spread(rounds: Sequence[float] | None) -> str:
    return f" (rounds {min(rounds):.2f}-{max(rounds):.2f}x)" if rounds else ""


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """Speedup tables, one per pair: every backend x batch x seq, then the headline ratios."""
    m = summary["machine"]
    gpu = m["gpu"]["name"] if m.get("gpu") else "none"
    lines = [
        "# Inference benchmark",
        "",
        f"Machine: {m['cpu']} ({m['threads']} threads of {m['cpu_count']} CPUs; "
        f"{', '.join(m.get('cpu_isa') or ['no ISA flags read'])}), GPU: {gpu}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + ".",
        f"Each cell: {summary['settings']['warmup']} warm-up and {summary['settings']['iterations']} timed batches "
        "per model, every model of every backend timing one batch per round; sequences/s over the timed batches; "
        "speedup = student / teacher; a ratio's rounds: the lowest and highest it had in a single round.",
        "",
    ]
    for name, pair in summary["pairs"].items():
        s, t = pair["student"], pair["teacher"]
        lines += [
            f"## {name} ({pair['kind']}): student {s['layers']}L-{s['hidden_size']}H ({s['parameters'] / 1e6:.1f}M) "
            f"vs teacher {t['layers']}L-{t['hidden_size']}H ({t['parameters'] / 1e6:.1f}M)",
            "",
            "| backend | precision | batch | seq | student seq/s | teacher seq/s | speedup | student p50 / p99 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in summary["results"] if r["pair"] == name):
            lat = r["student"]["latency_ms"]
            lines.append(
                f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['seq']} | {_fmt(r['student']['seq_per_s'])} "
                f"| {_fmt(r['teacher']['seq_per_s'])} | {r['speedup']:.2f}x | {lat['p50']:.1f} / {lat['p99']:.1f} |"
            )
        lines.append("")
        for h in (h for h in summary["headline"] if h["pair"] == name):
            parts = []
            if "best_fp32" in h:
                b = h["best_fp32"]
                parts.append(
                    f"best fp32 student ({b['student_backend']}) / best fp32 teacher ({b['teacher_backend']}) "
                    f"**{b['speedup']:.2f}x**{_spread(b.get('speedup_per_round'))}"
                )
            if "student_best_fp32_vs_torch_eager" in h:
                parts.append(
                    f"best fp32 student / PyTorch eager {h['student_best_fp32_vs_torch_eager']:.2f}x"
                    + _spread(h.get("student_best_fp32_vs_torch_eager_per_round"))
                )
            if "int8_vs_fp32_onnx" in h:
                rounds = h.get("int8_vs_fp32_onnx_per_round", {}).get("student")
                parts.append(f"INT8 / fp32 ONNX student {h['int8_vs_fp32_onnx']['student']:.2f}x{_spread(rounds)}")
            if "best_fp16" in h:
                b = h["best_fp16"]
                parts.append(f"best fp16 student ({b['student_backend']}) {_fmt(b['student_seq_per_s'])} seq/s, "
                             f"{b['speedup']:.2f}x its teacher{_spread(b.get('speedup_per_round'))}")  # fmt: skip
            if "best_bf16" in h:
                b = h["best_bf16"]
                vs = h.get("student_best_bf16_vs_torch_eager")
                eager = f", {vs:.2f}x PyTorch eager fp32" if vs else ""
                spread = _spread(b.get("speedup_per_round"))
                parts.append(f"best bf16 student ({b['student_backend']}) {_fmt(b['student_seq_per_s'])} seq/s, "
                             f"{b['speedup']:.2f}x its teacher{spread}{eager}")  # fmt: skip
            lines.append(f"- batch {h['batch']}, seq {h['seq']}: " + "; ".join(parts))
        lines.append("")
    if summary["skipped"]:
        lines += ["## Skipped backends", ""]
        reasons: dict[tuple[str, str], list[str]] = {}
        for s in summary["skipped"]:
            reasons.setdefault((s["backend"], s["reason"]), []).append(s["pair"])
        lines += [f"- `{b}` ({', '.join(pairs)}): {why}" for (b, why), pairs in reasons.items()]
        lines.append("")
    if summary["errors"]:
        lines += ["## Errors", ""]
        for e in summary["errors"]:
            where = f" batch {e['batch']}, seq {e['seq']}" if e["batch"] is not None else ""
            lines.append(f"- `{e['backend']}` {e['pair']}{where}: {e['error']}")
        lines.append("")
    return "\n".join(lines)


def plot_throughput(summary: Mapping[str, Any], path: Path) -> None:
    """Sequences/s against batch size, one panel per pair and sequence length; student solid,
    teacher dashed, one colour per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["pair"], r["seq"]) for r in summary["results"]})
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.5 * max(len(panels), 1), 3.8), squeeze=False)
    colours = {b: f"C{i}" for i, b in enumerate(BACKENDS)}
    for ax, (pair, seq) in zip(axes[0], panels, strict=False):
        rows = [r for r in summary["results"] if r["pair"] == pair and r["seq"] == seq]
        for backend in dict.fromkeys(r["backend"] for r in rows):
            rs = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["batch"])
            x = [r["batch"] for r in rs]
            ax.plot(x, [r["student"]["seq_per_s"] for r in rs], "o-", color=colours[backend], label=backend)
            ax.plot(x, [r["teacher"]["seq_per_s"] for r in rs], "s--", color=colours[backend], alpha=0.6)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="sequences / s", title=f"{pair}, seq {seq}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, title="solid: student, dashed: teacher", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


@contextlib.contextmanager
def scratch_dir(near: Path) -> Iterator[Path]:
    """A temporary folder next to ``near`` (same disk), removed afterwards."""
    near.parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=f".{near.name}.scratch-", dir=near.parent))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
