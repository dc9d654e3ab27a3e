"""The lab's grid: tasks x position encodings x seeds, each model trained once and tested at lengths up to
5x its training length. Results go to a results store (evaluation/store.py: a header naming the grid's
settings, one JSON line per (model, length)), so a killed lab resumes where it stopped: finished lengths are
skipped, and a trained model is reloaded from its checkpoint instead of trained again.

    {"id", "task", "pe", "seed", "train_max_len", "length", "accuracy", "n", "steps", "train_s", "precision",
     "attention", ...}
"""
from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import LengthwiseError
from ..evaluation.store import ResultStore
from ..positions import scratch
from ..tasks.algorithmic import get_task
from .loop import MODEL, RUN_CONFIG, TrainConfig, backend_for, forward_logits, score_length, train

RESULTS = "results.jsonl"


@dataclass
class LabConfig:
    tasks: list[str]
    pes: list[str]
    seeds: list[int]
    lengths: list[int] = field(default_factory=list)  # test lengths; empty: 1 .. 5 x train_max_len
    samples: int = 64  # test samples per length
    train: dict = field(default_factory=dict)  # TrainConfig fields shared by every cell (all but task, pe, seed)

    def __post_init__(self):
        if not self.tasks or not self.pes or not self.seeds:
            raise LengthwiseError("a lab grid needs at least one task, one position encoding and one seed")
        self.tasks = [get_task(t).spec() for t in self.tasks]
        self.pes = [scratch.canonical(p) for p in self.pes]
        for what, items in (("task", self.tasks), ("position encoding", self.pes), ("seed", self.seeds),
                            ("test length", self.lengths)):
            twice = next((x for i, x in enumerate(items) if x in items[:i]), None)
            if twice is not None:
                raise LengthwiseError(f"{what} {twice!r} is given twice: list each once")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise LengthwiseError(f"samples must be a whole number >= 1, got {self.samples!r}")
        probe = self.cell(self.tasks[0], self.pes[0], self.seeds[0])  # checks every shared training setting
        if not self.lengths:
            self.lengths = list(range(1, 5 * probe.train_max_len + 1))
        for t in self.tasks:
            for n in self.lengths:
                get_task(t).check_length(n)  # a test length a task cannot make fails before any training
            self.cell(t, self.pes[0], self.seeds[0])
        for p in self.pes[1:]:
            self.cell(self.tasks[0], p, self.seeds[0])  # a kernel a scheme cannot take fails before any training

    def cell(self, task: str, pe: str, seed: int) -> TrainConfig:
        return TrainConfig(task=task, pe=pe, seed=seed, **self.train)

    def store_config(self) -> dict:
        """What every record's score depends on besides its own task, pe, seed and length. Precision and the
        attention setting are keyed as they resolve (auto on CUDA is bf16), and only off the float32 reference
        path, so a store from before they were settings resumes with --precision fp32 (the CPU's default)."""
        train = {k: v for k, v in self.train.items() if k not in ("precision", "attention")}
        probe = self.cell(self.tasks[0], self.pes[0], self.seeds[0])
        run = {} if probe.legacy else {"precision": probe.precision, "attention": self.train.get("attention", "auto")}
        return {"lab": 1, "samples": self.samples, "train": json.loads(json.dumps(train)), **run}


def run_dir(out: Path, cfg: TrainConfig) -> Path:
    def safe(s):
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in s)
    return out / "runs" / f"{safe(cfg.task)}__{safe(cfg.pe)}__seed{cfg.seed}"


def record_id(config: dict, cfg: TrainConfig, length: int) -> str:
    key = {**config, "train": cfg.key(), "length": length}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


Events = Callable[[str, dict], None]  # ("train", {...}) per step, ("cell", {...}) per finished model


def run_lab(lab: LabConfig, out: Path, events: Events | None = None) -> int:
    """Train and test every cell the store lacks; returns how many records were written."""
    import lengthwise as lw
    out = Path(out)
    if (out / RUN_CONFIG).exists():
        raise LengthwiseError(f"{out} is a `lengthwise train` run ({RUN_CONFIG}): give the lab a folder of its own")
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / RESULTS)
    config = lab.store_config()
    head = store.header()
    if head is not None and head["config"] != json.loads(json.dumps(config)):
        from ..evaluation.store import config_diff
        have, want = head["config"], json.loads(json.dumps(config))
        shown = "; ".join(f"{k} is {json.dumps(have.get(k))} there, {json.dumps(want.get(k))} here"
                          for k in config_diff(have, want)[:3])
        raise LengthwiseError(f"{out} holds another lab's results ({shown}): write to a new --out")
    store.open_for_append(config)
    written = 0
    try:
        cells = [(t, p, s) for t in lab.tasks for p in lab.pes for s in lab.seeds]
        for k, (t, p, s) in enumerate(cells):
            cfg = lab.cell(t, p, s)
            done = store.done_ids()
            todo = [n for n in lab.lengths if record_id(config, cfg, n) not in done]
            if not todo:
                continue
            folder = run_dir(out, cfg)
            summary = train(cfg, folder, progress=None if events is None else
                            lambda step, loss, tps, frac: events("train", {"cell": k, "cells": len(cells), "task": t,
                                                                           "pe": p, "seed": s, "step": step,
                                                                           "loss": loss, "tokens_per_s": tps,
                                                                           "done": frac}))
            # the checkpoint as lw.load reads it, scored on the kernel and precision it trained with
            module = lw.load(folder / MODEL, device=cfg.device, dtype="float32").module
            logits = forward_logits(module, backend_for(module, cfg.device, cfg.precision, cfg.attention), cfg.precision)
            task = get_task(t)
            for n in todo:
                scores = score_length(logits, task, n, lab.samples, seed=1000 + s)
                store.append({"id": record_id(config, cfg, n), "task": t, "pe": p, "seed": s,
                              "train_max_len": cfg.train_max_len, "length": n,
                              "accuracy": sum(scores) / len(scores), "n": len(scores),
                              "steps": summary.get("steps"), "train_s": summary.get("seconds"),
                              "final_loss": summary.get("loss"), "precision": cfg.precision,
                              "attention": cfg.attention, "config": config,
                              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
                written += 1
            if events:
                events("cell", {"cell": k + 1, "cells": len(cells), "task": t, "pe": p, "seed": s})
    finally:
        store.close()
    return written


PRESETS = {
    # CPU, under a minute: 2 layers, d = 64, trained at <= 8, tested at <= 16
    "smoke": dict(tasks=["copy"], pes=["nope", "rope", "alibi"], seeds=[0], lengths=list(range(1, 17)),
                  samples=16, train=dict(n_layers=2, dim=64, n_heads=4, train_max_len=8, steps=100,
                                         tokens_per_step=384, lr=3e-3)),
    # one H200, <= 10 minutes a cell (deliverable 5; benchmarks/lab_gpu.sh runs it a cell per call)
    "gpu": dict(tasks=["copy", "reverse", "addition:reverse=true", "addition:reverse=true,hints=true", "sort",
                       "parity"],
                pes=list(scratch.SCHEMES), seeds=[0, 1, 2], lengths=list(range(1, 101)), samples=100,
                train=dict(n_layers=6, dim=384, n_heads=6, train_max_len=20, steps=100_000, budget_s=480,
                           tokens_per_step=16384, lr=1e-3, device="cuda")),
}
