"""Tables and plots from a results store (JSONL, one cell per line, as the evaluation runner writes it).

    read_results    records and warnings; bad lines are skipped, not fatal; duplicate ids keep the last
    accuracy_table  mean score and cell count per (model, method, backend, variant, task, length)
    format_table    that table as plain text for the terminal
    plots           PNG heatmaps (depth x length) and accuracy-vs-length curves
    markdown        a summary with percentages, cell counts and the warnings
    effective_length  RULER's effective length: the longest tested length up to which every one meets a bar
    report          all of the above from one results path

A NaN (or null) score is kept as a cell but left out of the means; a group whose scores are all NaN
has accuracy NaN, shown as "nan".

Records of different configs are never averaged together: within one (model, method, backend), every
setting of the record's config that differs between records (dtype, device, chat, seed, the model's hash,
...) is named in the row's `variant`, e.g. "chat=true, dtype=bfloat16"; a KV policy or cache dtype other than the default
is named even where every record agrees (`kv=snapkv:ratio=0.5`).
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from .errors import LengthwiseError
from .outputs import atomic_write, check_folder

REQUIRED = ("task", "length", "depth", "method", "backend", "model", "score")
GROUP = ("model", "method", "backend", "variant")  # one model variant: a table, a heatmap set, a curve
# what a record's config says beyond model, method and backend (stores before issue 20 carry some of these)
VARIANT_FIELDS = ("model_sha256", "dtype", "device", "chat", "hf_rope", "kv", "kv_question", "kv_dtype", "seed")
# shown in a heading even when every record agrees, unless at their defaults: a compressed cache is never silent
ALWAYS_SHOWN = {"kv": (None, "full"), "kv_dtype": (None, "auto"), "kv_question": (None, "kept")}
_META = ("lengthwise_store", "lengthwise_config")  # a store's header and config lines: not records
MAX_WARNINGS_SHOWN = 20
# RULER's bar for an effective length: Llama-2-7B's mean RULER score at 4k (Hsieh et al. 2024, "RULER")
RULER_THRESHOLD = 0.856
PLOT_DPI = 150
MARKERS = "osD^vP"


# ---------------------------------------------------------------- reading


def read_results(path: str | Path) -> tuple[list[dict], list[str]]:
    """(records, warnings) of a results JSONL (or .jsonl.gz); records get int length, float depth and float score."""
    path = Path(path)
    if not path.exists():
        raise LengthwiseError(f"results file {path} does not exist")
    if path.is_dir():
        inside = path / "results.jsonl"
        if inside.is_file():  # a lab's folder
            raise LengthwiseError(f"results {path} is a directory: give its store, {inside}")
        raise LengthwiseError(f"results {path} is a directory: give the .jsonl file the evaluation wrote")
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":  # a committed or archived store: gzip-compressed JSONL
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig", errors="replace")
    except OSError as e:
        raise LengthwiseError(f"cannot read {path}: {e.strerror or e}") from None
    except (EOFError, zlib.error) as e:
        raise LengthwiseError(f"cannot read {path}: not a complete gzip file ({e}); give the .jsonl the evaluation "
                              "wrote, or a whole .jsonl.gz of it") from None
    # split on "\n" only: json.dumps(ensure_ascii=False) leaves U+2028 raw, which splitlines() would cut
    lines = text.split("\n")
    cut_off = lines[-1].strip() != ""  # no final newline: a writer may have been killed mid-line
    records, warnings = [], []
    for i, line in enumerate(lines, start=1):
        if not line.strip() or (line.startswith('{"lengthwise_') and any(f'"{k}"' in line[:40] for k in _META)):
            continue
        rec, problem = _parse(line)
        if problem:
            if cut_off and i == len(lines) and problem.startswith("not valid JSON"):
                problem += " in an unfinished last line (writer interrupted?)"
            warnings.append(f"line {i}: {problem}; skipped")
            continue
        records.append(rec)
    if not records:
        why = "it is empty" if not warnings else f"all {len(warnings)} non-blank lines were skipped ({warnings[0]})"
        raise LengthwiseError(f"results file {path} has no valid records: {why}")

    records = _keep_last(records, lambda r: str(r["id"]) if "id" in r else None, "an earlier id", warnings)
    # the same cell under another id: a store resumed across a change of the cell key (a cell within the
    # trained context was re-keyed when its prompt and answer were first kept inside it)
    records = _keep_last(records, _cell, "an earlier cell under another id (built before a change of the cell's "
                         "key, e.g. the within-context rule)", warnings)

    n_nan = sum(1 for rec in records if math.isnan(rec["score"]))
    if n_nan:
        warnings.append(f"{n_nan} of {len(records)} record{_s(len(records))} have no score (NaN); "
                        "left out of the means")
    return records, warnings


def _config(rec: dict) -> dict:
    """The record's settings beyond model, method and backend (VARIANT_FIELDS that its config names)."""
    cfg = rec.get("config") if isinstance(rec.get("config"), dict) else {}
    return {k: cfg[k] for k in VARIANT_FIELDS if k in cfg}


