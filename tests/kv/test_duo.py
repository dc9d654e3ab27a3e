"""DuoAttention (duo): retrieval heads keep the whole cache, streaming heads their sinks and recent window, on the
head-wise cache; the heads come from a calibration probe. Checked against independent references: the probe's
table against the same quantity computed from HF transformers' own eager attention weights (SmolLM2, float32);
the attention over the split cache against HF's model with each streaming head's middle masked (float64).
"""
import json

import pytest
import torch

import lengthwise as lw
from lengthwise import LengthwiseError
from lengthwise.generate import Timing, decode_step, generate, new_cache, prefill
from lengthwise.kv.duo import CALIBRATION_SEED, calibrate

from conftest import rel_err
from test_adakv import head_sets
from test_policies import HKV, LAYERS, models, prompts_of  # noqa: F401

SCORES = [[0.9, 0.1], [0.2, 0.8], [0.05, 0.3]]  # heads=0.5: the three lowest (0.05, 0.1, 0.2) stream


@pytest.fixture()
def table(tmp_path):
    p = tmp_path / "heads.json"
    p.write_text(json.dumps({"scores": SCORES}))
    return p


def streaming(layer, h):
    return SCORES[layer][h] <= 0.2


def test_probe_equals_hf_attention_mass_outside_the_window(smol, hf_smol, tmp_path):
    """The table: per (layer, kv head), the mass the answer's queries put outside sinks + recent, from HF's own
    eager weights on the same ids (the passkey teacher-forced), averaged over the group's heads."""
    from lengthwise.evaluation.backends import make_render
    from lengthwise.tasks import get_task
    sinks, recent = 4, 64
    got = calibrate(smol, tmp_path / "h.json", length=512, samples=1, sinks=sinks, recent=recent)
    assert json.loads((tmp_path / "h.json").read_text())["scores"] == got["scores"]
    render = make_render(smol.tokenizer, chat=True)
    s = get_task("passkey").make(render, 512, 50.0, seed=CALIBRATION_SEED)
    answer = smol.tokenizer(s.answers[0], add_special_tokens=False)["input_ids"]
    ids = render(s.prompt, s.answer_prefix) + answer
    with torch.no_grad():
        att = hf_smol(torch.tensor([ids]), output_attentions=True).attentions
    n, k = len(ids), len(answer) + 1
    q = torch.arange(n - k, n)[:, None]
    p = torch.arange(n)[None, :]
    outside = ~((p < sinks) | (p > q - recent)) & (p <= q)
    cfg = smol.module.cfg
    for layer in range(cfg.n_layers):
        mass = (att[layer][0, :, -k:, :].double() * outside).sum(-1).mean(-1)  # [H]
        want = mass.view(cfg.n_kv_heads, -1).mean(1)
        assert torch.allclose(torch.tensor(got["scores"][layer], dtype=torch.float64), want, atol=2e-4), layer
    assert max(max(r) for r in got["scores"]) > 0.1  # some heads do reach past the window


def _two_prompts(folder, table, more: str = ""):
    """duo (sinks 2, recent 5) in float64, and two prompts of 38 and 27 tokens whose contexts end at 30 and 19."""
    lm = lw.load(folder, device="cpu", dtype="float64", kv=f"duo:heads=0.5,sinks=2,recent=5,calibration={table}{more}")
    return lm, lm.module, prompts_of(7, (38, 27)), [30, 19]


