"""Shared pieces of the benchmarks: length mixes, timing, ceilings, results (JSON + PNG)."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def mix(name: str, n: int, seed: int = 0) -> list[int]:
    """Sequence lengths of the issue's mixes."""
    r = np.random.default_rng(seed)
    if name == "lognormal":  # (a) median 96, sigma 0.8, clipped to [8, 512]
        return np.clip(np.round(96 * np.exp(0.8 * r.standard_normal(n))), 8, 512).astype(int).tolist()
    if name == "bimodal":  # (b) 90% short 8-64, 10% long 384-512
        long = r.random(n) < 0.1
        return np.where(long, r.integers(384, 513, n), r.integers(8, 65, n)).tolist()
    if name == "uniform128":  # (c) fixed length: padding costs nothing
        return [128] * n
    if name == "long":  # 256-8192 tokens
        return r.integers(256, 8193, n).tolist()
    raise ValueError(name)


def random_ids(lens: list[int], vocab: int, seed: int = 0, low: int = 1000) -> list[list[int]]:
    r = np.random.default_rng(seed + 1)
    return [r.integers(low, vocab, n).tolist() for n in lens]


def padded(seqs: list[list[int]], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The peers' input: ids and attention mask [B, max_len], padded right (encoders) or left (generate)."""
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        where = slice(L - len(s), L) if left else slice(0, len(s))
        ids[i, where] = torch.tensor(s)
        mask[i, where] = 1
    return ids, mask


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int = 3, warmup: int = 1) -> tuple[float, object]:
    """Median wall seconds of fn() over repeats, after warm-up; each call is a whole workload pass."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def peak_mem_gib(fn) -> float:
    if not torch.cuda.is_available():
        return float("nan")
    sync()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync()
    return torch.cuda.max_memory_allocated() / 2**30


def matmul_tflops() -> float:
    """The bf16 matmul ceiling, measured now: an 8192^3 GEMM, median of 20."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    ts = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    return 2 * 8192**3 / statistics.median(ts) / 1e12


def copy_gbps(device="cuda") -> float:
    """Memory bandwidth measured now, bytes read plus written: a 2 GiB device-to-device copy on a GPU, median of
    10; on the CPU (smoke runs) a 256 MiB copy timed on the host."""
    if torch.device(device).type != "cuda":
        x = torch.empty(2**27, dtype=torch.int16)
        y = torch.empty_like(x)
        y.copy_(x)
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            y.copy_(x)
            ts.append(time.perf_counter() - t)
        return 2 * x.numel() * 2 / statistics.median(ts) / 1e9
    x = torch.empty(2**30, dtype=torch.int16, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync()
    ts = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        y.copy_(x)
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    return 2 * x.numel() * 2 / statistics.median(ts) / 1e9


def tiny_llama(folder: Path, context: int = 1024) -> Path:
    """A random 2-layer Llama (vocab 512, dim 64, GQA 4/2) saved as an HF folder: smoke runs on the CPU."""
    import transformers
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=context)).save_pretrained(folder, safe_serialization=True)
    return folder


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance() -> dict:
    """Where and with what a result was measured: device, torch, transformers and the UTC date."""
    import transformers
    return {"device": device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
            "date": time.strftime("%Y-%m-%d", time.gmtime())}


def save(name: str, rows: list[dict], extra: dict, plot) -> Path:
    """Write benchmarks/results/<name>.json and .png (or under $OUT when set, on the GPU machine)."""
    out = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark": name, "device": device_name(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), **extra}
    (out / f"{name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plot(plt, rows)
    fig.suptitle(f"{name} on {meta['device']}, {meta['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    return out


def bar_plot(rows: list[dict], group_key: str, label_key: str, value_key: str, ylabel: str):
    """One bar per (group, label): e.g. tokens/s per workload and system."""
    import matplotlib.pyplot as plt
    groups = list(dict.fromkeys(r[group_key] for r in rows))
    labels = list(dict.fromkeys(r[label_key] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    w = 0.8 / len(labels)
    for j, lab in enumerate(labels):
        xs, ys = [], []
        for i, g in enumerate(groups):
            v = [r[value_key] for r in rows if r[group_key] == g and r[label_key] == lab]
            if v:
                xs.append(i + j * w)
                ys.append(v[0])
        ax.bar(xs, ys, w, label=lab)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(groups))], groups, rotation=15, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return fig


def table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    lines += [" | ".join(fmt(r.get(c, "")) for c in cols) for r in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def switches(lm, **kw):
    """Flip Backend switches of a loaded model (lw.load's lm) for a with-block, e.g.
    `with switches(lm, triton_decode=False):`; lm.backend comes back after. Only what reads lm.backend inside
    the block sees them: pass lm.backend (or a Backend of your own) where a function takes one."""
    saved = lm.backend
    lm.backend = dataclasses.replace(saved, **kw)
    try:
        yield lm.backend
    finally:
        lm.backend = saved
