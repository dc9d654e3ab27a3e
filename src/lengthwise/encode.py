"""Texts to vectors as a pipeline, and sentence-transformers' `encode` conventions on top of it.

A host thread tokenizes (the fast tokenizer's Rust batch API: its own threads, the GIL released) and packs the
next group into pinned buffers while the device runs the current one. The main thread copies (non_blocking),
runs the forward and the head, and copies the vectors back into a pinned output; it syncs once, at the end.
Groups are exactly `token_budget`'s over the whole input, so the vectors are bit for bit those of
`embed_ids(tokenize(texts))`.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputTooLong, LengthwiseError
from .packing import token_budget
from .ragged import RaggedBatch

STAGES = ("tokenize", "pack", "copy", "forward", "pool", "back")
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
CHUNK = 512  # texts per tokenizer call


@dataclass
class EmbedTiming:
    """Seconds per stage of one texts -> vectors call. tokenize and pack run on the host thread; copy, forward,
    pool and back are device time (CUDA events) on a GPU, wall time on the CPU. wait: the main thread idle for
    the host (a starved device)."""
    tokenize: float = 0.0
    pack: float = 0.0
    copy: float = 0.0
    forward: float = 0.0
    pool: float = 0.0
    back: float = 0.0
    wait: float = 0.0
    wall: float = 0.0
    texts: int = 0
    tokens: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["device_busy"] = (self.copy + self.forward + self.pool + self.back) / self.wall if self.wall else 0.0
        return d


class FastTokenizer:
    """A copy of an HF fast tokenizer's Rust backend, truncating at max_len as sentence-transformers does
    (right side, specials kept); the user's tokenizer is not changed."""

    def __init__(self, tok, max_len: int):
        from tokenizers import Tokenizer
        self.rust = Tokenizer.from_str(tok.backend_tokenizer.to_str())
        self.rust.no_padding()
        self.rust.enable_truncation(max_len)

    @staticmethod
    def applies(tok) -> bool:
        return tok is not None and getattr(tok, "is_fast", False) and getattr(tok, "truncation_side", "right") == "right"

    def __call__(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        encs = self.rust.encode_batch(texts, add_special_tokens=True)
        return [e.ids for e in encs], [bool(e.overflowing) for e in encs]


def _host_batches(texts, tokenize, budget: int, vocab: int, pin: bool, truncate: bool, limit: int, full_len,
                  timing: EmbedTiming, threads: int = 2):
    """Yields (first index, host RaggedBatch) per token_budget group, tokenizing CHUNK texts per call, up to
    `threads` chunks ahead."""
    chunks = [texts[k:k + CHUNK] for k in range(0, len(texts), CHUNK)]
    pending: list[list[int]] = []
    start = 0
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(_timed, tokenize, c) for c in chunks[:threads]]
        for k in range(len(chunks)):
            (ids, over), sec = futures[k].result()
            if k + threads < len(chunks):
                futures.append(pool.submit(_timed, tokenize, chunks[k + threads]))
            timing.tokenize += sec
            if not truncate and any(over):
                i = over.index(True)
                raise InputTooLong(k * CHUNK + i, full_len(chunks[k][i]), limit, "this encoder takes",
                                   "shorten it or pass truncate=True")
            t0 = time.perf_counter()
            pending += ids
            groups = token_budget([len(s) for s in pending], budget)
            closed = groups if k == len(chunks) - 1 else groups[:-1]  # the last group may still grow
            out = []
            for g in closed:
                seqs = pending[g[0]:g[-1] + 1]
                lens = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
                flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lens.sum()))
                if flat.size and (flat.min() < 0 or flat.max() >= vocab):
                    raise LengthwiseError(f"the tokenizer gave token id {int(flat[(flat < 0) | (flat >= vocab)][0])}, "
                                          f"outside this model's vocabulary 0..{vocab - 1}")
                b = RaggedBatch.from_lens(torch.from_numpy(flat), torch.from_numpy(lens), "cpu")
                out.append((start + g[0], b.pinned() if pin else b))
            used = closed[-1][-1] + 1 if closed else 0
            pending, start = pending[used:], start + used
            timing.pack += time.perf_counter() - t0
            yield from out


def _timed(fn, *a):
    t = time.perf_counter()
    r = fn(*a)
    return r, time.perf_counter() - t


