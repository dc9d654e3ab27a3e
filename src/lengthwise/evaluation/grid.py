"""The grid runner: model x method x task x length x depth x sample, resumable, batched.

Every cell gets a stable id from everything that can change its score (store_config, plus the task with all
its options, length, depth and sample); a rerun with the same config skips the cells the store already holds,
and a rerun with another config is refused unless asked to mix (append_config). Cells of one task and length run as one packed batch (lengthwise backend) or
one prompt at a time (hf backend), and each finished cell is appended to the store at once.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from ..errors import LengthwiseError
from ..tasks import get_task
from .store import ResultStore

BACKENDS = ("lengthwise", "hf")


@dataclass
class EvalConfig:
    model: str
    tasks: list[str]
    lengths: list[int]
    depths: list[float]
    samples: int = 4
    seed: int = 0
    method: str = "none"
    backend: str = "lengthwise"
    chat: bool = False
    hf_rope: dict | None = None  # the hf backend's own rope scaling, e.g. {"rope_type": "yarn", "factor": 4.0}
    device: str | None = None
    dtype: str | None = None
    max_batch_tokens: int = 65536
    kernel: str = "auto"  # the lengthwise engine's attention kernel (attention.Backend); auto picks
    kv: str = "full"  # the lengthwise engine's KV policy (kv/), e.g. "snapkv:ratio=0.5"
    kv_question: str = "kept"  # kept: the question stays out of compression; compressed: query-aware
    kv_dtype: str = "auto"  # what the lengthwise engine's cache stores keys and values in (kv/cache.py)

    def __post_init__(self):
        from .. import kv as K
        self.kv = K.parse(self.kv).spec()  # one spelling per policy, so equal configs key alike
        self.kv_dtype = K.check_kv_dtype(self.kv_dtype)
        if self.kv_question not in ("kept", "compressed"):
            raise LengthwiseError(f"kv_question must be 'kept' (the question stays out of compression) or "
                                  f"'compressed' (query-aware), got {self.kv_question!r}")
        if self.kv != "full" and self.backend != "lengthwise":
            raise LengthwiseError(f"--kv {self.kv} runs on the lengthwise engine; the hf engine keeps a full cache "
                                  "(kvpress is the HF peer: benchmarks/kvpress_peer.py)")
        if self.kv_dtype != "auto" and self.backend != "lengthwise":
            raise LengthwiseError(f"--kv-dtype {self.kv_dtype} runs on the lengthwise engine; the hf engine keeps "
                                  "its cache in the model's dtype")
        if isinstance(self.tasks, str) or not all(isinstance(t, str) for t in self.tasks):
            raise LengthwiseError(f"tasks must be a list of task names, e.g. ['passkey'], got {self.tasks!r}")
        if isinstance(self.lengths, (str, int)) or not all(isinstance(n, int) and not isinstance(n, bool)
                                                           for n in self.lengths):
            raise LengthwiseError(f"lengths must be a list of whole token counts, e.g. [1024, 4096] "
                                  f"(parse_lengths reads '1k,4k'), got {self.lengths!r}")
        if isinstance(self.depths, (str, int, float)) or not self.depths or not all(
                isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d) for d in self.depths):
            raise LengthwiseError(f"depths must be a non-empty list of percentages, e.g. [0, 50, 100], got {self.depths!r}")
        if not isinstance(self.samples, int) or isinstance(self.samples, bool):
            raise LengthwiseError(f"samples must be a whole number, got {self.samples!r}")
        if self.backend not in BACKENDS:
            raise LengthwiseError(f"unknown eval engine {self.backend!r} (--engine): choose {' or '.join(BACKENDS)}")
        bad = [d for d in self.depths if not 0 <= d <= 100]
        if bad:
            raise LengthwiseError(f"depth {bad[0]:g} is outside 0-100: depths are percentages of the context")
        if self.samples < 1:
            raise LengthwiseError(f"samples must be at least 1, got {self.samples}")
        if not self.lengths or min(self.lengths) < 1:
            raise LengthwiseError("give at least one positive length")
        if not self.tasks:
            raise LengthwiseError("no task given: name at least one, e.g. --tasks passkey")
        for what, items in (("task", self.tasks), ("length", self.lengths), ("depth", self.depths)):
            twice = next((x for i, x in enumerate(items) if x in items[:i]), None)
            if twice is not None:
                shown = repr(twice) if what == "task" else f"{twice:g}"
                raise LengthwiseError(f"{what} {shown} is given twice: list each {what} once")
        for t in self.tasks:
            get_task(t)  # unknown names and options fail here, before any model loads
        if self.kernel != "auto" and self.backend != "lengthwise":
            raise LengthwiseError(f"--backend {self.kernel} picks the lengthwise engine's attention kernel: drop it "
                                  "with --engine hf")
        if self.hf_rope and self.backend != "hf":
            raise LengthwiseError("hf_rope applies to the hf backend only: use --positions for lengthwise")
        from ..positions import from_hf, parse, to_hf
        scheme = parse(self.method)  # unknown schemes and options fail here too
        if self.backend == "hf":
            if self.hf_rope and type(scheme) is not type(parse(None)):
                raise LengthwiseError("give the hf backend either --positions or --hf-rope, not both")
            if self.hf_rope:
                scheme = from_hf(self.hf_rope, 64) or scheme  # the label names HF's setting in our terms
            else:
                to_hf(scheme, 1)  # a scheme HF has no built-in for fails here
        self.method = scheme.spec()


@dataclass(frozen=True)
class Cell:
    task: str
    length: int
    depth: float
    sample: int
    id: str = field(compare=False)


def store_config(cfg: EvalConfig) -> dict:
    """Every run-wide setting that can change a score: the store's identity, and part of every cell's key.
    Batch size, progress and the output path cannot, and stay out; so does the grid's extent (tasks, lengths,
    depths, samples), which each cell's own key names. A dict, so settings to come slot in."""
    from ..models import load as L
    from ..pipeline import resolve_device
    device = resolve_device(cfg.device).type  # the kind: cuda:0 and cuda:1 run the same kernels
    dtype = cfg.dtype if isinstance(cfg.dtype, str) or cfg.dtype is None else str(cfg.dtype).removeprefix("torch.")
    dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
    kernel = getattr(cfg, "kernel", "auto")
    if kernel == ("varlen" if device == "cuda" and dtype in ("bfloat16", "float16") else
                  "cpu_flash" if device == "cpu" and dtype in ("float32", "bfloat16", "float16") else "reference"):
        kernel = "auto"  # naming the kernel auto picks: the same run, keyed alike
    kv_dtype = getattr(cfg, "kv_dtype", "auto")
    kv_dtype = "auto" if kv_dtype == "bf16" and dtype == "bfloat16" else kv_dtype  # the same cache: keyed alike
    return {"model": cfg.model, "model_sha256": L.content_hash(L.resolve(cfg.model)), "backend": cfg.backend,
            "dtype": dtype, "device": device, "chat": cfg.chat,
            "positions": cfg.method, "hf_rope": cfg.hf_rope, "kv": getattr(cfg, "kv", None) or "full",
            "seed": cfg.seed, **({"kernel": kernel} if kernel != "auto" else {}),
            **({"kv_question": cfg.kv_question} if (getattr(cfg, "kv", None) or "full") != "full" else {}),
            **({"kv_dtype": kv_dtype} if kv_dtype != "auto" else {}),  # stores from before kv_dtype keep their keys
            **_kv_files(getattr(cfg, "kv", None) or "full")}


