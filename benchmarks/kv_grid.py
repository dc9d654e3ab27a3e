"""Issue 18's accuracy grid through the harness, spread over worker processes on one GPU, resumable.

    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/kv_grid.py --dir $OUT/kv_grid \\
        --workers 8 --deadline 330 [--plan targets|main|fp8|32k|all] [--skip-done JOBS.jsonl]
    python benchmarks/kv_grid.py --dir benchmarks/results/kv_grid --summary   # tables, JSON and plot only

Every job is one (length, kv spec, kv dtype, positions) on the five tasks, SmolLM2-135M chat, the question kept out
of compression, in its own store under --dir (one writer per store; a rerun with the stores carried back skips the
cells they hold). Jobs run in priority order: full and the target ratios (0.5, 0.75) first, then the FP8 cache, then 0.25 and
0.875, then 32k with context extension. No new job starts after --deadline seconds; the ones running
finish their cells. The harness is host-bound at these sizes (one packed prefill and a batched decode per group),
so several processes share the GPU; accuracy does not depend on how many run (packed equals per sequence).

The summary (kv_grid.json + kv_grid.png beside the stores) has, per (length, kv, kv_dtype, positions), each task's
accuracy, the mean over tasks, the share of the full cache's mean at that length, the samples per task and the
measured kv_bytes per sequence (storage read, as the eval records hold them).
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

TASKS = ["niah_single", "niah_multikey", "niah_multivalue", "variable_tracking", "common_words"]
POLICIES = ["streaming", "knorm", "random", "tova", "snapkv", "pyramidkv", "h2o", "a2sf", "adakv", "duo", "think"]
EXTENSION = "longrope:factors=@benchmarks/longrope_factors/geometric_x32.json"  # the best scaling that evicts


def spec(policy: str, ratio: float, heads: str) -> str | None:
    """duo's share of streaming heads stands for the ratio (its bytes follow it); ThinK removes at most half the
    cache (its ratio is kvpress's: half the key channels at 0.25), so it runs at 0.25 only."""
    if policy == "duo":
        return f"duo:heads={ratio},calibration={heads}"
    if policy == "think":
        return f"think:ratio={ratio}" if ratio < 0.5 else None
    return f"{policy}:ratio={ratio}"


def plan(which: str, heads: str, samples: int, lengths=(4096, 8192), policies=tuple(POLICIES)) -> list[dict]:
    jobs = []

    def add(length, kv, dtype="auto", positions=None, n=samples):
        jobs.append({"length": length, "kv": kv, "kv_dtype": dtype, "positions": positions, "samples": n})

    def grid(tier):
        for length in lengths:
            if tier == (0.5, 0.75):
                add(length, "full")
            for r in tier:
                for p in policies:
                    s = spec(p, r, heads)
                    if s:
                        add(length, s)

    def fp8():
        for length in lengths:
            add(length, "full", "fp8")
            add(length, "snapkv:ratio=0.5", "fp8")
            add(length, "streaming:ratio=0.5", "fp8")

    if which == "targets":  # the FP8 rows, then the targets' ratios
        fp8()
    if which in ("main", "all", "targets"):
        grid((0.5, 0.75))  # the targets' ratios first
    if which in ("fp8", "all"):
        fp8()
    if which in ("main", "all"):
        grid((0.25, 0.875))
    if which in ("32k", "all"):
        n = max(1, samples // 2)
        add(32768, "full", positions=EXTENSION, n=n)
        for r in (0.5, 0.875):
            for p in [p for p in ("streaming", "snapkv", "pyramidkv", "tova", "knorm", "adakv", "duo") if p in policies]:
                add(32768, spec(p, r, heads), positions=EXTENSION, n=n)
    return jobs


def store_name(job: dict) -> str:
    key = json.dumps(job, sort_keys=True)
    tag = job["kv"].split(":")[0] + ("_fp8" if job["kv_dtype"] == "fp8" else "") + ("_ext" if job["positions"] else "")
    return f"{job['length'] // 1024}k_{tag}_{hashlib.sha256(key.encode()).hexdigest()[:10]}.jsonl"


def run_job(job: dict, folder: str, model: str, max_batch_tokens: int) -> dict:
    import lengthwise as lw
    t0 = time.perf_counter()
    recs = lw.evaluate(model, TASKS, [job["length"]], out=str(Path(folder) / store_name(job)), depths=1,
                       samples=job["samples"], chat=True, kv=job["kv"], kv_dtype=job["kv_dtype"],
                       positions=job["positions"], yes=True, append_config=True, max_batch_tokens=max_batch_tokens)
    mean = 100 * sum(r["score"] for r in recs) / max(1, len(recs))
    return {**job, "mean_pct": mean, "records": len(recs), "seconds": time.perf_counter() - t0}


def summarize(folder: Path) -> dict:
    from lengthwise.evaluation.store import ResultStore
    cells = collections.defaultdict(lambda: collections.defaultdict(list))
    meta = {}
    for f in sorted(folder.glob("*.jsonl")):
        if "jobs" in f.name:  # the driver's job logs, read below
            continue
        for r in ResultStore(f).records()[0]:
            cfg = r.get("config", {})
            key = (r["length"], r["kv"], r.get("kv_dtype", "auto"), cfg.get("positions", "none"))
            cells[key][r["task"]].append(r)
            meta[key] = cfg
    rows = []
    for key, by in cells.items():  # sorted with the log's rows below
        length, kv, dtype, positions = key
        acc = {t: 100 * sum(r["score"] for r in v) / len(v) for t, v in sorted(by.items())}
        every = [r for v in by.values() for r in v]
        rows.append({"length": length, "kv": kv, "kv_dtype": dtype, "positions": positions,
                     "device": meta[key].get("device"), "dtype": meta[key].get("dtype"),
                     "accuracy_pct": acc, "mean_pct": sum(acc.values()) / len(acc) if len(acc) == len(TASKS) else None,
                     "tasks": len(acc), "samples_per_task": min(len(v) for v in by.values()),
                     "kv_bytes_per_sequence": sum(r.get("kv_bytes") or 0 for r in every) / len(every),
                     "kv_bytes_prefill_per_sequence": sum(r.get("kv_bytes_prefill") or 0 for r in every) / len(every)})
    # jobs whose store did not come back from the GPU machine: their mean from the driver's job log, no per-task split
    have = {(r["length"], _cell(r["kv"]), r["kv_dtype"]) for r in rows}
    for f in sorted(folder.glob("*jobs*.jsonl")):
        for line in f.read_text().splitlines():
            j = json.loads(line) if line.strip() else {}
            if "mean_pct" not in j or j.get("positions"):
                continue
            k = (j["length"], _cell(j["kv"]), j["kv_dtype"])
            if k in have:
                continue
            have.add(k)
            rows.append({"length": j["length"], "kv": j["kv"], "kv_dtype": j["kv_dtype"], "positions": "none",
                         "accuracy_pct": {}, "mean_pct": j["mean_pct"], "tasks": len(TASKS),
                         "samples_per_task": j["records"] // len(TASKS), "kv_bytes_per_sequence": None,
                         "kv_bytes_prefill_per_sequence": None, "source": f"{f.name} (mean only: its store was lost)"})
    rows.sort(key=lambda r: (r["length"], r["positions"], r["kv_dtype"], r["kv"] != "full", r["kv"]))
    full = {(r["length"], r["positions"]): r for r in rows if r["kv"] == "full" and r["kv_dtype"] == "auto"}
    for r in rows:
        f = full.get((r["length"], r["positions"]))
        if f and f["mean_pct"] and r["mean_pct"] is not None:
            r["share_of_full"] = r["mean_pct"] / f["mean_pct"]
            if r["kv_bytes_per_sequence"] is not None:
                r["kv_bytes_share_of_full"] = r["kv_bytes_per_sequence"] / f["kv_bytes_per_sequence"]
    return {"model": "smollm2-135m (Q4_1 GGUF)", "chat": True, "question": "kept out of compression", "depth": 50,
            "tasks": TASKS, "rows": rows}


def _cell(kv: str) -> str:
    """A spec as a grid cell: the policy and its ratio (duo: its heads), whatever defaults the spec spells out."""
    name, _, opts = kv.partition(":")
    o = dict(x.split("=", 1) for x in opts.split(",") if "=" in x)
    return f"{name}:{o.get('ratio', o.get('heads', ''))}"


def plot(summary: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lengths = sorted({(r["length"], r["positions"]) for r in summary["rows"] if r["kv_dtype"] == "auto"})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5.5 * len(lengths), 4.2), squeeze=False)
    for ax, (length, pos) in zip(axes[0], lengths):
        rows = [r for r in summary["rows"] if r["length"] == length and r["positions"] == pos
                and r["kv_dtype"] == "auto" and r["mean_pct"] is not None]
        by = collections.defaultdict(list)
        for r in rows:
            if r["kv"] == "full":
                ax.axhline(r["mean_pct"], color="black", lw=1, ls="--", label="full")
                continue
            name, ratio = _cell(r["kv"]).split(":")
            by[name].append((float(ratio), r["mean_pct"]))
        colours = plt.cm.viridis([i / max(1, len(by) - 1) for i in range(len(by))])  # colour-blind safe
        for (name, pts), c, m, ls in zip(sorted(by.items()), colours, "osD^v<>pP*Xh", ["-", "--", ":", "-."] * 3):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=m, ms=4, lw=1, ls=ls, color=c, label=name)
        ax.set_title(f"{length // 1024}k" + ("" if pos == "none" else " + " + pos.split(":")[0]))
        ax.set_xlabel("ratio removed (duo: streaming heads)")
        ax.set_ylabel("mean accuracy over 5 tasks (%)")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=150)


