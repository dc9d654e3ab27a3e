#!/usr/bin/env bash
# The architecture issue's GPU acceptance (docs/benchmarks.md), in two calls of under 10 minutes each:
#   bash benchmarks/arch_device.sh checks   # gpu_check.py (~4 min on an H100) and positions_check.py (~2.5 min)
#   bash benchmarks/arch_device.sh speed    # host_ops.py per engine, then old vs new in lockstep (~3 min)
# Run on the GPU machine from the repository root, the models staged in /tmp/lw-models, the old engine in
# .oldsrc/src (git archive 1b08f97 src | tar -x -C .oldsrc; carry .oldsrc). Logs and results go to $OUT.
set -uo pipefail
export LENGTHWISE_MODEL_DIR=${LENGTHWISE_MODEL_DIR:-/tmp/lw-models} PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
case "${1:?usage: arch_device.sh checks|speed}" in
checks)
  timeout 330 python3 benchmarks/gpu_check.py > "$OUT/gpu_check.log" 2>&1; echo "gpu_check rc=$?"; tail -2 "$OUT/gpu_check.log"
  timeout 230 python3 benchmarks/positions_check.py > "$OUT/positions_check.log" 2>&1; echo "positions_check rc=$?"
  tail -2 "$OUT/positions_check.log" ;;
speed)
  for src in .oldsrc/src src; do
    PYTHONPATH=$src:$PYTHONPATH timeout 120 python3 benchmarks/host_ops.py 2>/dev/null | tail -1 >> "$OUT/host_ops.jsonl"
  done
  timeout 400 python3 benchmarks/arch_compare.py --old .oldsrc/src --rounds ${ROUNDS:-12} --repeats 3 --taskset 2-9 \
      --out "$OUT" ${VARIANTS:-} 2>&1 | grep -v "Writing model shards" | tee "$OUT/arch_compare.log" ;;
esac
