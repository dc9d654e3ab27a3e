"""KV compression through the harness, every policy in one process (issue 18's accuracy grid; kv_eval.sh is the
same through the CLI, one process per policy).

    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/kv_eval.py --lengths 4k,8k --samples 20 \\
        --ratios 0.5,0.875 --out runs/kv_eval.jsonl

SmolLM2-135M chat, the question kept out of compression (kvpress's protocol). One store; `lengthwise report
STORE` keeps rows apart by kv. Prints each policy's mean over tasks and its share of the full cache's.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import lengthwise as lw  # noqa: E402
from kv_grid import spec  # noqa: E402  (duo's heads stand for the ratio; think runs below 0.5 only)

TASKS = "niah_single,niah_multikey,niah_multivalue,variable_tracking,common_words"
POLICIES = "streaming,knorm,random,tova,snapkv,pyramidkv,h2o,a2sf,adakv,duo,think"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default=TASKS)
    ap.add_argument("--lengths", default="4k")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--ratios", default="0.5")
    ap.add_argument("--policies", default=POLICIES)
    ap.add_argument("--positions", default=None)
    ap.add_argument("--query-aware", default="", help="policies also run with the question compressed with the "
                    "context (kv_question=compressed), reported apart")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    heads = None
    if "duo" in a.policies.split(","):  # duo's heads from its own probe, written beside the store
        from lengthwise.kv.duo import calibrate
        heads = Path(a.out).with_name(Path(a.out).stem + "_duo_heads.json")
        if not heads.exists():
            calibrate(lw.load(a.model), heads)

    specs = [("full", "kept")] + [(s, "kept") for r in a.ratios.split(",") for p in a.policies.split(",")
                                  if (s := spec(p, float(r), str(heads)))]
    specs += [(f"{p}:ratio={r}", "compressed") for r in a.ratios.split(",") for p in a.query_aware.split(",") if p]
    means = {}
    for kv, question in specs:
        t0 = time.perf_counter()
        recs = lw.evaluate(a.model, a.tasks.split(","), a.lengths, out=a.out, depths=1, samples=a.samples, chat=True,
                           kv=kv, kv_question=question, positions=a.positions, yes=True, append_config=True)
        kv = kv if question == "kept" else kv + " (query-aware)"
        by = collections.defaultdict(list)
        for r in recs:
            by[r["length"]].append(r["score"])
        means[kv] = {n: 100 * sum(v) / len(v) for n, v in by.items()}
        print(f"{kv:46} " + "  ".join(f"{n}: {m:5.1f}%" for n, m in sorted(means[kv].items()))
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    full = means["full"]
    for kv, m in means.items():
        share = {n: (m[n] / full[n] if full[n] else float("nan")) for n in m}
        print(f"{kv:46} share of full: " + "  ".join(f"{n}: {s:.2f}" for n, s in sorted(share.items())))


if __name__ == "__main__":
    main()
