#!/usr/bin/env bash
# The GPU checks of issue #23 as one script, for a lent GPU machine: the GPU throughput rows (VennCell's defaults,
# `model=fast` and totalVI at batch 128 and 1,024, back to back), the page rendered from them, the GPU's
# utilisation sampled while they run, and the GPU tests. Run from the repository root:
#
#   bash benchmarks/gpu_check.sh
#
# Packages the machine's image lacks come as wheels in .whl/ (gitignored; carry it); the script installs those of
# them the machine does not have. Build it here, for the machine's Python (3.12) and pinned to versions that work
# together (hydra-core 1.3 needs omegaconf < 2.4 and antlr4 4.9; antlr4 and docrep come as sources, so built first):
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3 docrep==0.3.2
#   python3 -m pip download -d .whl --find-links .whl --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 anndata==0.12.19 mudata==0.3.10 \
#       scanpy==1.11.5 hydra-core==1.3.8 omegaconf==2.3.1 scvi-tools==1.4.2 natsort
# then delete what the machine has anyway and what does not fit the 64 MiB carry: torch, nvidia_*, triton,
# numpy, scipy, pandas, lightning, llvmlite, numba (about 55 MB remain).
# Outputs go to $OUT (the device tool's folder), else to a new temporary folder, never to the committed pages.
# A dry run on a CPU exercises every step but the GPU ones (the GPU tests skip without CUDA):
#   ACCELERATOR=cpu SIZES=10000 BATCHES=128 OUT=/tmp/gpu_dry bash benchmarks/gpu_check.sh
set -euo pipefail

OUT=${OUT:-$(mktemp -d)}
echo "gpu_check: outputs go to $OUT"
ACCELERATOR=${ACCELERATOR:-gpu}
SIZES=${SIZES:-100000}
BATCHES=${BATCHES:-128,1024}
mkdir -p "$OUT"

if [ -d .whl ]; then
    # only the distributions the machine lacks: its own torch, numpy, pandas... stay as they are
    python3 - <<'EOF'
import glob, importlib.metadata as md, re, subprocess, sys
missing = []
for wheel in sorted(glob.glob(".whl/*.whl")):
    name = re.split(r"-\d", wheel.split("/")[-1])[0].replace("_", "-")
    try:
        md.version(name)
    except md.PackageNotFoundError:
        missing.append(wheel)
print("gpu_check: installing", [w.split("/")[-1] for w in missing], flush=True)
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *missing], check=True)
EOF
fi
# the machine has no index to fetch build tools from: build with what is installed, else import from the tree
# (the children inherit PYTHONPATH; only the CLI test then lacks its console script)
if ! python3 -m pip install -q --no-deps --no-build-isolation -e .; then
    echo "gpu_check: could not install the package; importing it from $PWD" >&2
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
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
