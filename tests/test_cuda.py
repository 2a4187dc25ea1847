"""The GPU inference backends of the benchmark against PyTorch eager fp32 on the CPU.

CI's machines have no GPU: every test here is marked ``cuda`` and skipped there with the reason.
``benchmarks/gpu_check.sh`` runs them on a GPU machine (with the device-parametrised trainer tests
of test_train.py and test_train_default_path.py) before it times the GPU benchmark, so a figure is
only reported for a backend that computes the same logits. A backend whose library is missing
there (onnxruntime without the CUDA provider, no tensorrt) is skipped with the benchmark's reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertdistill import benchmark as bench
from helpers import NO_CUDA

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]

# Two layers, and a vocabulary large enough for the benchmark's input ids (only the student is run).
SHAPES = {
    "student": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                "vocab_size": 2000},
    "teacher": {"num_hidden_layers": 3, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                "vocab_size": 2000},
}  # fmt: skip
# Largest error over the largest logit (random weights of std 0.02 give logits of order 0.02, so
# an absolute tolerance would pass zeros). fp16 keeps 11 significant bits, bf16 8; CPU autocast
# measured 1.5e-3 in fp16 on this model. TF32 (ORT's CUDA default for fp32 products) ~ fp16.
REL = {"fp16": 1e-2, "bf16": 4e-2}


def _logits(out) -> torch.Tensor:
    """The first output of a runner, as a CPU float tensor (PyTorch tensor, ONNX Runtime's list of
    arrays, or the TensorRT runner's name -> buffer dict)."""
    if isinstance(out, dict):
        out = out["logits"]
    elif isinstance(out, list | tuple):
        out = out[0]
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    return out.detach().float().cpu()


@pytest.mark.parametrize(
    ("backend", "precision"),
    [
        ("torch-fp16", "fp16"),
        ("torch-bf16", "bf16"),
        ("torch-compile", "fp16"),
        ("ort-cuda", "fp16"),  # fp32 graph; its tolerance: TF32 may be on for its matrix products
        ("ort-cuda-fp16", "fp16"),
        ("ort-tensorrt", "fp16"),
        ("tensorrt-fp16", "fp16"),
    ],
)
@pytest.mark.parametrize(("batch", "seq"), [(3, 16), (8, 40)])
def test_gpu_backends_answer_like_pytorch_eager(tmp_path, backend, precision, batch, seq):
    """Each GPU backend's logits on two batch x sequence shapes (one profile spans both) equal
    PyTorch eager fp32's on the CPU within the precision's rounding, run twice (the compiled one
    replays its CUDA graph the second time, the point where a stale capture would show)."""
    pair = bench.shape_pair("tiny", SHAPES, tmp_path)
    side = pair.student
    shapes = [(3, 16), (8, 40)]
    inputs = bench._inputs(batch, seq, side.config.vocab_size)
    with torch.inference_mode():
        ref = side.torch_model.float().cpu().eval()(*inputs).logits
    try:
        bind = bench.make_runner(side, backend, None, shapes, tmp_path)
    except bench.Skip as e:
        pytest.skip(f"{backend}: {e}")
    run = bind(*inputs)
    for _ in range(2):
        out = _logits(run())  # the copy to the CPU waits for the GPU
        assert out.shape == ref.shape
        err = float((out - ref).abs().max()) / float(ref.abs().max())
        assert err <= REL[precision], err
