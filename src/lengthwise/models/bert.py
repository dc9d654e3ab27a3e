"""BERT family (BERT, MiniLM) on packed tokens: post-LayerNorm encoder, bidirectional within each sequence."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import MaskPattern
from ..attention.layer import Step, attention_step
from ..errors import LengthwiseError
from . import embedding, fuse, residual_dtype

RESIDUALS = ("float32", "model")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)  # residual streams the fused add + LayerNorm takes

_ACTS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class BertConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int
    context_length: int = 512  # learned absolute positions: a hard limit
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    act: str = "gelu"

    @classmethod
    def from_hf(cls, c: dict) -> "BertConfig":
        return cls(
            vocab_size=c["vocab_size"], dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
            n_heads=c["num_attention_heads"], hidden_dim=c["intermediate_size"],
            context_length=c.get("max_position_embeddings", 512), type_vocab_size=c.get("type_vocab_size", 2),
            norm_eps=c.get("layer_norm_eps", 1e-12), act=c.get("hidden_act", "gelu"),
        )


class LayerNorm(nn.LayerNorm):
    """LayerNorm(x + y) in the residual stream's dtype r (float32 math inside, whatever r is); on the GPU
    path one fused kernel (Backend.add_layer_norm) does the add and the norm."""

    def forward(self, x, r: torch.dtype, y=None, fused=None):
        """fused: the fused layers' kernel (Backend.add_layer_norm), or None for torch's ops."""
        if fused is not None:
            return fused(x, y, self.weight, self.bias, self.eps)
        if y is not None:
            x = x + y
        if x.dtype != r:
            x = x.to(r)
        return F.layer_norm(x, self.normalized_shape, self.weight.to(r), self.bias.to(r), self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.wo = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x, step: Step, layer: int = 0):
        T, H = x.shape[0], self.n_heads
        qkv = self.wqkv(x).view(T, 3 * H, -1)  # q, k, v heads, each [T, H, D]
        return self.wo(attention_step(qkv, H, H, step, layer).reshape(T, -1))


class Block(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        if cfg.act not in _ACTS:
            raise LengthwiseError(f"unsupported BERT activation {cfg.act!r}: supported are {', '.join(_ACTS)}")
        self.act = _ACTS[cfg.act]
        self.gelu = cfg.act.startswith("gelu")  # cuBLASLt's GELU epilogue applies
        self.attention = Attention(cfg)
        self.attention_norm = LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim)
        self.ffn_norm = LayerNorm(cfg.dim, eps=cfg.norm_eps)

    def forward(self, x, step: Step, layer: int = 0):
        """x [T, dim] in the residual dtype r; GEMMs run in the weights' dtype."""
        w, r = self.w1.weight.dtype, x.dtype
        fused = step.backend.add_layer_norm if step.backend.fuses(x, _FLOATS) else None
        x = self.attention_norm(x, r, self.attention(x.to(w), step, layer), fused)  # post-LN
        return self.ffn_norm(x, r, self.w2(step.backend.linear_act(x.to(w), self.w1, self.act, self.gelu)), fused)


class Bert(nn.Module):
    def __init__(self, cfg: BertConfig, residual: str = "float32"):
        """residual: the stream's dtype between layers. "float32" (at least float32, the default) or "model"
        (the weights' dtype, as HF runs BERT in bf16/fp16). Post-LN renormalizes the stream after every
        sublayer, so there is no long running sum to protect: "model" rounds each LayerNorm output once."""
        super().__init__()
        if residual not in RESIDUALS:
            raise LengthwiseError(f"unknown residual {residual!r}: choose one of {', '.join(RESIDUALS)}")
        self.cfg, self.residual = cfg, residual
        self.word = embedding(cfg.vocab_size, cfg.dim)
        self.position = embedding(cfg.context_length, cfg.dim)
        self.token_type = embedding(cfg.type_vocab_size, cfg.dim)
        self.embed_norm = LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))

    @property
    def mask(self) -> MaskPattern:
        return MaskPattern(causal=False)  # bidirectional within each sequence

    def forward(self, tokens, positions, step: Step, token_types=None):
        """tokens, positions [T] -> hidden states [T, dim] in the residual dtype; token types default to segment 0.
        step: the packed batch's metadata and Backend (Step(AttnMeta.packed(cu, max_len), model.mask, backend))."""
        tt = self.token_type.weight[0] if token_types is None else self.token_type(token_types)
        w = self.word.weight.dtype
        r = w if self.residual == "model" else residual_dtype(w)
        x = self.embed_norm(self.word(tokens).to(r) + tt.to(r) + self.position(positions).to(r), r)
        for i, layer in enumerate(self.layers):
            x = layer(x, step, i)
        return x


_NAMES = [
    ("word.weight", "embeddings.word_embeddings.weight"),
    ("position.weight", "embeddings.position_embeddings.weight"),
    ("token_type.weight", "embeddings.token_type_embeddings.weight"),
    ("embed_norm.{p}", "embeddings.LayerNorm.{p}"),
    ("layers.{i}.attention.wq.{p}", "encoder.layer.{i}.attention.self.query.{p}"),
    ("layers.{i}.attention.wk.{p}", "encoder.layer.{i}.attention.self.key.{p}"),
    ("layers.{i}.attention.wv.{p}", "encoder.layer.{i}.attention.self.value.{p}"),
    ("layers.{i}.attention.wo.{p}", "encoder.layer.{i}.attention.output.dense.{p}"),
    ("layers.{i}.attention_norm.{p}", "encoder.layer.{i}.attention.output.LayerNorm.{p}"),
    ("layers.{i}.w1.{p}", "encoder.layer.{i}.intermediate.dense.{p}"),
    ("layers.{i}.w2.{p}", "encoder.layer.{i}.output.dense.{p}"),
    ("layers.{i}.ffn_norm.{p}", "encoder.layer.{i}.output.LayerNorm.{p}"),
]
_RULES = [
    (re.compile("^(?:bert\\.)?" + re.escape(hf).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)") + "$"), ours)
    for ours, hf in _NAMES
]


FUSED = {"attention.wqkv": ("attention.wq", "attention.wk", "attention.wv")}  # run as one GEMM


def convert_checkpoint(sd: dict, cfg: BertConfig, fmt: str = "hf", arch: str = "bert") -> dict:
    """The one load hook: HF names (with or without a 'bert.' prefix; old gamma/beta too) to ours, q/k/v fused."""
    return fuse(rename(sd, cfg, fmt, arch), FUSED)


def rename(sd: dict, cfg: BertConfig, fmt: str = "hf", arch: str = "bert") -> dict:
    """HF names to ours, q, k and v still apart: what from_hf shares."""
    out = {}
    for name, t in sd.items():
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        for pat, ours in _RULES:
            m = pat.match(name)
            if m:
                out[ours.format(**m.groupdict())] = t
                break
    return out
