#!/usr/bin/env bash
# The harness at SmolLM2's native lengths, lengthwise and HF on identical prompts (GPU machine).
#   LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src bash benchmarks/eval_native.sh OUTDIR
set -euo pipefail
out=${1:-runs}
mkdir -p "$out"
grid=(--model smollm2-135m --tasks passkey,niah_single --lengths 1k,2k,4k,8k --depths 5 --samples 4 --seed 0)
python3 -m lengthwise.cli eval "${grid[@]}" --out "$out/native_lengthwise.jsonl"
python3 -m lengthwise.cli eval "${grid[@]}" --backend hf --out "$out/native_hf.jsonl"
python3 benchmarks/agreement.py "$out/native_lengthwise.jsonl" "$out/native_hf.jsonl" --json "$out/native_agreement.json"
