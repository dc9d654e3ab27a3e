"""RoPE, rotary position embedding (Su et al., RoFormer, 2021), and the machinery every scheme shares.

Each pair of channels is rotated by position * base^(-2i/d); attention then sees only relative offsets.
A scheme changes the frequencies (scalings), the positions (remaps) or which keys are seen (patterns);
`Rotary` binds one scheme to a model and turns positions into the rotations one forward needs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from ..options import check_fields, spec_of
from . import gate

UNBOUNDED = 1 << 24  # the reach of a scheme that claims no limit: float32 positions stay exact up to here


@dataclass(frozen=True)
class RoPE:
    """Plain RoPE, as trained: the frequencies base^(-2i/d), no scaling."""
    name: ClassVar[str] = "none"
    families: ClassVar[tuple[str, ...]] = ("llama",)  # model families the scheme applies to
    shown: ClassVar[tuple[str, ...]] = ()  # fields spec() always names (besides the first and non-defaults)
    # beyond=true: only sequences whose prompt is longer than the trained context use the scheme; the others run
    # exactly as trained. Keyed on the prompt (a decode step does not switch a sequence over), so cached keys
    # keep one rotation. Every scheme has it; keyword-only, so it follows each scheme's own options.
    beyond: bool = field(default=False, kw_only=True)

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
        own = [f.name for f in fields(self) if not f.kw_only]
        return spec_of(self, self.name, set(own[:1]) | set(self.shown))  # the first option always


def default_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


@functools.lru_cache(maxsize=None)  # never evicted: a captured CUDA graph reads it by address
def plain_table(head_dim: int, base: float, device: str) -> torch.Tensor:
    """default_inv_freq built on the CPU, once per device: a GPU's pow rounds differently, and no copy per step."""
    with torch.device("cpu"):
        return default_inv_freq(head_dim, base).to(device)


def positive(name: str, value: float, scheme: str) -> None:
    if not (value > 0 and value != float("inf")):
        raise LengthwiseError(f"{scheme}: {name} must be a finite number > 0, got {value:g}")


