"""Start-up cost a CLI user pays before any work: `import lengthwise`, `lw.load` of each embedded model, and
`lengthwise models`, each in a fresh process, for this checkout and optionally another (an older commit's src,
e.g. from `git worktree add /tmp/old <commit>`), alternating, so both see the same machine load.

    python3 benchmarks/load_time.py --old /tmp/old/src --repeats 3 --out benchmarks/results/load_time_cpu.json

Reports the median seconds per step and version, and new / old; the device is named in the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys, time
t = time.perf_counter(); import lengthwise as lw; imp = time.perf_counter() - t
t = time.perf_counter(); lw.load("smollm2-135m", device="cpu"); dec = time.perf_counter() - t
t = time.perf_counter(); lw.load("minilm-l6", device="cpu"); enc = time.perf_counter() - t
print(json.dumps({"import": imp, "load smollm2-135m": dec, "load minilm-l6": enc, "engine": lw.__file__}))
"""


def once(src: str) -> dict:
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    if not rec.pop("engine").startswith(str(Path(src).resolve())):
        raise SystemExit(f"the probe imported another engine than {src}")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lengthwise", "models"], env=env, capture_output=True, check=True)
    rec["lengthwise models"] = time.perf_counter() - t
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", help="another checkout's src folder to time beside this one")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    versions = {"new": str(HERE / "src")} | ({"old": a.old} if a.old else {})
    runs: dict[str, list[dict]] = {v: [] for v in versions}
    for r in range(a.repeats):
        for v in (list(versions) if r % 2 == 0 else list(versions)[::-1]):
            runs[v].append(once(versions[v]))
    steps = list(runs["new"][0])
    med = {v: {s: statistics.median(x[s] for x in runs[v]) for s in steps} for v in versions}
    out = {"device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "repeats": a.repeats,
           "versions": versions, "median_s": med, "runs": runs}
    if "old" in med:
        out["new_over_old"] = {s: med["new"][s] / med["old"][s] for s in steps}
    for s in steps:
        line = f"{s:20s} new {med['new'][s]:6.2f} s"
        if "old" in med:
            line += f"   old {med['old'][s]:6.2f} s   new/old {out['new_over_old'][s]:.2f}"
        print(line)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1) + "\n")
        plot(out, a.out.with_suffix(".png"))


def plot(out: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")  # headless; a matplotlib setting of this script's own process
    import matplotlib.pyplot as plt
    med = out["median_s"]
    steps = list(med["new"])
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=150)
    w = 0.38
    for i, (v, colour) in enumerate((("old", "#999999"), ("new", "#0072B2"))):
        if v in med:
            ax.barh([k + (i - 0.5) * w for k in range(len(steps))], [med[v][s] for s in steps], w, label=v,
                    color=colour)
    ax.set_yticks(range(len(steps)), steps)
    ax.set_xlabel("seconds (median of fresh processes)")
    ax.set_title(f"start-up cost, {out['device']}, {out['date']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
