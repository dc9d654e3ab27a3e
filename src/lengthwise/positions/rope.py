"""RoPE, rotary position embedding (Su et al., RoFormer, 2021), and the machinery every scheme shares.

Each pair of channels is rotated by position * base^(-2i/d); attention then sees only relative offsets.
A scheme changes the frequencies (scalings), the positions (remaps) or which keys are seen (patterns);
`Rotary` binds one scheme to a model and turns positions into the rotations one forward needs.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from ..errors import LengthwiseError

UNBOUNDED = 1 << 24  # the reach of a scheme that claims no limit: float32 positions stay exact up to here


@dataclass(frozen=True)
class RoPE:
    """Plain RoPE, as trained: the frequencies base^(-2i/d), no scaling."""
    name: ClassVar[str] = "none"
    families: ClassVar[tuple[str, ...]] = ("llama",)  # model families the scheme applies to
    shown: ClassVar[tuple[str, ...]] = ()  # fields spec() always names (besides the first and non-defaults)

    def per_length(self) -> bool:
        """True: frequencies follow each sequence's own current length (inv_freq_at, attention_factor_at)."""
        return False

    def check(self, trained: int) -> None:
        """Raise LengthwiseError for parameters that make no sense for a model trained to `trained` tokens."""

    def inv_freq(self, head_dim: int, base: float, trained: int) -> torch.Tensor:
        """[head_dim/2] float32 angular frequencies, computed as HF's init does (bit-equal)."""
        return default_inv_freq(head_dim, base)

    def inv_freq_at(self, seq_len: torch.Tensor, head_dim: int, base: float, trained: int) -> torch.Tensor:
        """Dynamic schemes only: seq_len [N] -> [N, head_dim/2] frequencies for a sequence of that length."""
        raise NotImplementedError

    def attention_factor(self, trained: int) -> float:
        """Multiplies cos and sin (so attention logits by its square), as HF's attention_scaling does."""
        return 1.0

    def attention_factor_at(self, seq_len: torch.Tensor, trained: int) -> torch.Tensor | None:
        """Dynamic schemes only: seq_len [N] -> [N] attention factor per sequence length; None: the constant one."""
        return None

    def reach(self, trained: int) -> int:
        """The longest input the scheme claims to handle."""
        return trained

    def spec(self) -> str:
        """The canonical `--positions` string, e.g. 'yarn:factor=4'."""
        fs = fields(self)
        args = ",".join(f"{f.name}={_fmt(getattr(self, f.name))}" for i, f in enumerate(fs)
                        if getattr(self, f.name) != f.default or i == 0 or f.name in self.shown)
        return self.name + (":" + args if args else "")


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, tuple):
        return "/".join(_fmt(x) for x in v)
    return str(v)


def default_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def positive(name: str, value: float, scheme: str) -> None:
    if not (value > 0 and value != float("inf")):
        raise LengthwiseError(f"{scheme}: {name} must be > 0, got {value:g}")


def at_least_one(name: str, value: float, scheme: str) -> None:
    positive(name, value, scheme)
    if value < 1:
        raise LengthwiseError(f"{scheme}: {name} must be >= 1 (it stretches the context), got {value:g}")


@dataclass(frozen=True)
class Remap(RoPE):
    """A scheme that sees far keys through other positions: attention runs in two regions.

    Keys at distance < near_window(trained) are seen with the plain rotation (the near pass). Keys at
    distance >= window (only the first `sinks` keys, if set) are seen with queries rotated at
    far_q(position) and keys at far_k(position) (the far pass). One softmax spans both, merged by
    log-sum-exp, so no T x T mask is ever built.
    """
    sinks_only: ClassVar[bool] = False

    def near_window(self, trained: int) -> int:
        raise NotImplementedError

    def far_q(self, pos: torch.Tensor, trained: int) -> torch.Tensor:
        """pos [T] int64 -> [T] the queries' positions in the far pass."""
        raise NotImplementedError

    def far_k(self, pos: torch.Tensor, trained: int) -> torch.Tensor | None:
        """pos [T] int64 -> [T] the keys' positions in the far pass; None: keys keep their own."""
        return None

    def n_sinks(self) -> int | None:
        """Far keys are only the first n_sinks of each sequence (attention patterns), or all (None)."""
        return None


@dataclass
class Far:
    """The far pass of one forward: rotations of queries and (if they move) keys, and its region."""
    cos_q: torch.Tensor  # [T, D]
    sin_q: torch.Tensor
    cos_k: torch.Tensor | None  # [T, D]; None: the far keys are the near keys
    sin_k: torch.Tensor | None
    q_pos: torch.Tensor  # [T] the queries' own positions: a query has far keys iff q_pos >= window
    window: int
    sinks: int | None


@dataclass
class Rotation:
    """Everything positional that one forward needs."""
    cos: torch.Tensor  # [T, D] float32, the plain (or scaled) rotation of every query and key
    sin: torch.Tensor
    far: Far | None = None


