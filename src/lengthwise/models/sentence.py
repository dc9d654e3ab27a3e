"""A sentence-transformers folder's head: Pooling, then Dense and Normalize modules, on packed hidden states.

Read from modules.json and each module's config, as current sentence-transformers writes them (and the
pooling_mode_* booleans of its older saves). What this file cannot run exactly, a module type, a config key or
a value it does not know, is one clear error: never a silent default.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LengthwiseError

MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
           "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
           "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
ACTIVATIONS = {  # Dense's activation_function, by the class name sentence-transformers saves
    "torch.nn.modules.activation.Tanh": torch.tanh, "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": F.relu, "torch.nn.modules.activation.GELU": F.gelu,
    "torch.nn.modules.activation.Sigmoid": torch.sigmoid, "torch.nn.modules.activation.SiLU": F.silu,
}
_IO = {"module_input_name": ("sentence_embedding",), "module_output_name": ("sentence_embedding", None)}
_TRANSFORMER_KEYS = {"max_seq_length", "do_lower_case", "transformer_task", "modality_config", "module_output_name",
                     "model_args", "tokenizer_args", "config_args", "cache_dir", "backend"}


def pool(h: torch.Tensor, cu_seqlens: torch.Tensor, mode: str) -> torch.Tensor:
    """Packed hidden states h [T, D] -> one vector per sequence [B, D], float32 or wider, as
    sentence-transformers' Pooling computes `mode` over every token (no prompt is prepended here)."""
    out_dtype = torch.promote_types(h.dtype, torch.float32)
    lens = cu_seqlens.diff().long()
    B = len(lens)
    if mode == "cls":
        return h[cu_seqlens[:-1].long()].to(out_dtype)
    if mode == "lasttoken":
        return h[cu_seqlens[1:].long() - 1].to(out_dtype)
    seq = torch.repeat_interleave(torch.arange(B, device=h.device), lens, output_size=h.shape[0])  # [T], no sync
    if mode == "max":
        out = torch.full((B, h.shape[1]), float("-inf"), dtype=h.dtype, device=h.device)
        return out.scatter_reduce(0, seq[:, None].expand_as(h), h, "amax").to(out_dtype)
    x = h.to(out_dtype)
    if mode == "weightedmean":  # weight of a token: its 1-based position in its sequence
        w = (torch.arange(h.shape[0], device=h.device) - cu_seqlens[:-1].long()[seq] + 1).to(out_dtype)[:, None]
        total = torch.zeros(B, h.shape[1], dtype=out_dtype, device=h.device).index_add_(0, seq, x * w)
        return total / (lens * (lens + 1) / 2).to(out_dtype)[:, None]
    total = torch.zeros(B, h.shape[1], dtype=out_dtype, device=h.device).index_add_(0, seq, x)
    if mode == "mean":
        return total / lens[:, None].to(out_dtype)
    if mode == "mean_sqrt_len_tokens":
        return total / lens[:, None].to(out_dtype).sqrt()
    raise LengthwiseError(f"unknown pooling {mode!r}: choose one of {', '.join(MODES)}")


