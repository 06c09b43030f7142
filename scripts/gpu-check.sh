#!/usr/bin/env bash
# GPU check, ready to run on a machine with an NVIDIA GPU (never part of the test suite).
#
#   scripts/gpu-check.sh [OUT_DIR]        # default OUT_DIR: ./gpu-check-out (or $OUT when set)
#
# 1. makes a fresh virtual environment (under $GPU_CHECK_VENV, default a temp dir) with the
#    agent and onnxruntime-gpu instead of onnxruntime (the swap README.md documents), the CUDA
#    and cuDNN libraries from pip, and TensorRT's libraries when pip has them;
# 2. scripts/gpu_check.py: through the agent's own ModelRunner, pinned to CUDA then TensorRT
#    (engine cache on): which provider really serves, the self-test (passes or not, max |diff|,
#    time), the TensorRT load again from the engine cache, and a recording replayed flat out
#    through the in-process agent -> OUT_DIR/gpu-check.json;
# 3. the pipeline benchmark on both providers (agent, minimal loop, bare run; 1 and 2 threads):
#    python -m benchmarks --only accelerators -> OUT_DIR/accelerators.md.
# Everything is logged to OUT_DIR/gpu-check.log. Budget: 10 minutes in all (installs ~3-5 min
# on a fast link; each step has its own timeout). Exit 0 only when both self-tests passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=$(realpath -m "${1:-${OUT:-gpu-check-out}}")
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu-check.log"
exec > >(tee -a "$LOG") 2>&1
start=$(date +%s)
step() { echo "== [$(( $(date +%s) - start )) s] $*"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi: not available"

VENV=${GPU_CHECK_VENV:-$(mktemp -d)/venv}
step "fresh environment in $VENV"
python3 -m venv "$VENV" || exit 2
py="$VENV/bin/python"
timeout 300 "$py" -m pip install -q . httpx || exit 2
"$py" -m pip uninstall -y -q onnxruntime
# [cuda,cudnn]: the CUDA 12 and cuDNN 9 runtime wheels, so no system CUDA is needed.
timeout 300 "$py" -m pip install -q "onnxruntime-gpu[cuda,cudnn]" || exit 2
# TensorRT's libraries for the TensorRT provider; without them that provider reports why.
timeout 240 "$py" -m pip install -q tensorrt-cu12-libs || step "tensorrt-cu12-libs not installed: TensorRT will report it"
"$py" -m pip list 2>/dev/null | grep -i -E "onnxruntime|tensorrt|nvidia-cudnn|nvidia-cuda-runtime" | tee "$OUT_DIR/packages.txt"

# onnxruntime-gpu finds the pip-installed CUDA/cuDNN/TensorRT libraries once told where they are.
export LD_LIBRARY_PATH="$("$py" - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for pattern in ("nvidia/*/lib", "tensorrt_libs"):
        dirs.update(glob.glob(os.path.join(sp, pattern)))
print(":".join(sorted(dirs)))
PY
):${LD_LIBRARY_PATH:-}"

step "self-test and agent replay on CUDA and TensorRT"
PYTHONPATH=$PWD timeout 240 "$py" scripts/gpu_check.py "$OUT_DIR/gpu-check.json" 1500
rc=$?

step "pipeline benchmark on the GPU providers"
PYTHONPATH=$PWD timeout 180 "$py" -m benchmarks --only accelerators --out "$OUT_DIR/accelerators.md" \
  || step "accelerators benchmark failed or timed out (see above)"

step "done: $OUT_DIR (self-test check exit $rc)"
exit $rc
