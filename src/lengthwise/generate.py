"""Batched generation from small verbs: `prefill`, `decode_step`, `generate` (`generate_ids`: its token ids).

    cache = new_cache(model, prompts, max_new_tokens, policy)
    logits = prefill(model, prompts, cache, backend, policy)         # [B, V], each prompt's last token
    logits = decode_step(model, cache, tokens, seqs, backend, policy)  # one new token per sequence in seqs

Prefill packs every prompt into one stream (no padding). With a policy that evicts (kv/policy.py) long prompts
prefill in chunks, each ending in an eviction, so the cache holds the budget plus one chunk, never the prompt;
decode steps evict every `policy.every` steps. Without one, decode on a GPU replays one CUDA graph per token
(graphs.py). Each step's logits become tokens in sampling.py (HF's logits processors, stop strings,
logprobs); `generate` runs the prompts in groups whose cache fits a token budget.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .attention.backend import Backend
from .attention.layer import Step
from .kv import Full, Policy, RaggedKVCache
from .packing import token_budget
from .ragged import RaggedBatch
from .sampling import Completion, Picker, Sampling, TokenLogprob

PREFILL_CHUNK = 4096  # tokens per sequence per prefill forward, where a policy evicts


@dataclass
class Timing:
    """Where a generation's time went: prefill (to each side's first new token, read on the host) and decode,
    summed over the sides a length gate runs apart."""
    prefill_s: float = 0.0
    decode_s: float = 0.0
    kv_bytes: list[int] = field(default_factory=list)  # each prompt's share of the KV-cache storage held in decode
    kv_bytes_prefill: list[int] = field(default_factory=list)  # ... and during prefill (the budget plus a chunk)
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
    # the prefill's peak: before each chunk the cache holds the budget for what it has seen so far (a budget per
    # layer need not grow with the tokens seen: PyramidKV's pyramid only forms past a length), plus that chunk
    pre = torch.minimum(C, torch.tensor(chunk)).expand(n_layers, -1)
    for a in range(chunk, max(C.tolist(), default=0), chunk):
        seen = C.clamp(max=a)
        pre = torch.maximum(pre, torch.where(C > a, policy.layer_keep(seen, n_layers) + (C - seen).clamp(max=chunk), 0))
    pre = torch.maximum(pre, kept) if context is None else torch.maximum(pre, kept + P - C)
    if policy.every and context is None:
        N = P + max_new_tokens
        dec = torch.minimum(N, policy.layer_keep(N, n_layers) + policy.every)
    else:  # the budget covers the context; the question and new tokens stay
        dec = kept + (P - C) + max_new_tokens
    return torch.maximum(pre, dec).tolist()


def new_cache(model, prompts: list[list[int]], max_new_tokens: int, policy: Policy = Full(),
              chunk: int = PREFILL_CHUNK, context: list[int] | None = None, kv_dtype: str = "auto") -> RaggedKVCache:
    """A ragged cache sized for these prompts, their new tokens and the policy; context: where each prompt's
    context ends (the policy compresses that much, and keeps the rest); kv_dtype: what it stores (kv/cache.py)."""
    cfg, w = model.cfg, model.tok_embeddings.weight
    lens = [len(p) for p in prompts]
    longest = max(lens)
    check_policy(model, policy)
    context = check_context(context, lens)
    if policy.headwise and policy.evicts:  # kv/headwise.py: a region per (layer, kv head)
        from .kv.headwise import HeadwiseKVCache
        heads = None  # the whole prompt in every head until prefill ends, unless the policy says what each holds
        if hasattr(policy, "head_capacities"):
            heads = policy.head_capacities(lens, context, max_new_tokens, chunk, cfg.n_layers, cfg.n_kv_heads)
        cache = HeadwiseKVCache(cfg.n_layers, [n + max_new_tokens for n in lens], cfg.n_kv_heads, cfg.head_dim,
                                w.dtype, w.device, prompts=lens, head_capacities=heads, kv_dtype=kv_dtype)
        if context is not None:
            cache.context = torch.tensor(context, dtype=torch.int64, device=w.device)
        return cache
    if not policy.chunked:  # one prefill forward over each context (prefill): no chunk's budget to plan for
        chunk = max(max(context or lens), 1)
    caps = capacities(policy, lens, max_new_tokens, chunk, cfg.n_layers, context)
    cache = RaggedKVCache(cfg.n_layers, [max(c) for c in zip(*caps)], cfg.n_kv_heads, cfg.head_dim, w.dtype,
                          w.device, far_keys=model.rotary.far_keys_for(longest, longest + max_new_tokens),
                          prompts=lens, evicting=policy.evicts, layer_capacities=caps if policy.evicts else None,
                          scores=policy.accumulate, kv_dtype=kv_dtype)
    if context is not None and policy.evicts:
        cache.context = torch.tensor(context, dtype=torch.int64, device=w.device)
    return cache


def decode_need(policy: Policy, cache: RaggedKVCache, prompts: list[int], max_new_tokens: int) -> torch.Tensor:
    """[L, B] slots each (layer, sequence) needs from the end of prefill on: what it keeps plus the new tokens, or,
    where the policy evicts during decode, at most its budget plus the steps between evictions."""
    if hasattr(policy, "decode_need"):  # the policy sizes its own regions (duo's sliding streaming heads)
        return policy.decode_need(cache, max_new_tokens)
    grow = cache.kept + max_new_tokens
    if not policy.every or cache.context is not None:
        return grow
    N = torch.tensor(prompts, dtype=torch.int64, device=cache.kept.device) + max_new_tokens
    return torch.minimum(grow, torch.maximum(cache.kept, policy.layer_keep(N, cache.n_layers)) + policy.every)


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
    if hasattr(policy, "check_head_dim"):
        policy.check_head_dim(model.cfg.head_dim)
    if hasattr(policy, "check_model"):  # duo: its calibration table is this model's
        policy.check_model(model)
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
    if not policy.chunked:  # the policy acts once, over the whole context (ThinK)
        chunk = max(max(ends), 1)
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
    if policy.evicts and policy.every:  # the policy sees every step (accumulated scores); it evicts on the steps asked
        kw = dict(policy=policy, seqs=seqs, budgets=_budgets(policy, cache, seqs) if evict else None)
    return model(tokens, positions, Step(meta, model.mask, backend, cache, slots, **kw))


def free_memory(device) -> int:
    """Bytes free for a generation: the GPU's free memory, or on the CPU the RAM the OS reports available."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_budget(model, free: int | None = None, kv_dtype: str = "auto") -> tuple[int, int]:
    """(cache tokens, sequences) one group may hold in half the free memory: each cache token costs its keys
    and values in every layer (as kv_dtype stores them) plus its prefill activations; each sequence its float32
    logits and the processors' copies of them."""
    from .kv.cache import slot_bytes
    cfg, w = model.cfg, model.tok_embeddings.weight
    free = free_memory(w.device) if free is None else free
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * slot_bytes(kv_dtype, w.dtype, cfg.head_dim)
    act = (8 * cfg.dim + 3 * cfg.hidden_dim + 2 * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim) * 4
    per_seq = 6 * cfg.vocab_size * 4
    return max(1, int(free * 0.4) // (kv + act)), max(1, int(free * 0.1) // per_seq)


def groups(caps: list[int], max_tokens: int, max_seqs: int) -> list[list[int]]:
    """Consecutive groups of sequences whose cache sizes sum to at most max_tokens (a longer one goes alone),
    at most max_seqs each."""
    return [g[i:i + max_seqs] for g in token_budget(caps, max_tokens) for i in range(0, len(g), max_seqs)]


@torch.inference_mode()
def generate_ids(model, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int],
                 sampling: Sampling = Sampling(), backend="reference",
                 on_step: Callable[[int], None] | None = None, cuda_graph: bool | None = None,
                 policy: Policy = Full(), chunk: int = PREFILL_CHUNK, timing: Timing | None = None,
                 **kw) -> list[list[int]]:
    """New token ids per prompt (EOS included when hit); kw: the rest of generate()'s controls."""
    return [c.token_ids for c in generate(model, prompts, max_new_tokens, eos_ids, sampling, backend, on_step,
                                          cuda_graph, policy, chunk, timing, **kw)]


