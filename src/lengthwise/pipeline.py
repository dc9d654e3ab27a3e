"""The public objects: `lw.load()` returns a CausalLM or an Encoder, each a model plus its tokenizer."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import encode as E
from . import kv as K
from .attention import AttnMeta
from .attention.backend import Backend
from .attention.layer import Step
from .chat import chat_ids, chat_text, is_conversation, messages
from .errors import InputTooLong, LengthwiseError
from .generate import Timing, check_policy, generate
from .sampling import (Completion, Sampling, stop_criteria, check_logprobs, check_n, check_stop, check_token_ids,
                       cut_at_stop)
from .models import load as L
from .packing import token_budget
from .positions import RoPE, parse as parse_positions
from .ragged import RaggedBatch

Progress = Callable[[int], None] | None  # called with how many units are done so far


class _Loaded:
    def __init__(self, name: str, ck: L.Checkpoint, module, tokenizer, device, dtype, backend: Backend):
        self.name, self.path, self.arch, self.config = name, ck.path, ck.arch, ck.config
        self.module, self.tokenizer = module, tokenizer
        self.device, self.dtype, self.backend = device, dtype, backend
        self.generation_eos = tuple(getattr(ck, "eos_ids", ()))  # the checkpoint's own end ids

    def step(self, batch: RaggedBatch) -> Step:
        """The Step of one packed forward without a cache (training, scoring, embedding)."""
        return Step(AttnMeta.packed(batch.cu_seqlens, batch.max_seqlen), self.module.mask, self.backend)

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise LengthwiseError(f"{self.path} ships no tokenizer: pass token ids instead of text")
        return self.tokenizer

    def _fit(self, ids: Sequence[Sequence[int]], limit: int, truncate: bool, keep: str, what: str) -> list:
        """Check each sequence's ids and its length against the context limit; cut it only when truncate is
        asked for. Sequences that fit are passed on as given, not copied: on a GPU this loop runs before the
        first forward."""
        out = _batch(ids, "token-id lists, e.g. [[1, 2, 3]]")
        for i, s in enumerate(out):
            _check_ids(s, i)
            n = len(s)
            if n == 0:
                raise LengthwiseError(f"input {i} is empty: every input needs at least one token")
            if n > limit:
                if not truncate:
                    raise InputTooLong(i, n, limit, what, "shorten it or pass truncate=True")
                out[i] = list(s[:limit] if keep == "head" else s[n - limit:])
        return out

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, arch={self.arch}, device={self.device}, dtype={self.dtype}, backend={self.backend})"


def _controls() -> tuple[str, ...]:
    """generate's keyword controls: the keyword-only parameters of CausalLM._complete, read from it."""
    import inspect
    return tuple(n for n, p in inspect.signature(CausalLM._complete).parameters.items() if p.kind is p.KEYWORD_ONLY)
_PEER_NAMES = {  # what HF generate or vLLM's SamplingParams call these
    "do_sample": "sampling is temperature > 0 (HF's do_sample switch has no counterpart)",
    "max_tokens": "max_new_tokens is the count of new tokens (max_tokens is vLLM's name)",
    "max_length": "max_new_tokens is the count of new tokens (HF's max_length counts the prompt too)",
    "num_return_sequences": "n is the samples per prompt (HF's num_return_sequences)",
    "eos_token_id": "stop_token_ids adds end ids to the checkpoint's own",
    "stop_strings": "stop takes the strings (HF's stop_strings)",
    "random_seed": "seed", "generator": "seed (one generator per call)"}


def _check_controls(controls: dict) -> None:
    """generate's keyword controls: a name it does not take is one line, with its name here where a peer's differs."""
    known = _controls() if controls else ()
    for k in controls:
        if k not in known:
            hint = _PEER_NAMES.get(k)
            raise LengthwiseError(f"generate has no option {k!r}: " + (f"use {hint}" if hint else
                                  f"its options are max_new_tokens, temperature, top_p, seed, chat, truncate, "
                                  f"details, {', '.join(known)}"))


def _batch(inputs, what: str) -> list:
    """The inputs as a list; one string, or anything that is not a sequence, is a mistake worth naming."""
    not_rows = isinstance(inputs, (torch.Tensor, np.ndarray)) and inputs.ndim != 2  # an array holds rows of ids
    if isinstance(inputs, (str, bytes)) or not hasattr(inputs, "__len__") or not_rows:
        raise LengthwiseError(f"pass a list of {what}, not {type(inputs).__name__}"
                              + (" (one string is not a list of them: wrap it in [...])" if isinstance(inputs, str) else ""))
    return list(inputs)


