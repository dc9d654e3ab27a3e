#!/usr/bin/env bash
# lengthwise's KV policies beside kvpress's same-named presses, on byte-identical prompts (issue 18's peer).
#   KVPY=.kvpress-venv/bin/python OUT=benchmarks/results bash benchmarks/kvpress_compare.sh [LENGTHS] [SAMPLES] [RATIOS] [POLICIES]
# Two stores, one per engine (lengthwise eval, benchmarks/kvpress_peer.py); benchmarks/kvpress_compare.py puts
# them side by side: score per (policy, task) on each engine and how many answers are the same text.
set -euo pipefail
LENGTHS=${1:-1k}
SAMPLES=${2:-10}
RATIOS=${3:-0.5}
POLICIES=${4:-streaming snapkv tova knorm random pyramidkv h2o}
OUT=${OUT:-benchmarks/results}
KVPY=${KVPY:-.kvpress-venv/bin/python}
LW=${LW:-python3}
TASKS=${TASKS:-niah_single,niah_multikey,niah_multivalue,variable_tracking,common_words}
mkdir -p "$OUT"
ours() { $LW -m lengthwise.cli eval --model smollm2-135m --tasks "$TASKS" --lengths "$LENGTHS" --depths 1 \
           --samples "$SAMPLES" --chat --output "$OUT/kvpress_compare_lengthwise.jsonl" --append-config --yes "$@"; }
peer() { PYTHONPATH=src $KVPY benchmarks/kvpress_peer.py --tasks "$TASKS" --lengths "$LENGTHS" --depths 1 \
           --samples "$SAMPLES" --chat --out "$OUT/kvpress_compare_kvpress.jsonl" "$@" 2>&1 | grep -v -e '%|' -e '^\s*$' || true; }
ours --kv full; peer --kv full
for r in $RATIOS; do
  for p in $POLICIES; do
    ours --kv "$p:ratio=$r"; peer --kv "$p:ratio=$r"
  done
done
$LW benchmarks/kvpress_compare.py "$OUT/kvpress_compare_lengthwise.jsonl" "$OUT/kvpress_compare_kvpress.jsonl" --out "${RESULT:-$OUT/kvpress_compare}"
