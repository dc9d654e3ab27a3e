"""Batched generation from small verbs: `prefill`, `decode_step`, `generate_ids`.

    cache = new_cache(model, prompts, max_new_tokens, policy)
    logits = prefill(model, prompts, cache, backend, policy)         # [B, V], each prompt's last token
    logits = decode_step(model, cache, tokens, seqs, backend, policy)  # one new token per sequence in seqs

Prefill packs every prompt into one stream (no padding). With a policy that evicts (kv/policy.py) long prompts
prefill in chunks, each ending in an eviction, so the cache holds the budget plus one chunk, never the prompt;
decode steps evict every `policy.every` steps. Without one, decode on a GPU replays one CUDA graph per token
(graphs.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .attention.backend import Backend
from .attention.layer import Step
from .kv import Full, Policy, RaggedKVCache
from .ragged import RaggedBatch

PREFILL_CHUNK = 4096  # tokens per sequence per prefill forward, where a policy evicts


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


@dataclass
class Timing:
    """Where a generation's time went: prefill (to each side's first new token, read on the host) and decode,
    summed over the sides a length gate runs apart."""
    prefill_s: float = 0.0
    decode_s: float = 0.0
    kv_bytes: list[int] = field(default_factory=list)  # each prompt's share of the storage its KV cache held
    _t: float = field(default=0.0, repr=False)

    def start(self) -> None:
        self._t = time.perf_counter()

    def first(self) -> None:
        now = time.perf_counter()
        self.prefill_s += now - self._t
        self._t = now

    def end(self) -> None:
        self.decode_s += time.perf_counter() - self._t


def capacities(policy: Policy, prompts: list[int], max_new_tokens: int, chunk: int, n_layers: int = 1,
               context: list[int] | None = None) -> list[list[int]]:
    """Each layer's cache region per sequence, [L][B]: its whole need without eviction; with it, the most the
    policy ever lets it hold: the budget plus one prefill chunk, or plus the decode steps between evictions (all
    of them, every=0). context: where each prompt's context ends; the tokens past it (the question, the
    answer) are kept whole, so they add to the budget."""
    if not policy.evicts:
        return [[n + max_new_tokens for n in prompts]] * n_layers
    P = torch.tensor(prompts, dtype=torch.int64)
    C = P if context is None else torch.tensor(context, dtype=torch.int64)
    kept = policy.layer_keep(C, n_layers)  # [L, B]
    pre = torch.minimum(C, kept + chunk) if context is None else torch.maximum(torch.minimum(C, kept + chunk), kept + P - C)
    if policy.every and context is None:
        N = P + max_new_tokens
        dec = torch.minimum(N, policy.layer_keep(N, n_layers) + policy.every)
    else:  # the budget covers the context; the question and new tokens stay
        dec = kept + (P - C) + max_new_tokens
    return torch.maximum(pre, dec).tolist()


def new_cache(model, prompts: list[list[int]], max_new_tokens: int, policy: Policy = Full(),
              chunk: int = PREFILL_CHUNK, context: list[int] | None = None) -> RaggedKVCache:
    """A ragged cache sized for these prompts, their new tokens and the policy; context: where each prompt's
    context ends (the policy compresses that much, and keeps the rest)."""
    cfg, w = model.cfg, model.tok_embeddings.weight
    lens = [len(p) for p in prompts]
    longest = max(lens)
    check_policy(model, policy)
    context = check_context(context, lens)
    caps = capacities(policy, lens, max_new_tokens, chunk, cfg.n_layers, context)
    cache = RaggedKVCache(cfg.n_layers, [max(c) for c in zip(*caps)], cfg.n_kv_heads, cfg.head_dim, w.dtype,
                          w.device, far_keys=model.rotary.far_keys_for(longest, longest + max_new_tokens),
                          prompts=lens, evicting=policy.evicts, layer_capacities=caps if policy.evicts else None,
                          scores=policy.accumulate)
    if context is not None and policy.evicts:
        cache.context = torch.tensor(context, dtype=torch.int64, device=w.device)
    return cache


def check_context(context, lens: list[int]) -> list[int] | None:
    """Where each prompt's context ends: one count per prompt, from 1 to its length."""
    if context is None:
        return None
    from .errors import LengthwiseError
    context = list(context)
    if len(context) != len(lens) or not all(isinstance(c, int) and 1 <= c <= n for c, n in zip(context, lens)):
        raise LengthwiseError("context must give, per prompt, where its context ends: an integer from 1 to the "
                              "prompt's length (the tokens after it are kept out of compression)")
    return context


