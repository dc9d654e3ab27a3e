"""The CUDA-graph decoder: one decode step for every sequence, captured once and replayed per token."""
from __future__ import annotations

import torch

from .attention.layer import Step


_SIDE: dict = {}  # device -> the warm-up stream: a fresh stream per capture would leave a cuBLAS workspace behind each


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    if device not in _SIDE:
        _SIDE[device] = torch.cuda.Stream(device)
    return _SIDE[device]


class GraphDecoder:
    """One decode step for every sequence of a KV cache, captured once as a CUDA graph and replayed per token.

    Launch overhead dominates small-model decode; a replay is one launch. Finished sequences stay in the batch
    (their outputs are ignored), which keeps every shape fixed. A cache a policy compressed in prefill keeps its
    shapes in decode and replays the same way; one that evicts every N decode steps changes them, so it decodes
    eagerly (generate.decode_step) instead.
    """

    def __init__(self, model, cache, backend):
        B = cache.length.numel()
        self.tokens = torch.zeros(B, dtype=torch.int64, device=cache.length.device)  # [B] input buffer
        self.cache, self.graph = cache, torch.cuda.CUDAGraph()

        def step():
            slots, positions, meta = cache.plan_decode_all()
            return model(self.tokens, positions, Step(meta, model.mask, backend, cache, slots))

        saved = cache.length.clone()
        kept = None if cache.kept is None else cache.kept.clone()  # an evicting cache's counts per layer
        side = _side_stream(cache.length.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            # one warm-up step outside the graph (Triton's compiles, cuBLAS's workspace for this stream); its
            # cache writes are overwritten later
            step()
            self._restore(saved, kept)
            # the capture on the same stream, without torch.cuda.graph's empty_cache: that hands every cached
            # block (and the pinned host cache) back to the driver, and each generate call would pay cudaFree
            # and cudaMalloc for them again (benchmarks/gen_phases.py times the capture)
            side.synchronize()
            self.graph.capture_begin()
            try:
                self.logits = step()  # [B, V] output buffer
            finally:
                self.graph.capture_end()
        torch.cuda.current_stream().wait_stream(side)
        self._restore(saved, kept)

    def _restore(self, length: torch.Tensor, kept: torch.Tensor | None) -> None:
        self.cache.length.copy_(length)
        if kept is not None:
            self.cache.kept.copy_(kept)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits
