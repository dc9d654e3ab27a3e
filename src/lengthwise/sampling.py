"""How each decode step's logits [B, V] become tokens: HF's logits processors, then argmax or a seeded draw;
stop strings, the chosen tokens' logprobs, and what a finished sequence reports.

    pick = Picker(Sampling(temperature=0.8, top_k=40), prompts, max_new_tokens, device, gen, stop, logprobs=5)
    tokens = pick(logits)      # [B] for the B rows still decoding
    pick.keep(rows)            # rows [B'] of this batch go on; the others' state is dropped

The processors are transformers' own (`transformers.generation.logits_process`), in `generate`'s order:
repetition penalty on every call; temperature, top-k, top-p and min-p only when sampling. Stop strings are
HF's `StopStringCriteria`, a batched tensor test on the last tokens of each row, so nothing loops over rows.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from .errors import LengthwiseError


@dataclass
class Sampling:
    """The decoding controls HF `generate` names; temperature 0 is greedy (the processors still apply)."""
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    top_k: int = 0  # 0 keeps every token
    min_p: float = 0.0  # a token stays when p >= min_p * p(top token); 0 keeps every token
    repetition_penalty: float = 1.0  # CTRL's: a seen token's logit / penalty (x penalty when negative)

    def __post_init__(self):
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise LengthwiseError(f"{name} must be a number, got {v!r}")
        for name in ("seed", "top_k"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise LengthwiseError(f"{name} must be an integer{' or None' if name == 'seed' else ''}, got {v!r}")
        if not 0 <= self.temperature < float("inf"):  # NaN fails too
            raise LengthwiseError(f"temperature must be a finite number >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LengthwiseError(f"top_p must be a number in (0, 1], got {self.top_p}")
        if self.top_k is None or self.top_k < 0:
            raise LengthwiseError(f"top_k must be an integer >= 0 (0 keeps every token), got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise LengthwiseError(f"min_p must be a number in [0, 1] (0 keeps every token), got {self.min_p}")
        if not (0 < self.repetition_penalty < float("inf")):
            raise LengthwiseError(f"repetition_penalty must be a finite number > 0 (1 is none), "
                                  f"got {self.repetition_penalty}")
        if self.seed is not None and not 0 <= self.seed < 2**63:  # what torch.Generator.manual_seed takes, and more
            raise LengthwiseError(f"seed must be an integer from 0 to 2**63-1, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device) -> torch.Generator | None:
        """The one generator a call draws from (seeded as torch.manual_seed would seed the global one)."""
        if self.greedy:
            return None
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed if self.seed is not None else torch.seed())
        return gen

    def processors(self):
        """HF's LogitsProcessorList for these settings, in the order HF generate builds it."""
        from transformers.generation import logits_process as P
        procs = P.LogitsProcessorList()
        if self.repetition_penalty != 1:
            procs.append(P.RepetitionPenaltyLogitsProcessor(float(self.repetition_penalty)))
        if not self.greedy:
            if self.temperature != 1:
                procs.append(P.TemperatureLogitsWarper(float(self.temperature)))
            if self.top_k:
                procs.append(P.TopKLogitsWarper(self.top_k))
            if self.top_p < 1:
                procs.append(P.TopPLogitsWarper(float(self.top_p)))
            if self.min_p > 0:
                procs.append(P.MinPLogitsWarper(float(self.min_p)))
        return procs


@dataclass
class TokenLogprob:
    """One generated token: its id, its log-probability under the model (log_softmax of the raw logits, before
    any processor, as vLLM and OpenAI report it) and the top alternatives {token_id: logprob}."""
    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)


@dataclass
class Completion:
    """One completion of one prompt. finish_reason: "stop" (an EOS id, a stop token id or a stop string) or
    "length" (max_new_tokens). token_ids hold every generated token, the stopping one included; text is their
    decoding, cut before the stop string that ended it."""
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[TokenLogprob] | None = None
    index: int = 0  # the prompt's position in the call
    stop: str | int | None = None  # the stop string or token id that ended it, if any


def check_n(n, what: str = "n") -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise LengthwiseError(f"{what} must be an integer of at least 1 (samples per prompt), got {n!r}")
    return n


def check_stop(stop, what: str = "stop") -> list[str]:
    """Stop strings as a list: one string or a list of non-empty strings."""
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)):
        raise LengthwiseError(f"{what} must be a string or a list of strings, got {type(stop).__name__}")
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise LengthwiseError(f"{what} string {i} is {type(s).__name__}, not a string")
        if s == "":
            raise LengthwiseError(f"{what} string {i} is empty: an empty string would stop before the first token")
    return list(dict.fromkeys(items))


def check_token_ids(ids, what: str, vocab: int) -> set[int]:
    if ids is None:
        return set()
    items = [ids] if isinstance(ids, int) and not isinstance(ids, bool) else ids
    if not isinstance(items, (list, tuple, set)):
        raise LengthwiseError(f"{what} must be a token id or a list of them, got {type(ids).__name__}")
    for t in items:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
            raise LengthwiseError(f"{what} holds {t!r}: token ids are integers from 0 to {vocab - 1}")
    return set(items)


