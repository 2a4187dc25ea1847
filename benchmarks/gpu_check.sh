#!/usr/bin/env bash
# The GPU check: one run on a machine with a CUDA GPU, from a plain checkout (nothing installed
# beyond PyTorch, ONNX Runtime, onnx and transformers, which a GPU image usually holds; the
# checkout's src/ goes on PYTHONPATH). It writes under $OUT (default: ./gpu_check):
#   nvidia-smi.txt       the GPU as the driver sees it
#   machine.json         the benchmark's machine record (CPU, GPU, versions) and ONNX Runtime's providers
#   inference_gpu.json   benchmarks/inference.py --gpu: 4L-312D against BERT-base, batch 128,
#                        seq 128 and 384, fp16/bf16 eager, torch.compile (CUDA graphs), ONNX
#                        Runtime CUDA/TensorRT and TensorRT FP16 where installed (else skipped,
#                        with the reason), 10 warm-up and 50 timed batches, CUDA events
#   inference_gpu.log    its progress
#   pytest_cuda.log/.xml the tests marked `cuda`: every GPU backend's logits against PyTorch eager
#                        fp32, and the trainer on the GPU (mixed precision against fp32, the fp16
#                        gradient scaler with fused AdamW, SIGKILL and resume, torch.compile)
# Each part has its own time limit (BENCH_S, TESTS_S seconds: 300 and 240), so what finished comes
# back even if the other hangs; the benchmark runs first (the headline figure). BENCH_ARGS adds
# arguments to inference.py (the tests use it to run a tiny shape).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# The benchmark's own record of the machine (CPU, GPU, library versions), plus ONNX Runtime's providers.
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: not found" > "$out/nvidia-smi.txt"
"$py" -c 'import json, torch; from bertdistill.benchmark import _ort_providers, machine_info
print(json.dumps({**machine_info(), "cuda_available": torch.cuda.is_available(),
                  "onnxruntime_providers": _ort_providers()}, indent=1))' > "$out/machine.json" 2>&1
cat "$out/nvidia-smi.txt" "$out/machine.json"

# shellcheck disable=SC2086 # BENCH_ARGS is a list of words
timeout "${BENCH_S:-300}" "$py" benchmarks/inference.py --gpu --output "$out/inference_gpu.json" ${BENCH_ARGS:-} \
    > "$out/inference_gpu.log" 2>&1
bench=$?
tail -n 40 "$out/inference_gpu.log"

timeout "${TESTS_S:-240}" "$py" -m pytest -q -m cuda -p no:cacheprovider --junitxml="$out/pytest_cuda.xml" \
    tests/test_cuda.py tests/test_train.py tests/test_train_default_path.py > "$out/pytest_cuda.log" 2>&1
tests=$?
tail -n 40 "$out/pytest_cuda.log"

echo "gpu_check: benchmark exit $bench, tests exit $tests (124: its time limit)"
[ "$bench" -eq 0 ] && [ "$tests" -eq 0 ]