class Dense(nn.Module):
    """sentence-transformers' Dense: act(W x + b), plus x (or a projection of it) when use_residual."""

    def __init__(self, in_features: int, out_features: int, bias: bool, act, use_residual: bool):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.act, self.use_residual = act, use_residual
        if use_residual and in_features != out_features:
            self.residual = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x):
        out = self.act(self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out


class SentenceHead(nn.Module):
    """Packed hidden states [T, D] -> sentence embeddings [B, dim]: pooling (several modes concatenate, as in
    sentence-transformers), then the folder's Dense and Normalize modules in their order."""

    def __init__(self, modes: tuple[str, ...], steps: list, dim: int, max_seq_length: int | None = None,
                 include_prompt: bool = True):
        super().__init__()
        self.modes, self.dim, self.max_seq_length, self.include_prompt = modes, dim, max_seq_length, include_prompt
        self.steps = nn.ModuleList(s for s in steps if isinstance(s, nn.Module))
        self.order = ["normalize" if s == "normalize" else "dense" for s in steps]

    @property
    def normalize(self) -> bool:
        return "normalize" in self.order

    def forward(self, h: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        e = torch.cat([pool(h, cu_seqlens, m) for m in self.modes], dim=-1).float()
        dense = iter(self.steps)
        for step in self.order:
            e = F.normalize(e, dim=-1) if step == "normalize" else next(dense)(e)
        return e


def _read(file: Path) -> dict:
    from .load import read_json
    return read_json(file, ": a sentence-transformers module config is one object")


def _keys(cfg: dict, allowed: set[str], file: Path) -> None:
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise LengthwiseError(f"{file} has {'keys' if len(unknown) > 1 else 'key'} {', '.join(map(repr, unknown))} "
                              f"that lengthwise does not know (known: {', '.join(sorted(allowed))}): it would not "
                              "embed as sentence-transformers does, so it is refused")


def _io(cfg: dict, file: Path) -> None:
    for k, ok in _IO.items():
        if k in cfg and cfg[k] not in ok:
            raise LengthwiseError(f"{file}: {k}={cfg[k]!r} routes the embedding elsewhere; lengthwise runs only "
                                  "sentence_embedding in and out")


def _pooling(file: Path, dim: int) -> tuple[tuple[str, ...], bool]:
    cfg = _read(file)
    _keys(cfg, {"embedding_dimension", "word_embedding_dimension", "pooling_mode", "include_prompt", *_LEGACY}, file)
    given = cfg.get("embedding_dimension", cfg.get("word_embedding_dimension", dim))
    if given != dim:
        raise LengthwiseError(f"{file}: embedding_dimension {given!r} is not the model's hidden size {dim}")
    mode = cfg.get("pooling_mode")
    if mode is None:  # older saves: one boolean per mode, in sentence-transformers' concatenation order
        modes = tuple(m for k, m in _LEGACY.items() if cfg.get(k))
        bad = [k for k in _LEGACY if k in cfg and not isinstance(cfg[k], bool)]
        if bad:
            raise LengthwiseError(f"{file}: {bad[0]} must be true or false, got {cfg[bad[0]]!r}")
        modes = modes or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode) if isinstance(mode, list) and mode else None
        if modes is None or not all(isinstance(m, str) and m in MODES for m in modes):
            raise LengthwiseError(f"{file}: pooling_mode {mode!r} is not one of {', '.join(MODES)} (or a list of them)")
    include = cfg.get("include_prompt", True)
    if not isinstance(include, bool):
        raise LengthwiseError(f"{file}: include_prompt must be true or false, got {include!r}")
    return modes, include


def _dense(folder: Path, in_dim: int) -> Dense:
    file = folder / "config.json"
    cfg = _read(file)
    _keys(cfg, {"in_features", "out_features", "bias", "activation_function", "use_residual", *_IO}, file)
    _io(cfg, file)
    ins, outs = cfg.get("in_features"), cfg.get("out_features")
    for k, v in (("in_features", ins), ("out_features", outs)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise LengthwiseError(f"{file}: {k} must be a whole number >= 1, got {v!r}")
    if ins != in_dim:
        raise LengthwiseError(f"{file}: in_features {ins} does not match the {in_dim} values that reach it")
    bias, residual = cfg.get("bias", True), cfg.get("use_residual", False)
    if not isinstance(bias, bool) or not isinstance(residual, bool):
        raise LengthwiseError(f"{file}: bias and use_residual must be true or false")
    act_name = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")  # sentence-transformers' default
    if act_name not in ACTIVATIONS:
        raise LengthwiseError(f"{file}: activation_function {act_name!r} is not one lengthwise runs "
                              f"({', '.join(a.rsplit('.', 1)[1] for a in ACTIVATIONS)})")
    dense = Dense(ins, outs, bias, ACTIVATIONS[act_name], residual)
    weights = folder / "model.safetensors"
    if not weights.exists():
        hint = " (pickled .bin weights are never loaded: convert them to safetensors)" if (folder / "pytorch_model.bin").exists() else ""
        raise LengthwiseError(f"{folder} has no model.safetensors for its Dense module{hint}")
    from safetensors.torch import load_file
    try:
        sd = load_file(str(weights))
    except Exception as e:  # SafetensorError and OSError alike
        raise LengthwiseError(f"corrupted or truncated safetensors file {weights}: {str(e).splitlines()[0]}") from None
    want = dense.state_dict()
    if set(sd) != set(want) or any(tuple(sd[k].shape) != tuple(v.shape) for k, v in want.items()):
        raise LengthwiseError(f"{weights} holds {sorted((k, tuple(v.shape)) for k, v in sd.items())}, not the "
                              f"{sorted((k, tuple(v.shape)) for k, v in want.items())} its config implies")
    dense.load_state_dict({k: v.float() for k, v in sd.items()})
    return dense.requires_grad_(False)


def _transformer(folder: Path) -> int | None:
    """max_seq_length of the Transformer module (sentence_bert_config.json), checked for what changes outputs."""
    file = folder / "sentence_bert_config.json"
    if not file.exists():
        return None
    cfg = _read(file)
    _keys(cfg, _TRANSFORMER_KEYS, file)
    if cfg.get("do_lower_case"):
        raise LengthwiseError(f"{file}: do_lower_case is true, and lengthwise passes text to the tokenizer as given")
    if cfg.get("transformer_task", "feature-extraction") != "feature-extraction":
        raise LengthwiseError(f"{file}: transformer_task {cfg['transformer_task']!r}: lengthwise embeds with "
                              "feature-extraction only")
    if cfg.get("module_output_name", "token_embeddings") != "token_embeddings":
        raise LengthwiseError(f"{file}: module_output_name {cfg['module_output_name']!r}: lengthwise pools the "
                              "token embeddings")
    mod = cfg.get("modality_config", {"text": {"method": "forward", "method_output_name": "last_hidden_state"}})
    if mod != {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}:
        raise LengthwiseError(f"{file}: modality_config {json.dumps(mod)[:80]}: lengthwise embeds text from the "
                              "last hidden state only")
    n = cfg.get("max_seq_length")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise LengthwiseError(f"{file}: max_seq_length must be a whole number >= 1, got {n!r}")
    return n


def read_prompts(folder: Path | None) -> dict[str, str]:
    """The named prompts encode's prompt_name picks from, as sentence-transformers has them: "query" and "document"
    (empty) unless the folder's config_sentence_transformers.json names its own."""
    out = {"query": "", "document": ""}
    file = Path(folder) / "config_sentence_transformers.json" if folder is not None and Path(folder).is_dir() else None
    if file is None or not file.exists():
        return out
    prompts = _read(file).get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                                for k, v in prompts.items()):
        raise LengthwiseError(f"{file}: prompts must map names to strings")
    return {**out, **{k: v or "" for k, v in prompts.items()}}


def read_head(folder: Path, dim: int) -> SentenceHead:
    """The head a folder states; without modules.json, mean pooling and nothing else (sentence-transformers'
    own default for a plain transformers folder)."""
    folder = Path(folder)
    modules_file = folder / "modules.json" if folder.is_dir() else None
    max_len = _transformer(folder) if folder.is_dir() else None
    prompts = folder / "config_sentence_transformers.json" if folder.is_dir() else None
    if prompts is not None and prompts.exists() and _read(prompts).get("default_prompt_name"):
        raise LengthwiseError(f"{prompts} names a default prompt, which sentence-transformers prepends to every "
                              "text and lengthwise does not: remove default_prompt_name, or prepend it yourself")
    if modules_file is None or not modules_file.exists():
        return SentenceHead(("mean",), [], dim, max_len)
    from .load import read_json
    try:
        modules = json.loads(modules_file.read_bytes())
    except (ValueError, RecursionError):
        read_json(modules_file)  # raises the one clear error
        raise
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise LengthwiseError(f"{modules_file} must be a list of module objects")
    modes, include, steps, out_dim = None, True, [], dim
    for i, m in enumerate(sorted(modules, key=lambda m: m.get("idx", 0) if isinstance(m.get("idx"), int) else 0)):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        path = m.get("path", "")
        if not isinstance(path, str) or ".." in Path(path).parts or Path(path).is_absolute():
            raise LengthwiseError(f"{modules_file}: module {i} has path {path!r}; modules live inside the folder")
        where = folder / path
        if kind == "Transformer" and i == 0:
            continue
        if kind == "Pooling" and modes is None and i == 1:
            modes, include = _pooling(where / "config.json", dim)
            out_dim = len(modes) * dim
        elif kind == "Dense" and modes is not None:
            steps.append(_dense(where, out_dim))
            out_dim = steps[-1].linear.out_features
        elif kind == "Normalize" and modes is not None:
            cfg = _read(where / "config.json") if (where / "config.json").exists() else {}
            _keys(cfg, set(_IO), where / "config.json")
            _io(cfg, where / "config.json")
            steps.append("normalize")
        else:
            raise LengthwiseError(f"{modules_file}: module {i} ({m.get('type')!r}) is not one lengthwise runs in that "
                                  "place: it reads Transformer, Pooling, then Dense and Normalize modules")
    if modes is None:
        raise LengthwiseError(f"{modules_file} has no Pooling module after the Transformer: lengthwise cannot tell "
                              "how to make one vector of a text")
    return SentenceHead(modes, steps, out_dim, max_len, include)
