"""The lm-evaluation-harness model `lengthwise`: the harness's three request types on the packed engine.

    pip install "lengthwise[lm-eval]"
    python -m lengthwise.integrations.lm_eval --model lengthwise \\
        --model_args pretrained=smollm2-135m,positions=yarn:factor=4,kv=window:sinks=4,recent=1024 --tasks ...

    import lm_eval, lengthwise.integrations.lm_eval   # the import registers the model
    lm_eval.simple_evaluate(model="lengthwise", model_args={"pretrained": "smollm2-135m"}, tasks=[...])

The harness finds a model only when it was registered in the same process, and its `lm_eval` script reads no
plugin entry points (lm-eval 0.4.13), so `python -m lengthwise.integrations.lm_eval` is that script, unchanged,
with `lengthwise` registered first; every other flag is the harness's own.

Requests are tokenized exactly as the harness's `hf` model tokenizes them (TemplateLM's context/continuation
split, HFLM's BOS rules, its rolling windows and left truncation), so the two score the same tokens:

- loglikelihood: each (context, continuation) is one sequence of a packed batch; the LM head runs on the
  continuation's rows only (`CausalLM.logits(..., last=)`), and log-softmax in float32 scores them.
- loglikelihood_rolling: the harness's disjoint rolling windows of `max_length` tokens, scored the same way.
- generate_until: greedy (or sampled, as the request's gen_kwargs say) through `CausalLM.generate_ids`,
  packed; the text is cut at the first `until` string (EOS's text included) here, as the `hf` model cuts its
  own. Where generate_ids takes `stop=` (issue 21, item 2) the until strings go to it too, so decoding ends
  there; without it a generation runs on to EOS or max_gen_toks and the cut drops what follows the stop.

--model_args: pretrained (an embedded name, an HF folder or a .gguf; or in Python a loaded lw.CausalLM or an
in-memory HF causal LM, shared through lw.from_hf), positions, kv, device, dtype, backend, max_length (at
most what the model and its positions reach), max_batch_tokens (tokens per packed forward and per generation
group; the harness's batch_size is accepted and unused, packing is by tokens), max_gen_toks, add_bos_token,
prefix_token_id, tokenizer (with an in-memory model only). A position or KV spec may keep its own commas
unquoted (`kv=window:sinks=4,recent=1024`): a key lengthwise does not take, right after a spec, belongs to it.
"""
from __future__ import annotations

import difflib
import inspect
import json
import logging
import os

import lm_eval.models  # noqa: F401  the harness's own models registered first (its registry imports them only when empty)
import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (_add_special_kwargs, handle_stop_sequences, has_bos_prefix,
                                  normalize_gen_kwargs, postprocess_generated_text)
from tqdm import tqdm

from ...errors import LengthwiseError

_log = logging.getLogger(__name__)  # under "lengthwise", beside the harness's "lm_eval.*" loggers

ARGS = ("pretrained", "positions", "kv", "device", "dtype", "backend", "max_length", "max_batch_tokens",
        "max_gen_toks", "add_bos_token", "prefix_token_id", "tokenizer", "batch_size", "max_batch_size")
SPECS = ("positions", "kv")  # values with commas of their own
# set here, or not lm-eval's to set: one completion per request, no per-token details
INTERNAL = {"prompts", "max_new_tokens", "chat", "truncate", "progress", "timing", "check_context", "n", "logprobs",
            "system", "context", "details"}
HARNESS = ("batch_size", "max_batch_size", "device")  # what simple_evaluate adds to every model's arguments


def _text(v) -> str:
    """A value the harness parsed back to the text it was (true, 4, 0.5)."""
    return str(v).lower() if isinstance(v, bool) else str(v)


def model_args(given: dict) -> dict:
    """--model_args as keyword arguments, spec commas glued back; an unknown key is one clear error."""
    out: dict = {}
    prev = None
    for k, v in given.items():
        if k not in ARGS:
            if prev in SPECS and isinstance(out[prev], str) and ":" in out[prev]:
                out[prev] += f",{k}={_text(v)}"
                continue
            close = difflib.get_close_matches(str(k), ARGS, n=1)
            hint = f": did you mean {close[0]!r}?" if close else ""
            raise LengthwiseError(f"unknown --model_args key {k!r} for lengthwise{hint} (it takes {', '.join(ARGS[:-2])})")
        out[k] = v
        prev = k
    return out