class Rotary:
    """One scheme bound to one model: head_dim, RoPE base and the trained context length."""

    def __init__(self, scheme: RoPE, head_dim: int, base: float, trained: int, family: str = "llama",
                 native: RoPE | None = None, claims: bool = True):
        """native: the checkpoint's own scaling, whose frequencies a remap keeps; claims=False: the scheme
        is the checkpoint's own, so the trained context (max_position_embeddings) already counts it."""
        if family not in scheme.families:
            raise LengthwiseError(f"position scheme {scheme.name!r} does not apply to {family} models "
                                  f"(it works on {', '.join(scheme.families)} models)")
        scheme.check(trained)
        freqs = native if isinstance(scheme, Remap) and native is not None else scheme
        if freqs is not scheme:
            if freqs.per_length():
                raise LengthwiseError(f"{scheme.name} cannot run on this checkpoint's own dynamic RoPE scaling "
                                      f"({freqs.spec()}): use a RoPE scaling instead")
            freqs.check(trained)
        self.scheme, self.head_dim, self.base, self.trained, self.claims = scheme, head_dim, base, trained, claims
        self.factor = freqs.attention_factor(trained)
        with torch.device("cpu"):  # models are built on the meta device; frequencies are real data
            self._inv_cpu = freqs.inv_freq(head_dim, base, trained)
            self.far_needed = isinstance(scheme, Remap)
            # a far pass whose keys move needs a second key cache (keys rotated at far_k)
            self.far_keys = self.far_needed and scheme.far_k(torch.zeros(1, dtype=torch.int64), trained) is not None
        self._inv: dict[str, torch.Tensor] = {}

    @property
    def reach(self) -> int:
        return max(self.trained, self.scheme.reach(self.trained)) if self.claims else self.trained

    def inv(self, device: torch.device) -> torch.Tensor:
        # kept on the device: no copy per step, which keeps decode steps capturable in a CUDA graph
        key = str(device)
        if key not in self._inv:
            self._inv[key] = self._inv_cpu.to(device)
        return self._inv[key]

    def cos_sin(self, pos: torch.Tensor, inv: torch.Tensor | None = None, att: torch.Tensor | None = None):
        """pos [T] -> cos, sin [T, head_dim] float32 (attention factor applied); inv [T, D/2] and att [T]:
        a dynamic scheme's per-token frequencies and attention factor, in place of the model's own."""
        inv = self.inv(pos.device)[None, :] if inv is None else inv  # [1 or T, D/2]
        ang = pos.float()[:, None] * inv
        emb = torch.cat((ang, ang), dim=-1)
        if att is not None:
            att = att.float()[:, None]  # [T, 1]
            return emb.cos() * att, emb.sin() * att
        if self.factor == 1.0:
            return emb.cos(), emb.sin()
        return emb.cos() * self.factor, emb.sin() * self.factor

    def __call__(self, positions: torch.Tensor, meta=None) -> Rotation:
        """positions [T]; meta (AttnMeta) tells dynamic schemes each sequence's length after this forward."""
        s = self.scheme
        inv = att = None
        if s.per_length():
            lens = meta.used_k if meta.used_k is not None else meta.cu_k.diff()  # [B]
            seq_len = torch.repeat_interleave(lens.long(), meta.cu_q.diff().long(), output_size=positions.shape[0])
            inv = s.inv_freq_at(seq_len, self.head_dim, self.base, self.trained)  # [T, D/2]
            att = s.attention_factor_at(seq_len, self.trained)  # [T] or None
        cos, sin = self.cos_sin(positions, inv, att)
        if not isinstance(s, Remap):
            return Rotation(cos, sin)
        cos_q, sin_q = self.cos_sin(s.far_q(positions, self.trained))
        kp = s.far_k(positions, self.trained)
        cos_k, sin_k = self.cos_sin(kp) if kp is not None else (None, None)
        return Rotation(cos, sin, Far(cos_q, sin_q, cos_k, sin_k, positions, s.near_window(self.trained), s.n_sinks()))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] rotated by cos, sin [T, D]; the math runs in x's dtype, as HF does."""
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass
class Tables:
    """cos and sign-folded sin [T, 1, D] in the compute dtype, made once per forward for every layer."""
    cos: torch.Tensor
    sin: torch.Tensor  # sin with its first half negated: rotate_half(x) * sin == roll(x, D/2) * this, exactly

    @classmethod
    def of(cls, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> "Tables":
        half = cos.shape[-1] // 2
        signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return cls(cos[:, None, :].to(dtype), signed[:, None, :].to(dtype))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The same values as apply_rope (a sign flip is exact), in four kernels instead of seven: no casts and
        no concatenation per call, and one call can rotate queries and keys together."""
        return x * self.cos + x.roll(x.shape[-1] // 2, dims=-1) * self.sin
