"""ONNX export of a model with its task head, ONNX Runtime's transformer fusions, dynamic INT8,
and a runner that evaluates an ONNX file through the same code as a PyTorch model.

Files of one exported model (``<folder>/``):

- ``model.onnx``: the graph as exported (dynamic batch and sequence axes, the task head included);
- ``model.opt.onnx``: the same graph after ``onnxruntime.transformers.optimizer`` (model type
  ``bert``: fused ``Attention``, ``SkipLayerNormalization``, ``BiasGelu``);
- ``model.int8.onnx``: ``model.onnx`` with INT8 weights (one scale per output channel by default);
  activations quantised per batch at run time (``quantize_dynamic``, the default) or with scales
  calibrated on training features (``quantize_static``).

The export uses PyTorch's TorchScript-based exporter: ONNX Runtime's BERT fusions match the graph
it writes (measured: 4 of 4 attention blocks fused for a 4-layer student) but not the graph of the
``torch.export``-based exporter (none fused; same logits).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model import BertOutput, BertPreTrainedModel

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
FILES = {"fp32": "model.onnx", "fused": "model.opt.onnx", "int8": "model.int8.onnx"}


class ExportError(RuntimeError):
    """An export that does not match its PyTorch model; the message names the file."""


def output_names(head: str | None) -> tuple[str, ...]:
    """ONNX output names of a head: ``logits`` or ``start_logits``/``end_logits`` (Hugging Face's)."""
    if head == "qa":
        return ("start_logits", "end_logits")
    if head == "classification":
        return ("logits",)
    raise ValueError(f"only task heads are exported (classification, qa), got {head!r}")


class _Logits(torch.nn.Module):
    """The model with tensors out instead of a :class:`BertOutput` (what an ONNX graph returns)."""

    def __init__(self, model: BertPreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids, attention_mask, token_type_ids)
        return out.logits if out.logits is not None else (out.start_logits, out.end_logits)


def export_onnx(model: BertPreTrainedModel, path: str | Path, opset: int = 17) -> Path:
    """Export ``model`` (eval mode, fp32) with dynamic batch and sequence axes to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = output_names(model.head)
    was_training = model.training
    wrapper = _Logits(model.eval().float().cpu()).eval()
    ids = torch.full((2, 8), min(1000, model.config.vocab_size - 1), dtype=torch.long)
    axes = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}
    axes.update({n: {0: "batch"} if n == "logits" else {0: "batch", 1: "sequence"} for n in names})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            wrapper,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(names),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model.train(was_training)
    return path


def optimize_onnx(src: str | Path, dst: str | Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Fuse ``src`` with ONNX Runtime's transformer optimizer into ``dst``; the fused-operator counts."""
    from onnxruntime.transformers import optimizer

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    opt = optimizer.optimize_model(
        str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
    )
    opt.save_model_to_file(str(dst))
    return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    per_channel: bool = True,
    reduce_range: bool = True,
    activations: str = "dynamic",
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> None:
    """INT8 quantisation of every MatMul/Gemm weight of ``src`` into ``dst`` (``per_channel``: one
    scale per output column; one per matrix lets a few large weights crush the rest).

    ``activations`` sets the scales of those products' inputs: ``dynamic`` (``quantize_dynamic``)
    computes them per batch at run time, so a row's result depends on the rows batched with it;
    ``minmax`` and ``percentile`` (``quantize_static``, QDQ) fix them beforehand from the ranges
    seen on ``calibration`` (input feeds, :func:`calibration_batches`), so every row's result
    depends on that row alone. Products of two activations (attention scores) stay fp32 either way.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # it logs its "pre-process first" advice on the root logger
    try:
        if activations == "dynamic":
            quantize_dynamic(
                str(src),
                str(dst),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=reduce_range,
                extra_options={"DefaultTensorType": 1},  # FLOAT where shape inference leaves a type open
            )
        else:
            if not calibration:
                raise ExportError(f"{src}: {activations} INT8 needs calibration features")
            _quantize_static(src, dst, per_channel, reduce_range, activations, calibration)
    finally:
        root.setLevel(level)


def calibration_batches(
    arrays: Mapping[str, np.ndarray], batch_size: int = 32, n: int | None = None, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """``n`` features drawn at random (all when None), as input feeds of ``batch_size`` rows cut to
    the sample's longest sequence (one length for all: the histogram calibrators stack batches)."""
    total = len(arrays["input_ids"])
    idx = np.sort(np.random.default_rng(seed).permutation(total)[: n or total])
    keep = int(arrays["attention_mask"][idx].sum(1).max())
    return [
        {k: np.ascontiguousarray(arrays[k][idx[i : i + batch_size], :keep].astype(np.int64)) for k in INPUT_NAMES}
        for i in range(0, len(idx), batch_size)
    ]


def _quantize_static(src, dst, per_channel: bool, reduce_range: bool, method: str, feeds: list) -> None:
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    # The histogram calibrators print their progress to stdout; a benchmark's stdout is its JSON.
    with tempfile.TemporaryDirectory(dir=Path(dst).parent) as tmp, contextlib.redirect_stdout(sys.stderr):
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))  # shape inference, which the quantiser needs
        graph = onnx.load(str(pre))
        weights = {i.name for i in graph.graph.initializer}
        with_weight = [n.name for n in graph.graph.node if n.op_type in ("MatMul", "Gemm") and weights & set(n.input)]
        quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_quantize=with_weight,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method],
            # Outputs stay fp32 (ONNX Runtime fuses to MatMulIntegerToFloat), as in dynamic INT8.
            extra_options={"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
        )


