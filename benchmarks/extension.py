"""Context extension through the harness: tune on seed 1, pick, run the reported grid on seed 0, then 128k.

    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/extension.py [--phases tune,full,long]
        [--runs DIR] [--deadline SECONDS] [--tasks passkey,niah_single,...]

Phases (each resumable: finished cells are skipped, so rerunning continues where a call stopped):
  tune  every candidate setting of every method (ours and the HF peer's built-in rope_scaling), seed 1,
        16k and 32k, passkey / niah_single / niah_multikey / variable_tracking, depths 0/50/100, 1 sample;
  pick  per method, the candidate with the best mean tuning score (ties: the longer claimed reach, then
        list order) -> picks.json. The reported prompts (seed 0) are never seen by the pick;
  full  the picked setting of each method, and no scaling, seed 0: 4k-64k (no scaling: 4k-32k),
        the four tasks, 5 depths x 4 samples;
  long  128k for the three best methods and the HF peer's best (by tuning score; passkey first), and for
        the best of ours on each task by that task's tuning score (variable_tracking: dynamic YaRN); last,
        variable_tracking at 128k for every pick, ours or the HF peer's alike, that scores above 0 on it at
        64k in the full grid (a method at 0 there is not run further out);
  native  the native lengths again, on today's kernels and in one store: no scaling, and each pick with
        beyond=true (the scheme only for prompts past the trained 8k; attention patterns have no gate, so
        lambda's pick as it is, and sinks:sinks=4, whose window is the trained length less its sinks),
        4k and 8k, seed 0, the four tasks, 5 depths x 4 samples; then sinks:sinks=4 at 16k-64k.
Stores: DIR/{tune,full,long,native}.jsonl. The chat template is used throughout (SmolLM2 is an instruct model).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lengthwise.evaluation import EvalConfig, ResultStore, run  # noqa: E402
from lengthwise.evaluation.backends import HFRunner, LengthwiseRunner  # noqa: E402
from lengthwise.evaluation.grid import cells  # noqa: E402
from lengthwise.models import load as L  # noqa: E402
from lengthwise.positions import parse, to_hf  # noqa: E402
from lengthwise.report import read_results  # noqa: E402

MODEL = "smollm2-135m"
TASKS = ["passkey", "niah_single", "niah_multikey", "variable_tracking"]
LR = "@benchmarks/longrope_factors/geometric_x{}.json"
# every RoPE-scaling candidate claims at least 8x (64k); remaps and patterns are listed as their papers use them
CANDIDATES = {
    "linear": ["linear:factor=8", "linear:factor=16"],
    "ntk": ["ntk:factor=8", "ntk:factor=16"],
    "dynamic_ntk": ["dynamic_ntk:factor=2", "dynamic_ntk:factor=4", "dynamic_ntk:factor=8"],
    "yarn": ["yarn:factor=8", "yarn:factor=16", "yarn:factor=32", "yarn:factor=16,dynamic=true"],
    "longrope": [f"longrope:factors={LR.format(s)}" for s in (8, 16, 32)],
    "giraffe": ["giraffe", "giraffe:factor=8"],
    "self_extend": ["self_extend:group=24,window=1024", "self_extend:group=32,window=1024",
                    "self_extend:group=32,window=2048", "self_extend:group=64,window=2048"],
    "distance_cap": ["distance_cap:cap=2048", "distance_cap:cap=4096", "distance_cap"],
    "string": ["string", "string:shift=4096,local=512"],
    "sinks": ["sinks:sinks=4", "sinks:sinks=64,window=4096"],
    "lambda": ["lambda:n_global=10", "lambda:n_global=100"],
}
HF_CANDIDATES = {
    "hf linear": ["linear:factor=8", "linear:factor=16"],
    "hf dynamic": ["dynamic_ntk:factor=2", "dynamic_ntk:factor=4", "dynamic_ntk:factor=8"],
    "hf yarn": ["yarn:factor=8", "yarn:factor=16"],
}
TUNE = dict(seed=1, lengths=[16384, 32768], depths=[0.0, 50.0, 100.0], samples=1)
FULL = dict(seed=0, lengths=[4096, 8192, 16384, 32768, 65536], depths=[0.0, 25.0, 50.0, 75.0, 100.0], samples=4)
LONG = dict(FULL, lengths=[131072])
NATIVE = dict(FULL, lengths=[4096, 8192])


def gated(spec: str) -> str:
    """The pick with its length gate, where the scheme has one (attention patterns have none)."""
    s = parse(spec)
    return spec if s.name in ("sinks", "lambda") else parse(spec + ",beyond=true").spec()


class Runners:
    """One model load per setting, one checkpoint read and one HF model in all."""

    def __init__(self):
        L.read_checkpoint = functools.lru_cache(maxsize=2)(L.read_checkpoint)
        L.load_tokenizer = functools.lru_cache(maxsize=2)(L.load_tokenizer)  # a GGUF tokenizer takes seconds to build
        self.hf = None
        self.lw = {}

    def get(self, backend: str, spec: str):
        if backend == "hf":
            if self.hf is None:
                self.hf = HFRunner(MODEL, chat=True)
            self.hf.set_rope(to_hf(parse(spec), 8192))
            return self.hf
        if spec not in self.lw:
            self.lw.clear()  # keep one engine at a time on the GPU
            self.lw[spec] = LengthwiseRunner(MODEL, chat=True, positions=spec)
        return self.lw[spec]


class _Deadline(Exception):
    pass


@functools.cache
def _trained() -> int:
    return L.trained_context(L.resolve(MODEL))


def _check(deadline: float) -> None:
    if time.time() > deadline:
        raise _Deadline


def grid(store: ResultStore, runners: Runners, backend: str, spec: str, grid_kw: dict, deadline: float,
         lengths=None, tasks=TASKS) -> bool:
    """Run one method's grid, one (length, task) at a time; False if the deadline stopped it."""
    for n in lengths or grid_kw["lengths"]:
        for task in tasks:
            cfg = EvalConfig(model=MODEL, tasks=[task], lengths=[n], depths=grid_kw["depths"], samples=grid_kw["samples"],
                             seed=grid_kw["seed"], method=spec, backend=backend, chat=True, max_batch_tokens=131072)
            done = store.done_ids()
            if all(c.id in done for c in cells(cfg, _trained())):
                continue
            if time.time() > deadline:
                return False
            t0 = time.time()
            try:  # the deadline is also checked after every batch: a slow sub-grid cannot overrun a call
                k = run(cfg, store, runners.get(backend, spec), allow_beyond_context=True, warn=lambda m: None, append_config=True,
                        progress=lambda done, total: _check(deadline))
            except _Deadline:
                return False
            print(f"  {backend:10s} {spec:60s} {task:18s} {n:>6d}: {k} cells in {time.time() - t0:5.1f} s", flush=True)
    return True


