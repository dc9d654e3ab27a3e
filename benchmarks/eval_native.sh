#!/usr/bin/env bash
# The harness at SmolLM2's native lengths, lengthwise and HF on identical prompts (GPU machine).
#   LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src bash benchmarks/eval_native.sh OUTDIR
# Seed 1 is the tuning run (plain prompts against the chat template); seed 0 is the reported grid.
set -euo pipefail
out=${1:-runs}
mkdir -p "$out"
lw() { python3 -m lengthwise.cli eval --model smollm2-135m --tasks passkey,niah_single --lengths 1k,2k,4k,8k \
        --depths 5 --samples 4 "$@"; }
lw --seed 1 --output "$out/tune_plain.jsonl"
lw --seed 1 --chat --output "$out/tune_chat.jsonl"
for mode in plain chat; do
  flag=$([ $mode = chat ] && echo --chat || true)
  lw --seed 0 $flag --output "$out/native_${mode}_lengthwise.jsonl"
  lw --seed 0 $flag --engine hf --output "$out/native_${mode}_hf.jsonl"
  python3 benchmarks/agreement.py "$out/native_${mode}_lengthwise.jsonl" "$out/native_${mode}_hf.jsonl" \
    --json "$out/native_${mode}_agreement.json"
done
