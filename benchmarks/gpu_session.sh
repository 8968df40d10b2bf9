#!/usr/bin/env bash
# Every GPU figure in docs/benchmarks.md, measured in one go on one CUDA machine.
#
#   bash benchmarks/gpu_session.sh OUTDIR [CHECKPOINT]
#
# Run from the repository root with torch, torchvision, SQLAlchemy and captum importable.
# CHECKPOINT: a trained aivh checkpoint for the decode check (default: random weights).
# Each step has its own time limit so that one slow step cannot take the others with it;
# every step's output is kept in OUTDIR.
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
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log" | tail -n 3
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; echo "cpus $(nproc)";
  python3 -c 'import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__)'
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
step bench_eager 120 python3 -m engine.cli bench --json --data /tmp/aivh-bench
step decode_check 90 python3 benchmarks/decode_check.py --json ${ck:+--checkpoint "$ck"}
step saliency 60 python3 benchmarks/saliency_speed.py --device cuda --img-size 300 --json
step epoch_80k 240 python3 -m engine.cli bench --json --steps 5 --data /tmp/aivh-bench --epoch 80000
step bench_workers_decode 90 python3 -m engine.cli bench --json --decode workers --data /tmp/aivh-bench
step bench_compile 240 python3 -m engine.cli bench --json --compile --data /tmp/aivh-bench
