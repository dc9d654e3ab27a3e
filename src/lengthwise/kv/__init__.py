"""KV caches. The cache holds each sequence's own length; compression policies plug in here."""
from .cache import RaggedKVCache

__all__ = ["RaggedKVCache"]