def _check_ids(s, i: int) -> None:
    """Sequence i must be integer token ids, checked in O(1) (the ids' range is checked once, packed, by
    RaggedBatch.from_lists): the container's dtype, or a plain sequence's first and last items. Floats would
    otherwise be cut to ints without a word."""
    if isinstance(s, (torch.Tensor, np.ndarray)):
        ok = s.ndim == 1 and _integer_dtype(s.dtype)
    else:
        ok = not isinstance(s, (str, bytes)) and hasattr(s, "__len__") and hasattr(s, "__getitem__") and (
            len(s) == 0 or all(_integer(x) for x in (s[0], s[-1])))
    if not ok:
        raise LengthwiseError(f"input {i} is not a sequence of integer token ids (got {type(s).__name__}"
                              f"{'' if isinstance(s, (str, bytes)) else ' ' + repr(s)[:40]}): pass lists of int ids, "
                              "or text to generate/embed")


def _integer_dtype(dtype) -> bool:
    if isinstance(dtype, torch.dtype):
        return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
    return dtype.kind in "iu"  # numpy: signed or unsigned integers, not bool


def _integer(x) -> bool:
    """A Python or numpy integer, or a 0-d integer tensor (what list(tensor) yields); never a bool."""
    if isinstance(x, torch.Tensor):
        return x.ndim == 0 and _integer_dtype(x.dtype)
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _texts(texts, what: str) -> list[str]:
    out = _batch(texts, what)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise LengthwiseError(f"input {i} is {type(t).__name__}, not text: pass a list of strings")
    return out


def _encode(tok, texts: list[str], **kw) -> list[list[int]]:
    """tok(texts)["input_ids"]; a text no tokenizer can encode (a lone surrogate) is named, found only when the
    tokenizer fails, so the check costs nothing on the way that works."""
    try:
        return tok(texts, **kw)["input_ids"] if texts else []
    except Exception:
        for i, t in enumerate(texts):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise LengthwiseError(f"input {i} holds {t[e.start]!r} at character {e.start}, a lone surrogate (half "
                                      "of a UTF-16 pair) that is no text and no tokenizer encodes") from None
        raise


MIN_TEMPERATURE = 1e-6  # below it, logits / temperature nears float32's range (and rounds to 0 below 1e-45)


def check_sampling(temperature) -> None:
    """Sampling values that would overflow: a positive temperature so small that logits / temperature leaves
    float32 (the sampler's dtype); it is greedy in all but name."""
    if isinstance(temperature, (int, float)) and 0 < temperature < MIN_TEMPERATURE:
        raise LengthwiseError(f"temperature {temperature:g} is so small that logits / temperature overflows "
                              f"float32: use 0 for greedy decoding, or at least {MIN_TEMPERATURE:g}")


