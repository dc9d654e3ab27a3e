"""DuoAttention (Xiao et al., "DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming
Heads", ICLR 2025; RazorAttention, Tang et al. 2024, splits heads the same way).

A few kv heads retrieve from anywhere in the context; the others attend to the first tokens and the newest ones.
Retrieval heads keep the whole cache; streaming heads keep `sinks` + `recent` tokens of the context (the question
and the answer stay in every head). `heads` is the share of (layer, kv head) pairs made streaming (kvpress's
head_compression_ratio); the cache is head-wise (kv/headwise.py), so a streaming head's region holds only what it
keeps and the bytes are freed, not masked.

Which heads retrieve comes from a calibration file, written by `calibrate` (`lengthwise kv-calibrate`): passkey
prompts generated with a seed the harness never uses for evaluation (CALIBRATION_SEED onward), the passkey
teacher-forced after each prompt, and for every (layer, kv head) the attention mass its answer queries put
outside the streaming window (sinks + recent), averaged over the group's query heads, the queries and the
prompts: what the head would lose as a streaming head. DuoAttention learns a gate per head by distillation on
synthetic passkey data; this probe reads the same quantity off the attention directly, in one forward per prompt.
The lowest-scoring `heads` share become streaming heads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .policy import Cached, Policy

CALIBRATION_SEED = 1_000_003  # calibration prompts' seeds start here; evaluation's sample seeds are small


@lru_cache(maxsize=8)
def _read(path: str, mtime: float) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        scores = torch.tensor(data["scores"], dtype=torch.float64)
    except (KeyError, TypeError):
        raise LengthwiseError(f"duo: {path} is JSON but not a calibration table (no \"scores\": [layers][kv heads]): "
                              "write one with `lengthwise kv-calibrate --model MODEL -o FILE`") from None
    except (OSError, ValueError) as e:
        raise LengthwiseError(f"duo: cannot read the calibration file {path} ({e}): write one with "
                              "`lengthwise kv-calibrate --model MODEL -o FILE`") from None
    if scores.dim() != 2 or not bool(torch.isfinite(scores).all()):
        raise LengthwiseError(f"duo: {path} holds no [layers][kv heads] table of finite scores: write it again with "
                              "`lengthwise kv-calibrate`")
    return {**data, "scores": scores}


@dataclass(frozen=True)
class Duo(Policy):
    name: ClassVar[str] = "duo"
    headwise: ClassVar[bool] = True
    heads: float = 0.5
    sinks: int = 4
    recent: int = 256
    calibration: str = ""

    def check(self) -> None:
        if not self.calibration:
            raise LengthwiseError("duo needs a calibration file naming its retrieval heads: write one with "
                                  "`lengthwise kv-calibrate --model MODEL -o heads.json`, then "
                                  "duo:calibration=heads.json")
        if not 0 <= self.heads <= 1:
            raise LengthwiseError(f"duo: heads (the share of kv heads made streaming) must be in [0, 1], got {self.heads:g}")
        if self.sinks < 0 or self.recent < 1:
            raise LengthwiseError(f"duo: sinks must be >= 0 and recent >= 1, got sinks={self.sinks}, recent={self.recent}")
        p = Path(self.calibration)
        if not p.is_file():
            raise LengthwiseError(f"duo: no calibration file at {p}: write one with `lengthwise kv-calibrate "
                                  f"--model MODEL -o {p}`")

    @property
    def evicts(self) -> bool:
        return self.heads > 0

    def table(self) -> dict:
        p = Path(self.calibration)
        return _read(str(p.resolve()), p.stat().st_mtime)

    def streaming_heads(self, n_layers: int, n_kv_heads: int) -> torch.Tensor:
        """[L, Hkv] bool: the lowest-scoring share `heads` of the (layer, kv head) pairs (ties to the earlier)."""
        scores = self.table()["scores"]
        if tuple(scores.shape) != (n_layers, n_kv_heads):
            raise LengthwiseError(f"duo: {self.calibration} scores {scores.shape[0]} layers x {scores.shape[1]} kv "
                                  f"heads, and this model has {n_layers} x {n_kv_heads}: calibrate this model")
        n = round(self.heads * scores.numel())
        out = torch.zeros(scores.numel(), dtype=torch.bool)
        out[scores.reshape(-1).sort(stable=True).indices[:n]] = True
        return out.view(n_layers, n_kv_heads)

    def head_capacities(self, prompts: list[int], context: list[int] | None, new: int, chunk: int, n_layers: int,
                        n_kv_heads: int) -> list[list[list[int]]]:
        """[L][Hkv][B]: a retrieval head's region holds its whole sequence; a streaming head's its window plus one
        prefill chunk of the context (evicted after each), then the question and the new tokens, or, with
        every=K, at most its window, the question and the K steps between evictions."""
        stream = self.streaming_heads(n_layers, n_kv_heads).tolist()
        C = prompts if context is None else context
        whole = [p + new for p in prompts]
        window = [min(c, self.sinks + self.recent + chunk) + p - c + (0 if self.every else new)
                  for p, c in zip(prompts, C)]
        if self.every:
            window = [max(w, min(p + new, self.sinks + self.recent + p - c + self.every))
                      for w, p, c in zip(window, prompts, C)]
        return [[window if s else whole for s in layer] for layer in stream]

    def decode_need(self, cache, new: int) -> torch.Tensor:
        """[L, Hkv * B]: each head's region from the end of prefill on: what it keeps plus the new tokens, or for a
        streaming head evicting every K steps at most its window, the question and K tokens."""
        grow = cache.kept + new
        if not self.every:
            return grow
        stream = self.streaming_heads(cache.n_layers, cache.Hkv).to(grow.device)  # [L, Hkv]
        ctx = cache.prompt_len if cache.context is None else torch.minimum(cache.prompt_len, cache.context)
        cap = self.sinks + self.recent + (cache.prompt_len - ctx) + self.every  # [B]
        bound = torch.minimum(grow, torch.maximum(cache.kept, cap.repeat(cache.Hkv)[None, :]))
        return torch.where(stream.repeat_interleave(cache.B, dim=1), bound, grow)

    def check_model(self, model) -> None:
        self.streaming_heads(model.cfg.n_layers, model.cfg.n_kv_heads)

    def compress_heads(self, cache, layer, seqs, budgets, q=None, cu_q=None, scale=None) -> None:
        """In prefill, streaming heads keep their context's first `sinks` and last `recent` tokens, and everything
        after the context; in decode (every=K), the sinks, the question (the prompt past the context, kept out of
        compression) and the newest `recent` tokens: the window slides, so their memory stays bounded however
        long the answer. Retrieval heads keep all."""
        from .headwise import gather_heads, keep_heads
        stream = self.streaming_heads(cache.n_layers, cache.Hkv)[layer].to(seqs.device)  # [Hkv]
        if not bool(stream.any()):
            return
        heads, slots, valid = gather_heads(cache, layer, seqs)
        B, Hkv, S = len(seqs), cache.Hkv, slots.shape[1]
        pos = cache.pos[layer][slots][..., 0].long().view(B, Hkv, S)
        n = cache.length[seqs]
        prompt = cache.prompt_len[seqs]
        ctx = prompt if cache.context is None else torch.minimum(prompt, cache.context[seqs])
        end = torch.minimum(n, ctx)[:, None, None]  # the context's end: tokens past it stay in prefill
        decoding = (n > prompt)[:, None, None]
        question = (pos >= ctx[:, None, None]) & (pos < prompt[:, None, None])
        slide = question | (pos >= n[:, None, None] - self.recent)
        window = (pos < self.sinks) | torch.where(decoding, slide, (pos >= end - self.recent) | (pos >= end))
        keep = valid.view(B, Hkv, S) & (window | ~stream[None, :, None])
        keep_heads(cache, layer, heads, slots, keep)


@dataclass(frozen=True)
class _Probe(Policy):
    """Calibration only: records the last `last` queries' attention weights per layer (and evicts one token per
    layer at the end of the one forward, which nothing reads after)."""
    name: ClassVar[str] = "duo-probe"
    chunked: ClassVar[bool] = False
    last: int = 1
    seen: list = field(default_factory=list, compare=False, repr=False)

    @property
    def observe(self) -> int:
        return self.last

    def keep(self, n):
        return n - 1

    def score(self, c: Cached) -> torch.Tensor:
        self.seen.append((c.layer, c.weights.detach().double(), c.positions[..., 0].detach(), c.valid.detach()))
        return torch.zeros(c.weights.shape[0], c.n_kv_heads, c.valid.shape[1], device=c.valid.device)


def calibrate(lm, out: str | Path, length: int = 2048, samples: int = 8, sinks: int = 4, recent: int = 256,
              chat: bool = True, seed: int = CALIBRATION_SEED) -> dict:
    """Score every (layer, kv head) of a loaded decoder by the passkey probe above; write the table to out (JSON,
    written whole, then renamed) and return it."""
    from ..evaluation.backends import make_render
    from ..generate import new_cache, prefill
    from ..tasks import get_task
    if samples < 1 or length < 64:
        raise LengthwiseError("kv-calibrate: samples must be >= 1 and length >= 64")
    m, tok = lm.module, lm.tokenizer
    render = make_render(tok, chat=chat)
    task = get_task("passkey")
    L, Hkv, H = m.cfg.n_layers, m.cfg.n_kv_heads, m.cfg.n_heads
    total = torch.zeros(L, Hkv, dtype=torch.float64)
    for i in range(samples):
        depth = 100.0 * (i + 0.5) / samples
        s = task.make(render, length, depth, seed=seed + i)
        answer = tok(s.answers[0], add_special_tokens=False)["input_ids"]
        ids = render(s.prompt, s.answer_prefix) + answer
        probe = _Probe(last=len(answer) + 1)  # the query before the answer, and the answer's own
        cache = new_cache(m, [ids], 1, probe)
        with torch.inference_mode():
            prefill(m, [ids], cache, lm.backend, probe)
        n = len(ids)
        for layer, w, pos, valid in probe.seen:  # w [1, H, k, S], pos [1, S] (one kv head's; all heads agree)
            k = w.shape[2]
            w, pos, valid = w.double().cpu(), pos.cpu(), valid.cpu()  # on whatever device the model runs
            qpos = torch.arange(n - k, n, dtype=torch.int64)[:, None]  # [k, 1]
            p = pos[0][None, :]
            inside = (p < sinks) | (p > qpos - recent)  # [k, S]
            outside = (w[0] * (~inside & valid[0][None, :]).double()).sum(-1).mean(-1)  # [H]
            total[layer] += outside.view(Hkv, H // Hkv).mean(1)
    table = {"model": str(getattr(lm, "path", "")), "scores": (total / samples).tolist(), "probe": "passkey",
             "length": length, "samples": samples, "seed": seed, "sinks": sinks, "recent": recent, "chat": chat,
             "what": "per [layer][kv head]: attention mass of the answer's queries outside sinks + recent"}
    from ..outputs import atomic_write
    with atomic_write(Path(out), "w") as f:
        json.dump(table, f, indent=1)
    return table
