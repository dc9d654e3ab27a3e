"""Position schemes: how a token's index becomes a rotation or a bias.

A scheme for RoPE models is a small dataclass with
    cos_sin(positions [T], head_dim, base) -> (cos [T, head_dim], sin [T, head_dim])
in the half-rotation layout HF Llama uses. Scalings and remaps (PI, NTK, YaRN, SelfExtend, ...)
plug in here and every RoPE model and backend picks them up.
"""
from .rope import RoPE, apply_rope

__all__ = ["RoPE", "apply_rope"]
