"""Side by side: lengthwise's KV policies and kvpress's presses on the same cells (benchmarks/kvpress_compare.sh).

    python benchmarks/kvpress_compare.py LENGTHWISE.jsonl KVPRESS.jsonl --out benchmarks/results/kvpress_compare

Joins the two stores on the cell (task, length, depth, sample, seed: the same prompt ids on both engines) and the
policy spec, and reports per (policy, length, task): each engine's mean score in %, the difference, and the share of
cells whose answers are the same text. Writes OUT.json and OUT.png.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402


def load(path: str) -> dict:
    """(kv, task, length, depth, sample, seed) -> record, the store's cells only (a cell's id also keys the
    engine, so the join is on what makes the prompt)."""
    out = {}
    for line in open(path):
        r = json.loads(line)
        if "score" in r:
            out[(r.get("kv") or "full", r["task"], r["length"], r["depth"], r["sample"], r["seed"])] = r
    return out


def compare(ours: dict, peer: dict) -> list[dict]:
    groups = collections.defaultdict(list)
    for key, a in ours.items():
        b = peer.get(key)
        if b is not None:
            groups[(key[0], a["length"], a["task"])].append((a, b))
    rows = []
    for (kv, length, task), pairs in sorted(groups.items(), key=lambda g: (g[0][0] != "full", g[0])):
        n = len(pairs)
        lw = 100 * sum(a["score"] for a, _ in pairs) / n
        kp = 100 * sum(b["score"] for _, b in pairs) / n
        same = sum(a["output"].strip() == b["output"].strip() for a, b in pairs) / n
        rows.append({"kv": kv, "length": length, "task": task, "n": n, "lengthwise": round(lw, 1),
                     "kvpress": round(kp, 1), "diff": round(lw - kp, 1), "same_answer": round(same, 3)})
    for kv in dict.fromkeys(r["kv"] for r in rows):  # the mean over tasks, per policy and length
        for length in dict.fromkeys(r["length"] for r in rows if r["kv"] == kv):
            sub = [r for r in rows if r["kv"] == kv and r["length"] == length and r["task"] != "mean"]
            n = sum(r["n"] for r in sub)
            mean = {k: round(sum(r[k] * r["n"] for r in sub) / n, 1) for k in ("lengthwise", "kvpress")}
            rows.append({"kv": kv, "length": length, "task": "mean", "n": n, **mean,
                         "diff": round(mean["lengthwise"] - mean["kvpress"], 1),
                         "same_answer": round(sum(r["same_answer"] * r["n"] for r in sub) / n, 3)})
    return rows


def plot(plt, rows):
    means = [r for r in rows if r["task"] == "mean"]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(means)), 4.2))
    xs = range(len(means))
    ax.bar([x - 0.2 for x in xs], [r["lengthwise"] for r in means], 0.4, label="lengthwise", color="#0072B2")
    ax.bar([x + 0.2 for x in xs], [r["kvpress"] for r in means], 0.4, label="kvpress 0.5.5", color="#E69F00")
    ax.set_xticks(list(xs), [f"{r['kv'].split(',')[0]}\n{r['length']}" for r in means], fontsize=7)
    ax.set_ylabel("mean score over tasks (%)")
    ax.legend()
    return fig


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours")
    ap.add_argument("peer")
    ap.add_argument("--out", required=True, help="OUT.json and OUT.png")
    a = ap.parse_args()
    rows = compare(load(a.ours), load(a.peer))
    if not rows:
        raise SystemExit("kvpress_compare: the two stores share no cells (same grid, seed and policy specs?)")
    print(f"{'kv':44} {'length':>6} {'task':18} {'n':>4} {'lw %':>6} {'kvp %':>6} {'diff':>6} {'same':>5}")
    for r in rows:
        print(f"{r['kv']:44} {r['length']:>6} {r['task']:18} {r['n']:>4} {r['lengthwise']:>6} {r['kvpress']:>6} "
              f"{r['diff']:>6} {r['same_answer']:>5}")
    out = Path(a.out)
    import os
    os.environ["OUT"] = str(out.parent)
    save(out.name, rows, {"ours": a.ours, "peer": a.peer, "peer_engine": "kvpress 0.5.5, transformers 5.2"}, plot)


if __name__ == "__main__":
    main()
