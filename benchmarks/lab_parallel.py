"""The length lab, several cells at once on one GPU. One small model leaves the card half idle (host- and
launch-bound); a few processes fill it. Measured on one H200 (2026-12-03, gpu preset: copy, 6 layers, d=384,
16384 tokens a step, fp32 reference attention): 4.0, 10.0 and 10.8 steps/s in all with 1, 3 and 9 processes.
Past about 3 the processes only share that rate, but one wave of P = all cells pays the startup once.

Each cell (task, pe, seed) is its own `lengthwise lab` process over a one-cell grid, writing its own store and
checkpoint under OUT/cells/<task>__<pe>__seed<k>/. As each cell ends its records are merged into OUT/results.jsonl,
one store with the same header and record ids a single `lengthwise lab` over the whole grid would write (the lab's
store config holds only the shared training settings), and its run folder is linked as OUT/runs/<name>: so
`lengthwise lab ... -o OUT` with the same options resumes the merged folder, and `lengthwise report` reads it.

    python benchmarks/lab_parallel.py OUT --preset gpu --tasks copy --pes nope,rope,learned --seeds 0-2 \\
        --budget 420 --parallel 9 --wall 540 --startup-s 25 --eval-s 25     # one H200 call: about 465 s
    python benchmarks/lab_parallel.py runs/par --preset smoke --tasks copy --pes nope,rope --seeds 0-1 \\
        --budget 3 --parallel 2 --wall 120 --startup-s 10 --eval-s 5      # CPU check

Options after `--` go to every `lengthwise lab` call (e.g. `-- --lengths 1-40 --samples 50`). The plan printed
first is waves x (startup + budget + eval) + the report; a plan past --wall is refused, a cell that could not end
before the deadline is not started, and one still running at the deadline is stopped (its finished lengths are
kept). Rerunning the same command skips cells that finished and resumes the others.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

T0 = time.monotonic()  # the wall limit counts from here, imports of lengthwise included
RESULTS = "results.jsonl"
DONE = ".done.json"


def cell_name(task: str, pe: str, seed: int) -> str:
    def safe(s):
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in s)
    return f"{safe(task)}__{safe(pe)}__seed{seed}"


def plan_seconds(cells: int, parallel: int, budget: float, startup: float, evaluate: float, report: float) -> float:
    return math.ceil(cells / parallel) * (startup + budget + evaluate) + report


def merge_stores(sources: list[Path], dest: Path) -> dict:
    """Append every record of the `sources` stores that `dest` lacks (by id) to `dest`, through ResultStore: dest
    gets the sources' header (created if new), its one-writer lock is held while appending, and a source's partial
    last line (a cell killed mid-write) is skipped. All stores must share one config, as one lab's store does."""
    from lengthwise.errors import LengthwiseError
    from lengthwise.evaluation.store import ResultStore, config_diff
    out = ResultStore(dest)
    added = present = 0
    warnings = []
    for src in sources:
        s = ResultStore(src)
        head = s.header()  # refuses a file that is not a store
        if head is None:
            continue  # a cell killed before its header
        config = head["config"]
        have = out.header()
        if have is not None and have["config"] != config:
            diff = config_diff(have["config"], config)
            raise LengthwiseError(f"{src} was run with other settings than {dest} ({', '.join(diff[:3])} differ): "
                                  "merge it into another folder")
        records, w = s.records()
        warnings += [f"{src}: {x}" for x in w]
        out.open_for_append(config)
        try:
            done = out.done_ids()
            for r in records:
                if r["id"] in done:
                    present += 1
                    continue
                out.append(r)
                done.add(r["id"])
                added += 1
        finally:
            out.close()
    return {"added": added, "present": present, "warnings": warnings}


def link_runs(cell_dir: Path, out: Path) -> None:
    """OUT/runs/<name> -> cells/<cell>/runs/<name>, so a lab over OUT finds the checkpoints."""
    for run in sorted((cell_dir / "runs").glob("*")):
        target = out / "runs" / run.name
        if not target.exists() and not target.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.path.relpath(run, target.parent))


def _cell_summary(cell_dir: Path) -> dict:
    from lengthwise.evaluation.store import ResultStore
    p = cell_dir / RESULTS
    recs = ResultStore(p).records()[0] if p.exists() else []
    if not recs:
        return {"records": 0}
    r = recs[-1]
    return {"records": len(recs), "steps": r.get("steps"), "train_s": r.get("train_s"), "final_loss": r.get("final_loss")}


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)  # its own process group (start_new_session): the lab and nothing else
            proc.wait(wait)
            return
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue


def export(out: Path, to: Path) -> list[Path]:
    """The few small files worth keeping from a device run: the merged store, the summary, the cells' status,
    and one tarball of the logs, metrics, configs and report plots (no weights)."""
    to.mkdir(parents=True, exist_ok=True)
    kept = []
    for name in (RESULTS, "summary.md", "cells.json"):
        if (out / name).exists():
            shutil.copy2(out / name, to / name)
            kept.append(to / name)
    tar = to / "lab_files.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        for p in sorted(out.glob("cells/*/*")):
            if p.is_file() and p.name != RESULTS:
                t.add(p, arcname=str(p.relative_to(out)))
        for p in sorted(out.glob("cells/*/runs/*/*")):
            if p.is_file():  # train_config.json and metrics.jsonl; model/ is a folder
                t.add(p, arcname=str(p.relative_to(out)))
        for p in sorted(out.glob("results_report/*")):
            t.add(p, arcname=str(p.relative_to(out)))
    kept.append(tar)
    for png in sorted(out.glob("results_report/*.png"))[:3]:
        shutil.copy2(png, to / png.name)
        kept.append(to / png.name)
    return kept


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the results folder (created or resumed)")
    ap.add_argument("--preset", default="gpu", help="the lab preset each cell starts from (gpu, smoke)")
    ap.add_argument("--tasks", required=True, help="comma-separated tasks, options after a colon")
    ap.add_argument("--pes", required=True, help="comma-separated position encodings")
    ap.add_argument("--seeds", default="0-2", help="e.g. 0-2 or 0,1,2")
    ap.add_argument("--budget", type=float, required=True, help="seconds of training per cell (the lab's --budget)")
    ap.add_argument("--parallel", "-P", type=int, default=4, help="cells at once")
    ap.add_argument("--wall", type=float, default=540, help="seconds the whole run must end within")
    ap.add_argument("--startup-s", type=float, default=30, help="planned seconds per cell before training starts")
    ap.add_argument("--eval-s", type=float, default=60, help="planned seconds per cell after training (tests, save)")
    ap.add_argument("--report-s", type=float, default=20, help="planned seconds for the merge and the report")
    ap.add_argument("--export", type=Path, help="also copy the small outputs here (e.g. $OUT on the device)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    a = ap.parse_args(argv)

    from lengthwise.cli import _ints, _split_tasks
    from lengthwise.errors import LengthwiseError
    t0 = T0 if __name__ == "__main__" else time.monotonic()  # imported (a test): from the call
    try:
        tasks, pes, seeds = _split_tasks(a.tasks), _split_tasks(a.pes), _ints(a.seeds, "seeds")
    except LengthwiseError as e:
        ap.error(str(e))
    if a.parallel < 1 or a.budget <= 0:
        ap.error("--parallel must be >= 1 and --budget > 0")
    out = a.out.resolve()
    cells = [(t, p, s) for t in tasks for p in pes for s in seeds]
    names = [cell_name(*c) for c in cells]
    if len(set(names)) < len(names):
        ap.error("two cells share a folder name: list each task, pe and seed once")
    threads = max(1, (os.cpu_count() or 1) // min(a.parallel, len(cells)))

    def command(t, p, s):
        return [sys.executable, "-m", "lengthwise.cli", "lab", "--preset", a.preset, "--tasks", t, "--pes", p,
                "--seeds", str(s), "--budget", f"{a.budget:g}", *extra, "-o", str(out / "cells" / cell_name(t, p, s))]

    def finished(c) -> bool:
        mark = out / "cells" / cell_name(*c) / DONE
        return mark.exists() and json.loads(mark.read_text()).get("argv") == command(*c)[3:]

    todo = [c for c in cells if not finished(c)]
    per_cell = a.startup_s + a.budget + a.eval_s
    waves = math.ceil(len(todo) / min(a.parallel, max(len(todo), 1))) if todo else 0
    planned = waves * per_cell + a.report_s
    print(f"plan: {len(cells)} cells ({len(cells) - len(todo)} already done), {a.parallel} at a time, {waves} wave(s) x "
          f"({a.startup_s:g} s startup + {a.budget:g} s training + {a.eval_s:g} s tests) + {a.report_s:g} s report "
          f"= {planned:.0f} s of a {a.wall:g} s wall limit; {threads} CPU thread(s) per cell", flush=True)
    print("cell command: " + " ".join(command(*todo[0] if todo else cells[0])[1:]), flush=True)
    if planned > a.wall:
        fit = (a.wall - a.report_s) / max(waves, 1) - a.startup_s - a.eval_s
        print(f"error: the plan passes the wall limit: lower --budget to {max(math.floor(fit), 0)} or raise --parallel",
              file=sys.stderr)
        return 2
    if a.dry_run:
        return 0

    out.mkdir(parents=True, exist_ok=True)
    deadline = t0 + a.wall - a.report_s
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    status: dict[str, dict] = {}
    running: dict[tuple, tuple[subprocess.Popen, float]] = {}
    queue = list(todo)
    merged = {"added": 0, "present": 0}

    ended: set[tuple] = set()  # cells whose process is over (or that a former run finished)
    next_merge = [0]  # cells merge in grid order, so that the report lists the schemes in the order given

    def merge_ready():
        while next_merge[0] < len(cells) and cells[next_merge[0]] in ended:
            d = out / "cells" / cell_name(*cells[next_merge[0]])
            if (d / RESULTS).exists():
                r = merge_stores([d / RESULTS], out / RESULTS)
                merged["added"] += r["added"]
                merged["present"] += r["present"]
                for w in r["warnings"]:
                    print(f"warning: {w}", file=sys.stderr)
            link_runs(d, out)
            next_merge[0] += 1

    def collect(c, rc, wall_s):
        """A cell that ended (wall_s None: one a former run finished): its status now, its records in grid order."""
        d = out / "cells" / cell_name(*c)
        ended.add(c)
        if wall_s is None:
            status[cell_name(*c)] = {**json.loads((d / DONE).read_text()), "rc": 0, "earlier": True}
            status[cell_name(*c)].pop("argv")
            print(f"{cell_name(*c)}: finished by an earlier run", flush=True)
        else:
            s = {"rc": rc, "wall_s": round(wall_s, 1), **_cell_summary(d)}
            if rc == 0:
                (d / DONE).write_text(json.dumps({"argv": command(*c)[3:], **s}))
            status[cell_name(*c)] = s
            over = "" if s.get("train_s") is None else f" ({wall_s - s['train_s']:.0f} s outside training)"
            loss = "-" if s.get("final_loss") is None else f"{s['final_loss']:.4f}"
            print(f"[{time.monotonic() - t0:5.0f} s] {cell_name(*c)}: rc {rc}, {wall_s:.0f} s{over}, {s.get('steps')} "
                  f"steps, loss {loss}, {s['records']} records", flush=True)
        merge_ready()

    for c in cells:
        if c not in todo:
            collect(c, 0, None)  # merged again (idempotent), e.g. after the store was moved
    try:
        while queue or running:
            now = time.monotonic()
            while queue and len(running) < a.parallel:
                if now + per_cell > deadline:
                    for c in queue:
                        status[cell_name(*c)] = {"rc": None, "skipped": "would pass the wall limit"}
                        print(f"{cell_name(*c)}: not started, it would pass the wall limit", file=sys.stderr)
                        ended.add(c)
                    queue = []
                    break
                c = queue.pop(0)
                d = out / "cells" / cell_name(*c)
                d.mkdir(parents=True, exist_ok=True)
                with open(d / "log.txt", "ab") as log:
                    running[c] = (subprocess.Popen(command(*c), stdout=log, stderr=subprocess.STDOUT, env=env,
                                                   start_new_session=True), now)
            time.sleep(0.5)
            for c, (proc, started) in list(running.items()):
                rc = proc.poll()
                if rc is None and time.monotonic() > deadline:
                    print(f"{cell_name(*c)}: stopped at the wall limit", file=sys.stderr)
                    _stop(proc)
                    rc = proc.returncode
                if rc is not None:
                    del running[c]
                    collect(c, rc, time.monotonic() - started)
    finally:
        for c, (proc, started) in running.items():
            _stop(proc)
            collect(c, proc.returncode, time.monotonic() - started)
        ended.update(cells)
        merge_ready()

    with open(out / "cells.json", "w") as f:
        json.dump({"plan_s": planned, "elapsed_s": round(time.monotonic() - t0, 1), "budget_s": a.budget,
                   "parallel": a.parallel, "preset": a.preset, "extra": extra, "cells": status}, f, indent=1)
    print(f"merged {merged['added']} new records into {out / RESULTS} ({merged['present']} were there)", flush=True)
    rc = 0
    if (out / RESULTS).exists():
        rc = subprocess.call([sys.executable, "-m", "lengthwise.cli", "report", str(out / RESULTS),
                              "--markdown", str(out / "summary.md")])
    if a.export:
        for p in export(out, a.export.resolve()):
            print(f"exported {p}")
    bad = [n for n, s in status.items() if s.get("rc") != 0]
    print(f"done in {time.monotonic() - t0:.0f} s (planned {planned:.0f} s); "
          + (f"{len(bad)} cell(s) unfinished: {', '.join(bad)}" if bad else "every cell finished"), flush=True)
    return 1 if bad or rc else 0


if __name__ == "__main__":
    sys.exit(main())
