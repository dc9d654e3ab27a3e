"""The hf backend's RoPE scaling is HF's own: the runner's model equals HF built with that rope config."""
import pytest
import torch

from lengthwise.evaluation.backends import HFRunner
from conftest import rel_err, tiny_hf_causal


@pytest.mark.parametrize("spec,rope", [
    ("yarn:factor=4", {"rope_type": "yarn", "factor": 4.0}),
    ("dynamic_ntk:factor=2", {"rope_type": "dynamic", "factor": 2.0}),
    ("linear:factor=4", {"rope_type": "linear", "factor": 4.0}),
])
def test_hf_runner_applies_hf_rope(tmp_path, spec, rope):
    _, folder = tiny_hf_causal("llama", tmp_path, max_position_embeddings=32)
    ref, _ = tiny_hf_causal("llama", tmp_path / "ref", max_position_embeddings=32,
                            rope_parameters={"rope_theta": 10000.0, **rope})
    runner = HFRunner(str(folder), device="cpu", dtype="float32", positions=spec)
    assert runner.context_length > 32
    ids = torch.randint(0, 211, (1, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = runner.model(ids).logits[0], ref(ids).logits[0]
    assert rel_err(got, want) <= 1e-4
    runner.set_rope(None)  # back to the trained RoPE: now it differs past 32 tokens
    with torch.no_grad():
        assert rel_err(runner.model(ids).logits[0], want) > 1e-3
    assert runner.context_length == 32


def test_both_runners_take_their_reach_from_the_scheme(tmp_path):
    from lengthwise.evaluation.backends import LengthwiseRunner
    _, folder = tiny_hf_causal("llama", tmp_path, max_position_embeddings=32)
    assert LengthwiseRunner(str(folder), device="cpu").context_length == 32
    assert LengthwiseRunner(str(folder), device="cpu", positions="yarn:factor=4").context_length == 128
    assert HFRunner(str(folder), device="cpu", positions="yarn:factor=4").context_length == 128


def test_hf_runner_splits_prefill_from_decode():
    """The first logits mark the prefill's end in HF generate, prompt by prompt; the parts add up to the batch."""
    import time
    from lengthwise.tasks import get_task
    runner = HFRunner("smollm2-135m", device="cpu", chat=True)
    samples = [get_task("passkey").make(runner.render, 300, d, 1) for d in (0.0, 100.0)]
    t0 = time.perf_counter()
    outs, timing = runner.generate(samples)
    wall = time.perf_counter() - t0
    assert [get_task("passkey").score(o, s) for o, s in zip(outs, samples)] == [1.0, 1.0]
    assert 0 < timing["prefill_s"] and 0 < timing["decode_s"]
    assert timing["prefill_s"] + timing["decode_s"] <= wall
