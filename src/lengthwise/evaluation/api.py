"""`lw.evaluate(...)`: a length grid in one call, on lengthwise, on HF transformers, or on a runner of your own.

A runner is any object with these (the protocol; docs/evaluation.md has it in full):

    render(prompt: str, answer_prefix: str) -> list[int]   the token ids the engine will see; tasks size their
                                                            prompts with it, so one render, one set of prompts
    generate(samples: list[tasks.Sample]) -> (list[str], dict)
                                                            one completion per sample, in order, and the batch's
                                                            timing: prefill_s, decode_s, peak_mem_gib (or None)
    context_length: int                                     the longest prompt it claims to reach
    trained_context: int | None                             the checkpoint's trained context (cells within it keep
                                                            prompt plus answer inside it)
    name: str (optional)                                    the engine's label in the store (default: its class)
    on_cpu: bool (optional), with n_params, n_layers, width  asks for the CPU time estimate before a long grid

`lengthwise.evaluation.make_render(tokenizer, chat)` is the render lengthwise's own runners use: a runner
that takes it with the same tokenizer is given byte-identical prompts, cell for cell.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

from ..errors import LengthwiseError
from .grid import BACKENDS, EvalConfig, cells, parse_depths, parse_lengths, run
from .store import ResultStore

PROTOCOL = ("render", "generate", "context_length", "trained_context")


def _check_runner(runner) -> str:
    missing = [a for a in PROTOCOL if not hasattr(runner, a)]
    if missing or not callable(getattr(runner, "render", None)) or not callable(getattr(runner, "generate", None)):
        raise LengthwiseError(f"engine {type(runner).__name__} is not a runner: it lacks {', '.join(missing) or 'a callable render/generate'} "
                              f"(a runner has {', '.join(PROTOCOL)}; see docs/evaluation.md)")
    name = getattr(runner, "name", None) or type(runner).__name__
    if not isinstance(name, str):
        raise LengthwiseError(f"the runner's name must be a string, got {name!r}")
    return name


def _runner_kv(runner) -> str:
    spec = getattr(runner, "kv", None) or "full"
    if not isinstance(spec, str):
        raise LengthwiseError(f"the runner's kv must be a lengthwise policy spec (a string), got {spec!r}")
    from .. import kv as K
    return K.parse(spec).spec()


def _refuse_kv(setting: str):
    raise LengthwiseError(f"{setting} configures lengthwise's own engine: a runner of your own keeps its own cache")


def evaluate(model: str, tasks: str | Sequence[str], lengths: str | Sequence[int], out,
             depths: str | int | Sequence[float] = (50.0,), samples: int = 4, engine="lengthwise",
             positions: str | None = None, chat: bool = False, seed: int = 0, device: str | None = None,
             dtype: str | None = None, max_batch_tokens: int = 65536, hf_rope: dict | None = None,
             yes: bool = False, allow_beyond_context: bool = False, append_config: bool = False,
             progress: Callable[[int, int], None] | None = None, kv: str = "full",
             kv_question: str = "kept", kv_dtype: str = "auto") -> list[dict]:
    """Run the grid tasks x lengths x depths x samples and return its records (one dict per cell, as the store at
    `out` holds them; cells finished by an earlier call are read, not run again).

    model: an embedded name, an HF folder or a .gguf: what the lengthwise and hf engines load, and what keys the
    store (its content hash). A runner of your own names the same checkpoint it runs.
    tasks: a list of task specs ("passkey", "niah_single:haystack=noise"); one string is one task.
    lengths: token counts, or "1k,2k,4k". depths: percentages, a count spread over 0-100, or "10,50,90".
    engine: "lengthwise", "hf", or a runner object (module docstring). kv: the lengthwise engine's KV policy
    ("snapkv:ratio=0.5"); kv_question: "kept" keeps each question out of compression, "compressed" does not;
    kv_dtype: what its cache stores keys and values in ("auto", "bf16", "fp8").
    The rest is as `lengthwise eval`.
    """
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    lengths = parse_lengths(lengths) if isinstance(lengths, str) else list(lengths)
    if isinstance(depths, (str, int)) and not isinstance(depths, bool):
        depths = parse_depths(str(depths))
    custom = not isinstance(engine, str)
    if not custom and engine not in BACKENDS:
        raise LengthwiseError(f"unknown engine {engine!r}: choose {' or '.join(BACKENDS)}, or pass a runner object")
    cfg = EvalConfig(model=str(model), tasks=tasks, lengths=lengths, depths=list(depths), samples=samples, seed=seed,
                     method=positions or "none", backend="lengthwise" if custom else engine, chat=chat,
                     hf_rope=hf_rope, device=device, dtype=dtype, max_batch_tokens=max_batch_tokens,
                     kv=kv if not custom or kv == "full" else _refuse_kv(f"kv={kv}"), kv_question=kv_question,
                     kv_dtype=kv_dtype if not custom or kv_dtype == "auto" else _refuse_kv(f"kv_dtype={kv_dtype}"))
    if custom:
        if positions is not None or hf_rope is not None:
            raise LengthwiseError("positions= and hf_rope= configure lengthwise's own engines: a runner of your own "
                                  "sets its positions itself")
        cfg.backend = _check_runner(engine)  # its name labels the store's config and every record
        cfg.kv = _runner_kv(engine)  # a peer that compresses (kvpress) names the lengthwise policy it stands beside
        runner = engine
    else:
        from .backends import make_runner
        runner = make_runner(cfg)
    store = ResultStore(out)
    run(cfg, store, runner, yes=yes, allow_beyond_context=allow_beyond_context, progress=progress,
        append_config=append_config, warn=lambda m: warnings.warn(m, stacklevel=3))
    ids = {c.id for c in cells(cfg, runner.trained_context)}
    return [r for r in store.records()[0] if r["id"] in ids]