def _variants(records: list[dict]) -> list[str]:
    """Each record's variant: the settings that differ between the records of its (model, method, backend),
    as "k=v, ..." ("" where they all agree)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[(r["model"], r["method"], r["backend"])].append(i)
    cfgs = [_config(r) for r in records]
    out = [""] * len(records)
    for idx in groups.values():
        keys = [k for k in VARIANT_FIELDS
                if len({json.dumps(cfgs[i].get(k), sort_keys=True, default=str) for i in idx}) > 1
                or (k in ALWAYS_SHOWN and any(cfgs[i].get(k) not in ALWAYS_SHOWN[k] for i in idx))]
        for i in idx:
            out[i] = ", ".join(f"{k}={_show(k, cfgs[i].get(k))}" for k in keys)
    return out


def _show(key: str, value) -> str:
    if value is None:
        if key == "kv_dtype":
            return "auto"  # keyed only where it is not the default
        return "?" if key in ("dtype", "device") else "none"  # stores before issue 20: the default, unrecorded
    if key == "model_sha256" and isinstance(value, str):
        return value[:12]
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def _cell(rec: dict) -> str | None:
    """What a grid cell is, apart from its id; None for records that do not say (no sample or seed)."""
    if "sample" not in rec or "seed" not in rec:
        return None
    return json.dumps([rec[k] for k in ("model", "method", "backend", "task", "length", "depth")]
                      + [rec["sample"], rec["seed"], _config(rec)], sort_keys=True, default=str)


def _keep_last(records: list[dict], key, what: str, warnings: list[str]) -> list[dict]:
    """The records whose key(rec) (None: always kept) does not come again later; one warning for the rest."""
    keys = [key(rec) for rec in records]
    last = {k: j for j, k in enumerate(keys) if k is not None}
    stale = [j for j, k in enumerate(keys) if k is not None and last[k] != j]
    if not stale:
        return records
    n = len({keys[j] for j in stale})
    eg = f", e.g. {str(records[stale[0]]['id'])!r}" if "id" in records[stale[0]] else ""
    warnings.append(f"{len(stale)} record{_s(len(stale))} repeat {what} ({n} cell{_s(n)}{eg}); kept the last of each")
    drop = set(stale)
    return [rec for j, rec in enumerate(records) if j not in drop]


def _parse(line: str) -> tuple[dict | None, str | None]:
    """(record, None) or (None, why it was skipped)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return None, f"not a JSON object (got {type(obj).__name__})"
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        return None, f"missing key{_s(len(missing))} {', '.join(map(repr, missing))}"
    rec = dict(obj)
    for k in ("model", "method", "backend", "task"):
        rec[k] = str(obj[k])
    length, depth, score = obj["length"], obj["depth"], obj["score"]
    if not _is_number(length) or not math.isfinite(length) or length != int(length) or length <= 0:
        return None, f"length is not a positive integer ({length!r})"
    if not _is_number(depth) or not 0 <= depth <= 100:  # NaN and infinity fail too
        return None, f"depth is not a percentage in 0-100 ({depth!r})"
    if score is not None and not _is_number(score):
        return None, f"score is not a number ({score!r})"
    if score is not None and not math.isnan(score) and not 0 <= score <= 1:
        return None, f"score is outside 0-1 ({score!r})"
    rec["length"], rec["depth"] = int(length), float(depth)
    rec["score"] = math.nan if score is None else float(score)
    return rec, None


def _is_number(x) -> bool:
    return isinstance(x, (int, float))  # bool counts: a pass/fail score of true is 1.0


def _s(n: int) -> str:
    return "" if n == 1 else "s"


# ---------------------------------------------------------------- tables


