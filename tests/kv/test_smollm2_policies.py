"""Every KV policy on the real checkpoint: SmolLM2-135M (the embedded Q4_1 GGUF, float32 on the CPU), two
niah_single prompts of 1k tokens rendered by the harness (chat), the question kept out of compression.

Checked per policy: it generates, packed equals one prompt at a time, and the cache it holds in decode, read
from its storage, is what the budget allows: (1 - ratio) of the context plus the question and the new tokens
whole, within 2% (positions, and H2O's accumulated scores, beside each slot); `full` and ratio 0 give the tokens
of no policy, bit for bit, and find the needle.
"""
import pytest
import torch

import lengthwise as lw
from lengthwise import kv
from lengthwise.evaluation.backends import context_tokens, make_render
from lengthwise.generate import Timing, generate
from lengthwise.tasks import get_task

NEW = 12
SPECS = ["streaming:ratio=0.5", "h2o:ratio=0.5", "a2sf:ratio=0.5", "tova:ratio=0.5", "snapkv:ratio=0.5",
         "pyramidkv:ratio=0.5", "knorm:ratio=0.5", "random:ratio=0.5", "window:sinks=4,recent=256",
         "think:ratio=0.25", "adakv:ratio=0.5"]


@pytest.fixture(scope="module")
def setup(smol_path):
    lm = lw.load("smollm2-135m", device="cpu", dtype="float32")
    render = make_render(lm.tokenizer, chat=True)
    task = get_task("niah_single")
    samples = [task.make(render, 1024, 50.0, seed=s) for s in (3, 4)]
    ids = [render(s.prompt, s.answer_prefix) for s in samples]
    ctx = [context_tokens(render, s, x) for s, x in zip(samples, ids)]
    return lm, samples, ids, ctx


def run(lm, ids, ctx, spec):
    pol = kv.parse(spec)
    timing = Timing()
    out = generate(lm.module, ids, NEW, set(), backend=lm.backend, policy=pol, timing=timing,
                   context=ctx if pol.evicts else None)
    return [c.token_ids for c in out], timing.kv_bytes


@pytest.fixture(scope="module")
def full(setup):
    lm, samples, ids, ctx = setup
    return run(lm, ids, ctx, "full")


def test_full_and_ratio_zero_are_no_policy_and_find_the_needle(setup, full):
    lm, samples, ids, ctx = setup
    plain = [c.token_ids for c in generate(lm.module, ids, NEW, set(), backend=lm.backend)]
    assert full[0] == plain
    assert run(lm, ids, ctx, "snapkv:ratio=0")[0] == plain
    for s, toks in zip(samples, plain):
        assert any(a in lm.tokenizer.decode(toks) for a in s.answers)


@pytest.mark.parametrize("spec", SPECS)
def test_each_policy_runs_packed_as_alone_within_its_bytes(setup, full, spec):
    lm, samples, ids, ctx = setup
    toks, got = run(lm, ids, ctx, spec)
    assert all(len(t) == NEW for t in toks)
    assert toks[1] == run(lm, ids[1:], ctx[1:], spec)[0][0]  # the second of the pack, alone (its offsets move)
    pol = kv.parse(spec)
    for b, f, n, c in zip(got, full[1], map(len, ids), ctx):
        if spec.startswith("window"):
            kept_ctx = min(c, 4 + 256)
        elif spec.startswith("think"):  # the context's keys at half their channels: a quarter of its bytes
            kept_ctx = 0.75 * c
        else:
            kept_ctx = int(c * (1 - pol.ratio))
        allowed = (kept_ctx + (n - c) + NEW) / (n + NEW)  # the question and the new tokens stay whole
        assert b <= (allowed + 0.02) * f, (spec, b / f, allowed)
        assert b >= allowed * f * 0.9, (spec, b / f, allowed)  # and what is kept is really held


def test_duo_with_its_calibrated_heads_runs_packed_as_alone_within_its_bytes(setup, full, tmp_path):
    """duo on the heads its own probe finds (a short calibration: 2 passkey prompts of 512 tokens): half the kv
    heads stream (sinks 4 + recent 256 of the context), the others keep all; the bytes are that share."""
    from lengthwise.kv.duo import calibrate
    lm, samples, ids, ctx = setup
    calibrate(lm, tmp_path / "heads.json", length=512, samples=2)
    spec = f"duo:heads=0.5,sinks=4,recent=256,calibration={tmp_path / 'heads.json'}"
    toks, got = run(lm, ids, ctx, spec)
    assert toks[1] == run(lm, ids[1:], ctx[1:], spec)[0][0]
    cfg = lm.module.cfg
    pairs = cfg.n_layers * cfg.n_kv_heads
    stream = round(0.5 * pairs)
    for b, f, n, c in zip(got, full[1], map(len, ids), ctx):
        held = (stream * (min(c, 4 + 256) + n - c + NEW) + (pairs - stream) * (n + NEW)) / (pairs * (n + NEW))
        assert held * f <= b <= (held + 0.02) * f, (b / f, held)
