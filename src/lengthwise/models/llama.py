"""Llama family (Llama, SmolLM2, Qwen2, Mistral) on packed tokens: x is [T, dim], never [B, L, dim]."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import MaskPattern
from ..attention.layer import Rotations, Step, attention_step
from ..errors import LengthwiseError
from ..positions import Linear, RoPE, Rotary, YaRN, from_hf
from . import embedding, fuse, residual_dtype


@dataclass
class LlamaConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    head_dim: int = 0
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    context_length: int = 2048  # the trained context
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    sliding_window: int | None = None
    window_layers: tuple[bool, ...] | None = None  # which layers slide (HF layer_types); None: all, if a window is set
    rope: RoPE | None = None  # the checkpoint's own RoPE scaling (HF rope_scaling), if any
    pe: str | None = None  # a from-scratch position encoding (positions/scratch/), e.g. "alibi"; None: RoPE

    def window_of(self, layer: int) -> int | None:
        """The sliding window of one layer, or None for full attention."""
        if self.sliding_window is None or (self.window_layers is not None and not self.window_layers[layer]):
            return None
        return self.sliding_window

    @property
    def windowed(self) -> bool:
        return any(self.window_of(i) is not None for i in range(self.n_layers))

    def __post_init__(self):
        self.head_dim = self.head_dim or self.dim // self.n_heads

    @classmethod
    def from_hf(cls, c: dict) -> "LlamaConfig":
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        use_window = c.get("use_sliding_window", c.get("model_type") == "mistral")
        types = c.get("layer_types")
        if types is None and c.get("model_type") == "qwen2" and use_window:
            # HF's Qwen2Config: layers from max_window_layers on slide, the ones below attend fully
            first = c.get("max_window_layers", 28)
            types = ["sliding_attention" if i >= first else "full_attention" for i in range(c["num_hidden_layers"])]
        return cls(
            vocab_size=c["vocab_size"], dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
            n_heads=c["num_attention_heads"], n_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
            hidden_dim=c["intermediate_size"], head_dim=c.get("head_dim") or 0, norm_eps=c.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", c.get("rope_theta", 10000.0)),
            context_length=c.get("max_position_embeddings", 2048),
            tie_embeddings=c.get("tie_word_embeddings", False),
            qkv_bias=c.get("model_type") == "qwen2" or c.get("attention_bias", False),
            o_bias=c.get("attention_bias", False),
            sliding_window=c.get("sliding_window", 4096) if use_window else None,  # 4096: HF's default when unset
            window_layers=None if types is None else tuple(t == "sliding_attention" for t in types),
            rope=from_hf(rope, c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
                         c.get("max_position_embeddings"), c.get("original_max_position_embeddings")),
            pe=c.get("lengthwise_pe"),
        )

    @classmethod
    def from_gguf(cls, f: dict, arch: str, tensor_names: set[str]) -> "LlamaConfig":
        n_heads = f[f"{arch}.attention.head_count"]
        return cls(
            vocab_size=f.get(f"{arch}.vocab_size") or len(f["tokenizer.ggml.tokens"]), dim=f[f"{arch}.embedding_length"],
            n_layers=f[f"{arch}.block_count"], n_heads=n_heads,
            n_kv_heads=f.get(f"{arch}.attention.head_count_kv", n_heads), hidden_dim=f[f"{arch}.feed_forward_length"],
            head_dim=f.get(f"{arch}.attention.key_length", 0), norm_eps=f[f"{arch}.attention.layer_norm_rms_epsilon"],
            rope_theta=f.get(f"{arch}.rope.freq_base", 10000.0), context_length=f[f"{arch}.context_length"],
            tie_embeddings="output.weight" not in tensor_names, qkv_bias="blk.0.attn_q.bias" in tensor_names,
            sliding_window=f.get(f"{arch}.attention.sliding_window"), rope=_gguf_rope(f, arch),
        )


def _gguf_rope(f: dict, arch: str) -> RoPE | None:
    kind = f.get(f"{arch}.rope.scaling.type", "none")
    factor = float(f.get(f"{arch}.rope.scaling.factor") or 1.0)
    if kind in ("none", "") or factor == 1.0:
        return None
    orig = int(f.get(f"{arch}.rope.scaling.original_context_length") or 0)
    if kind == "linear":
        return Linear(factor)
    if kind == "yarn":
        return YaRN(factor, original=orig)
    raise LengthwiseError(f"this GGUF uses RoPE scaling {kind!r}, which lengthwise does not read yet (linear, yarn)")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        """x in the residual dtype; the result in the weights' dtype, ready for the next GEMM."""
        if x.dtype in (torch.float32, torch.float64):  # the residual stream: torch's fused kernel, same math
            return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps).to(self.weight.dtype)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * xf.to(x.dtype)).to(self.weight.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int = 0):
        super().__init__()
        self.window = cfg.window_of(layer)  # this layer's own sliding window, or None: the model's mask
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.o_bias)

    def forward(self, x, step: Step, layer: int, fused: bool = False):
        """fused: the fused layers are on (Llama.forward decides: Backend.fuses)."""
        T = x.shape[0]
        qkv = self.wqkv(x).view(T, self.n_heads + 2 * self.n_kv_heads, self.head_dim)  # one GEMM for q, k and v
        y = attention_step(qkv, self.n_heads, self.n_kv_heads, step, layer, self.window, fused)
        return self.wo(y.reshape(T, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=False)  # gate and up in one GEMM
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)  # down

    def forward(self, x, silu_mul=None):
        """silu_mul: the fused layers' kernel (Backend.silu_mul), or None for torch's ops."""
        if silu_mul is not None:  # SiLU(gate) * up in one kernel
            return self.w2(silu_mul(self.w13(x)))
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int = 0):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, step, layer):
        x = x + self.attention(self.attention_norm(x), step, layer)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig, positions: RoPE | None = None):
        super().__init__()
        self.cfg = cfg
        if positions is not None and type(positions) is RoPE:
            if positions.beyond:
                raise LengthwiseError("none: beyond=true gates an extension method, and none is no method: drop beyond")
            positions = None  # "none": no extension method, the checkpoint as trained (its own scaling kept)
        own = positions is None
        self.rotary = Rotary(positions or cfg.rope or RoPE(), cfg.head_dim, cfg.rope_theta, cfg.context_length,
                             native=cfg.rope, claims=not own)
        if self.rotary.far_needed and cfg.windowed:
            raise LengthwiseError(f"{self.rotary.scheme.name} remaps far keys, but this model attends within a "
                                  f"{cfg.sliding_window}-token sliding window: use a RoPE scaling instead")
        self.pe = None
        if cfg.pe is not None:
            from ..positions import scratch
            self.pe = scratch.build(cfg.pe, scratch.Shape(cfg.dim, cfg.n_heads, cfg.head_dim))
            if not own and not self.pe.rotary:
                raise LengthwiseError(f"{self.rotary.scheme.spec()} re-scales RoPE, and this model was trained with "
                                      f"{cfg.pe}: drop --positions")
        self.tok_embeddings = embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    @property
    def mask(self) -> MaskPattern:
        """The mask of layers without a window of their own (a layer that slides applies its window on top)."""
        return MaskPattern(causal=True)

    def forward(self, tokens, positions, step: Step, out_rows=None):
        """tokens, positions [T] -> logits [T, vocab], or [len(out_rows), vocab] for just those rows."""
        dtype = self.tok_embeddings.weight.dtype
        x = self.tok_embeddings(tokens).to(residual_dtype(dtype))  # [T, dim]
        # under autocast (mixed-precision training) q, k and v come out of the GEMM in its dtype: rotate in it
        rot_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else dtype
        if self.pe is None:
            step.rots = Rotations.of(self.rotary(positions, step.meta, step.lengths), rot_dtype)
        else:
            x, positions = self._scratch_positions(tokens, positions, step, x, rot_dtype)
        if step.backend.fuses(x):
            x = self._fused_layers(x, step, out_rows, dtype)
        else:
            for i, layer in enumerate(self.layers):
                x = layer(x, step, i)
            if out_rows is not None:
                x = x[out_rows]
            x = self.norm(x)
        return F.linear(x, self.tok_embeddings.weight if self.output is None else self.output.weight)

    def _scratch_positions(self, tokens, positions, step: Step, x, dtype):
        """A from-scratch scheme's hooks (positions/scratch/base.py): remap, embed, rotate, bias."""
        if step.cache is not None and not self.pe.cached:
            raise LengthwiseError(f"position encoding {self.cfg.pe} runs on packed forwards (training, scoring, "
                                  "logits), not against a KV cache: score with lm.logits")
        cu = step.meta.cu_q
        positions = self.pe.remap(positions, cu)
        e = self.pe.embed(tokens, positions, cu)
        if e is not None:
            x = x + e.to(x.dtype)
        step.rots = Rotations.of(self.rotary(positions, step.meta, step.lengths), dtype) if self.pe.rotary else None
        step.bias = self.pe.biases(positions, step.meta)
        return x, positions

    def _fused_layers(self, x, step, out_rows, dtype):
        """The layers with each residual add fused into the norm after it, and SiLU(gate) * up fused
        (Backend.add_rms_norm, Backend.silu_mul): the same math as Block.forward, in fewer passes over the
        activations."""
        add_rms_norm, silu_mul = step.backend.add_rms_norm, step.backend.silu_mul
        y = None  # the last block output, not yet added to the residual x
        for i, layer in enumerate(self.layers):
            x, h = add_rms_norm(x, y, layer.attention_norm.weight, layer.attention_norm.eps, dtype)
            y = layer.attention(h, step, i, fused=True)
            x, h = add_rms_norm(x, y, layer.ffn_norm.weight, layer.ffn_norm.eps, dtype)
            y = layer.feed_forward(h, silu_mul)
        if out_rows is not None:
            x, y = x[out_rows], y[out_rows]
        return add_rms_norm(x, y, self.norm.weight, self.norm.eps, dtype)[1]


