#!/usr/bin/env bash
# The cells at SmolLM2's trained context (8k) again, after the within-context rule (tasks/base.py: a cell
# within the trained context keeps its prompt and answer inside it, as RULER sizes inputs; the stores were
# pruned of the 8k cells built before it). On the GPU machine, models staged in /tmp/lw-models:
#   bash benchmarks/native_edge.sh SECONDS     (stops starting new grids SECONDS from now; rerun to resume)
# 1. the harness grid at native lengths, both backends (benchmarks/eval_native.sh: only the 8k cells are new),
#    and a passkey depth-0 sweep over 4k-8k on a seed no table reports (seed 2);
# 2. the context-extension study's native phase (no scaling, each pick with beyond=true), then its full
#    phase (every pick, and the HF peer's, at 8k): benchmarks/extension.py, resumable. Cells whose code path
#    changed were pruned too, and run again here: the attention patterns within their plain range
#    (Remap.plain_up_to: lambda at 4k-8k, sinks:sinks=4 at 4k-8k, sinks:sinks=64,window=4096 at 4k).
# Results: $OUT/eval.tar.gz (benchmarks/results/eval/) and $OUT/ext.tar.gz (benchmarks/results/extension/).
set -uo pipefail
end=$(( $(date +%s) + ${1:-540} ))
export PYTHONPATH=/tmp/site:src LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1
ev=/tmp/lw-eval
mkdir -p "$ev"
for f in benchmarks/results/eval/*.jsonl; do [ -e "$ev/$(basename "$f")" ] || cp "$f" "$ev/"; done
bash benchmarks/eval_native.sh "$ev"
python3 -m lengthwise.cli eval --chat --tasks passkey --lengths 4k,5k,6k,7k,7.5k,8k --depths 0% --samples 8 --seed 2 \
  --output "$ev/passkey_depth0_sweep.jsonl"
tar czf "${OUT:-/tmp}/eval.tar.gz" -C "$ev" .
left() { echo $(( end - $(date +%s) )); }
bash benchmarks/ext_device.sh python3 benchmarks/extension.py --phases native --deadline "$(left)"
bash benchmarks/ext_device.sh python3 benchmarks/extension.py --phases full --deadline "$(left)"
# static YaRN x8, an earlier pick that the full phase no longer lists, at 8k like the rest of its row
bash benchmarks/ext_device.sh python3 -m lengthwise.cli eval --model smollm2-135m --chat --positions yarn:factor=8 \
  --tasks passkey,niah_single,niah_multikey,variable_tracking --lengths 8k --depths 5 --samples 4 --seed 0 \
  --max-batch-tokens 131072 --output /tmp/lw-ext/full.jsonl
