#!/usr/bin/env bash
# The GPU check of issues #6 and #30, prepared to decide in one short call (under 8 minutes of wall time: the steps'
# timeouts add up to 7.5 minutes). First run of issue #6's part on an H200, 2026-12-04:
# benchmarks/measurements/gpu_check_2026-12-04_h200.txt (book: Performance).
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        # OUTDIR defaults to $OUT, else ./gpu_check_out
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh /tmp/x   # dry run of the script itself on a CPU
#
# Needs python3 with torch (CUDA), torchvision, scikit-learn, tqdm; piad is used from this checkout (no install).
# Prints and saves (OUTDIR/gpu_check.txt, raw; OUTDIR/gpu_check_summary.txt, the SUMMARY lines; commit them under
# benchmarks/measurements/):
#   1. benchmarks/graph_check.py (issue #30): the captured iteration equals the restructured eager one (torch.equal,
#      deterministic cuDNN, K = 1 and 3) and today's step to rounding; model-it/s eager / static / graph at
#      K = 1 (NCHW and channels_last), 10, 20, 40; kernels per iteration and GPU busy vs wall time
#      (torch.profiler); the ensemble width that fits in memory;
#   2. scoring images/s at 32x32 (benchmarks/score_speed.py);
#   3. today's one-model baseline against the authors' recipe, as in issue #6 (benchmarks/train_speed.py).
# Targets (issue #30, MNIST config): graph == eager; one model >= 50 model-it/s (3x the H200's 17-21 of
# 2026-12-04) and the best ensemble >= 300 model-it/s, side by side with eager in the same call.
set -uo pipefail
out=${1:-${OUT:-gpu_check_out}}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}
if [ -n "${QUICK:-}" ]; then
  gq="--quick --ks 1,2 --iterations 1 --threads 1"; r1="--rounds 1 --warmup 0 --threads 1"; sq="--quick --threads 1"
else
  gq=""; r1="--rounds 10 --warmup 3"; sq=""
fi
step() { local limit=$1; shift; echo "== $*"; timeout "$limit" "$py" "$@" 2>&1; echo "== exit $?"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  step 330 benchmarks/graph_check.py --device "$dev" $gq
  step 60 benchmarks/score_speed.py --device "$dev" --configs mnist,cifar10 $sq
  step 60 benchmarks/train_speed.py --benchmark mnist --device "$dev" --variants authors,optimised $r1 --no-split
} | tee "$out/gpu_check.txt"
grep SUMMARY "$out/gpu_check.txt" > "$out/gpu_check_summary.txt" || true
