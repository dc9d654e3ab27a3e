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
        if f.stem.endswith("_smoke"):  # CPU smoke runs check scripts, they measure nothing
            continue
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


def pct(v):
    return f"{v:.1%}"


# (header, key, formatter) per column, one list per kind of result
COLUMNS = {
    "encoder": [("model", "model", str), ("mix", "mix", str), ("system", "system", str), ("tokens/s", "tokens_per_s", fmt),
                ("lengthwise x", "lengthwise_speedup", fmt), ("peak GiB", "peak_gib", fmt)],
    "prefill": [("model", "model", str), ("mix", "mix", str), ("system", "system", str), ("tokens/s", "tokens_per_s", fmt),
                ("mean TTFT s", "mean_ttft_s", fmt), ("MFU", "mfu", pct), ("lengthwise x", "lengthwise_speedup", fmt),
                ("peak GiB", "peak_gib", fmt)],
    "generation": [("system", "system", str), ("output tokens/s", "output_tokens_per_s", fmt),
                   ("decode step ms", "decode_step_ms", fmt), ("% of HBM roofline", "pct_of_hbm_roofline", fmt),
                   ("lengthwise x", "lengthwise_speedup", fmt), ("peak GiB", "peak_gib", fmt)],
}


def markdown_table(rows: list[dict], kind: str):
    cols = COLUMNS[kind]
    print("| " + " | ".join(h for h, _, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f(r[k]) if k in r else "-" for _, k, f in cols) + " |")  # a failed peer: "-"


def main():
    for title, pattern, kind in [("Encoder (GPU)", "encoder_[!c]*.json", "encoder"), ("Encoder (CPU)", "encoder_cpu.json", "encoder"),
                                 ("Causal prefill", "prefill*.json", "prefill"), ("Generation", "generation*.json", "generation")]:
        rows = load(pattern)
        if rows:
            files = sorted({r["_file"] for r in rows})
            print(f"\n### {title}\n\n{rows[0]['_device']}, {rows[0]['_date']} ({', '.join(files)})\n")
            markdown_table(rows, kind)


if __name__ == "__main__":
    main()
