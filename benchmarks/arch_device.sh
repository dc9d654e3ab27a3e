#!/usr/bin/env bash
# The architecture issue's GPU acceptance in one call (docs/benchmarks.md): correctness first, then old vs new in
# lockstep. Run on the GPU machine from the repository root, models staged in /tmp/lw-models, the old engine in
# .oldsrc/src (git archive 1b08f97 src | tar -x -C .oldsrc). Logs and results go to $OUT.
set -uo pipefail
export LENGTHWISE_MODEL_DIR=${LENGTHWISE_MODEL_DIR:-/tmp/lw-models} PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
timeout ${GPU_CHECK_S:-170} python3 benchmarks/gpu_check.py > "$OUT/gpu_check.log" 2>&1; echo "gpu_check rc=$?"; tail -2 "$OUT/gpu_check.log"
timeout ${POS_CHECK_S:-130} python3 benchmarks/positions_check.py > "$OUT/positions_check.log" 2>&1; echo "positions_check rc=$?"; tail -2 "$OUT/positions_check.log"
for v in old new; do src=src; [ $v = old ] && src=.oldsrc/src
  PYTHONPATH=$src:${PYTHONPATH:-} timeout 120 python3 benchmarks/host_ops.py 2>/dev/null | tail -1 >> "$OUT/host_ops.jsonl"; done
python3 -c "import json; [print(r['engine'], r['aten_ops'], r['python_calls']) for r in map(json.loads, open('$OUT/host_ops.jsonl'))]"
timeout ${ARCH_S:-280} python3 benchmarks/arch_compare.py --old .oldsrc/src --rounds ${ROUNDS:-12} --repeats 3 \
    ${TASKSET:+--taskset $TASKSET} --out "$OUT" 2>&1 | grep -v "Writing model shards" | tee "$OUT/arch_compare.log"
