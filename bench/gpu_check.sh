#!/usr/bin/env bash
# The checks that need a CUDA GPU (bench/gpu_check.py): bf16 and fp16 epochs against the bare loop, fp16 steps under
# torch.cuda.set_sync_debug_mode("error"), two --deterministic runs compared bit for bit. A few minutes on one GPU;
# without one it says so and exits 2. Run from anywhere: bash bench/gpu_check.sh  (PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# cuBLAS reads this when the process first uses it: set before then, for the --deterministic runs
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