def _background(gen, depth: int = 3):
    """Run a generator on a thread, `depth` items ahead; its exception is raised here, in order."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def run():
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


def run(enc, texts: list[str], budget: int, truncate: bool, progress=None, timing: EmbedTiming | None = None,
        normalize: bool = False, truncate_dim: int | None = None, to_host: bool = True,
        token_embeddings: bool = False):
    """Texts -> [N, D'] float32 vectors (on the host when to_host, else on the model's device), or with
    token_embeddings a list of [len_i, dim] hidden states. D' = truncate_dim or the head's dimension."""
    timing = timing if timing is not None else EmbedTiming()
    t_start = time.perf_counter()
    dev, cuda = enc.device, enc.device.type == "cuda"
    tok = enc._need_tokenizer()
    if enc._fast is None:
        enc._fast = FastTokenizer(tok, enc.max_seq_length)
    dim = truncate_dim or enc.dim
    N = len(texts)
    out = torch.empty(N, dim, dtype=torch.float32, device="cpu" if to_host else dev, pin_memory=cuda and to_host)
    tokens_out: list = [None] * N
    events = []
    full_len = lambda t: len(tok(t)["input_ids"])  # noqa: E731 (the error path only)
    host = _background(_host_batches(texts, enc._fast, budget, enc.config.vocab_size, cuda, truncate,
                                     enc.max_seq_length, full_len, timing))
    done = 0
    clock = time.perf_counter
    while True:
        t0 = clock()
        item = next(host, None)
        timing.wait += clock() - t0
        if item is None:
            break
        first, hb = item
        marks = [_mark(cuda)]
        b = hb.to(dev)
        marks.append(_mark(cuda))
        h = enc.module(b.tokens, b.positions, enc.step(b))
        marks.append(_mark(cuda))
        n = b.num_seqs
        if token_embeddings:
            for i, x in enumerate(b.split(h.float())):
                tokens_out[first + i] = x
            marks += [_mark(cuda), _mark(cuda)]
        else:
            e = enc.head(h, b.cu_seqlens)
            if truncate_dim:
                e = e[:, :truncate_dim]
            if normalize:
                e = F.normalize(e, p=2, dim=1)
            marks.append(_mark(cuda))
            out[first:first + n].copy_(e, non_blocking=cuda)
            marks.append(_mark(cuda))
        events.append(marks)
        timing.tokens += b.num_tokens
        done += n
        if progress:
            progress(done)
    if cuda:
        torch.cuda.current_stream(dev).synchronize()
    for marks in events:
        for stage, a, z in zip(STAGES[2:], marks, marks[1:]):
            setattr(timing, stage, getattr(timing, stage) + _elapsed(a, z, cuda))
    timing.texts += N
    timing.wall += time.perf_counter() - t_start
    return tokens_out if token_embeddings else out


def _mark(cuda: bool):
    if cuda:
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e
    return time.perf_counter()


def _elapsed(a, z, cuda: bool) -> float:
    return a.elapsed_time(z) / 1e3 if cuda else z - a


def quantize(x: np.ndarray, precision: str) -> np.ndarray:
    """sentence-transformers' quantize_embeddings, calibrated on the embeddings themselves (as its encode does)."""
    if precision == "float32":
        return x.astype(np.float32)
    if precision.endswith("int8"):
        if x.shape[0] < 2:
            raise LengthwiseError(f"precision={precision!r} calibrates its ranges on the embeddings themselves and "
                                  "needs at least 2 of them: encode more texts, or quantize yourself")
        starts = x.min(0)
        steps = (x.max(0) - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        q = np.clip(np.floor((x - starts) / steps), 0, 255)
        return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)
    bits = np.packbits(x > 0, axis=-1)
    return (bits - 128).astype(np.int8) if precision == "binary" else bits


def check_encode(batch_size, precision, truncate_dim, output_value, dim: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise LengthwiseError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
    if precision not in PRECISIONS:
        raise LengthwiseError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if truncate_dim is not None and (not isinstance(truncate_dim, int) or isinstance(truncate_dim, bool)
                                     or not 1 <= truncate_dim <= dim):
        raise LengthwiseError(f"truncate_dim must be an integer from 1 to the embedding dimension {dim}, "
                              f"got {truncate_dim!r}")
    if output_value not in ("sentence_embedding", "token_embeddings"):
        raise LengthwiseError(f"output_value {output_value!r}: lengthwise returns sentence_embedding or "
                              "token_embeddings")
