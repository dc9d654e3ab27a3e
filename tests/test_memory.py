"""Loading, using and deleting a model frees it on `del` alone: no reference cycle (gc stays off), and no
module-level cache keeps a tensor of it (the live tensors after the cycle are those before it)."""
import gc
import weakref

import torch

import lengthwise as lw
from conftest import tiny_hf_causal


def _live_tensors() -> int:
    return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


def _cycle(load, use):
    m = load()
    use(m)
    refs = [weakref.ref(m), weakref.ref(m.module), weakref.ref(next(m.module.parameters()))]
    del m
    return refs


def test_delete_frees_without_gc(tmp_path):
    _, folder = tiny_hf_causal("llama", tmp_path)
    cases = [
        (lambda: lw.load("minilm-l6", device="cpu"), lambda e: (e.encode(["a text", "another"]), e.embed(["x"]))),
        (lambda: lw.load(folder, device="cpu"), lambda lm: (lm.generate_ids([[1, 2, 3], [4, 5]], max_new_tokens=3),
                                                            lm.logits([[1, 2, 3]]))),
        (lambda: lw.load(folder, device="cpu", positions="self_extend:group=4,window=8"),
         lambda lm: lm.generate_ids([list(range(1, 40))], max_new_tokens=3)),
    ]
    for load, use in cases:
        _cycle(load, use)  # first use: one-time state (imports, kernels) is not a leak
        gc.collect()
        before = _live_tensors()
        gc.disable()
        try:
            refs = _cycle(load, use)
            assert [r() is None for r in refs] == [True] * 3, "a reference cycle or a cache keeps the model"
        finally:
            gc.enable()
        assert _live_tensors() == before


def test_the_check_sees_a_leak():
    """A cycle through the model (what module.forward = torch.compile(module.forward) makes) is caught."""
    gc.disable()
    try:
        refs = _cycle(lambda: lw.load("minilm-l6", device="cpu"), lambda e: setattr(e.module, "me", e))
        assert refs[1]() is not None
    finally:
        gc.enable()
        gc.collect()