@pytest.mark.parametrize("chunk", [4096, 8])
def test_streaming_heads_keep_their_window_and_attention_equals_hf_masked(models, table, chunk):
    """In one prefill forward or in chunks of 8 (a streaming head evicting after each): the kept tokens, and the
    question's and decode steps' logits equal HF's model with each streaming head masked as it runs (visible)."""
    hf, folder = models
    lm, m, prompts, context = _two_prompts(folder, table)
    feed = [[5, 17, 3], [11, 2, 40]]
    cache = new_cache(m, prompts, len(feed[0]) + 1, lm.kv, chunk=chunk, context=context)
    steps = []
    with torch.inference_mode():
        steps.append(prefill(m, prompts, cache, lm.backend, lm.kv, chunk=chunk))
        kept = [[head_sets(cache, layer, i) for layer in range(LAYERS)] for i in range(2)]
        for t in range(len(feed[0])):
            steps.append(decode_step(m, cache, torch.tensor([f[t] for f in feed]), torch.arange(2), lm.backend, lm.kv))
    for i, (p, c) in enumerate(zip(prompts, context)):
        for layer in range(LAYERS):
            for h in range(HKV):
                whole = set(range(len(p)))
                want = {x for x in whole if x < 2 or x >= c - 5} if streaming(layer, h) else whole
                assert kept[i][layer][h] == want, (i, layer, h)
        ref = hf_masked_logits(hf, p + feed[i], lambda layer, h: visible(streaming(layer, h), len(p) + 3, c, chunk))
        for t, got in enumerate(steps):
            assert rel_err(got[i], ref[len(p) - 1 + t]) <= 1e-6, (i, t)


@pytest.mark.parametrize("every", [1, 2])
def test_streaming_heads_slide_in_decode_with_every(models, table, every):
    """duo:every=K: after every K-th decode step a streaming head keeps its sinks, the question and the newest
    `recent` tokens, so its region stays within sinks + recent + question + K however long the answer; each step's
    logits equal HF's model with every head masked as the engine runs it; packed equals alone."""
    hf, folder = models
    spec = f"duo:heads=0.5,sinks=2,recent=5,calibration={table},every={every}"
    lm, m, prompts, context = _two_prompts(folder, table, f",every={every}")
    feed = [[5, 17, 3, 8, 21, 9, 30, 2], [11, 2, 40, 6, 12, 33, 7, 4]]
    T = len(feed[0])
    cache = new_cache(m, prompts, T + 1, lm.kv, chunk=8, context=context)
    from lengthwise.generate import decode_need
    steps = []
    with torch.inference_mode():
        steps.append(prefill(m, prompts, cache, lm.backend, lm.kv, chunk=8))
        cache.shrink(decode_need(lm.kv, cache, [len(p) for p in prompts], T + 1))
        for t in range(T):
            steps.append(decode_step(m, cache, torch.tensor([f[t] for f in feed]), torch.arange(2), lm.backend, lm.kv,
                                     evict=(t + 1) % every == 0))
            if (t + 1) % every == 0:  # just evicted: the streaming heads hold their window
                for i, (p, c) in enumerate(zip(prompts, context)):
                    n = len(p) + t + 1
                    for layer in range(LAYERS):
                        for h in range(HKV):
                            want = ({x for x in range(n) if x < 2 or c <= x < len(p) or x >= n - 5}
                                    if streaming(layer, h) else set(range(n)))
                            assert head_sets(cache, layer, i)[h] == want, (i, layer, h, t)
    for i, (p, c) in enumerate(zip(prompts, context)):
        q = len(p) - c
        caps = cache.capacity_l.view(LAYERS, HKV, 2)[:, :, i]
        for layer in range(LAYERS):
            for h in range(HKV):
                assert int(caps[layer, h]) <= (2 + 5 + q + every if streaming(layer, h) else len(p) + T + 1)
        ref = hf_masked_logits(hf, p + feed[i], lambda layer, h: visible_decoding(
            streaming(layer, h), len(p) + T, c, len(p), 8, every))
        for t, got in enumerate(steps):
            assert rel_err(got[i], ref[len(p) - 1 + t]) <= 1e-6, (i, t)
    alone = [lw.load(folder, device="cpu", dtype="float64", kv=spec).generate_ids([x], max_new_tokens=9)[0]
             for x in prompts]
    assert lm.generate_ids(prompts, max_new_tokens=9) == alone