def mean_scores(path: Path, seed: int, lengths=None) -> dict:
    recs, _ = read_results(path) if path.exists() else ([], [])
    acc = defaultdict(list)
    for r in recs:
        if r["config"]["seed"] == seed and (lengths is None or r["length"] in lengths):
            acc[(r["backend"], r["method"])].append(r["score"])
    return {k: sum(v) / len(v) for k, v in acc.items()}


@functools.lru_cache(maxsize=None)
def _tune_by_task(path: Path) -> dict:
    recs, _ = read_results(path)
    acc = defaultdict(list)
    for r in recs:
        acc[(r["backend"], r["method"], r["task"])].append(r["score"])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def task_score(path: Path, spec: str, task: str) -> float:
    return _tune_by_task(path).get(("lengthwise", spec, task), 0.0)


def task_at(path: Path, key: tuple, task: str, length: int) -> float:
    """Mean seed-0 score of (backend, method) on one task at one length; 0 when it never ran."""
    recs, _ = read_results(path) if path.exists() else ([], [])
    got = [r["score"] for r in recs if (r["backend"], r["method"]) == key and r["task"] == task
           and r["length"] == length and r["config"]["seed"] == 0]
    return sum(got) / len(got) if got else 0.0


def pick(runs: Path) -> dict:
    scores = mean_scores(runs / "tune.jsonl", TUNE["seed"])
    picks = {}
    for family, specs in list(CANDIDATES.items()) + list(HF_CANDIDATES.items()):
        backend = "hf" if family.startswith("hf ") else "lengthwise"
        canon = [parse(s).spec() for s in specs]
        have = [(scores[(backend, c)], parse(c).reach(8192), -i, c) for i, c in enumerate(canon) if (backend, c) in scores]
        if len(have) < len(canon):
            continue  # not fully tuned yet
        best = max(have)
        picks[family] = {"backend": backend, "spec": best[3], "tune_score": best[0],
                         "candidates": {c: scores[(backend, c)] for c in canon}}
    (runs / "picks.json").write_text(json.dumps(picks, indent=1))
    return picks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--phases", default="tune,full,long")
    ap.add_argument("--runs", default=os.environ.get("EXT_RUNS", "runs/extension"))
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds from now after which no new grid starts")
    ap.add_argument("--tasks", default=",".join(TASKS), help="run only these of the four tasks (full and long phases)")
    args = ap.parse_args()
    deadline = time.time() + args.deadline
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    runners = Runners()
    phases = args.phases.split(",")
    if "tune" in phases:
        store = ResultStore(runs / "tune.jsonl")
        for family, specs in list(CANDIDATES.items()) + list(HF_CANDIDATES.items()):
            for spec in specs:
                if not grid(store, runners, "hf" if family.startswith("hf ") else "lengthwise", spec, TUNE, deadline):
                    return print("deadline reached in tune")
    picks = pick(runs)
    print(json.dumps({k: (v["spec"], round(v["tune_score"], 3)) for k, v in picks.items()}))
    if len(picks) < len(CANDIDATES) + len(HF_CANDIDATES):
        return print("tuning not finished")
    # the reported grid, in order of what the targets need first, so a cut-off run loses the least:
    # the baseline, our best and the HF peer's best; passkey at 128k; then every other method; then 128k's other tasks
    ours = sorted((p for p in picks.values() if p["backend"] == "lengthwise"), key=lambda p: -p["tune_score"])
    hf = sorted((p for p in picks.values() if p["backend"] == "hf"), key=lambda p: -p["tune_score"])
    long = [(p["backend"], p["spec"]) for p in ours[:3] + hf[:1]]  # 128k: the three best by tuning, and HF's best
    for task in TASKS:  # and the best of ours on each task by its tuning score, if not among them already
        best = max(ours, key=lambda p: task_score(runs / "tune.jsonl", p["spec"], task))
        if ("lengthwise", best["spec"]) not in long:
            long.append(("lengthwise", best["spec"]))
    print("128k for:", long, flush=True)
    jobs = [("full", "lengthwise", "none", FULL, [n for n in FULL["lengths"] if n <= 32768], TASKS),
            ("full", ours[0]["backend"], ours[0]["spec"], FULL, None, TASKS),
            ("full", hf[0]["backend"], hf[0]["spec"], FULL, None, TASKS)]
    jobs += [("long", b, m, LONG, None, ["passkey"]) for b, m in long]
    jobs += [("full", p["backend"], p["spec"], FULL, None, TASKS) for p in ours[1:]]
    jobs += [("long", b, m, LONG, None, TASKS) for b, m in long]
    jobs += [("full", p["backend"], p["spec"], FULL, None, TASKS) for p in hf[1:]]
    only = set(args.tasks.split(","))
    jobs.append(("vt128", None, None, LONG, None, ["variable_tracking"]))  # expanded when the full grid is in
    for phase, backend, spec, kw, lengths, tasks in jobs:
        tasks = [t for t in tasks if t in only]
        if phase == "vt128" and "long" in phases and tasks:
            for p in ours + hf:
                key = (p["backend"], p["spec"])
                if key not in long and task_at(runs / "full.jsonl", key, "variable_tracking", 65536) > 0:
                    if not grid(ResultStore(runs / "long.jsonl"), runners, *key, kw, deadline, lengths, tasks):
                        return print("deadline reached in long (variable_tracking)")
            continue
        if phase not in phases or not tasks:
            continue
        if not grid(ResultStore(runs / f"{phase}.jsonl"), runners, backend, spec, kw, deadline, lengths, tasks):
            return print(f"deadline reached in {phase}")
    if "native" in phases:
        store = ResultStore(runs / "native.jsonl")
        native = ["none"] + [gated(p["spec"]) for p in ours if p["spec"].split(":")[0] != "sinks"] + ["sinks:sinks=4"]
        for spec in native:
            if not grid(store, runners, "lengthwise", spec, NATIVE, deadline, None, [t for t in TASKS if t in only]):
                return print("deadline reached in native")
        if not grid(store, runners, "lengthwise", "sinks:sinks=4", FULL, deadline, [16384, 32768, 65536],
                    [t for t in TASKS if t in only]):
            return print("deadline reached in native (sinks:sinks=4 past 8k)")
    print("all phases done")


if __name__ == "__main__":
    main()
