"""RoPE (Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding").

Queries and keys rotated by angle position * theta^(-2i/d); the model's own `Rotary` (positions/rope.py) does it.
"""
from .base import Scheme


class RoPEScheme(Scheme):
    name = "rope"
    rotary = True