def table(summary: dict) -> str:
    lines = ["| length | kv | kv_dtype | " + " | ".join(TASKS) + " | mean % | share of full | n | KV MB/seq |",
             "|---|---|---|" + "---|" * (len(TASKS) + 4)]
    for r in summary["rows"]:
        acc = " | ".join(f"{r['accuracy_pct'][t]:.1f}" if t in r["accuracy_pct"] else "" for t in TASKS)
        mean = "" if r["mean_pct"] is None else f"{r['mean_pct']:.1f}"
        share = f"{r['share_of_full']:.2f}" if "share_of_full" in r else ""
        ext = "" if r["positions"] == "none" else " (+ext)"
        lines.append(f"| {r['length'] // 1024}k{ext} | `{r['kv']}` | {r['kv_dtype']} | {acc} | {mean} | {share} | "
                     f"{r['samples_per_task']} | " + ("" if r["kv_bytes_per_sequence"] is None else
                                                f"{r['kv_bytes_per_sequence'] / 1e6:.1f}") + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--plan", default="all", choices=["main", "targets", "fp8", "32k", "all"])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--lengths", default="4096,8192")
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds after which no new job starts")
    ap.add_argument("--max-batch-tokens", type=int, default=262144)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--skip-done", default=None, help="a jobs log (jobs.jsonl) of an earlier run: its finished jobs "
                    "are not run again (for runs whose stores did not come back)")
    ap.add_argument("--summary", action="store_true", help="only summarize the stores in --dir")
    a = ap.parse_args()
    start = time.perf_counter()
    folder = Path(a.dir)
    folder.mkdir(parents=True, exist_ok=True)
    if not a.summary:
        policies = a.policies.split(",")
        heads = folder / "duo_heads.json"
        if "duo" in policies and not heads.exists():  # duo's heads from its own probe (seeds apart from the eval's)
            import lengthwise as lw
            from lengthwise.kv.duo import calibrate
            t0 = time.perf_counter()
            calibrate(lw.load(a.model), heads)
            print(f"duo calibration: {time.perf_counter() - t0:.0f} s", flush=True)
        jobs = plan(a.plan, str(heads), a.samples, tuple(int(x) for x in a.lengths.split(",")), policies)
        if a.skip_done:
            def key(j):
                return (j["length"], j["kv"].split(",calibration=")[0], j["kv_dtype"], j["positions"])
            done = {key(json.loads(x)) for x in Path(a.skip_done).read_text().splitlines()
                    if x.strip() and "error" not in json.loads(x)}
            jobs = [j for j in jobs if key(j) not in done]
        log = folder / "jobs.jsonl"
        with cf.ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn")) as pool:
            pending = collections.deque(jobs)
            running = {}
            while pending or running:
                while pending and len(running) < a.workers and time.perf_counter() - start < a.deadline:
                    j = pending.popleft()
                    running[pool.submit(run_job, j, str(folder), a.model, a.max_batch_tokens)] = j
                if not running:
                    break
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    j = running.pop(f)
                    try:
                        res = f.result()
                    except Exception as e:  # one job's failure is reported, the others go on
                        res = {**j, "error": f"{type(e).__name__}: {e}"}
                    res["at_s"] = round(time.perf_counter() - start, 1)
                    with open(log, "a") as fh:
                        fh.write(json.dumps(res) + "\n")
                    print(json.dumps(res), flush=True)
        print(f"{len(jobs) - len(pending)} of {len(jobs)} jobs started; {len(pending)} left for a rerun", flush=True)
    summary = summarize(folder)
    import torch
    if torch.cuda.is_available():
        summary["device"] = torch.cuda.get_device_name()
    summary["date"] = time.strftime("%Y-%m-%d")
    (folder / "kv_grid.json").write_text(json.dumps(summary, indent=1))
    plot(summary, folder / "kv_grid.png")
    print(table(summary))


if __name__ == "__main__":
    sys.exit(main())