def _kv_files(kv: str) -> dict:
    """A policy that reads a file (duo's calibration table) is keyed by the file's bytes too, not its path alone."""
    from pathlib import Path
    from .. import kv as K
    from ..models import load as L
    path = getattr(K.parse(kv), "calibration", "")
    return {"kv_calibration_sha256": L.content_hash(Path(path))} if path else {}


def cell_id(cfg: EvalConfig, task: str, length: int, depth: float, sample: int, context: int | None = None,
            config: dict | None = None) -> str:
    """context: the model's trained context. A cell whose prompt it cuts (Task.ceiling) names it in its key, so a
    store from before that rule, whose prompt there ran past the context, is not taken for this cell.
    config: store_config(cfg), when the caller has it."""
    t = get_task(task)
    key = {**(config or store_config(cfg)), "task": task, "task_options": asdict(t), "length": length,
           "depth": depth, "sample": sample}
    if t.ceiling(length, context) is not None:
        key["within"] = context
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cells(cfg: EvalConfig, context: int | None, config: dict | None = None) -> list[Cell]:
    """Every cell of the grid, for a model trained to `context` tokens (L.trained_context)."""
    config = config or store_config(cfg)
    return [Cell(t, n, d, s, cell_id(cfg, t, n, d, s, context, config))
            for t in cfg.tasks for n in cfg.lengths for d in cfg.depths for s in range(cfg.samples)]


def sample_seed(cfg: EvalConfig, sample: int) -> int:
    return cfg.seed * 1_000_003 + sample


def estimate_seconds(cfg: EvalConfig, n_params: int, n_layers: int, width: int, todo: list[Cell], cpu: bool) -> float:
    """A rough time for the grid: matmul FLOPs plus causal attention, at a conservative device rate."""
    # FLOP/s actually reached, with margin: 2 CPU cores in float32 (cpu_flash: 8k smollm2 prefill, 4.5e12 FLOP,
    # in 18 s = 2.5e11), or a GPU in bf16
    rate = 1e11 if cpu else 1e14
    flops = sum(2 * n_params * c.length + 2 * n_layers * width * c.length**2 for c in todo)
    return flops / rate


