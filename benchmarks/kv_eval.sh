#!/usr/bin/env bash
# KV compression through the harness on the GPU (issue 18): every policy at the given ratios, on RULER-style tasks,
# the question kept out of compression (kvpress's protocol). One store per run; report splits rows by kv.
#   OUT=results bash benchmarks/kv_eval.sh [LENGTHS] [SAMPLES] [RATIOS]
set -euo pipefail
LENGTHS=${1:-4k}
SAMPLES=${2:-10}
RATIOS=${3:-0.5}
OUT=${OUT:-benchmarks/results}
STORE="$OUT/kv_eval.jsonl"
TASKS=niah_single,niah_multikey,niah_multivalue,variable_tracking,common_words
run() { python3 -m lengthwise.cli eval --model smollm2-135m --tasks "$TASKS" --lengths "$LENGTHS" --depths 1 \
          --samples "$SAMPLES" --chat --output "$STORE" --append-config --yes "$@"; }
run
for r in $RATIOS; do
  for p in streaming knorm random tova snapkv pyramidkv h2o a2sf adakv; do
    run --kv "$p:ratio=$r"
  done
done
python3 -m lengthwise.cli report "$STORE" --output "$OUT/kv_eval_report" || true
