#!/usr/bin/env bash
# Every GPU figure in docs/benchmarks.md, measured in one go on one CUDA machine (about 10 minutes).
#
#   bash benchmarks/gpu_session.sh OUTDIR [CHECKPOINT]
#
# Run from the repository root with torch, torchvision and SQLAlchemy importable.
# CHECKPOINT: a trained aivh checkpoint for the decode check (default: random weights).
# Steps run most important first, each with its own time limit so that one slow step cannot
# take the others with it; every step's output is kept in OUTDIR.
set -u -o pipefail
out=${1:-gpu-results}
ck=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 2 "$out/$name.log"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
}
{ date -u; git rev-parse --short HEAD 2>/dev/null; git status --short 2>/dev/null | grep -v '^??' | head;
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; echo "cpus $(nproc)";
  python3 -c 'import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__)'
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
bench="python3 -m engine.cli bench --json --data /tmp/aivh-bench"
# correctness first: every decode path gives the Pillow path's pixels and predictions
step decode_check 100 python3 benchmarks/decode_check.py --json ${ck:+--checkpoint "$ck"}
# training and prediction, decode on the GPU vs Pillow workers, each overlapped vs in series
step bench_b128_device 110 $bench --decode device
step bench_b128_workers 90 $bench --decode workers
# the headline: one 80,000-image epoch, eager then compiled (compiled once before the clock);
# no --json here, so the log shows the progress bar and where the time went
step epoch_80k_eager 150 python3 -m engine.cli bench --data /tmp/aivh-bench --decode device --epoch-only --epoch 80000
step epoch_80k_compiled 200 python3 -m engine.cli bench --data /tmp/aivh-bench --decode device --epoch-only --epoch 80000 --compile
step bench_b256_device 100 $bench --decode device --batch-size 256
step bench_b128_compiled 200 $bench --decode device --compile