def check_policy(model, policy: Policy) -> None:
    """A policy that evicts needs distances by position, not by cache slot: refused with a remap (two-region
    attention) or a model's own sliding window."""
    if not policy.evicts or not (model.rotary.far_needed or model.cfg.windowed):
        return
    from .errors import LengthwiseError
    what = (f"the position scheme {model.rotary.scheme.spec()} (a remap measures distance by cache slot)"
            if model.rotary.far_needed else f"this model's {model.cfg.sliding_window}-token sliding window")
    raise LengthwiseError(f"the KV policy {policy.spec()} cannot run with {what}: drop the policy (kv=full)")


def _budgets(policy: Policy, cache: RaggedKVCache, seqs: torch.Tensor) -> torch.Tensor:
    """[L, B'] what each layer keeps of each sequence after this forward: the policy's budget for all it has
    seen, or, where the cache knows the context's end, for the context, plus everything after it."""
    n = cache.length[seqs]
    if cache.context is None:
        return policy.layer_keep(n, cache.n_layers)
    c = torch.minimum(n, cache.context[seqs])
    return policy.layer_keep(c, cache.n_layers) + (n - c)[None, :]


def prefill(model, prompts: list[list[int]], cache: RaggedKVCache, backend, policy: Policy = Full(),
            chunk: int = PREFILL_CHUNK) -> torch.Tensor:
    """Run every prompt into the cache; -> [B, V] logits of each prompt's last token.

    One packed forward, or, where the policy evicts, chunks of at most `chunk` tokens per sequence: each
    chunk attends to what the cache kept of the earlier ones, then the policy trims each sequence to its
    budget. Where the cache knows each context's end, the chunks stop there and the rest of each prompt (the
    question) runs in one more forward that evicts nothing."""
    dev = cache.length.device
    batch = RaggedBatch.from_lists(prompts, dev, model.cfg.vocab_size)
    lens = batch.cu_seqlens.diff().long()
    seqs = torch.arange(len(prompts), device=dev)
    if not policy.evicts:
        slots, positions, meta = cache.plan(seqs, lens)
        return model(batch.tokens, positions, Step(meta, model.mask, backend, cache, slots),
                     out_rows=batch.last_index)
    logits = torch.empty(len(prompts), model.cfg.vocab_size, dtype=cache.dtype, device=dev)
    host = [len(p) for p in prompts]
    ends = host if cache.context is None else cache.context.tolist()  # where eviction stops
    E = torch.tensor(ends, device=dev)
    starts = batch.cu_seqlens[:-1].long()

    def forward(rows: list[int], first: torch.Tensor, n_new: torch.Tensor, evict: bool):
        sel = torch.tensor(rows, device=dev)
        slots, positions, meta = cache.plan(sel, n_new)
        idx = torch.repeat_interleave(starts[sel], n_new) + positions  # the forward's tokens in the packed prompts
        step = Step(meta, model.mask, backend, cache, slots, policy=policy, seqs=sel,
                    budgets=_budgets(policy, cache, sel) if evict else None)
        out = model(batch.tokens[idx], positions, step, out_rows=meta.cu_q[1:].long() - 1)
        done = [j for j, i in enumerate(rows) if int(first[j]) + int(n_new[j]) == host[i]]  # prompts that end here
        if done:
            d = torch.tensor(done, device=dev)
            logits[sel[d]] = out[d]

    for a in range(0, max(ends), chunk):
        rows = [i for i, n in enumerate(ends) if n > a]
        sel = torch.tensor(rows, device=dev)
        forward(rows, torch.full((len(rows),), a), (E[sel] - a).clamp(max=chunk), True)
    rest = [i for i in range(len(prompts)) if host[i] > ends[i]]
    if rest:
        sel = torch.tensor(rest, device=dev)
        forward(rest, E[sel].cpu(), lens[sel] - E[sel], False)
    return logits