@torch.inference_mode()
def generate(model, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int],
             sampling: Sampling = Sampling(), backend="reference",
             on_step: Callable[[int], None] | None = None, cuda_graph: bool | None = None,
             policy: Policy = Full(), chunk: int = PREFILL_CHUNK, timing: Timing | None = None,
             stop=None, logprobs: int | None = None, max_batch_tokens: int | None = None,
             on_done: Callable[[int], None] | None = None, context: list[int] | None = None,
             kv_dtype: str = "auto") -> list[Completion]:
    """A Completion per prompt (its text left empty: decoding is the tokenizer's), in input order.

    eos_ids: every id that ends a sequence. stop: HF's StopStringCriteria for stop strings. logprobs: None, or
    how many top alternatives to report beside each chosen token's logprob. context: where each prompt's
    context ends; a policy that evicts then compresses the context only and keeps the rest (the question)
    whole. timing, where given, also receives each prompt's measured share of its cache's bytes (kv_bytes).
    kv_dtype: what the cache stores keys and values in (kv/cache.py: auto, bf16, fp8).

    The prompts run in consecutive groups whose KV cache (prompt + new tokens, as the policy sizes it) fits
    max_batch_tokens (default: memory_budget), each group one packed prefill and one batched decode. Eager
    decode drops finished sequences from the batch; with a CUDA graph (the default on a GPU with the varlen
    backend and a cache that keeps everything) every sequence stays and one replay runs each step. A
    length-gated remap runs its two sides apart (positions/gate.py). Every group draws from the call's one
    generator in turn; on_step counts the first group's steps, on_done the prompts finished so far."""
    dev = model.tok_embeddings.weight.device
    gen = sampling.generator(dev)
    tokens, seqs = memory_budget(model, kv_dtype=kv_dtype)
    if max_batch_tokens is not None:
        tokens = max_batch_tokens
    lens = [len(p) for p in prompts]
    context = check_context(context, lens)
    # a sequence's largest region over the layers bounds its share of a group's budget
    caps = [max(c) for c in zip(*capacities(policy, lens, max_new_tokens, chunk, model.cfg.n_layers, context))]
    shares, peaks = [0] * len(prompts), [0] * len(prompts)
    out: list[Completion] = [None] * len(prompts)  # type: ignore[list-item]
    done = 0
    for part in model.rotary.apart(lens):
        for g in groups([caps[i] for i in part], tokens, seqs):
            idx = [part[j] for j in g]
            got, held = _generate([prompts[i] for i in idx], model, max_new_tokens, eos_ids, sampling, gen, backend,
                                  on_step if done == 0 else None, cuda_graph, policy, chunk, timing, stop, logprobs,
                                  (lambda k, base=done: on_done(base + k)) if on_done else None,
                                  None if context is None else [context[i] for i in idx], kv_dtype)
            for i, c, b, p in zip(idx, got, *held):
                out[i], shares[i], peaks[i] = c, b, p
            done += len(idx)
    if timing is not None:
        timing.kv_bytes, timing.kv_bytes_prefill = shares, peaks
    return out