def _whole(name: str, v, low: int = 1) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise LengthwiseError(f"--model_args {name}={v!r}: give a whole number of at least {low}")
    return v


@register_model("lengthwise")
class LengthwiseLM(TemplateLM):
    """lm-eval's LM on a lengthwise CausalLM (see the module docstring)."""

    def __init__(self, pretrained="smollm2-135m", positions: str | None = None, kv: str | None = None,
                 device: str | None = None, dtype: str | None = None, backend: str = "auto",
                 max_length: int | None = None, max_batch_tokens: int = 16384, max_gen_toks: int = 256,
                 add_bos_token: bool | None = None, prefix_token_id: int | None = None, tokenizer=None,
                 batch_size=None, max_batch_size=None):
        super().__init__()
        import lengthwise as lw
        if isinstance(pretrained, lw.CausalLM):
            if positions is not None or kv is not None:
                raise LengthwiseError("pretrained is a loaded lw.CausalLM: give positions= and kv= to its lw.load")
            self.lm = pretrained
        elif isinstance(pretrained, torch.nn.Module):
            self.lm = lw.from_hf(pretrained, tokenizer, backend=backend, positions=positions, kv=kv)
        elif isinstance(pretrained, (str, os.PathLike)):
            if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
                # the harness's default device is cuda; its hf model falls back to the CPU the same way
                _log.warning(f"device {device}: no CUDA GPU here, running on the CPU")  # as the harness's own log
                device = "cpu"
            if tokenizer is not None:
                raise LengthwiseError("tokenizer= goes with an in-memory model; a checkpoint brings its own")
            self.lm = lw.load(pretrained, device=device, dtype=None if dtype == "auto" else dtype, backend=backend,
                              positions=positions, kv=kv)
        else:
            raise LengthwiseError(f"pretrained must be a model name or path, got {type(pretrained).__name__}")
        if not isinstance(self.lm, lw.CausalLM):
            raise LengthwiseError(f"{pretrained} is an encoder: lm-eval's requests need a causal language model")
        self.tokenizer = self.lm._need_tokenizer()
        reach = self.lm.context_length
        self._max_length = _whole("max_length", max_length) or reach
        if self._max_length > reach:
            raise LengthwiseError(f"--model_args max_length={max_length} is past the {reach} tokens this model "
                                  "reaches: lower it, or pick a positions= scheme that reaches further")
        self.max_batch_tokens = _whole("max_batch_tokens", max_batch_tokens)
        self._max_gen_toks = _whole("max_gen_toks", max_gen_toks)
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = _whole("prefix_token_id", prefix_token_id, 0)
        self._device = self.lm.device
        params = dict(inspect.signature(self.lm.generate_ids).parameters)
        if any(p.kind is p.VAR_KEYWORD for p in params.values()) and hasattr(self.lm, "_complete"):
            # generate_ids(**controls) passes them to _complete: its keyword-only controls are the ones it takes
            params.update({k: p for k, p in inspect.signature(self.lm._complete).parameters.items()
                           if p.kind is p.KEYWORD_ONLY})
        self._generate_params = {k for k, p in params.items() if p.kind is not p.VAR_KEYWORD}
        self._open = False

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "LengthwiseLM":
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k in HARNESS}
        return cls(**{**extra, **model_args(dict(arg_dict))})

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "LengthwiseLM":
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    # ------------------------------------------------------------ what the harness asks of every model

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        """As the `hf` model encodes: the tokenizer's own special tokens unless told, none before a leading BOS."""
        kw = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            kw["add_special_tokens"] = False
        ids = self.tokenizer.encode(string, **kw)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def _prompt_ids(self, context: str, keep: int) -> list[int]:
        """A generation prompt as the `hf` model's tok_batch_encode makes it, its last `keep` tokens."""
        kw = ({"add_special_tokens": False} if has_bos_prefix(context, getattr(self.tokenizer, "bos_token", None))
              else _add_special_kwargs(None, self.add_bos_token))
        return self.tokenizer(context, **kw)["input_ids"][-keep:]

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # ------------------------------------------------------------ scoring

    def _chunks(self, sizes, order: list[int]) -> list[list[int]]:
        """Request indices in `order`, in groups of at most max_batch_tokens tokens (at least one request each)."""
        out, cur, used = [], [], 0
        for i in order:
            if cur and used + sizes[i] > self.max_batch_tokens:
                out.append(cur)
                cur, used = [], 0
            cur.append(i)
            used += sizes[i]
        return out + ([cur] if cur else [])

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether greedy decoding gives it) per (key, context,
        continuation) request; a context too long for max_length loses its left end, as in the `hf` model."""
        self._no_scoring_policy()
        inps, conts = [], []
        for _, ctx, cont in requests:
            if not cont or len(cont) > self.max_length:
                raise LengthwiseError(f"a continuation of {len(cont)} tokens cannot be scored within max_length "
                                      f"{self.max_length}")
            inps.append((ctx + cont)[-(self.max_length + 1):][:-1])
            conts.append(cont)
        res: list = [None] * len(requests)
        order = sorted(range(len(inps)), key=lambda i: -len(inps[i]))  # longest first: a memory error shows at once
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="lengthwise loglikelihood")
        for chunk in self._chunks([len(x) for x in inps], order):
            logits = self.lm.logits([inps[i] for i in chunk], self.max_batch_tokens,
                                    last=[len(conts[i]) for i in chunk])
            for i, x in zip(chunk, logits):
                logp = F.log_softmax(x.float(), dim=-1)  # [len(cont), vocab]
                cont = torch.tensor(conts[i])
                res[i] = (float(logp.gather(1, cont[:, None]).sum()), bool((logp.argmax(-1) == cont).all()))
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], res[i])
            bar.update(len(chunk))
        bar.close()
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """A text's whole log-likelihood over the harness's disjoint rolling windows of max_length tokens."""
        windows, owner = [], []
        for i, (string,) in enumerate(r.args for r in requests):
            for ctx, pred in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, pred))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[i] += logp
        for r, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    # ------------------------------------------------------------ generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each request's completion, cut at its first `until` string (EOS's text included)."""
        res: list = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        eos = self.tokenizer.decode(self.eot_token_id, skip_special_tokens=False)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="lengthwise generate_until")
        for members in groups.values():
            kwargs = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = kwargs.pop("max_gen_toks")
            sampling = self._sampling(kwargs)
            if "stop" in self._generate_params or self._open:  # a generate that stops at strings: no tokens past them
                sampling["stop"] = [u for u in until if u]
            keep = self.max_length - max_new
            if keep < 1:
                raise LengthwiseError(f"max_gen_toks {max_new} leaves no room for a prompt within max_length "
                                      f"{self.max_length}")
            ids = {i: self._prompt_ids(requests[i].args[0], keep) for i in members}
            order = sorted(members, key=lambda i: -len(ids[i]))
            for chunk in self._chunks({i: len(ids[i]) + max_new for i in members}, order):
                new = self.lm.generate_ids([ids[i] for i in chunk], max_new, **sampling)
                for i, toks in zip(chunk, new):
                    text = self.tokenizer.decode(toks, skip_special_tokens=True)
                    res[i] = postprocess_generated_text(text, until, None)
                    self.cache_hook.add_partial("generate_until", requests[i].args, res[i])
                bar.update(len(chunk))
        bar.close()
        return res

    def _no_scoring_policy(self) -> None:
        """A KV policy shapes what generation keeps; a loglikelihood request scores the whole text in one forward,
        where no cache is kept, so kv= would be silently ignored there: refused instead."""
        if getattr(self.lm.kv, "evicts", False):
            raise LengthwiseError(f"kv={self.lm.kv.spec()} applies to generate_until only: loglikelihood requests "
                                  "score the whole text without a KV cache; drop kv= for this task")

    def _sampling(self, kwargs: dict) -> dict:
        """The request's sampling settings as generate_ids arguments; one it does not take is refused by name."""
        do_sample = kwargs.pop("do_sample", False)
        temperature = kwargs.pop("temperature", 0.0)
        out = {"temperature": float(temperature) if do_sample else 0.0}
        takes = sorted(self._generate_params - INTERNAL)
        for k, v in kwargs.items():
            if k not in takes and not self._open:
                raise LengthwiseError(f"gen_kwargs {k}={v!r}: lengthwise's generate does not take it (it takes "
                                      f"do_sample, {', '.join(takes)})")
            out[k] = v
        return out
