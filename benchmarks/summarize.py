"""Print the markdown tables of docs/benchmarks.md from benchmarks/results/*.json.

    python benchmarks/summarize.py > /tmp/tables.md
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(pattern: str) -> list[dict]:
    out = []
    for f in sorted(RESULTS.glob(pattern)):
        d = json.loads(f.read_text())
        for r in d["rows"]:
            out.append({**r, "_file": f.name, "_device": d["device"], "_date": d["date"]})
    return out


def fmt(v, digits=3):
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"
    return str(v)


def encoder(rows: list[dict]):
    print("| model | mix | system | tokens/s | lengthwise x | peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['mix']} | {r['system']} | {fmt(r['tokens_per_s'])} | "
              f"{fmt(r['lengthwise_speedup'])} | {fmt(r['peak_gib'])} |")


def prefill(rows: list[dict]):
    print("| model | mix | system | tokens/s | mean TTFT s | MFU | lengthwise x | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['mix']} | {r['system']} | {fmt(r['tokens_per_s'])} | {fmt(r['mean_ttft_s'])} | "
              f"{r['mfu']:.1%} | {fmt(r['lengthwise_speedup'])} | {fmt(r['peak_gib'])} |")


def generation(rows: list[dict]):
    print("| system | output tokens/s | decode step ms | % of HBM roofline | lengthwise x | peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {fmt(r['output_tokens_per_s'])} | {fmt(r['decode_step_ms'])} | "
              f"{fmt(r['pct_of_hbm_roofline'])} | {fmt(r['lengthwise_speedup'])} | {fmt(r['peak_gib'])} |")


def main():
    for title, pattern, fn in [("Encoder (GPU)", "encoder_[!c]*.json", encoder), ("Encoder (CPU)", "encoder_cpu.json", encoder),
                               ("Causal prefill", "prefill*.json", prefill), ("Generation", "generation*.json", generation)]:
        rows = load(pattern)
        if rows:
            files = sorted({r["_file"] for r in rows})
            print(f"\n### {title}\n\n{rows[0]['_device']}, {rows[0]['_date']} ({', '.join(files)})\n")
            fn(rows)


if __name__ == "__main__":
    main()
