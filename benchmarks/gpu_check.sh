#!/usr/bin/env bash
# The GPU checks of issue #23 as one script, for a lent GPU machine: the GPU throughput rows (VennCell's defaults,
# `model=fast` and totalVI at batch 128 and 1,024, back to back), the page rendered from them, the GPU's
# utilisation sampled while they run, and the GPU tests. Run from the repository root:
#
#   bash benchmarks/gpu_check.sh
#
# Packages the machine's image lacks come as wheels in .whl/ (gitignored; carry it). Build it here first:
#   python3 -m pip download --no-deps -d .whl anndata mudata scanpy hydra-core omegaconf antlr4-python3-runtime \
#       scvi-tools docrep
# Outputs go to $OUT (the device tool's folder), else benchmarks/. A dry run on a CPU exercises every step but
# the GPU ones (the GPU tests skip without CUDA):
#   ACCELERATOR=cpu SIZES=10000 BATCHES=128 OUT=/tmp/gpu_dry bash benchmarks/gpu_check.sh
set -euo pipefail

OUT=${OUT:-benchmarks}
ACCELERATOR=${ACCELERATOR:-gpu}
SIZES=${SIZES:-100000}
BATCHES=${BATCHES:-128,1024}
mkdir -p "$OUT"

if [ -d .whl ]; then
    python3 -m pip install -q --no-deps .whl/*.whl
fi
python3 -m pip install -q --no-deps -e .
# anndata 0.12 refuses to write pandas 3's string arrays unless told it may (the image pairs the two)
export ANNDATA_ALLOW_WRITE_NULLABLE_STRINGS=1

SAMPLER=""
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,name,utilization.gpu,memory.used --format=csv -l 1 \
        >"$OUT/gpu_utilisation.csv" &
    SAMPLER=$!
    trap 'kill $SAMPLER 2>/dev/null || true' EXIT
fi

python3 benchmarks/throughput.py gpu --accelerator "$ACCELERATOR" --sizes "$SIZES" \
    --batches "$BATCHES" --rounds 1 --out "$OUT/results_gpu.json"
python3 benchmarks/throughput.py markdown-gpu --out "$OUT/results_gpu.json" --page "$OUT/RESULTS_GPU.md"
python3 -m pytest -q tests/train/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt"
