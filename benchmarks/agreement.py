"""Cell-by-cell agreement of two eval result stores run on identical prompts (e.g. lengthwise vs hf).

    python benchmarks/agreement.py runs/lw.jsonl runs/hf.jsonl [--json OUT.json]

Cells match on (task, length, depth, sample, seed); they agree when their scores are equal.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lengthwise.report import read_results  # noqa: E402


def key(r):
    return (r["task"], r["length"], r["depth"], r["sample"], r["seed"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--json")
    args = ap.parse_args()
    a = {key(r): r for r in read_results(args.a)[0]}
    b = {key(r): r for r in read_results(args.b)[0]}
    common = sorted(set(a) & set(b))
    agree = [k for k in common if a[k]["score"] == b[k]["score"]]
    by_len = {}
    for k in common:
        n, same = by_len.get((k[0], k[1]), (0, 0))
        by_len[(k[0], k[1])] = (n + 1, same + (a[k]["score"] == b[k]["score"]))
    out = {"a": args.a, "b": args.b, "cells": len(common), "agree": len(agree),
           "agreement": len(agree) / max(1, len(common)),
           "mean_score_a": sum(a[k]["score"] for k in common) / max(1, len(common)),
           "mean_score_b": sum(b[k]["score"] for k in common) / max(1, len(common)),
           "by_task_length": {f"{t}@{n}": s / c for (t, n), (c, s) in sorted(by_len.items())},
           "disagreements": [{"cell": list(k), "a": a[k]["output"], "b": b[k]["output"], "answers": a[k]["answers"]}
                             for k in common if k not in agree][:20]}
    print(f"{len(agree)}/{len(common)} cells agree ({out['agreement']:.1%}); mean score "
          f"{out['mean_score_a']:.3f} vs {out['mean_score_b']:.3f}")
    for k, v in out["by_task_length"].items():
        print(f"  {k}: {v:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