def check_logprobs(logprobs, what: str = "logprobs") -> int | None:
    if logprobs is None:
        return None
    if isinstance(logprobs, bool):  # vLLM's int, not OpenAI's flag: True would read as 1 alternative
        raise LengthwiseError(f"{what} takes an int, not {logprobs}: the number of top alternatives per token "
                              f"(0 for the chosen token's logprob only), or None for no logprobs")
    if not isinstance(logprobs, int) or logprobs < 0 or logprobs > 100:
        raise LengthwiseError(f"{what} must be an integer from 0 to 100 (the top alternatives per token), "
                              f"got {logprobs!r}")
    return logprobs


@functools.lru_cache(maxsize=8)
def stop_criteria(tok, stop: tuple[str, ...]):
    from transformers.generation.stopping_criteria import StopStringCriteria
    return StopStringCriteria(tok, list(stop))


class Picker:
    """The token choice of one generation's rows, with the state its processors need: each row's ids so far
    (for the repetition penalty, padded past the vocabulary, which HF's processor ignores) and its last tokens
    (for the stop strings, padded with an id past the vocabulary, which matches nothing)."""

    def __init__(self, sampling: Sampling, prompts: list[list[int]], max_new_tokens: int, device,
                 gen: torch.Generator | None, vocab: int, stop=None, logprobs: int | None = None):
        self.sampling, self.gen, self.logprobs, self.stop = sampling, gen, logprobs, stop
        self.procs = sampling.processors()
        B = len(prompts)
        lens = torch.tensor([len(p) for p in prompts], dtype=torch.int64)
        self.ids = self.tail = None
        if sampling.repetition_penalty != 1:
            self.ids = _right_padded(prompts, lens, int(lens.max()) + max_new_tokens, vocab).to(device)  # [B, L + N]
            self.at = lens.to(device)  # [B] where each row's next token goes
        if stop is not None:
            w = stop.maximum_token_len
            self.tail = _left_tails(prompts, w, stop.embedding_vec.shape[0] - 1).to(device)  # [B, W]
        self.rows = torch.arange(B, device=device)
        self.last: dict = {}  # this step's [B] outputs beyond the tokens: "stopped", "logprob", "top"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.gen is None and not len(self.procs) and self.ids is None and self.tail is None and self.logprobs is None:
            return logits.argmax(dim=-1)  # plain greedy: the float32 copy below would change no argmax
        scores = logits.float()  # [B, V]; a copy when logits are 16-bit (the processors may write in place)
        if self.logprobs is not None:
            lp = torch.log_softmax(scores, dim=-1)
        if len(self.procs):
            scores = self.procs(self.ids if self.ids is not None else self.rows[:, None], scores.clone())
        if self.gen is None:
            nxt = scores.argmax(dim=-1)
        else:
            nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self.gen).squeeze(-1)
        if self.ids is not None:
            self.ids[torch.arange(len(nxt), device=nxt.device), self.at] = nxt
            self.at += 1
        if self.logprobs is not None:
            self.last["logprob"] = lp.gather(-1, nxt[:, None]).squeeze(-1)
            if self.logprobs:
                self.last["top"] = lp.topk(self.logprobs, dim=-1)
        if self.tail is not None:
            self.tail = torch.cat([self.tail[:, 1:], nxt[:, None]], dim=1)
            self.last["stopped"] = self.stop(self.tail, None)
        return nxt

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows [B'] (indices into the current rows)."""
        self.rows = self.rows[: len(rows)]
        if self.ids is not None:
            self.ids, self.at = self.ids[rows], self.at[rows]
        if self.tail is not None:
            self.tail = self.tail[rows]

    def host(self) -> dict:
        """This step's extras on the host: stopped [B] bools, and per row (logprob, {id: logprob})."""
        out = {}
        if "stopped" in self.last:
            out["stopped"] = self.last["stopped"].tolist()
        if "logprob" in self.last:
            lps = self.last["logprob"].tolist()
            if "top" in self.last:
                v, i = self.last["top"]
                tops = [dict(zip(a, b)) for a, b in zip(i.tolist(), v.tolist())]
            else:
                tops = [{} for _ in lps]
            out["logprobs"] = list(zip(lps, tops))
        return out


def _right_padded(prompts: list[list[int]], lens: torch.Tensor, width: int, pad: int) -> torch.Tensor:
    flat = torch.tensor([t for p in prompts for t in p], dtype=torch.int64)
    out = torch.full((len(prompts), width), pad, dtype=torch.int64)
    cols = torch.arange(width)[None, :] < lens[:, None]
    out[cols] = flat
    return out


def _left_tails(prompts: list[list[int]], width: int, pad: int) -> torch.Tensor:
    out = torch.full((len(prompts), width), pad, dtype=torch.int64)
    for i, p in enumerate(prompts):
        t = p[-width:]
        out[i, width - len(t):] = torch.tensor(t, dtype=torch.int64)
    return out


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """The text before the first stop string in it, and that string (None when none occurs)."""
    best, hit = len(text), None
    for s in stops:
        k = text.find(s)
        if 0 <= k < best:
            best, hit = k, s
    return text[:best], hit