def visible_decoding(stream: bool, n: int, c: int, P: int, chunk: int, every: int, sinks: int = 2, recent: int = 5):
    """[n, n] bool: visible() for the prompt (P tokens, context c); a decode query P + t sees what the last eviction
    (after step u, the latest u < t with (u + 1) % every == 0, at length e = P + u + 1) kept, the sinks, the
    question and the newest `recent`, and every token since; before the first, what prefill kept."""
    ok = visible(stream, n, c, chunk, sinks, recent)
    if not stream:
        return ok
    j = torch.arange(n)
    for i in range(P, n):
        t = i - P
        done = [u for u in range(t) if (u + 1) % every == 0]
        if done:
            e = P + done[-1] + 1
            ok[i] = (j <= i) & ((j < sinks) | ((j >= c) & (j < P)) | (j >= e - recent))
    return ok


def visible(stream: bool, n: int, c: int, chunk: int, sinks: int = 2, recent: int = 5):
    """[n, n] bool: what query i sees of key j in one head, by DuoAttention's rule as the engine runs it: causal;
    a streaming head's queries in a prefill chunk starting at a see, of the keys before a, only the sinks and the
    `recent` newest (the head evicted after the chunk before); past the context (c), the question and decode
    tokens see the sinks, the context's last `recent` and everything from c on."""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    ok = j <= i
    if not stream:
        return ok
    a = torch.where(i < c, (i // chunk) * chunk, c)  # where each query's chunk (or the question) starts
    return ok & ((j >= a) | (j < sinks) | (j >= a - recent))


def hf_masked_logits(hf, ids, see):
    """HF's own model on ids, each query head reading only what see(layer, kv head) [n, n] allows of its kv head;
    the mask goes in through HF's attention registry, around HF's eager attention. -> logits [n, V] float64."""
    from transformers import AttentionInterface
    from transformers.models.llama.modeling_llama import eager_attention_forward
    H = hf.config.num_attention_heads
    masks = [torch.stack([torch.where(see(layer, h // (H // HKV)), 0.0, -torch.inf).double() for h in range(H)])[None]
             for layer in range(LAYERS)]

    def masked(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        return eager_attention_forward(module, query, key, value, masks[module.layer_idx], scaling, dropout, **kw)

    AttentionInterface.register("lengthwise_test_duo", masked)
    before = hf.config._attn_implementation
    hf.set_attn_implementation("lengthwise_test_duo")
    try:
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0].double()
    finally:
        hf.set_attn_implementation(before)


def test_bytes_packing_and_no_streaming_heads(models, table):
    """A streaming head's region holds its window, a retrieval head's everything: the bytes are that sum, read
    from storage, in decode and in a chunked prefill (the window plus one chunk); packed equals alone; heads=0 is
    the full cache."""
    _, folder = models
    prompts = [list(range(3, 203)), list(range(10, 130))]
    spec = f"duo:heads=0.5,sinks=4,recent=16,calibration={table}"
    lm = lw.load(folder, device="cpu", dtype="bfloat16", kv=spec)
    full = lw.load(folder, device="cpu", dtype="bfloat16")
    t, tf = Timing(), Timing()
    generate(lm.module, prompts, 4, set(), backend=lm.backend, policy=lm.kv, timing=t)
    generate(full.module, prompts, 4, set(), backend=full.backend, timing=tf)
    D = lm.module.cfg.head_dim
    for got, want, p in zip(t.kv_bytes, tf.kv_bytes, prompts):
        n = len(p) + 4
        heads = [(20 + 4) if streaming(layer, h) else n for layer in range(LAYERS) for h in range(HKV)]
        assert abs(got - want * sum(heads) / (LAYERS * HKV * n) * (1 + 1 / D)) <= 0.005 * want, (got, want)
    t, tf = Timing(), Timing()
    generate(lm.module, prompts, 4, set(), backend=lm.backend, policy=lm.kv, timing=t, chunk=32)
    generate(full.module, prompts, 4, set(), backend=full.backend, timing=tf, chunk=32)
    for got, want, p in zip(t.kv_bytes_prefill, tf.kv_bytes_prefill, prompts):
        n = len(p) + 4
        heads = [(20 + 32 + 4) if streaming(layer, h) else n for layer in range(LAYERS) for h in range(HKV)]
        assert abs(got - want * sum(heads) / (LAYERS * HKV * n) * (1 + 1 / D)) <= 0.005 * want, (got, want)
    f64 = lw.load(folder, device="cpu", dtype="float64", kv=spec)
    together = f64.generate_ids(prompts_of(2), max_new_tokens=4)
    assert together == [f64.generate_ids([x], max_new_tokens=4)[0] for x in prompts_of(2)]
    none = lw.load(folder, device="cpu", dtype="float64", kv=f"duo:heads=0,calibration={table}")
    plain = lw.load(folder, device="cpu", dtype="float64")
    assert none.generate_ids(prompts_of(2), max_new_tokens=4) == plain.generate_ids(prompts_of(2), max_new_tokens=4)


def test_bad_input_gets_one_line(models, table, tmp_path):
    _, folder = models
    from lengthwise import kv
    for bad, needle in [("duo:heads=0.5", "needs a calibration file"),
                        (f"duo:calibration={tmp_path / 'none.json'}", "no calibration file at"),
                        (f"duo:heads=1.5,calibration={table}", "heads .* must be in"),
                        (f"duo:recent=0,calibration={table}", "recent >= 1"),
                        (f"duo:every=-1,calibration={table}", "every must be >= 0")]:
        with pytest.raises(LengthwiseError, match=needle):
            kv.parse(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"scores": [[0.1, 0.2, 0.3]]}))
    with pytest.raises(LengthwiseError, match="calibrate this model"):
        lw.load(folder, device="cpu", kv=f"duo:calibration={other}")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(LengthwiseError, match="cannot read the calibration file"):
        lw.load(folder, device="cpu", kv=f"duo:calibration={broken}")
    for text in ("[1, 2]", '{"table": 1}'):  # JSON, but not a table
        broken.write_text(text)
        with pytest.raises(LengthwiseError, match="is JSON but not a calibration table"):
            lw.load(folder, device="cpu", kv=f"duo:calibration={broken}")


def test_cli_calibrates_and_refuses_bad_input_in_one_line(tmp_path):
    from typer.testing import CliRunner
    from lengthwise import cli
    out = tmp_path / "heads.json"
    r = CliRunner().invoke(cli.app, ["kv-calibrate", "--model", "smollm2-135m", "--length", "256", "--samples", "1",
                                     "-o", str(out)])
    assert r.exit_code == 0, r.output
    t = json.loads(out.read_text())
    assert len(t["scores"]) == 30 and len(t["scores"][0]) == 3 and t["seed"] == CALIBRATION_SEED
    for args in (["--length", "1k,2k"], ["-o", str(tmp_path / "h.txt")]):
        base = ["kv-calibrate", "--model", "smollm2-135m", "-o", str(tmp_path / "x.json")]
        r = CliRunner().invoke(cli.app, base + args)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output


def test_an_eval_store_keys_duo_by_its_calibration_bytes(tmp_path):
    """The same path with another table is another config: a rerun after kv-calibrate rewrote the file does not
    reuse the old cells."""
    from lengthwise.evaluation import EvalConfig
    from lengthwise.evaluation.grid import store_config
    p = tmp_path / "heads.json"
    p.write_text(json.dumps({"scores": SCORES}))
    cfg = EvalConfig(model="smollm2-135m", tasks=["passkey"], lengths=[1024], depths=[50.0], samples=1,
                     kv=f"duo:calibration={p}")
    first = store_config(cfg)
    p.write_text(json.dumps({"scores": [[0.1, 0.9], [0.2, 0.8], [0.05, 0.3]]}))
    second = store_config(cfg)
    assert first["kv"] == second["kv"] and first["kv_calibration_sha256"] != second["kv_calibration_sha256"]
    assert "kv_calibration_sha256" not in store_config(EvalConfig(model="smollm2-135m", tasks=["passkey"],
                                                                  lengths=[1024], depths=[50.0], samples=1))