def ort_session(path: str | Path, threads: int | None = None, providers: list | None = None):
    """An ONNX Runtime session (CPU unless ``providers`` says otherwise); ``threads`` intra-op threads.

    Its threads stop spinning when a run returns. By default they spin on for a while, and on a
    few cores that takes the cores from whatever runs next in the process: the next model's session
    or PyTorch (measured: a second session at half its speed alone, PyTorch at a fifth)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


class OnnxModel:
    """An ONNX file that answers like a PyTorch model with a head: ``model(input_ids,
    attention_mask, token_type_ids)`` returns a :class:`BertOutput` of CPU tensors, so dev
    evaluation (``tasks.Task.evaluate``) runs it through the same code as the PyTorch model."""

    training = False

    def __init__(self, path: str | Path, threads: int | None = None, providers: list | None = None) -> None:
        self.path = Path(path)
        self.session = ort_session(path, threads, providers)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        if mode:
            raise ExportError(f"{self.path}: an ONNX model is inference only")
        return self

    def to(self, device: Any) -> OnnxModel:
        return self

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> BertOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feeds = {
            k: np.ascontiguousarray(v.cpu().numpy().astype(np.int64)) for k, v in feeds.items() if k in self.inputs
        }
        result = dict(zip(self.outputs, self.session.run(None, feeds), strict=True))
        as_tensor = {k: torch.from_numpy(v) for k, v in result.items()}
        return BertOutput(
            logits=as_tensor.get("logits"),
            start_logits=as_tensor.get("start_logits"),
            end_logits=as_tensor.get("end_logits"),
        )


def export_files(
    model: BertPreTrainedModel,
    folder: Path,
    opset: int = 17,
    optimize: bool = True,
    int8: bool = True,
    per_channel: bool = True,
    reduce_range: bool = True,
    int8_activations: str = "dynamic",
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> dict[str, Path]:
    """Write ``model.onnx`` (+ ``model.opt.onnx``, ``model.int8.onnx``) into ``folder``; their paths by
    kind (``int8_activations`` and ``calibration``: :func:`quantize_int8`)."""
    files = {"fp32": export_onnx(model, folder / FILES["fp32"], opset)}
    if optimize:
        optimize_onnx(
            files["fp32"], folder / FILES["fused"], model.config.num_attention_heads, model.config.hidden_size
        )
        files["fused"] = folder / FILES["fused"]
    if int8:
        quantize_int8(files["fp32"], folder / FILES["int8"], per_channel, reduce_range, int8_activations, calibration)
        files["int8"] = folder / FILES["int8"]
    return files


def subset(arrays: Mapping[str, np.ndarray], n: int | None) -> dict[str, np.ndarray]:
    """The first ``n`` features (all when None)."""
    return {k: v[:n] if n is not None else v for k, v in arrays.items()}


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference of two logit arrays (inf when the shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def file_mb(path: str | Path) -> float:
    return round(os.path.getsize(path) / 2**20, 2)
