#!/usr/bin/env bash
# Issue #6's GPU check, prepared to fit in a few minutes of device time (first run with shorter rounds on an H200,
# 2026-12-04: benchmarks/measurements/gpu_check_2026-12-04_h200.txt, book: Performance).
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        # OUTDIR defaults to $OUT, else ./gpu_check_out
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh /tmp/x   # dry run of the script itself on a CPU
#
# Needs python3 with torch (CUDA), torchvision, scikit-learn, tqdm; piad is used from this checkout (no install).
# Prints and saves: one model (authors vs optimised), a batched ensemble of K=10, and scoring at 32x32 and 64x64.
# Targets (issue #6): MNIST config >= 200 it/s (one model), >= 1,500 model-it/s (K=10), scoring >= 2,000 img/s.
set -uo pipefail
out=${1:-${OUT:-gpu_check_out}}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}
if [ -n "${QUICK:-}" ]; then r1="--rounds 1 --warmup 0"; r2="--rounds 1 --warmup 0 --threads 1"; sq="--quick --threads 1"
else r1="--rounds 40 --warmup 10"; r2="--rounds 20 --warmup 5"; sq=""; fi
step() { echo "== $*"; timeout 240 "$py" "$@" 2>&1; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  step benchmarks/train_speed.py --benchmark mnist --device "$dev" --variants authors,optimised $r1 --no-split
  step benchmarks/train_speed.py --benchmark mnist --device "$dev" --models 10 --variants optimised \
      --ensemble-modes vmap $r2 --no-split
  step benchmarks/score_speed.py --device "$dev" --configs mnist,cifar10,celeba $sq
} | tee "$out/gpu_check.txt"
grep SUMMARY "$out/gpu_check.txt" > "$out/gpu_check_summary.txt" || true