# One table adapts checkpoint names: (our name, HF name, GGUF name); {i} is the layer.
_NAMES = [
    ("tok_embeddings.weight", "model.embed_tokens.weight", "token_embd.weight"),
    ("norm.weight", "model.norm.weight", "output_norm.weight"),
    ("output.weight", "lm_head.weight", "output.weight"),
    ("layers.{i}.attention_norm.weight", "model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    ("layers.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight"),
    ("layers.{i}.attention.wq.{p}", "model.layers.{i}.self_attn.q_proj.{p}", "blk.{i}.attn_q.{p}"),
    ("layers.{i}.attention.wk.{p}", "model.layers.{i}.self_attn.k_proj.{p}", "blk.{i}.attn_k.{p}"),
    ("layers.{i}.attention.wv.{p}", "model.layers.{i}.self_attn.v_proj.{p}", "blk.{i}.attn_v.{p}"),
    ("layers.{i}.attention.wo.{p}", "model.layers.{i}.self_attn.o_proj.{p}", "blk.{i}.attn_output.{p}"),
    ("layers.{i}.feed_forward.w1.weight", "model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    ("layers.{i}.feed_forward.w3.weight", "model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
    ("layers.{i}.feed_forward.w2.weight", "model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
]


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)") + "$")


_RULES = {fmt: [(_pattern(names[col]), names[0]) for names in _NAMES] for col, fmt in ((1, "hf"), (2, "gguf"))}


# the projections that run as one GEMM: our fused name -> its parts, in order
FUSED = {"attention.wqkv": ("attention.wq", "attention.wk", "attention.wv"),
         "feed_forward.w13": ("feed_forward.w1", "feed_forward.w3")}


def convert_checkpoint(sd: dict, cfg: LlamaConfig, fmt: str, arch: str = "llama") -> dict:
    """The one load hook: checkpoint names (HF or GGUF) to ours, q/k/v and gate/up fused. Unknown tensors are dropped."""
    return fuse(rename(sd, cfg, fmt, arch), FUSED)


def rename(sd: dict, cfg: LlamaConfig, fmt: str, arch: str = "llama") -> dict:
    """Checkpoint names to ours, each projection still apart (wq, wk, wv, w1, w3): what from_hf shares."""
    out = {}
    for name, t in sd.items():
        if fmt == "hf" and name.startswith(PE_PREFIX):  # a from-scratch position encoding's own weights
            out["pe." + name[len(PE_PREFIX):]] = t
            continue
        for pat, ours in _RULES[fmt]:
            m = pat.match(name)
            if m:
                key = ours.format(**m.groupdict())
                if fmt == "gguf" and arch == "llama" and name.endswith(("attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias")):
                    t = _unpermute(t, cfg.n_heads if ".attn_q." in name else cfg.n_kv_heads)
                out[key] = t
                break
    if cfg.tie_embeddings:
        out.pop("output.weight", None)
    return out


PE_PREFIX = "lengthwise.pe."


def to_hf(state: dict, cfg: LlamaConfig) -> dict:
    """Our state dict in HF's names (q/k/v and gate/up apart again), the inverse of convert_checkpoint: how
    `lengthwise train` writes a checkpoint that `lw.load` reads back. A scheme's own weights keep PE_PREFIX."""
    sd = {}
    qkv = [cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim]
    for name, t in state.items():
        t = t.detach().contiguous()
        if name.startswith("pe."):
            sd[PE_PREFIX + name[3:]] = t
            continue
        if ".attention.wqkv." in name:
            parts = dict(zip("qkv", t.split(qkv)))
            pieces = {name.replace("wqkv", f"w{x}"): parts[x] for x in "qkv"}
        elif ".feed_forward.w13." in name:
            g, u = t.chunk(2)
            pieces = {name.replace("w13", "w1"): g, name.replace("w13", "w3"): u}
        else:
            pieces = {name: t}
        for ours, tensor in pieces.items():
            for names in _NAMES:
                m = _pattern(names[0]).match(ours)
                if m:
                    sd[names[1].format(**m.groupdict())] = tensor.contiguous()
                    break
            else:
                raise LengthwiseError(f"no HF name for tensor {ours}")
    return sd


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # llama.cpp stores q/k rows interleaved per head for its rotary kernel; undo to HF's half split.
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
