"""Backends that run the same prompts: lengthwise's packed engine, and HF transformers as the peer.

Both take Samples from tasks/ and return (outputs, timing). They render prompts identically, so a
cell's prompt tokens are byte-identical across backends.
"""
from __future__ import annotations

import functools
import time
from collections import OrderedDict

import torch

from ..chat import chat_ids
from ..errors import LengthwiseError
from ..models.load import trained_context


def make_render(tok, chat: bool):
    """render(prompt, answer_prefix) -> token ids; the answer prefix opens the model's own turn."""
    cache: OrderedDict = OrderedDict()

    def render(prompt: str, prefix: str) -> list[int]:
        key = (prompt, prefix)
        if key in cache:
            return cache[key]
        if chat:
            ids = chat_ids(tok, prompt)
            ids = list(ids) + tok(prefix, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(prompt + "\n" + prefix)["input_ids"]
        cache[key] = ids
        if len(cache) > 8:
            cache.popitem(last=False)
        return ids

    return render


def context_tokens(render, sample, ids: list[int]) -> int:
    """How many of a sample's prompt tokens are context: those before its question, the prompt's last paragraph
    (every task ends instructions + haystack + blank line + question). The tokens the full render shares with
    the render of the context alone, so a chat template's header counts as context and its tail does not."""
    cut = sample.prompt.rfind("\n\n")
    if cut < 0:
        return len(ids)
    head = render(sample.prompt[:cut], "")
    n = 0
    for a, b in zip(ids, head):
        if a != b:
            break
        n += 1
    return max(1, n)


class _Timer:
    """Prefill time (to the first new token) and decode time of one batch, plus peak GPU memory."""

    def __init__(self, device: torch.device):
        self.cuda, self.device = device.type == "cuda", device
        if self.cuda:
            torch.cuda.synchronize(device)  # the runner's own device, which need not be the current one
            torch.cuda.reset_peak_memory_stats(device)
        self.t0 = time.perf_counter()
        self.first = None

    def step(self, n: int):
        if n == 1:
            self.first = time.perf_counter()

    def result(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        end = time.perf_counter()
        first = self.first or end
        return {"prefill_s": first - self.t0, "decode_s": end - first,
                "peak_mem_gib": torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None}


class LengthwiseRunner:
    """The packed engine: a batch's prompts prefill as one packed stream, then decode together."""

    def __init__(self, model: str, chat: bool = False, device=None, dtype=None, positions: str | None = None,
                 backend: str = "auto", kv: str = "full", kv_question: str = "kept", kv_dtype: str = "auto"):
        from ..pipeline import CausalLM, load
        self.lm = load(model, device=device, dtype=dtype, backend=backend, kv=kv, kv_dtype=kv_dtype,
                       positions=None if positions in (None, "none") else positions)
        self.question_kept = kv_question == "kept"
        self.chat = chat
        if not isinstance(self.lm, CausalLM):
            raise LengthwiseError(f"{model} is an encoder: eval needs a causal language model")
        self.tok = self.lm.tokenizer
        self.render = make_render(self.tok, chat)
        cfg = self.lm.config
        self.context_length = self.lm.context_length  # the position scheme's reach, or the trained context
        self.trained_context = trained_context(self.lm.path)  # what the CLI keys cells on before loading
        self.n_layers, self.width = cfg.n_layers, cfg.n_heads * cfg.head_dim
        self.n_params = sum(p.numel() for p in self.lm.module.parameters())
        self.on_cpu = self.lm.device.type == "cpu"

    def generate(self, samples) -> tuple[list[str], dict]:
        """One packed generation (CausalLM.generate_ids); prefill_s and decode_s sum over the sides a
        length-gated remap runs apart, so a second side's prefill never counts as decoding."""
        from ..generate import Timing
        ids = [self.render(s.prompt, s.answer_prefix) for s in samples]
        cuda = self.lm.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.lm.device)
        timing = Timing()
        context = None
        if self.lm.kv.evicts and self.question_kept:
            context = [context_tokens(self.render, s, x) for s, x in zip(samples, ids)]
        new = self.lm.generate_ids(ids, max(s.max_new_tokens for s in samples), timing=timing,
                                   check_context=False, context=context)  # the grid decides what runs past the context
        peak = torch.cuda.max_memory_allocated(self.lm.device) / 2**30 if cuda else None
        return ([self.tok.decode(x, skip_special_tokens=True) for x in new],
                {"prefill_s": timing.prefill_s, "decode_s": timing.decode_s, "peak_mem_gib": peak,
                 "kv_bytes": list(timing.kv_bytes), "kv_bytes_prefill": list(timing.kv_bytes_prefill)})


class HFRunner:
    """HF transformers' AutoModelForCausalLM, one prompt at a time, greedy; its own rope scaling if given."""

    def __init__(self, model: str, chat: bool = False, device=None, dtype=None, hf_rope: dict | None = None,
                 positions: str | None = None):
        from transformers import AutoConfig, AutoModelForCausalLM
        from ..models.load import load_tokenizer, resolve
        from ..pipeline import resolve_device, resolve_dtype
        from ..positions import parse, to_hf
        path = resolve(model)
        self.device = resolve_device(device)
        dt = resolve_dtype(dtype, self.device)
        folder, kw = (path.parent, {"gguf_file": path.name}) if path.suffix == ".gguf" else (path, {})
        cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True, **kw)
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), config=cfg, dtype=dt, local_files_only=True, **kw).to(self.device).eval()
        self._rope0 = dict(cfg.rope_parameters)  # as trained
        self.trained_context = trained_context(path)
        self.set_rope(hf_rope or to_hf(parse(positions), cfg.max_position_embeddings))
        self.tok = load_tokenizer(path)
        self.render = make_render(self.tok, chat)
        self.n_layers, self.width = cfg.num_hidden_layers, cfg.hidden_size
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.on_cpu = self.device.type == "cpu"

    def set_rope(self, hf_rope: dict | None) -> None:
        """HF's own RoPE scaling (None: as trained), by rebuilding the model's rotary embedding from its config."""
        from ..positions import from_hf, parse
        cfg = self.model.config
        cfg.rope_parameters = {**self._rope0, **hf_rope} if hf_rope else dict(self._rope0)
        rot = self.model.model.rotary_emb
        self.model.model.rotary_emb = type(rot)(config=cfg).to(self.device)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        trained = cfg.max_position_embeddings
        self.context_length = max(trained, (from_hf(hf_rope, head_dim) or parse(None)).reach(trained))  # what it claims

    @torch.inference_mode()
    def generate(self, samples) -> tuple[list[str], dict]:
        from transformers import LogitsProcessorList
        outs, prefill = [], 0.0
        timer = _Timer(self.device)
        for s in samples:
            ids = torch.tensor([self.render(s.prompt, s.answer_prefix)], device=self.device)
            eos = self.tok.eos_token_id
            first = _first_logits_class()(self.device)
            t0 = time.perf_counter()
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=s.max_new_tokens,
                                      do_sample=False, eos_token_id=eos, pad_token_id=eos,
                                      logits_processor=LogitsProcessorList([first]))
            outs.append(self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))  # waits for the GPU
            prefill += (first.t or time.perf_counter()) - t0
        timing = timer.result()
        total = timing["prefill_s"] + timing["decode_s"]
        timing["prefill_s"], timing["decode_s"] = prefill, total - prefill  # summed over the prompts, one at a time
        return outs, timing


@functools.cache
def _first_logits_class():
    from transformers import LogitsProcessor  # only the hf backend needs transformers' generation classes

    class FirstLogits(LogitsProcessor):
        """Passed to HF generate: its first call (logits of the first new token exist) marks the prefill's end."""

        def __init__(self, device: torch.device):
            self.device, self.t = device, None

        def __call__(self, input_ids, scores):
            if self.t is None:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.t = time.perf_counter()
            return scores

    return FirstLogits


def make_runner(cfg):
    if cfg.backend == "hf":
        return HFRunner(cfg.model, cfg.chat, cfg.device, cfg.dtype, cfg.hf_rope, cfg.method)
    return LengthwiseRunner(cfg.model, cfg.chat, cfg.device, cfg.dtype, cfg.method, cfg.kernel,
                            getattr(cfg, "kv", "full"), getattr(cfg, "kv_question", "kept"),
                            getattr(cfg, "kv_dtype", "auto"))
