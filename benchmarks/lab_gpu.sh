#!/usr/bin/env bash
# The length lab's GPU grid (issue 19, deliverable 5), one call per cell so that no call passes 10 minutes:
# 6 layers, d=384, 8 minutes of training a cell (--budget 480), then tests at lengths 1-100 (5x the training 20).
# Each call appends to one resumable store; a cell already there is skipped at once.
#
#   bash benchmarks/lab_gpu.sh runs/lab-gpu                 # every cell, one after another
#   bash benchmarks/lab_gpu.sh runs/lab-gpu copy rope 0     # one cell (task, pe, seed): one call of <= 10 min
#   lengthwise report runs/lab-gpu/results.jsonl --markdown runs/lab-gpu/summary.md
set -euo pipefail
OUT=${1:?usage: lab_gpu.sh OUT [TASK PE SEED]}
TASKS=(copy reverse addition:reverse=true addition:reverse=true,hints=true sort parity)
PES=(nope learned sinusoidal rope alibi t5 fire randomized abacus)
SEEDS=(0 1 2)
cell() {
  timeout 590 lengthwise lab --preset gpu --tasks "$1" --pes "$2" --seeds "$3" -o "$OUT"
}
if [[ $# -ge 4 ]]; then
  cell "$2" "$3" "$4"
  exit
fi
for t in "${TASKS[@]}"; do for p in "${PES[@]}"; do for s in "${SEEDS[@]}"; do
  cell "$t" "$p" "$s" || echo "cell $t $p $s failed (exit $?)" >&2
done; done; done