def _generate(prompts, model, max_new_tokens, eos_ids, sampling, gen, backend, on_step, cuda_graph, policy, chunk,
              timing, stop, logprobs, on_done, context=None, kv_dtype="auto"):
    from .graphs import GraphDecoder
    backend = Backend.of(backend)
    dev = model.tok_embeddings.weight.device
    if timing is not None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timing.start()
    cache = new_cache(model, prompts, max_new_tokens, policy, chunk, context, kv_dtype)
    peak = cache.region_bytes()
    pick = Picker(sampling, prompts, max_new_tokens, dev, gen, model.cfg.vocab_size, stop, logprobs)
    extras = stop is not None or logprobs is not None  # read on the host each step, beside the tokens
    logits = prefill(model, prompts, cache, backend, policy, chunk)  # [B, V]
    held = peak
    if policy.evicts:  # the prefill's scratch (the budget plus a chunk) goes back: decode holds what it needs
        cache.shrink(decode_need(policy, cache, [len(p) for p in prompts], max_new_tokens))
        held = cache.region_bytes()
    if cuda_graph is None:
        # a head-wise cache (adakv, duo) replays the graph too: graph == eager on an H200 (kv_gpu_check, 2026-12-04)
        cuda_graph = dev.type == "cuda" and backend.kernel == "varlen" and not policy.every
    graph = GraphDecoder(model, cache, backend) if cuda_graph and max_new_tokens > 1 else None
    active = torch.arange(len(prompts), device=dev)
    out: list[list[int]] = [[] for _ in prompts]
    lps: list[list[TokenLogprob]] | None = [[] for _ in prompts] if logprobs is not None else None
    reason, hit = ["length"] * len(prompts), [None] * len(prompts)
    done = [False] * len(prompts)
    finished = 0
    rows = list(range(len(prompts)))  # the prompt of each active row, kept on the host (no sync to read it)
    if graph is not None:
        host = torch.empty(len(prompts), dtype=torch.int64, pin_memory=True)
        copied = torch.cuda.Event()
    for n in range(max_new_tokens):
        nxt = pick(logits)  # [B_active]
        extra = pick.host() if extras else {}
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
        stopped, lp = extra.get("stopped"), extra.get("logprobs")
        keep = []
        for j, (i, t) in enumerate(zip(rows, toks)):
            if done[i]:
                continue
            out[i].append(t)
            if lps is not None:
                lps[i].append(TokenLogprob(t, *lp[j]))
            if t in eos_ids:
                done[i], reason[i], hit[i] = True, "stop", t
            elif stopped is not None and stopped[j]:
                done[i], reason[i] = True, "stop"
            else:
                keep.append(j)
        finished = len(prompts) - len(keep) if n < max_new_tokens - 1 else len(prompts)
        if on_step:
            on_step(n + 1)
        if on_done:
            on_done(finished)
        if not keep or n == max_new_tokens - 1:
            break
        if graph is not None:
            continue
        if len(keep) < len(rows):
            keep_t = torch.tensor(keep, device=dev)
            active, nxt, rows = active[keep_t], nxt[keep_t], [rows[j] for j in keep]
            pick.keep(keep_t)
        logits = decode_step(model, cache, nxt, active, backend, policy,
                             evict=policy.every > 0 and (n + 1) % policy.every == 0)
    if timing is not None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timing.end()
    return [Completion("", ids, r, lp, stop=h) for ids, r, lp, h in zip(out, reason, lps or [None] * len(out), hit)], (held, peak)