def _natural(s: str) -> tuple:
    """Sort key with numbers compared as numbers: yarn:factor=4 before yarn:factor=16."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", s) if p)


def _group_key(g: tuple[str, ...]) -> tuple:
    model, method, backend, variant = (*g, "")[:4]
    return _natural(model), method != "none", _natural(method), _natural(backend), _natural(variant)  # baseline first


def _label(g: tuple[str, ...], sep: str = " / ") -> str:
    return sep.join(x for x in g if x)


def _mean(xs: Iterable[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def accuracy_table(records: list[dict]) -> list[dict]:
    """Rows {model, method, backend, task, length, accuracy, n, kv_mb}: mean score (0..1) over the n cells, and
    the mean KV-cache size per sequence in decode (MiB) the engine measured (kv_bytes), None where none did."""
    cells: dict[tuple, list[float]] = defaultdict(list)
    kv: dict[tuple, list[float]] = defaultdict(list)
    for r, v in zip(records, _variants(records)):
        key = (r["model"], r["method"], r["backend"], v, r["task"], r["length"])
        cells[key].append(r["score"])
        if _is_number(r.get("kv_bytes")):
            kv[key].append(r["kv_bytes"] / 2**20)
    keys = sorted(cells, key=lambda k: (_group_key(k[:4]), _natural(k[4]), k[5]))
    return [dict(model=k[0], method=k[1], backend=k[2], variant=k[3], task=k[4], length=k[5],
                 accuracy=_mean(cells[k]), n=len(cells[k]), kv_mb=_mean(kv[k]) if kv.get(k) else None)
            for k in keys]


def _pivot(rows: list[dict]) -> list[tuple[tuple[str, ...], list[str], list[int], dict]]:
    """Per (model, method, backend, variant) in table order: (group, tasks, lengths, {(task, length): row})."""
    out: dict[tuple, tuple] = {}
    for r in rows:
        g = tuple(r.get(k, "") for k in GROUP)
        tasks, lengths, cell = out.setdefault(g, ([], set(), {}))
        if r["task"] not in tasks:
            tasks.append(r["task"])
        lengths.add(r["length"])
        cell[(r["task"], r["length"])] = r
    return [(g, tasks, sorted(lengths), cell) for g, (tasks, lengths, cell) in out.items()]


def _pct(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:.1f}"


def effective_length(accuracy: dict[int, float], threshold: float = RULER_THRESHOLD) -> tuple[int | None, bool]:
    """RULER's effective length: the longest tested length up to which every tested length scores at least
    `threshold` (0..1). Returns (length, failed_first): (None, True) when the shortest tested length already
    misses, (None, False) when nothing was tested. A NaN accuracy (no scored cell) counts as a miss."""
    _check_threshold(threshold)
    best = None
    for n in sorted(accuracy):
        a = accuracy[n]
        if math.isnan(a) or a < threshold - 1e-9:  # three cells of 0.95 average to 0.9499999999999998
            return best, best is None
        best = n
    return best, False


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0 <= threshold <= 1:  # NaN fails too: every length would pass it
        raise LengthwiseError(f"effective-length threshold {threshold!r} is outside 0-1: it is a fraction, "
                              "e.g. 0.95 (the CLI's --threshold takes percent)")


def _effective_label(accuracy: dict[int, float], threshold: float, lengths) -> str:
    n, failed_first = effective_length(accuracy, threshold)
    if n is not None:
        return _len_label(n, lengths)
    return f"<{_len_label(min(accuracy), lengths)}" if failed_first else "-"


def _grid(tasks, lengths, cell, value, mean_label: str | None = None,
          threshold: float | None = None) -> list[list[str]]:
    """Header plus one row per task; with mean_label and several tasks, a last row of the mean accuracy;
    with threshold, a last column of each row's effective length (effective_length)."""
    rows = [["task"] + [_len_label(n, lengths) for n in lengths]]
    accs = []
    for t in tasks:
        rows.append([t] + [value(cell[(t, n)]) if (t, n) in cell else "-" for n in lengths])
        accs.append({n: cell[(t, n)]["accuracy"] for n in lengths if (t, n) in cell})
    if mean_label and len(tasks) > 1:
        mean = {n: _mean(cell[(t, n)]["accuracy"] for t in tasks if (t, n) in cell) for n in lengths}
        rows.append([mean_label] + [_pct(mean[n]) for n in lengths])
        # RULER averages every task at each length: where a task is untested or unscored, the mean shown
        # covers the others only, so it is no evidence of reach (NaN, a miss)
        whole = {n: all((t, n) in cell and not math.isnan(cell[(t, n)]["accuracy"]) for t in tasks) for n in lengths}
        accs.append({n: mean[n] if whole[n] else math.nan for n in lengths})
    if threshold is not None:
        _check_threshold(threshold)
        rows[0].append(f"effective (≥{100 * threshold + 0.0:g}%)")
        for row, acc in zip(rows[1:], accs):
            row.append(_effective_label(acc, threshold, lengths))
    if mean_label and any(r.get("kv_mb") is not None for r in cell.values()):  # the cache each length held
        mb = {n: _mean([cell[(t, n)]["kv_mb"] for t in tasks
                        if (t, n) in cell and cell[(t, n)].get("kv_mb") is not None]) for n in lengths}
        rows.append(["KV MiB/seq"] + ["-" if math.isnan(mb[n]) else f"{mb[n]:.3g}" for n in lengths]
                    + ([""] if threshold is not None else []))
    return rows