def decode_step(model, cache: RaggedKVCache, tokens: torch.Tensor, seqs: torch.Tensor, backend,
                policy: Policy = Full(), evict: bool = False) -> torch.Tensor:
    """One new token for each cache sequence seqs [B'] (ascending): tokens [B'] -> logits [B', V]. evict: the
    policy trims each sequence to its budget after this step."""
    slots, positions, meta = cache.plan(seqs, torch.ones_like(seqs))
    kw = {}
    if policy.evicts:  # the policy sees every step (accumulated scores); it evicts on the steps asked
        kw = dict(policy=policy, seqs=seqs, budgets=_budgets(policy, cache, seqs) if evict else None)
    return model(tokens, positions, Step(meta, model.mask, backend, cache, slots, **kw))


@torch.inference_mode()
def generate_ids(model, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int],
                 sampling: Sampling = Sampling(), backend="reference",
                 on_step: Callable[[int], None] | None = None, cuda_graph: bool | None = None,
                 policy: Policy = Full(), chunk: int = PREFILL_CHUNK, timing: Timing | None = None,
                 context: list[int] | None = None) -> list[list[int]]:
    """New token ids per prompt (EOS included when hit). context: where each prompt's context ends; a policy
    that evicts then compresses the context only and keeps the rest (the question) whole. timing, where given,
    also receives each prompt's measured share of its cache's bytes (Timing.kv_bytes).

    Eager decode drops finished sequences from the batch; with a CUDA graph (the default on a GPU with the
    varlen backend and a cache that keeps everything) every sequence stays and one replay runs each step. A
    length-gated remap runs its two sides apart (positions/gate.py); the second side draws from its own seed
    and reports no steps (the caller's count runs once)."""
    parts = model.rotary.apart([len(p) for p in prompts])
    context = check_context(context, [len(p) for p in prompts])
    out: list[list[int]] = [[] for _ in prompts]
    shares: list[int] = [0] * len(prompts)
    for k, part in enumerate(parts):
        seeded = sampling if k == 0 or sampling.seed is None else Sampling(sampling.temperature, sampling.top_p,
                                                                            sampling.seed + k)
        got, held = _generate([prompts[i] for i in part], model, max_new_tokens, eos_ids, seeded, backend,
                              on_step if k == 0 else None, cuda_graph, policy, chunk, timing,
                              None if context is None else [context[i] for i in part])
        for i, ids, b in zip(part, got, held):
            out[i], shares[i] = ids, b
    if timing is not None:
        timing.kv_bytes = shares
    return out


def _generate(prompts, model, max_new_tokens, eos_ids, sampling, backend, on_step, cuda_graph, policy, chunk, timing,
              context=None):
    from .graphs import GraphDecoder
    backend = Backend.of(backend)
    dev = model.tok_embeddings.weight.device
    if timing is not None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timing.start()
    cache = new_cache(model, prompts, max_new_tokens, policy, chunk, context)
    held = cache.region_bytes()
    pick = sampling.sampler(dev)
    logits = prefill(model, prompts, cache, backend, policy, chunk)  # [B, V]
    if cuda_graph is None:
        cuda_graph = dev.type == "cuda" and backend.kernel == "varlen" and not policy.evicts
    graph = GraphDecoder(model, cache, backend) if cuda_graph and max_new_tokens > 1 else None
    active = torch.arange(len(prompts), device=dev)
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
        if n == 0 and timing is not None:
            timing.first()
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
        if len(keep) < len(rows):
            keep_t = torch.tensor(keep, device=dev)
            active, nxt, rows = active[keep_t], nxt[keep_t], [rows[j] for j in keep]
        logits = decode_step(model, cache, nxt, active, backend, policy,
                             evict=policy.every > 0 and (n + 1) % policy.every == 0)
    if timing is not None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timing.end()
    return out, held
