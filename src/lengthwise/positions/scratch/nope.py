"""NoPE (Kazemnejad et al. 2023, "The Impact of Positional Encoding on Length Generalization in Transformers").

No position information at all: a causal decoder recovers order from its mask alone.
"""
from .base import Scheme


class NoPE(Scheme):
    name = "nope"
