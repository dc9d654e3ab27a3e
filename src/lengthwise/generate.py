"""Batched generation: one prepacked prefill, then decode steps over a ragged KV cache."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .kv import RaggedKVCache
from .models.llama import Llama, Step
from .ragged import RaggedBatch


@dataclass
class Sampling:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        from .errors import LengthwiseError
        for name in ("temperature", "top_p"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise LengthwiseError(f"{name} must be a number, got {v!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise LengthwiseError(f"seed must be an integer or None, got {self.seed!r}")
        if not 0 <= self.temperature < float("inf"):  # NaN fails too
            raise LengthwiseError(f"temperature must be a finite number >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LengthwiseError(f"top_p must be a number in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**63:  # what torch.Generator.manual_seed takes, and more
            raise LengthwiseError(f"seed must be an integer from 0 to 2**63-1, got {self.seed}")

    def sampler(self, device) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.temperature == 0:
            return lambda logits: logits.argmax(dim=-1)
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed if self.seed is not None else torch.seed())

        def sample(logits):  # [B, V] -> [B]
            probs = torch.softmax(logits.float() / self.temperature, dim=-1)
            if self.top_p < 1:
                p_sorted, idx = probs.sort(dim=-1, descending=True)
                # keep the smallest prefix whose mass reaches top_p (the top token always stays)
                drop = (p_sorted.cumsum(-1) - p_sorted) >= self.top_p
                p_sorted = p_sorted.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter_(-1, idx, p_sorted)
            return torch.multinomial(probs, 1, generator=gen).squeeze(-1)

        return sample


class GraphDecoder:
    """One decode step for every sequence, captured once as a CUDA graph and replayed per token.

    Launch overhead dominates small-model decode; a replay is one launch. Finished sequences stay
    in the batch (their outputs are ignored), which keeps every shape fixed.
    """

    def __init__(self, model: Llama, cache: RaggedKVCache, backend: str, compile_step: bool = False):
        """compile_step: compile the step with static shapes (the batch is fixed inside the graph), so
        Inductor fuses each layer's norms, RoPE, cache writes and activations into a few kernels. Measured
        slower than the eager step on the H100 (docs/benchmarks.md), so off by default; every new batch size
        or cache size compiles again, up to torch.compile's recompile limit, after which it runs eager."""
        B = cache.length.numel()
        self.tokens = torch.zeros(B, dtype=torch.int64, device=cache.length.device)  # [B] input buffer
        self.cache, self.graph = cache, torch.cuda.CUDAGraph()

        def step():
            slots, positions, meta = cache.plan_decode_all()
            return model(self.tokens, positions, Step(meta, model.mask, backend, cache, slots))

        if compile_step:
            step = torch.compile(step, dynamic=False)
        saved = cache.length.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph; its cache writes are overwritten later
            for _ in range(3 if compile_step else 2):
                step()
                cache.length.copy_(saved)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(self.graph):
            self.logits = step()  # [B, V] output buffer
        cache.length.copy_(saved)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits


@torch.inference_mode()
def generate_ids(model: Llama, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int],
                 sampling: Sampling = Sampling(), backend: str = "reference",
                 on_step: Callable[[int], None] | None = None, cuda_graph: bool | None = None,
                 compile_step: bool = False) -> list[list[int]]:
    """New token ids per prompt (EOS included when hit).

    Eager decode drops finished sequences from the batch; with a CUDA graph (the default on a GPU
    with the varlen backend) every sequence stays and one replay runs each step.
    """
    parts = model.rotary.apart([len(p) for p in prompts])
    if len(parts) > 1:  # a length-gated remap's two sides, each as its own batch
        out: list[list[int]] = [[] for _ in prompts]
        for k, part in enumerate(parts):
            # the second side draws from its own seed, and reports no steps (the caller's count runs once)
            seeded = Sampling(sampling.temperature, sampling.top_p, None if sampling.seed is None else sampling.seed + k)
            got = generate_ids(model, [prompts[i] for i in part], max_new_tokens, eos_ids, seeded, backend,
                               on_step if k == 0 else None, cuda_graph, compile_step)
            for i, ids in zip(part, got):
                out[i] = ids
        return out
    dev = model.tok_embeddings.weight.device
    cfg = model.cfg
    batch = RaggedBatch.from_lists(prompts, dev, cfg.vocab_size)
    longest = max(map(len, prompts))
    cache = RaggedKVCache(cfg.n_layers, [len(p) + max_new_tokens for p in prompts], cfg.n_kv_heads, cfg.head_dim,
                          model.tok_embeddings.weight.dtype, dev,
                          far_keys=model.rotary.far_keys_for(longest, longest + max_new_tokens),
                          prompts=[len(p) for p in prompts])
    pick = sampling.sampler(dev)
    active = torch.arange(len(prompts), device=dev)
    slots, positions, meta = cache.plan(active, batch.cu_seqlens.diff().long())
    step = Step(meta, model.mask, backend, cache, slots)
    logits = model(batch.tokens, positions, step, out_rows=batch.last_index)  # [B, V]
    if cuda_graph is None:
        cuda_graph = dev.type == "cuda" and backend == "varlen"
    graph = GraphDecoder(model, cache, backend, compile_step) if cuda_graph and max_new_tokens > 1 else None
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    rows = list(range(len(prompts)))  # the prompt of each active row, kept on the host (no sync to read it)
    if graph is not None:
        host = torch.empty(len(prompts), dtype=torch.int64, pin_memory=True)
        copied = torch.cuda.Event()
    for n in range(max_new_tokens):
        nxt = pick(logits)  # [B_active]
        if graph is not None and n < max_new_tokens - 1:
            # launch the next step before reading this one's tokens: the host's bookkeeping then runs
            # while the GPU decodes (a step past the last needed one is harmless: its output is dropped)
            host.copy_(nxt, non_blocking=True)
            copied.record()
            logits = graph(nxt)
            copied.synchronize()
            toks = host.tolist()
        else:
            toks = nxt.tolist()
        keep = []
        for j, (i, t) in enumerate(zip(rows, toks)):
            if done[i]:
                continue
            out[i].append(t)
            done[i] = t in eos_ids
            if not done[i]:
                keep.append(j)
        if on_step:
            on_step(n + 1)
        if not keep or n == max_new_tokens - 1:
            break
        if graph is not None:
            continue
        keep_t = torch.tensor(keep, device=dev)
        active, tokens, rows = active[keep_t], nxt[keep_t], [rows[j] for j in keep]
        slots, positions, meta = cache.plan(active, torch.ones_like(active))
        logits = model(tokens, positions, Step(meta, model.mask, backend, cache, slots))
    return out