def format_table(rows: list[dict], threshold: float | None = RULER_THRESHOLD) -> str:
    """Plain text: per model/method/backend, accuracy in percent, tasks down, lengths across, and each
    row's effective length at `threshold` (0..1; None leaves that column out)."""
    blocks = []
    for g, tasks, lengths, cell in _pivot(rows):
        grid = _grid(tasks, lengths, cell, lambda r: _pct(r["accuracy"]), "mean", threshold)
        widths = [max(len(row[c]) for row in grid) for c in range(len(grid[0]))]
        lines = ["  ".join([row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:])])
                 for row in grid]
        lines.insert(1, "-" * len(lines[0]))
        blocks.append(_label(g) + "  (accuracy %)\n" + "\n".join(lines))
    return "\n\n".join(blocks)


def markdown(records: list[dict], warnings: list[str], threshold: float | None = RULER_THRESHOLD) -> str:
    """A Markdown summary: per model/method/backend, accuracy (%) with each row's effective length at
    `threshold` (0..1; None leaves it out), and cell counts, by task x length."""
    def table(grid):
        esc = [[v.replace("|", "\\|") for v in row] for row in grid]
        return "\n".join(["| " + " | ".join(esc[0]) + " |",
                          "|" + "---|" + "---:|" * (len(esc[0]) - 1)]
                         + ["| " + " | ".join(row) + " |" for row in esc[1:]])

    _check_threshold(threshold)
    out = ["# Results", "", f"{len(records)} cell{_s(len(records))}."]
    if threshold is not None:
        out[-1] += (f" Effective length (RULER's): the longest tested length up to which every tested length "
                    f"scores at least {100 * threshold + 0.0:g}% (the mean row: every task scored there); `<` and "
                    "the shortest tested length: even that one misses.")
    for g, tasks, lengths, cell in _pivot(accuracy_table(records)):
        acc = _grid(tasks, lengths, cell, lambda r: _pct(r["accuracy"]), "**mean**", threshold)
        out += ["", f"## {' · '.join(f'`{v}`' for v in g if v)}", "", "Accuracy (%):", "", table(acc),
                "", "Cells:", "", table(_grid(tasks, lengths, cell, lambda r: str(r["n"])))]
    if warnings:
        out += ["", "## Warnings", ""]
        out += [f"- {w}" for w in warnings[:MAX_WARNINGS_SHOWN]]
        if len(warnings) > MAX_WARNINGS_SHOWN:
            out.append(f"- ... and {len(warnings) - MAX_WARNINGS_SHOWN} more")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- plots


def _len_label(n: int, among: Iterable[int] = ()) -> str:
    """1024 -> 1k, 32768 -> 32k, 1048576 -> 1M, 4000 -> 4k; raw numbers if two lengths would share a label."""
    def label(m: int) -> str:
        for unit, suffix in ((1 << 20, "M"), (1 << 10, "k"), (10 ** 6, "M"), (10 ** 3, "k")):
            if m >= unit and m % unit == 0:
                return f"{m // unit}{suffix}"
        return str(m)
    among = set(among) | {n}
    return label(n) if len({label(m) for m in among}) == len(among) else str(n)


def _safe(*parts: str) -> str:
    """A file name stem of letters, digits, '-', '_' and '.'; 'yarn:factor=4' -> 'yarn_factor-4'."""
    s = "_".join(p.replace(":", "_").replace("=", "-") for p in parts)
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", s)
    return re.sub(r"-{2,}", "-", s).strip("-.") or "x"


def _figure(w: float, h: float):
    # no pyplot: its global state and GUI backends are not ours to touch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    return fig


MANIFEST = ".lengthwise-report.json"  # in a plot folder: the PNGs the last report wrote there


def retire(out_dir: Path, written: list[Path]) -> None:
    """Remove the PNGs an earlier report wrote into out_dir that this one did not write again (a store's task or
    series gone), so a reused folder shows this report only; files the reports never wrote are left alone."""
    manifest = out_dir / MANIFEST
    try:
        before = json.loads(manifest.read_text())["plots"]
    except (OSError, ValueError, KeyError, TypeError):
        before = []
    names = {p.name for p in written}
    for name in before:
        if isinstance(name, str) and name not in names and name.endswith(".png") and "/" not in name:
            (out_dir / name).unlink(missing_ok=True)
    with atomic_write(manifest, "w") as f:
        json.dump({"plots": sorted(names)}, f)