class CausalLM(_Loaded):
    def __init__(self, *a, kv: K.Policy = K.Full(), kv_dtype: str = "auto"):
        super().__init__(*a)
        self.kv = kv  # the KV policy every generation runs under (kv/policy.py)
        self.kv_dtype = kv_dtype  # what its cache stores keys and values in (kv/cache.py: auto, bf16, fp8)

    @property
    def context_length(self) -> int:
        """The longest input: the trained context, or what the position scheme claims to reach."""
        return self.module.rotary.reach

    @property
    def positions(self) -> RoPE:
        return self.module.rotary.scheme

    @property
    def _reach_text(self) -> str:
        r = self.module.rotary
        return "the model was trained on" if r.reach == r.trained else f"--positions {r.scheme.spec()} reaches"

    @property
    def eos_ids(self) -> set[int]:
        """Every id that ends a sequence: the tokenizer's EOS and the checkpoint's own (generation_config.json's
        eos_token_id, or a GGUF's eos/eot/eom ids)."""
        tok = self.tokenizer
        own = {tok.eos_token_id} if tok is not None and tok.eos_token_id is not None else set()
        return own | set(getattr(self, "generation_eos", ()))

    def tokenize(self, prompts, chat: bool = False, system: str | None = None) -> list[list[int]]:
        """Token ids of each prompt: text, or (chat=True, or system= given, or the prompt a list of
        {"role", "content"} messages) the chat template's rendering."""
        tok = self._need_tokenizer()
        prompts = _batch(prompts, "prompts (strings, or lists of chat messages)")
        convo = [is_conversation(p) for p in prompts]
        if not any(convo):
            prompts = _texts(prompts, "prompts (strings)")
        elif not all(convo) and not (chat or system is not None):
            i = convo.index(False)
            raise LengthwiseError(f"prompt {i} is {type(prompts[i]).__name__} while other prompts are chat messages: "
                                  "pass chat=True (--chat) to render text as a user turn, or give one kind per call")
        elif not all(convo):
            _texts([p for p in prompts if not is_conversation(p)], "prompts (strings, or lists of chat messages)")
        if chat or system is not None or any(convo):
            convos = [messages(p, system, i) for i, p in enumerate(prompts)]  # bad roles and contents, named
            _encode(tok, [m["content"] for c in convos for m in c])  # a text no tokenizer encodes is named first
            return [chat_ids(tok, p, self.name, system, i) for i, p in enumerate(prompts)]
        return _encode(tok, prompts)

    def chat_text(self, conversation, system: str | None = None) -> str:
        """One prompt (a string or a list of messages) as the chat template renders it, before tokenizing."""
        return chat_text(self._need_tokenizer(), conversation, self.name, system)

    def _groups(self, lens: list[int], budget: int) -> list[list[int]]:
        """Token-budget groups of sequence indices, never mixing what the position scheme runs apart."""
        return [[part[j] for j in g] for part in self.module.rotary.apart(lens)
                for g in token_budget([lens[i] for i in part], budget)]

    @torch.inference_mode()
    def logits(self, seqs: Sequence[Sequence[int]], max_tokens_per_forward: int = 32768,
               truncate: bool = False, last: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Per-sequence logits [len_i, vocab], float32 on CPU, from packed forwards (no padding).

        last: only each sequence's last last[i] rows, [last_i, vocab]; the LM head then runs on those rows
        alone (scoring a continuation needs its own tokens' logits, not the context's)."""
        seqs = self._fit(seqs, self.context_length, truncate, "tail", self._reach_text)
        if last is not None:
            last = list(last)
            if len(last) != len(seqs) or not all(isinstance(n, int) and 1 <= n <= len(s) for n, s in zip(last, seqs)):
                raise LengthwiseError("last must give, for each sequence, a row count from 1 to its length")
        out: list[torch.Tensor] = [None] * len(seqs)  # type: ignore[list-item]
        for group in self._groups([len(s) for s in seqs], max_tokens_per_forward):
            b = RaggedBatch.from_lists([seqs[i] for i in group], self.device, self.config.vocab_size)
            if last is None:
                parts = b.split(self.module(b.tokens, b.positions, self.step(b)))
            else:
                ends = b.cu_seqlens[1:].tolist()
                rows = torch.cat([torch.arange(e - last[i], e) for i, e in zip(group, ends)]).to(self.device)
                parts = self.module(b.tokens, b.positions, self.step(b), out_rows=rows).split([last[i] for i in group])
            for i, x in zip(group, parts):
                out[i] = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32).cpu()
        return out

    @torch.inference_mode()
    def next_token_logits(self, seqs: Sequence[Sequence[int]], max_tokens_per_forward: int = 65536,
                          truncate: bool = False, on_group: Callable[[list[int]], None] | None = None) -> torch.Tensor:
        """Prefill only: [B, vocab] logits of each sequence's last token, on the model's device.

        The LM head runs on B rows, not T: what time-to-first-token needs.
        """
        seqs = self._fit(seqs, self.context_length, truncate, "tail", self._reach_text)
        out = torch.empty(len(seqs), self.config.vocab_size, dtype=self.dtype, device=self.device)
        for group in self._groups([len(s) for s in seqs], max_tokens_per_forward):
            b = RaggedBatch.from_lists([seqs[i] for i in group], self.device, self.config.vocab_size)
            out[group] = self.module(b.tokens, b.positions, self.step(b), out_rows=b.last_index)
            if on_group:
                on_group(group)
        return out

    def generate(self, prompts, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, chat: bool = False, truncate: bool = False, progress: Progress = None,
                 *, details: bool = False, **controls) -> list[str] | list[Completion]:
        """Completions as text, n per prompt, prompt-major. Greedy unless a temperature > 0 is given.

        prompts: strings, token-id lists, or conversations (lists of {"role", "content"} messages, rendered by
        the chat template; so are strings with chat=True or system=...).
        controls: top_k, min_p, repetition_penalty (HF generate's meanings), stop (a string or a list),
        stop_token_ids, n (samples per prompt), logprobs (None, or how many top alternatives per token),
        system (a system turn), max_batch_tokens (the KV-cache tokens of one group of prompts; default: from
        free memory). details=True: a Completion per sample (text, token_ids, finish_reason, logprobs).

        seed: one generator for the whole call, drawn across each group's rows as HF generate draws after
        torch.manual_seed. Samples repeat for the same prompts, n and groups; the groups follow max_batch_tokens,
        whose default comes from free memory, so give max_batch_tokens where sampled runs must repeat on another
        machine (vLLM seeds each request apart; this does not). Greedy output never depends on the groups."""
        _check_controls(controls)
        if not details:
            self._need_tokenizer()
        out = self._complete(prompts, max_new_tokens, temperature, top_p, seed, chat, truncate, progress, **controls)
        return out if details else [c.text for c in out]

    def complete(self, prompts, max_new_tokens: int = 32, **kw) -> list[Completion]:
        """generate(..., details=True): a Completion (text, token_ids, finish_reason, logprobs) per sample."""
        return self.generate(prompts, max_new_tokens, details=True, **kw)

    def generate_ids(self, prompts, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int | None = None, chat: bool = False, truncate: bool = False,
                     progress: Progress = None, timing: Timing | None = None,
                     check_context: bool = True, **controls) -> list[list[int]]:
        """New token ids per prompt (EOS included when hit), under the model's KV policy (self.kv). timing: a
        generate.Timing to add this call's prefill and decode seconds to. check_context=False runs prompts and
        new tokens past the context the model reaches (an eval that measures what happens there)."""
        _check_controls(controls)
        return [c.token_ids for c in self._complete(prompts, max_new_tokens, temperature, top_p, seed, chat, truncate,
                                                    progress, timing, check_context, text=False, **controls)]

    def _complete(self, prompts, max_new_tokens, temperature, top_p, seed, chat, truncate, progress,
                  timing=None, check_context=True, text=True, *, top_k: int = 0, min_p: float = 0.0,
                  repetition_penalty: float = 1.0, stop=None, stop_token_ids=None, n: int = 1, logprobs=None,
                  system: str | None = None, max_batch_tokens: int | None = None,
                  context: Sequence[int] | None = None) -> list[Completion]:
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise LengthwiseError(f"max_new_tokens must be an integer of at least 1, got {max_new_tokens!r}")
        sampling = Sampling(temperature, top_p, seed, top_k, min_p, repetition_penalty)
        check_sampling(temperature)
        check_n(n)
        if max_batch_tokens is not None and (not isinstance(max_batch_tokens, int) or isinstance(max_batch_tokens, bool)
                                             or max_batch_tokens < 1):
            raise LengthwiseError(f"max_batch_tokens must be an integer of at least 1, got {max_batch_tokens!r}")
        stops, k = check_stop(stop), check_logprobs(logprobs)
        ends = self.eos_ids | check_token_ids(stop_token_ids, "stop_token_ids", self.config.vocab_size)
        prompts = _batch(prompts, "prompts: strings, token-id lists or chat conversations")
        if len(prompts) == 0:
            return []
        kinds = ["text" if isinstance(p, str) else "chat" if is_conversation(p) else "ids" for p in prompts]
        if "ids" in kinds and len(set(kinds)) > 1:
            i = kinds.index("ids" if kinds[0] != "ids" else next(x for x in kinds if x != "ids"))
            raise LengthwiseError(f"prompt {i} is {'token ids' if kinds[i] == 'ids' else 'text'} while prompt 0 is "
                                  f"{'token ids' if kinds[0] == 'ids' else 'text'}: give one kind per call")
        if kinds[0] == "ids" and (chat or system is not None):
            raise LengthwiseError("chat=True and system= render text through the chat template: pass text or "
                                  "messages, not token ids")
        ids = prompts if kinds[0] == "ids" else self.tokenize(prompts, chat, system)
        room = self.context_length - max_new_tokens if check_context else sys.maxsize
        if room < 1:
            raise LengthwiseError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                                  f"{self.context_length}-token context")
        before = [len(s) if hasattr(s, '__len__') else 0 for s in ids]
        before = [len(s) if hasattr(s, '__len__') else 0 for s in ids]
        ids = self._fit(ids, room, truncate, "tail", f"fit the context with {max_new_tokens} new tokens")
        ids = [s.tolist() if hasattr(s, "tolist") else list(s) for s in ids]  # arrays and tensors: plain int lists
        if context is not None:  # context: per prompt, how many of its tokens a KV policy may compress
            context = list(context)
            if len(context) == len(ids):  # a prompt cut at its head loses context first
                context = [c - (b - len(s)) if isinstance(c, int) else c for c, b, s in zip(context, before, ids)]
            context = [c for c in context for _ in range(n)]
        criteria = stop_criteria(self._need_tokenizer(), tuple(stops)) if stops else None
        runs = [s for s in ids for _ in range(n)]  # n samples of a prompt: n rows of one batch, side by side
        done = (lambda d: progress(d // n)) if progress else None
        out = generate(self.module, runs, max_new_tokens, ends, sampling, self.backend, policy=self.kv,
                       timing=timing, stop=criteria, logprobs=k, max_batch_tokens=max_batch_tokens, on_done=done,
                       context=context, kv_dtype=self.kv_dtype)
        if (text or stops) and self.tokenizer is not None:  # complete() on a model without one: ids only
            texts = self._need_tokenizer().batch_decode([c.token_ids for c in out], skip_special_tokens=True)
            for c, t in zip(out, texts):
                c.text, hit = cut_at_stop(t, stops)
                if hit is not None and c.finish_reason == "stop" and c.stop is None:
                    c.stop = hit
        for j, c in enumerate(out):
            c.index = j // n
        return out


class Encoder(_Loaded):
    def __init__(self, *a, settings: dict):
        super().__init__(*a)
        self.pooling, self.normalize = settings["pooling"], settings["normalize"]
        self.head = settings["head"].to(self.device)  # pooling, then the folder's Dense and Normalize modules
        self.max_seq_length = min(settings["max_seq_length"] or self.config.context_length, self.config.context_length)
        self._fast = None  # encode.FastTokenizer, built on the first text call
        self.prompts = dict(settings.get("prompts") or {"query": "", "document": ""})  # encode's prompt_name picks

    @property
    def context_length(self) -> int:
        return self.max_seq_length

    @property
    def dim(self) -> int:
        return self.head.dim

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        tok, texts = self._need_tokenizer(), _texts(texts, "texts (strings)")
        return _encode(tok, texts)

    @torch.inference_mode()
    def embed_ids(self, seqs: Sequence[Sequence[int]], max_tokens_per_forward: int = 16384,
                  truncate: bool = False, progress: Progress = None) -> np.ndarray:
        seqs = _batch(seqs, "token-id lists, e.g. [[101, 7592, 102]]")
        cut = [len(s) > self.max_seq_length for s in seqs]
        seqs = self._fit(seqs, self.max_seq_length, truncate, "head", "this encoder takes")
        if any(cut) and self.tokenizer is not None and self.tokenizer.sep_token_id is not None:
            # a cut BERT input still ends with [SEP], as sentence-transformers does; one that fits is left as given
            sep = self.tokenizer.sep_token_id
            seqs = [list(s[:-1]) + [sep] if c and s[-1] != sep else s for s, c in zip(seqs, cut)]
        out = torch.empty(len(seqs), self.dim, dtype=torch.float32, device=self.device)
        done = 0
        for group in token_budget([len(s) for s in seqs], max_tokens_per_forward):
            b = RaggedBatch.from_lists([seqs[i] for i in group], self.device, self.config.vocab_size)
            h = self.module(b.tokens, b.positions, self.step(b))
            out[group[0]:group[-1] + 1] = self.head(h, b.cu_seqlens)  # groups are consecutive
            done += len(group)
            if progress:
                progress(done)
        return out.cpu().numpy()  # the one sync: groups queue back to back on the GPU

    @torch.no_grad()
    def embed(self, texts: Sequence[str], truncate: bool = False, max_tokens_per_forward: int = 16384,
              progress: Progress = None, timing: "E.EmbedTiming | None" = None) -> np.ndarray:
        """np.ndarray [N, D], pooled as the model's own sentence-transformers config says. With a fast tokenizer
        texts go through the pipeline of encode.py (tokenizing and packing overlap the forwards); timing: an
        encode.EmbedTiming to add this call's split to (tokenize, pack, copy, forward, pool, back)."""
        texts = _texts(texts, "texts (strings)")
        if not E.FastTokenizer.applies(self._need_tokenizer()) or not texts:
            return self.embed_ids(self.tokenize(texts), max_tokens_per_forward, truncate, progress)
        if not isinstance(max_tokens_per_forward, int) or max_tokens_per_forward < 1:
            raise LengthwiseError(f"max_tokens_per_forward must be an integer of at least 1, got {max_tokens_per_forward!r}")
        try:
            return E.run(self, texts, max_tokens_per_forward, truncate, progress, timing).numpy()
        except LengthwiseError:
            raise
        except Exception:
            _encode(self.tokenizer, texts)  # a text no tokenizer encodes is named
            raise

    def to(self, device: str | torch.device) -> "Encoder":
        """Move the weights to another device, the kernel family resolved again for it."""
        dev = resolve_device(device)
        if dev != self.device:
            self.module.to(dev)
            self.head.to(dev)
            self.device = dev
            self.backend = Backend.resolve("auto", dev, self.dtype)
        return self

    @torch.no_grad()  # a model shared with HF (lw.from_hf) keeps requires_grad on its weights
    def encode(self, sentences: str | Sequence[str], batch_size: int = 32, show_progress_bar: bool | None = None,
               output_value: str = "sentence_embedding", precision: str = "float32", convert_to_numpy: bool = True,
               convert_to_tensor: bool = False, device: str | torch.device | None = None,
               normalize_embeddings: bool = False, truncate_dim: int | None = None,
               max_tokens_per_forward: int | None = None, prompt: str | None = None, prompt_name: str | None = None,
               **unsupported):
        """sentence-transformers' encode, with its return conventions: [N, D] float32 ndarray by default, one
        tensor (convert_to_tensor, on the model's device), or a list of 1-D tensors (convert_to_numpy=False); one
        string gives one 1-D vector. Texts past max_seq_length are cut, as there. batch_size bounds memory as a
        padded batch would: a forward packs at most batch_size x max_seq_length tokens (max_tokens_per_forward
        overrides), from as many texts as fit. Embeddings are float32 whatever the weights' dtype.
        prompt: prepended to every text (folders whose pooling excludes the prompt are refused); prompt_name: one
        of self.prompts (the folder's config_sentence_transformers.json prompts, and "query" and "document", empty
        unless it names them), as sentence-transformers looks it up; prompt wins where both are given."""
        if unsupported:
            raise LengthwiseError(f"encode: {', '.join(sorted(unsupported))} "
                                  f"{'is' if len(unsupported) == 1 else 'are'} not supported here (sentence-transformers' "
                                  "multi-process pool and chunk_size have no counterpart: one process packs every "
                                  "batch): drop it")
        if prompt is None and prompt_name is not None:
            if prompt_name not in self.prompts:
                raise LengthwiseError(f"prompt_name {prompt_name!r} is not one of this model's prompts "
                                      f"({', '.join(map(repr, self.prompts))}): name one, or pass prompt=")
            prompt = self.prompts[prompt_name] or None
        if sentences is None or isinstance(sentences, (bytes, np.ndarray, torch.Tensor)) or not (
                isinstance(sentences, str) or hasattr(sentences, "__len__")):
            raise LengthwiseError(f"encode takes a string or a list of strings, not {type(sentences).__name__}")
        one = isinstance(sentences, str)
        texts = _texts([sentences] if one else list(sentences), "strings")
        E.check_encode(batch_size, precision, truncate_dim, output_value, self.dim)
        if prompt is not None:
            if not isinstance(prompt, str):
                raise LengthwiseError(f"prompt must be a string, got {type(prompt).__name__}")
            if not self.head.include_prompt:
                raise LengthwiseError("this folder's pooling excludes the prompt's tokens (include_prompt=false), "
                                      "which lengthwise does not run: prepend the prompt without it, or drop it")
            texts = [prompt + t for t in texts]
        if device is not None:
            self.to(device)
        if convert_to_tensor:
            convert_to_numpy = False
        budget = max_tokens_per_forward or batch_size * self.max_seq_length
        tokens = output_value == "token_embeddings"
        with contextlib.ExitStack() as stack:
            bar = None
            if show_progress_bar and texts:
                from .progress import progress_bar
                bar = stack.enter_context(progress_bar("encoding", len(texts), "texts"))
            if not texts:
                out = [] if tokens else torch.empty(0, dtype=torch.float32, device=self.device)
            elif E.FastTokenizer.applies(self._need_tokenizer()):
                out = E.run(self, texts, budget, True, bar, normalize=normalize_embeddings, truncate_dim=truncate_dim,
                            to_host=convert_to_numpy or precision != "float32", token_embeddings=tokens)
            else:
                out = torch.from_numpy(self.embed_ids(self.tokenize(texts), budget, True, bar))
                out = out[:, :truncate_dim] if truncate_dim else out
                out = F.normalize(out, p=2, dim=1) if normalize_embeddings else out
                out = out.to(self.device) if not convert_to_numpy else out
        if tokens:
            return out[0] if one else out
        if len(texts) and precision != "float32":
            out = torch.from_numpy(E.quantize(out.cpu().numpy(), precision))
        if convert_to_tensor:
            pass
        elif convert_to_numpy:
            out = out.numpy() if len(texts) else np.array([])
        else:
            out = list(out)
        return out[0] if one else out


    def encode_query(self, sentences, **kw):
        """encode with the "query" prompt (sentence-transformers' encode_query)."""
        kw.setdefault("prompt_name", "query")
        return self.encode(sentences, **kw)

    def encode_document(self, sentences, **kw):
        """encode with the first of the "document", "passage" or "corpus" prompts the model has
        (sentence-transformers' encode_document)."""
        kw.setdefault("prompt_name", next(n for n in ("document", "passage", "corpus", "query") if n in self.prompts))
        return self.encode(sentences, **kw)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise LengthwiseError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LengthwiseError(f"device {device}: torch sees no CUDA GPU here; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LengthwiseError(f"device {device}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    elif dev.type != "cpu":
        raise LengthwiseError(f"device {device}: lengthwise runs on cpu or cuda")
    return dev


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A dtype by name or as given; None: bfloat16 on a GPU, float32 on the CPU."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise LengthwiseError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    if dtype is not None and dtype not in DTYPES.values():
        raise LengthwiseError(f"dtype {dtype!r} is not one lengthwise runs in: choose one of {', '.join(DTYPES)}")
    return dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)


def load(name_or_path: str | os.PathLike, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, backend: "str | Backend" = "auto", compile: bool = False,
         positions: "str | RoPE | None" = None, residual: str | None = None, kv: "str | K.Policy | None" = None,
         trainable: bool = False, kv_dtype: str = "auto") -> CausalLM | Encoder:
    """Load an embedded model by name, an HF folder (config.json + safetensors) or a .gguf file.

    backend: a kernel family (auto, reference, cpu_flash, varlen) or an attention.Backend with its switches
    set; resolved once here against the device and dtype (lm.backend).

    kv: the KV policy of a causal LM's generations, e.g. "window:sinks=4,recent=1024" (see lengthwise.kv);
    None keeps every token. kv_dtype: what that cache stores keys and values in: "auto" (the model's dtype),
    "bf16", or "fp8" (float8 e4m3 with a scale per token and kv head: about half of bf16's bytes); it composes
    with every policy.

    trainable=True: the module in train mode with gradients on every weight (the fused Triton paths step aside
    wherever a gradient is needed); otherwise an inference engine with frozen weights.

    positions picks a position scheme for RoPE models, e.g. "yarn:factor=4" or
    lw.positions.SelfExtend(group=8, window=1024) (see lengthwise.positions); None keeps the
    checkpoint's own.

    residual picks the dtype of a BERT encoder's stream between layers: "float32" (the default) or
    "model" (the weights' dtype, as HF runs it; post-LN rounds each LayerNorm output once, and in bf16 this
    halves the memory traffic between the GEMMs).

    compile=True runs the forward through torch.compile (dynamic shapes: one compile serves every
    pack size), fusing norms, RoPE and activations; worth it for long runs on a GPU.
    """
    dev = resolve_device(device)
    dtype = resolve_dtype(dtype, dev)
    chosen = Backend.resolve(backend, dev, dtype)
    scheme, policy = _parse_options(positions, kv, trainable)
    kv_dtype = K.check_kv_dtype(kv_dtype)
    path = L.resolve(name_or_path)
    ck = L.read_checkpoint(path)
    kw = _family_options(ck.family, ck.arch, scheme, residual, policy, kv_dtype)
    module = L.build_module(ck, dtype, dev, trainable=trainable, **kw)
    if getattr(module, "pe", None) is not None and module.pe.has_bias and chosen.kernel != "reference":
        if backend != "auto":
            raise LengthwiseError(f"{name_or_path} adds an attention bias ({ck.config.pe}), which runs on the "
                                  f"reference kernel, not {chosen.kernel}: use backend='reference' (or auto)")
        chosen = Backend.resolve("reference", dev, dtype)
    return _assemble(str(name_or_path), ck, module, L.load_tokenizer(path), dev, dtype, chosen, policy, compile,
                     kv_dtype)


def from_hf(model, tokenizer=None, backend: "str | Backend" = "auto", compile: bool = False,
            positions: "str | RoPE | None" = None, residual: str | None = None,
            kv: "str | K.Policy | None" = None, kv_dtype: str = "auto") -> CausalLM | Encoder:
    """An in-memory HF model (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, BertModel, ...) as a
    lengthwise CausalLM or Encoder that shares its parameters: no weight is copied, and the lengthwise
    module's parameters are the HF model's own objects (models/hf.py says how q/k/v stay apart). It runs on the
    model's device and dtype; backend, positions, residual, kv, kv_dtype and compile are as in load(). tokenizer: the
    model's HF tokenizer, for text in and out (None: token ids only). An Encoder pools, normalizes and truncates
    as the sentence-transformers folder it came from says (model.config.name_or_path, where that is a local
    folder with a modules.json), as lw.load of that folder and sentence-transformers do; without one, by mean,
    unnormalized (sentence-transformers' default for a plain transformers model).

    HF's model is never changed: its parameters keep their requires_grad and its modules their mode; the
    lengthwise inference methods run under torch.inference_mode, so they record no gradient either way.
    """
    from .models import hf
    arch = hf.arch_of(model)
    dev, dtype = hf.placement(model)
    chosen = Backend.resolve(backend, dev, dtype)
    scheme, policy = _parse_options(positions, kv, False)
    kv_dtype = K.check_kv_dtype(kv_dtype)
    family = L.HF_ARCHS[arch]
    kw = _family_options(family, arch, scheme, residual, policy, kv_dtype)
    module = hf.share(model, **kw)
    ck = L.Checkpoint(family, arch, module.cfg, {}, None, "memory")
    name = getattr(model.config, "name_or_path", "") or arch
    settings = None
    if family == "bert" and name != arch and (Path(name) / "modules.json").is_file():
        settings = L.sentence_transformers_settings(Path(name), module.cfg.dim)  # its head, not a weight copied
    return _assemble(name, ck, module, tokenizer, dev, dtype, chosen, policy, compile, kv_dtype, settings)


def _parse_options(positions, kv, trainable) -> tuple:
    scheme = parse_positions(positions) if positions is not None else None
    policy = K.parse(kv)
    if not isinstance(trainable, bool):
        raise LengthwiseError(f"trainable must be true or false, got {trainable!r}")
    return scheme, policy


def _family_options(family: str, arch: str, scheme, residual, policy, kv_dtype: str = "auto") -> dict:
    """The family constructor's options, each refused where it does not apply."""
    if scheme is not None and family != "llama":
        raise LengthwiseError(f"--positions {scheme.spec()}: {arch} models use learned absolute positions, "
                              "not RoPE; position schemes apply to RoPE models (Llama, Qwen2, Mistral)")
    if residual is not None and family != "bert":
        raise LengthwiseError(f"residual={residual!r}: {arch} is a pre-LN model whose residual stream stays "
                              "float32; the option applies to BERT-family encoders")
    if policy.evicts and family != "llama":
        raise LengthwiseError(f"kv={policy.spec()}: {arch} is an encoder, which keeps no KV cache; "
                              "KV policies apply to causal LMs")
    if kv_dtype != "auto" and family != "llama":
        raise LengthwiseError(f"kv_dtype={kv_dtype}: {arch} is an encoder, which keeps no KV cache")
    return {"positions": scheme} if scheme is not None else {"residual": residual} if residual is not None else {}


def _assemble(name: str, ck: L.Checkpoint, module, tok, dev, dtype, chosen: Backend, policy,
              compile: bool, kv_dtype: str = "auto", settings: dict | None = None) -> CausalLM | Encoder:
    if ck.family == "llama":
        check_policy(module, policy)
    if compile:
        module.forward = torch.compile(module.forward, dynamic=True)
    args = (name, ck, module, tok, dev, dtype, chosen)
    if ck.family == "bert":
        return Encoder(*args, settings=settings or L.sentence_transformers_settings(ck.path, ck.config.dim))
    return CausalLM(*args, kv=policy, kv_dtype=kv_dtype)