def check_original(scheme: str, original: int, trained: int) -> None:
    """original: the trained length a scaling measures against (0: the model's own). Negative, or past the
    trained context (which would claim a reach the model never had), is refused."""
    if original < 0:
        raise LengthwiseError(f"{scheme}: original must be >= 0 (0: the model's own trained length), got {original}")
    if trained and original > trained:
        raise LengthwiseError(f"{scheme}: original={original} is past this model's {trained}-token trained context: give "
                              "the length it was trained to, or 0 for its own")


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

    def plain_up_to(self, trained: int) -> int:
        """The longest sequence that sees every key as the plain model does: below the near window no key is far."""
        return self.near_window(trained)


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
        check_fields(scheme, scheme.name)
        scheme.check(trained)
        plain = native or RoPE()  # the checkpoint as trained
        if scheme.beyond:
            _check_beyond(scheme, plain)
        freqs = plain if isinstance(scheme, Remap) else scheme
        if freqs is not scheme:
            if freqs.per_length():
                raise LengthwiseError(f"{scheme.name} cannot run on this checkpoint's own dynamic RoPE scaling "
                                      f"({freqs.spec()}): use a RoPE scaling instead")
            freqs.check(trained)
        self.scheme, self.head_dim, self.base, self.trained, self.claims = scheme, head_dim, base, trained, claims
        self.factor = freqs.attention_factor(trained)
        self.plain_factor = plain.attention_factor(trained)
        with torch.device("cpu"):  # models are built on the meta device; frequencies are real data
            self._inv_cpu = freqs.inv_freq(head_dim, base, trained)
            self._plain_cpu = plain.inv_freq(head_dim, base, trained)
            self.far_needed = isinstance(scheme, Remap)
            # a far pass whose keys move needs a second key cache (keys rotated at far_k)
            self.far_keys = self.far_needed and scheme.far_k(torch.zeros(1, dtype=torch.int64), trained) is not None
        self._inv: dict[str, torch.Tensor] = {}

    def far_keys_for(self, prompt_max: int, capacity_max: int) -> bool:
        """Whether a KV cache (longest prompt prompt_max, largest region capacity_max) needs the far-key pool: a
        length-gated remap whose prompts all fit the trained context never runs its far pass, nor does a remap
        whose sequences all stay within its plain range."""
        return (self.far_keys and not (self.scheme.beyond and prompt_max <= self.trained)
                and capacity_max > self.scheme.plain_up_to(self.trained))

    def apart(self, lens: list[int]) -> list[list[int]]:
        """gate.apart for this model: the sequences that run as separate batches."""
        return gate.apart(self.scheme, self.trained, lens)

    @property
    def reach(self) -> int:
        return max(self.trained, self.scheme.reach(self.trained)) if self.claims else self.trained

    def inv(self, device: torch.device, plain: bool = False) -> torch.Tensor:
        # kept on the device: no copy per step, which keeps decode steps capturable in a CUDA graph
        key = f"{device}/{plain}"
        if key not in self._inv:
            self._inv[key] = (self._plain_cpu if plain else self._inv_cpu).to(device)
        return self._inv[key]

    def cos_sin(self, pos: torch.Tensor, inv: torch.Tensor | None = None, att: torch.Tensor | None = None,
                plain: bool = False):
        """pos [T] -> cos, sin [T, head_dim] float32 (attention factor applied); inv [T, D/2] and att [T]:
        per-token frequencies and attention factor (dynamic or length-gated schemes), in place of the model's
        own; plain: the checkpoint's own rotation, as trained."""
        factor = self.plain_factor if plain else self.factor
        inv = self.inv(pos.device, plain)[None, :] if inv is None else inv  # [1 or T, D/2]
        ang = pos.float()[:, None] * inv
        emb = torch.cat((ang, ang), dim=-1)
        if att is not None:
            att = att.float()[:, None]  # [T, 1]
            return emb.cos() * att, emb.sin() * att
        if factor == 1.0:
            return emb.cos(), emb.sin()
        return emb.cos() * factor, emb.sin() * factor

    @staticmethod
    def _lens(meta, lengths=None) -> torch.Tensor:
        """[B] each sequence's length after this forward."""
        if lengths is not None and lengths.seen is not None:
            return lengths.seen
        return meta.used_k if meta.used_k is not None else meta.cu_k.diff()

    def _per_token(self, lens: torch.Tensor, meta, n: int) -> torch.Tensor:
        """lens [B] -> [n]: each token's sequence's value."""
        return torch.repeat_interleave(lens, meta.cu_q.diff().long(), output_size=n)

    def _within_plain_range(self, meta, lengths) -> bool:
        """A remap none of whose sequences can pass its plain range: this forward's, or for a cache every one it
        will ever hold (host-side, so one decode graph serves a whole generation)."""
        if not isinstance(self.scheme, Remap) or meta is None:
            return False
        bound = None if lengths is None else lengths.max_capacity
        if meta.used_k is not None and bound is None:
            return False  # a cache that does not say its bound: its far keys may be needed later, so write them
        longest = meta.max_k if bound is None else bound
        return longest <= self.scheme.plain_up_to(self.trained)

    def __call__(self, positions: torch.Tensor, meta=None, lengths: "gate.Lengths | None" = None) -> Rotation:
        """positions [T]; meta (AttnMeta) tells dynamic schemes each sequence's length after this forward;
        lengths (from a KV cache) tell length-gated ones (beyond=true) each sequence's prompt length."""
        s, T = self.scheme, positions.shape[0]
        if self._within_plain_range(meta, lengths):  # no key is far: the plain model's own path, no second pass
            return Rotation(*self.cos_sin(positions, plain=True))
        on = gate.gate(self.scheme, self.trained, positions, meta, lengths)
        if on is False:  # every sequence within the trained length: the checkpoint as trained, bit for bit
            return Rotation(*self.cos_sin(positions, plain=True))
        inv = att = None
        if s.per_length():
            seq_len = self._per_token(self._lens(meta, lengths).long(), meta, T)
            inv = s.inv_freq_at(seq_len, self.head_dim, self.base, self.trained)  # [T, D/2]
            att = s.attention_factor_at(seq_len, self.trained)  # [T] or None
        if on is not None and not isinstance(s, Remap):  # a mixed forward: each token from its sequence's side
            inv = torch.where(on[:, None], self.inv(positions.device)[None, :] if inv is None else inv,
                              self.inv(positions.device, plain=True)[None, :])
            att = torch.where(on, torch.full_like(on, self.factor, dtype=torch.float32) if att is None
                              else att.float(), self.plain_factor)
        cos, sin = self.cos_sin(positions, inv, att)
        if not isinstance(s, Remap):
            return Rotation(cos, sin)
        qp, kp = s.far_q(positions, self.trained), s.far_k(positions, self.trained)
        if on is not None:  # sequences within the trained length see far keys at their true positions
            qp = torch.where(on, qp, positions)
            kp = None if kp is None else torch.where(on, kp, positions)
        cos_q, sin_q = self.cos_sin(qp)
        cos_k, sin_k = self.cos_sin(kp) if kp is not None else (None, None)
        return Rotation(cos, sin, Far(cos_q, sin_q, cos_k, sin_k, positions, s.near_window(self.trained), s.n_sinks()))


def _check_beyond(scheme: RoPE, plain: RoPE) -> None:
    if isinstance(scheme, Remap) and scheme.n_sinks() is not None:
        raise LengthwiseError(f"{scheme.name}: beyond=true does not apply to an attention pattern (its far keys "
                              "are only the sinks); its default window already runs a prompt within the trained "
                              "context as trained")
    if plain.per_length():
        raise LengthwiseError(f"{scheme.name}: beyond=true cannot gate on this checkpoint's own dynamic RoPE "
                              f"scaling ({plain.spec()}): drop beyond")


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