def plots(records: list[dict], out_dir: str | Path, threshold: float | None = RULER_THRESHOLD) -> list[Path]:
    """Write heatmaps (one per model/method/backend/task) and curves (one per task, plus all tasks) as PNG,
    scores in percent; the curves draw `threshold` (0..1, None: no line), the effective-length bar.

    The all-tasks curve of a series averages, at each length, the task accuracies that series has there.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LengthwiseError("plots need matplotlib, a core dependency of lengthwise that is missing here: "
                              "pip install 'matplotlib>=3.8'") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, stem: str) -> None:
        p = out_dir / f"{stem}.png"
        k = 2
        while p in written:  # two names that differ only in unsafe characters
            p, k = out_dir / f"{stem}-{k}.png", k + 1
        with atomic_write(p, "wb") as f:  # an earlier plot of that name stays whole until this one is
            fig.savefig(f, format="png")
        written.append(p)

    by_cell: dict[tuple, dict[tuple[float, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r, v in zip(records, _variants(records)):
        g = (r["model"], r["method"], r["backend"], v)
        by_cell[(*g, r["task"])][(r["depth"], r["length"])].append(r["score"])
    for key in sorted(by_cell, key=lambda k: (_group_key(k[:4]), _natural(k[4]))):
        if not _positional(key[4]):
            continue  # no key, so no depth axis: its depths only reseed prompts (the table and curves count them)
        save(_heatmap(key, by_cell[key]), _safe("heatmap", *(x for x in key if x)))

    rows = accuracy_table(records)
    groups = sorted({tuple(r[k] for k in GROUP) for r in rows}, key=_group_key)
    tasks = sorted({r["task"] for r in rows}, key=_natural)
    acc = {(tuple(r[k] for k in GROUP), r["task"], r["length"]): r["accuracy"] for r in rows}
    for task in tasks:
        curves = {g: {n: a for (g2, t, n), a in acc.items() if g2 == g and t == task} for g in groups}
        save(_curves(task, curves, groups, threshold), _safe("curve", task))
    mean_curves = {}
    for g in groups:
        per_len = defaultdict(list)
        for (g2, _, n), a in acc.items():
            if g2 == g:
                per_len[n].append(a)
        mean_curves[g] = {n: _mean(v) for n, v in per_len.items()}
    save(_curves(f"all tasks (mean of {len(tasks)})", mean_curves, groups, threshold), "curve_all-tasks")
    retire(out_dir, written)
    return written


def plot_links(written: list[Path], base: Path) -> str:
    """A Markdown section linking every plot, by paths relative to `base` (the Markdown's folder)."""
    if not written:
        return ""
    out = ["", "## Plots", ""]
    for p in written:
        rel = Path(os.path.relpath(p.resolve(), base.resolve())).as_posix()
        out.append(f"- [{p.stem}]({rel.replace(' ', '%20').replace('(', '%28').replace(')', '%29')})")
    return "\n".join(out) + "\n"


def _positional(task: str) -> bool:
    """Whether the task puts a key at the cell's depth (tasks this version does not know: assume so)."""
    from .tasks import TASKS
    cls = TASKS.get(task.split(":")[0])
    return cls is None or cls.positional


def _heatmap(key: tuple[str, ...], cells: dict[tuple[float, int], list[float]]):
    import numpy as np
    depths = sorted({d for d, _ in cells})
    lengths = sorted({n for _, n in cells})
    grid_dl = np.full((len(depths), len(lengths)), np.nan)
    for (d, n), scores in cells.items():
        grid_dl[depths.index(d), lengths.index(n)] = _mean(scores)
    *g, task = key
    title = f"{task}\n{_label(tuple(g), ' · ')}"
    width = max(2.2 + 0.85 * len(lengths), 1.0 + 0.075 * max(map(len, title.split("\n"))))  # room for the title
    fig = _figure(min(width, 20), min(1.8 + 0.42 * len(depths), 16))
    ax = fig.add_subplot()
    cmap = _cmap()
    im = ax.imshow(np.ma.masked_invalid(100 * grid_dl), cmap=cmap, vmin=0.0, vmax=100.0, aspect="auto",
                   interpolation="nearest")
    fontsize = 9 if len(lengths) <= 10 else 7
    for i in range(len(depths)):
        for j in range(len(lengths)):
            v = grid_dl[i, j]
            if (depths[i], lengths[j]) not in cells:
                continue
            ax.text(j, i, "nan" if np.isnan(v) else _pct(v), ha="center", va="center", fontsize=fontsize,
                    color="white" if not np.isnan(v) and v < 0.5 else "black")  # cividis: dark low, light high
    ax.set_xticks(range(len(lengths)), [_len_label(n, lengths) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("depth (%)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="score (%)")
    fig.tight_layout()
    return fig


def _cmap():
    from matplotlib import colormaps
    # colour-blind safe and monotone in lightness; grey marks cells whose scores are all NaN
    return colormaps["cividis"].with_extremes(bad="lightgrey")


def _curves(title: str, curves: dict[tuple, dict[int, float]], groups: list[tuple], threshold: float | None = None):
    """One line per (model, method, backend); colour by model and method (viridis), line style and marker by
    backend; colours that repeat also change marker, so equal curves stay visible on top of each other."""
    from matplotlib import colormaps
    from matplotlib.ticker import NullLocator
    beside = len(groups) > 4  # many series would hide the lines they label: the legend goes beside the axes
    longest = max((len(_label(g, " · ")) for g in groups), default=0)
    fig = _figure(7.0 + (min(0.065 * longest, 6.0) + 0.6 if beside else 0.0), 4.5)
    ax = fig.add_subplot()
    several_models = len({g[0] for g in groups}) > 1
    colour_keys = list(dict.fromkeys((*g[:2], *g[3:]) for g in groups))
    backends = sorted({g[2] for g in groups}, key=lambda b: (b != "lengthwise", _natural(b)))  # ours drawn solid
    palette = colormaps["viridis"]
    # spread over viridis without its lightest end (yellow on white is hard to see)
    colour_at = {k: palette(0.85 * i / max(len(colour_keys) - 1, 1)) for i, k in enumerate(colour_keys)}
    styles = ["-", "--", ":", "-."]
    all_lengths = sorted({n for c in curves.values() for n in c})
    for g in groups:
        pts = sorted(curves[g].items())
        if not pts:
            continue
        label = _label(g if several_models else g[1:], " · ")
        b = backends.index(g[2])
        c = colour_keys.index((*g[:2], *g[3:]))
        colour = colour_at[(*g[:2], *g[3:])]
        # later backends drawn thinner with hollow markers, so agreeing backends stay visible on top of each other
        # neighbouring colours also differ in marker, so series of like colour that agree stay apart
        ax.plot([n for n, _ in pts], [100 * a for _, a in pts], label=label, color=colour,
                linestyle=styles[b % len(styles)], linewidth=2.0 if b == 0 else 1.3,
                marker=MARKERS[(b + c) % len(MARKERS)], markersize=(9 if c % 2 == 0 else 6.5) if b == 0 else 5,
                markerfacecolor=colour if b == 0 else "white", zorder=3 + b)  # thin, hollow ones on top
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_lengths, [_len_label(n, all_lengths) for n in all_lengths])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(all_lengths[0] / 1.3, all_lengths[-1] * 1.3)
    ax.set_ylim(0.0, 102.0)
    if threshold is not None:
        ax.axhline(100 * threshold, color="black", linestyle=(0, (4, 3)), linewidth=1.0, zorder=1,
                   label=f"effective-length bar ({100 * threshold + 0.0:g}%)")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if beside:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- entry point


def report(path: str | Path | list, out_dir: str | Path | None = None, markdown_path: str | Path | None = None,
           threshold: float | None = RULER_THRESHOLD) -> dict:
    """Read one results JSONL or several (together); write plots (default `<stem>_report/` beside the
    first) and, if asked, the Markdown; threshold (0..1, or None for none) is the bar for the effective
    lengths. A bad threshold fails before anything is read or written.

    Returns {"table": accuracy_table rows, "plots": [Path], "warnings": [str], "markdown": str}.
    """
    _check_threshold(threshold)
    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    if not paths:
        raise LengthwiseError("no results file given: pass at least one JSONL written by lengthwise eval")
    out_dir = Path(out_dir) if out_dir is not None else paths[0].with_name(f"{paths[0].stem}_report")
    check_folder(out_dir)  # both outputs fail before anything is read or written
    if markdown_path is not None:
        markdown_path = Path(markdown_path)
        if markdown_path.is_dir():
            raise LengthwiseError(f"cannot write the summary to {markdown_path}: it is a directory; give a file name "
                                  "like summary.md")
        check_folder(markdown_path.parent)
    records, warnings = [], []
    for p in paths:
        r, w = read_results(p)
        records += r
        warnings += [f"{p.name}: {x}" if len(paths) > 1 else x for x in w]
    if len(paths) > 1:  # the same cell in two stores (a copy, a rerun) counts once: the later store's
        records = _keep_last(records, lambda r: str(r["id"]) if "id" in r else None, "a cell of an earlier store",
                             warnings)
    written = plots(records, out_dir, threshold)
    md = markdown(records, warnings, threshold)
    if markdown_path is not None:
        md += plot_links(written, markdown_path.parent)
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(markdown_path, "w") as f:
            f.write(md if md.endswith("\n") else md + "\n")
    return {"table": accuracy_table(records), "plots": written, "warnings": warnings, "markdown": md}


# ---------------------------------------------------------------- the length lab (train/lab.py)

LAB_REQUIRED = ("task", "pe", "seed", "train_max_len", "length", "accuracy", "n")


def is_lab(path: str | Path) -> bool:
    """Whether a results file is a lab store (its records name a pe), judged by its first record."""
    from .evaluation.store import ResultStore
    records, _ = ResultStore(path).records()
    return bool(records) and "pe" in records[0] and "accuracy" in records[0]


def read_lab(paths: list[Path]) -> tuple[list[dict], list[str]]:
    from .evaluation.store import ResultStore, config_diff
    records, warnings = [], []
    first = None  # (path, config) of the first store with a header: every other must match it
    for p in paths:
        if not Path(p).exists():
            raise LengthwiseError(f"results file {p} does not exist")
        head = ResultStore(p).header()
        if head is not None:
            if first is None:
                first = (p, head["config"])
            elif head["config"] != first[1]:
                shown = "; ".join(f"{k} is {json.dumps(first[1].get(k))} in {first[0]}, {json.dumps(head['config'].get(k))} "
                                  f"in {p}" for k in config_diff(first[1], head["config"])[:2])
                raise LengthwiseError(f"{first[0]} and {p} are labs with other settings ({shown}): their records "
                                      "do not compare; report them apart")
        recs, w = ResultStore(p).records()
        warnings += w
        for r in recs:
            missing = [k for k in LAB_REQUIRED if k not in r]
            if missing:
                warnings.append(f"record {r.get('id')!r}: missing {', '.join(missing)}; skipped")
            elif _is_number(r["accuracy"]) and 0 <= r["accuracy"] <= 1:
                records.append(r)
    if not records:
        raise LengthwiseError(f"{', '.join(map(str, paths))} hold no lab records")
    return _keep_last(records, lambda r: str(r["id"]), "an earlier id", warnings), warnings


def lab_curves(records: list[dict]) -> dict[tuple[str, str], dict[int, tuple[float, float]]]:
    """{(task, pe): {length: (median over seeds, best seed)}} of accuracy."""
    by: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by[(r["task"], r["pe"])][int(r["length"])].append(float(r["accuracy"]))
    out = {}
    for key, per in by.items():
        out[key] = {n: (_median(v), max(v)) for n, v in sorted(per.items())}
    return out


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def mrr_table(records: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], tuple[float, int]], dict[str, float]]:
    """The PE study's ranking: per task, each PE's mean accuracy (median over seeds) at the lengths past its
    training length, ranked (ties share the better rank); the mean reciprocal rank of each PE over the tasks.
    A task where every scheme scores the same (all 0%, say) ranks none of them (rank None) and is left out of
    the MRR: a tie there says nothing about the schemes. Returns (tasks, pes, {(task, pe): (accuracy, rank)},
    {pe: mrr}) (mrr NaN where no task ranks)."""
    curves = lab_curves(records)
    train = {(r["task"], r["pe"]): int(r["train_max_len"]) for r in records}
    tasks = sorted({t for t, _ in curves}, key=_natural)
    pes = list(dict.fromkeys(r["pe"] for r in records))
    cell: dict[tuple[str, str], tuple[float, int]] = {}
    for t in tasks:
        acc = {}
        for p in pes:
            c = curves.get((t, p))
            far = [m for n, (m, _) in (c or {}).items() if n > train[(t, p)]]
            if far:  # no tested length past training: nothing to rank on (the table shows -)
                acc[p] = sum(far) / len(far)
        tie = len(acc) > 1 and max(acc.values()) - min(acc.values()) <= 1e-12  # every scheme alike: no ranking
        for p, a in acc.items():
            cell[(t, p)] = (a, None if tie else 1 + sum(b > a + 1e-12 for b in acc.values()))
    mrr = {p: _mean(1 / cell[(t, p)][1] for t in tasks if (t, p) in cell and cell[(t, p)][1] is not None)
           for p in pes}
    pes.sort(key=lambda p: -mrr[p] if not math.isnan(mrr[p]) else 1)
    return tasks, pes, cell, mrr


def format_mrr(tasks, pes, cell, mrr) -> str:
    head = ["task"] + pes
    def show(t, p):
        if (t, p) not in cell:
            return "-"
        a, rank = cell[(t, p)]
        return f"{_pct(a)} ({'tie' if rank is None else f'#{rank}'})"
    rows = [head] + [[t] + [show(t, p) for p in pes] for t in tasks]
    rows.append(["MRR"] + ["-" if math.isnan(mrr[p]) else f"{mrr[p]:.2f}" for p in pes])
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = ["  ".join([r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])]) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    tied = [t for t in tasks if any((t, p) in cell for p in pes)
            and all(cell[(t, p)][1] is None for p in pes if (t, p) in cell)]
    note = (f"\nevery scheme scores the same on {', '.join(tied)}: left out of the MRR (a tie ranks nothing)"
            if tied else "")
    short = [t for t in tasks if not any((t, p) in cell for p in pes)]
    if short:
        note += (f"\nno tested length is past the training length on {', '.join(short)}: nothing to rank (test "
                 "longer, e.g. lab --lengths 1-5x the training length)")
    return ("accuracy past the training length, % (median over seeds; #rank per task); MRR over tasks\n"
            + "\n".join(lines) + note)