def run(cfg: EvalConfig, store: ResultStore, runner, yes: bool = False, allow_beyond_context: bool = False,
        progress: Callable[[int, int], None] | None = None, warn: Callable[[str], None] = print,
        append_config: bool = False) -> int:
    """Run every cell the store lacks; returns how many ran. `runner` is a loaded backend (backends.py).
    A store of another config is refused unless append_config; the store is locked while cells run."""
    config = store_config(cfg)
    store.check(config, append_config)
    finished = store.done_ids()
    todo = [c for c in cells(cfg, runner.trained_context, config) if c.id not in finished]
    if not todo:
        return 0
    longest = max(c.length for c in todo)
    if longest > runner.context_length:
        msg = (f"length {longest} is beyond the {runner.context_length}-token context {cfg.model} was trained on "
               f"and method {cfg.method!r} does not claim to reach it")
        if not allow_beyond_context:
            raise LengthwiseError(msg + ": pass --allow-beyond-context to run it anyway")
        warn(msg + "; running anyway (--allow-beyond-context)")
    secs = estimate_seconds(cfg, runner.n_params, runner.n_layers, runner.width, todo, True) if (
        getattr(runner, "on_cpu", False) and not yes) else 0.0  # a runner of one's own may skip the estimate
    if secs > 1800:
        raise LengthwiseError(f"this grid ({len(todo)} cells, up to {longest} tokens) would take about "
                              f"{secs / 3600:.1f} h on this CPU: shrink it, use a GPU, or pass --yes")
    new = not store.path.exists()
    store.open_for_append(config, append_config)
    try:
        return _run(cfg, config, store, runner, todo, progress)
    except LengthwiseError:
        if new and not store.records()[0]:  # refused before a first cell: leave no file behind
            store.path.unlink(missing_ok=True)
        raise
    finally:
        store.close()


def _run(cfg: EvalConfig, config: dict, store: ResultStore, runner, todo: list[Cell], progress) -> int:
    done = 0
    for batch in _batches(todo, cfg.max_batch_tokens):
        task = get_task(batch[0].task)  # a batch holds one task and one length
        samples = [task.make(runner.render, c.length, c.depth, sample_seed(cfg, c.sample), runner.trained_context)
                   for c in batch]
        outputs, timing = runner.generate(samples)
        per = {k: timing.pop(k) for k in [k for k, v in timing.items() if isinstance(v, list)]}  # one per sample
        for j, (c, s, out) in enumerate(zip(batch, samples, outputs)):
            store.append({
                "id": c.id, "model": cfg.model, "method": cfg.method, "backend": cfg.backend, "task": c.task,
                "length": c.length, "depth": c.depth, "sample": c.sample, "seed": s.seed,
                "score": task.score(out, s), "output": out, "answers": list(s.answers),
                # a task that scores 0 when a distractor's value appears (confusing_facts) keeps them, so the
                # score can be checked from the store alone
                **({"distractors": list(s.meta["distractors"])} if "distractors" in s.meta else {}),
                "prompt_tokens": s.n_tokens, **timing, **{k: v[j] for k, v in per.items()}, "batch_size": len(batch),
                "kv": config.get("kv", "full"), "kv_dtype": config.get("kv_dtype", "auto"), "config": config,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            })
            done += 1
        if progress:
            progress(done, len(todo))
    return done


def _batches(todo: list[Cell], max_tokens: int) -> list[list[Cell]]:
    """Cells of one task and length together, up to max_tokens prompt tokens per batch."""
    groups: dict[tuple[str, int], list[Cell]] = {}
    for c in todo:
        groups.setdefault((c.task, c.length), []).append(c)
    out = []
    for group in groups.values():
        per = max(1, max_tokens // group[0].length)
        out += [group[i:i + per] for i in range(0, len(group), per)]
    return out


def parse_lengths(text: str) -> list[int]:
    """'1k,2k,4k' -> [1024, 2048, 4096]; plain numbers are tokens."""
    out = []
    parts = [p.strip().lower() for p in text.split(",")]
    if len(parts) > 1 and "" in parts:
        raise LengthwiseError(f"lengths {text!r} has an empty item: separate the lengths with single commas, e.g. 1k,2k,4k")
    for part in (p for p in parts if p):
        try:
            out.append(int(float(part[:-1]) * 1024) if part.endswith("k") else int(part))
        except (ValueError, OverflowError):  # "abc", "nan", "infk"
            raise LengthwiseError(f"cannot read length {part!r}: use tokens like 4096 or 4k") from None
    if not out or min(out) < 1:
        raise LengthwiseError(f"lengths {text!r}: give positive lengths like 1k,2k,4k")
    return out


def parse_depths(text: str) -> list[float]:
    """'5' -> 5 depths evenly from 0 to 100; '10,50,90' or '50%' -> those percentages."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) == 1 and parts[0].isdigit():
        n = int(parts[0])
        if n < 1:
            raise LengthwiseError("--depths 0 is a count of zero depths: give a count of at least 1, or "
                                  "percentages like 0% (depth 0 alone) or 0,50,100")
        if n > 101:
            raise LengthwiseError(f"--depths {n} is a count of depths spread over 0-100 and at most 101 fit (1% "
                                  f"steps); for one depth give a percentage like 50%, and depths stay within 0-100")
        return [50.0] if n == 1 else [round(100 * i / (n - 1), 2) for i in range(n)]
    try:
        return [float(p.rstrip("%")) for p in parts]
    except ValueError:
        raise LengthwiseError(f"cannot read depths {text!r}: give a count like 5 or percentages like 10,50,90") from None
