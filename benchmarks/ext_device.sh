#!/usr/bin/env bash
# One GPU call of the context-extension study (docs/context-extension.md): restore earlier results,
# run the given command, pack the results into $OUT (commit them back as benchmarks/results/extension/*.jsonl.gz). Runs resume: finished cells are skipped.
#   bash benchmarks/ext_device.sh python3 benchmarks/extension.py --deadline 500
set -uo pipefail
export PYTHONPATH=/tmp/site:src LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1
export EXT_RUNS=/tmp/lw-ext
mkdir -p "$EXT_RUNS"
for f in benchmarks/results/extension/*.jsonl.gz; do  # committed results (gzip) seed a fresh machine
  name=$(basename "$f" .gz)
  [ -e "$f" ] && [ ! -e "$EXT_RUNS/$name" ] && gunzip -c "$f" > "$EXT_RUNS/$name"
done
"$@"
rc=$?
tar czf "${OUT:-/tmp}/ext.tar.gz" -C "$EXT_RUNS" .
exit $rc