def _lab_curve(task: str, curves: dict, pes: list[str], train_len: int):
    from matplotlib import colormaps
    fig = _figure(7.6, 4.5)
    ax = fig.add_subplot()
    palette = colormaps["viridis"]
    for i, p in enumerate(pes):
        pts = curves.get((task, p))
        if not pts:
            continue
        colour = palette(0.85 * i / max(len(pes) - 1, 1))
        xs = list(pts)
        ax.plot(xs, [100 * m for m, _ in pts.values()], label=p, color=colour, linewidth=1.8,
                marker=MARKERS[i % len(MARKERS)], markersize=5 if i % 2 else 7, zorder=3 + 2 * i)
        if any(b != m for m, b in pts.values()):  # several seeds: the best drawn thin
            ax.plot(xs, [100 * b for _, b in pts.values()], color=colour, linewidth=0.8, linestyle=":", zorder=2 + 2 * i)
    ax.axvline(train_len, color="black", linestyle=(0, (4, 3)), linewidth=1.0, label=f"training length ({train_len})")
    ax.axvspan(0, train_len, color="grey", alpha=0.08, zorder=0)
    ax.set_ylim(0.0, 102.0)
    ax.set_xlim(0.5, max(n for c in curves.values() for n in c) + 0.5)
    ax.set_xlabel("length (task size)")
    ax.set_ylabel("exact match (%)")
    ax.set_title(f"{task}: accuracy against length (median over seeds; dotted: best seed)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def lab_report(paths: list[Path], out_dir: Path | None = None, markdown_path: Path | None = None) -> dict:
    """Curves of accuracy against length per PE (one plot per task, training length marked) and the task x PE
    mean-reciprocal-rank table; plots in `out_dir` (default `<stem>_report/` beside the first file)."""
    paths = [Path(p) for p in paths]
    out_dir = Path(out_dir) if out_dir is not None else paths[0].with_name(f"{paths[0].stem}_report")
    check_folder(out_dir)
    records, warnings = read_lab(paths)
    tasks, pes, cell, mrr = mrr_table(records)
    curves = lab_curves(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for t in tasks:
        train_len = max(int(r["train_max_len"]) for r in records if r["task"] == t)
        p = out_dir / f"{_safe('lab', t)}.png"
        with atomic_write(p, "wb") as f:
            _lab_curve(t, curves, pes, train_len).savefig(f, format="png")
        written.append(p)
    retire(out_dir, written)
    text = format_mrr(tasks, pes, cell, mrr)
    md = "# Length lab\n\n```\n" + text + "\n```\n"
    if markdown_path is not None:
        markdown_path = Path(markdown_path)
        md += plot_links(written, markdown_path.parent)
        with atomic_write(markdown_path, "w") as f:
            f.write(md if md.endswith("\n") else md + "\n")
    return {"text": text, "plots": written, "warnings": warnings, "mrr": mrr, "markdown": md, "records": records}


class _Module(type(os)):
    """This module, callable: `lw.report(path, ...)` is report(...), and `lw.report.accuracy_table` and the rest
    stay where they are."""

    def __call__(self, *args, **kwargs) -> dict:
        return report(*args, **kwargs)


import sys  # noqa: E402

sys.modules[__name__].__class__ = _Module
