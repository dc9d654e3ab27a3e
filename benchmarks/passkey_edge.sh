#!/usr/bin/env bash
# Where in an 8k prompt SmolLM2-135M loses the pass key: depths 0-25% in fine steps at 8k, chat template and
# plain, 8 samples a depth on seed 2 (a seed no reported table uses). On the GPU machine, models staged in
# /tmp/lw-models (docs: ../shared/DEVICE.md):
#   bash benchmarks/passkey_edge.sh OUT_DIR
# Resumable (each store skips finished cells). Results: OUT_DIR/passkey_edge_8k_{chat,plain}.jsonl
set -euo pipefail
out=${1:?usage: bash benchmarks/passkey_edge.sh OUT_DIR}
export PYTHONPATH=/tmp/site:src LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1
depths=0,2.5,5,7.5,10,12.5,15,20,25
python3 -m lengthwise.cli eval --chat --tasks passkey --lengths 8k --depths "$depths" --samples 8 --seed 2 \
  --output "$out/passkey_edge_8k_chat.jsonl"
python3 -m lengthwise.cli eval --tasks passkey --lengths 8k --depths "$depths" --samples 8 --seed 2 \
  --output "$out/passkey_edge_8k_plain.jsonl"
