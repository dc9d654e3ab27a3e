"""Markdown tables of the extension study: the tuning sweep (seed 1) and the reported grid (seed 0).

    python benchmarks/extension_tables.py [benchmarks/results/extension]
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lengthwise.report import read_results  # noqa: E402

TASKS = ["passkey", "niah_single", "niah_multikey", "variable_tracking"]


def pct(v):
    return "–" if not v else f"{100 * sum(v) / len(v):.0f}" + ("" if len(v) >= 20 else f" ({len(v)})")


def main():
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/extension")
    picks = json.loads((runs / "picks.json").read_text())
    tune = defaultdict(list)
    for r in read_results(runs / "tune.jsonl")[0]:
        tune[(r["backend"], r["method"], r["length"])].append(r["score"])
    print("| method | candidate | 16k | 32k | mean | picked |\n|---|---|---:|---:|---:|:---:|")
    for family, p in picks.items():
        for spec, score in p["candidates"].items():
            b = p["backend"]
            print(f"| {family} | `{spec}` | {pct(tune[(b, spec, 16384)])} | {pct(tune[(b, spec, 32768)])} | "
                  f"{100 * score:.0f} | {'✔' if spec == p['spec'] else ''} |")
    grid = defaultdict(list)
    for f in ("full.jsonl", "long.jsonl"):
        for r in read_results(runs / f)[0]:
            grid[(r["backend"], r["method"], r["task"], r["length"])].append(r["score"])
    lengths = sorted({k[3] for k in grid})
    for task in TASKS:
        print(f"\n**{task}** (accuracy %, 5 depths x 4 samples = 20 cells each; a count in brackets when fewer ran)\n")
        print("| method | backend | " + " | ".join(f"{n // 1024}k" for n in lengths) + " |")
        print("|---|---|" + "---:|" * len(lengths))
        for b, m in sorted({(k[0], k[1]) for k in grid}, key=lambda x: (x[0] == "hf", x[1] != "none", x[1])):
            print(f"| `{m}` | {b} | " + " | ".join(pct(grid[(b, m, task, n)]) for n in lengths) + " |")
    native(grid)


def native(grid):
    """Points against no scaling at the trained lengths, same prompts (seed 0)."""
    def mean(v):
        return 100 * sum(v) / len(v)
    short = {"passkey": "pk", "niah_single": "ns", "niah_multikey": "mk", "variable_tracking": "vt"}
    cols = [(n, t) for n in (4096, 8192) for t in TASKS]
    print("\nNative lengths: points against no scaling on the same prompts (seed 0, 20 cells each); "
          "worst = the largest loss\n")
    print("| method | backend | " + " | ".join(f"{n // 1024}k {short[t]}" for n, t in cols) + " | worst |")
    print("|---|---|" + "---:|" * (len(cols) + 1))
    for b, m in sorted({(k[0], k[1]) for k in grid if k[1] != "none"}, key=lambda x: (x[0] == "hf", x[1])):
        if not all(grid[(b, m, t, n)] and grid[("lengthwise", "none", t, n)] for n, t in cols):
            continue
        d = [mean(grid[(b, m, t, n)]) - mean(grid[("lengthwise", "none", t, n)]) for n, t in cols]
        print(f"| `{m}` | {b} | " + " | ".join(f"{x:+.0f}" for x in d) + f" | {min(min(d), 0):+.0f} |")


if __name__ == "__main__":
    main()
