"""A token policy composed with ThinK (`snapkv:...+think:...`, kvpress's ComposedPress([SnapKVPress, ThinKPress]))
against an independent reference: HF transformers' LlamaForCausalLM in float64 with an attention function,
registered through HF's AttentionInterface, that for every query past the context shows only the context tokens
kept per kv head, at the key channels kvpress's ThinKPress formula picks over those kept tokens (the rest zeroed),
and the later keys whole. The kept tokens must be SnapKV's alone; the bytes both savings together.
"""
import pytest
import torch
from transformers import AttentionInterface

import lengthwise as lw
from lengthwise import LengthwiseError, kv
from lengthwise.generate import Timing, decode_step, generate, new_cache, prefill

from conftest import rel_err
from test_policies import kept_sets
from test_think import CONTEXT, WINDOW, models, prompts_of  # noqa: F401

TOKENS = "snapkv:ratio=0.5,window=2,kernel=3"
SPEC = f"{TOKENS}+think:ratio=0.25,window={WINDOW}"


class ComposedRef:
    """Causal eager attention; a query at or past `context` sees, of the context, the tokens kept[layer][kv head]
    only, at that head's channels chosen by ThinKPress's score over those tokens (recorded in self.chan)."""

    def __init__(self, context: int, kept, ratio: float = 0.25):
        self.context, self.kept, self.ratio, self.chan = context, kept, ratio, {}

    def __call__(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        B, H, T, D = query.shape
        Hkv = key.shape[1]
        g, c, layer = H // Hkv, self.context, module.layer_idx
        mask = torch.zeros(Hkv, D, dtype=query.dtype)
        see = torch.ones(H, T, T, dtype=torch.bool).tril()
        chans = []
        for h in range(Hkv):
            idx = sorted(p for p in self.kept[layer][h] if p < c)
            qn = (query[0, h * g:(h + 1) * g, c - min(WINDOW, c):c] ** 2).mean(1).mean(0)  # [D]
            kn = (key[0, h, idx] ** 2).mean(0)
            drop = (qn * kn).topk(int(D * 2 * self.ratio), largest=False).indices
            chans.append(set(range(D)) - set(drop.tolist()))
            mask[h, sorted(chans[-1])] = 1
            gone = torch.ones(T, dtype=torch.bool)
            gone[idx] = False
            gone[c:] = False
            see[h * g:(h + 1) * g, c:, :] &= ~gone[None, None, :]
        self.chan[layer] = chans
        k = key.repeat_interleave(g, 1)
        k_thin = torch.where((torch.arange(T) < c)[None, None, :, None], k * mask.repeat_interleave(g, 0)[None, :, None, :], k)
        s = torch.where((torch.arange(T) >= c)[None, None, :, None], query @ k_thin.transpose(-1, -2),
                        query @ k.transpose(-1, -2)) * scaling
        w = torch.softmax(s.masked_fill(~see[None], float("-inf")), dim=-1)
        return (w @ value.repeat_interleave(g, 1)).transpose(1, 2).contiguous(), w


def hf_ref(hf, ids, context, kept):
    ref = ComposedRef(context, kept)
    AttentionInterface.register("composed_ref", ref)
    hf.set_attn_implementation("composed_ref")
    try:
        with torch.no_grad():
            return hf(torch.tensor([ids]), use_cache=False).logits[0], ref.chan
    finally:
        hf.set_attn_implementation("eager")


def test_tokens_are_snapkvs_channels_and_logits_match_hf(models):
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float64")
    m = lm.module
    prompts = prompts_of(4)
    pol, alone = kv.parse(SPEC), kv.parse(TOKENS)
    cache = new_cache(m, prompts, 2, pol, context=list(CONTEXT))
    snap = new_cache(m, prompts, 2, alone, context=list(CONTEXT))
    with torch.inference_mode():
        logits = prefill(m, prompts, cache, lm.backend, pol)
        prefill(m, prompts, snap, lm.backend, alone)
        nxt = torch.tensor([5, 17, 101])
        step = decode_step(m, cache, nxt, torch.arange(len(prompts)), lm.backend, pol)
    D = m.cfg.head_dim
    for i, (ids, c) in enumerate(zip(prompts, CONTEXT)):
        kept = [[x - {len(ids)} for x in kept_sets(cache, layer, i)] for layer in range(m.cfg.n_layers)]
        assert kept == [kept_sets(snap, layer, i) for layer in range(m.cfg.n_layers)]  # SnapKV's tokens
        assert all(len({p for p in s if p < c}) == int(c * 0.5) for layer in kept for s in layer)
        ref, chan = hf_ref(hf, ids + [int(nxt[i])], c, kept)
        for layer in range(m.cfg.n_layers):
            assert cache.k[layer].shape[-1] == D // 2  # the kept keys stored at half width for real
            assert [set(x.tolist()) for x in cache.chan[layer][i]] == chan[layer], (i, layer)
        assert rel_err(logits[i], ref[len(ids) - 1]) < 1e-6
        assert rel_err(step[i], ref[len(ids)]) < 1e-6


def test_bytes_multiply_and_packed_equals_alone(models):
    """Decode holds (1 - r) of the context's tokens, their keys at half their channels: (0.5 + 1) / 2 of the
    context's bytes per kept token (values whole), plus the new tokens whole; storage read."""
    _, folder = models
    prompts = [list(range(3, 203)), list(range(10, 130))]
    comp = lw.load(folder, device="cpu", dtype="bfloat16", kv="snapkv:ratio=0.5+think:ratio=0.25")
    full = lw.load(folder, device="cpu", dtype="bfloat16")
    t, tf = Timing(), Timing()
    generate(comp.module, prompts, 4, set(), backend=comp.backend, policy=comp.kv, timing=t)
    generate(full.module, prompts, 4, set(), backend=full.backend, timing=tf)
    D = comp.module.cfg.head_dim
    for got, want, p in zip(t.kv_bytes, tf.kv_bytes, prompts):
        n, kept = len(p), int(len(p) * 0.5)
        # per kept context slot and kv head: D/2 key + D value channels, 2 bytes each, and a 4-byte position
        expect = (kept * (3 * D + 4) + 4 * (4 * D + 4)) / ((n + 4) * 4 * D)
        assert abs(got / want - expect) < 0.03, (got / want, expect)
    f64 = lw.load(folder, device="cpu", dtype="float64", kv=SPEC)
    together = f64.generate_ids(prompts_of(6), max_new_tokens=4)
    assert together == [f64.generate_ids([x], max_new_tokens=4)[0] for x in prompts_of(6)]


@pytest.mark.parametrize("bad", ["think:ratio=0.25+think:ratio=0.1", "adakv:ratio=0.5+think:ratio=0.25",
                                 "snapkv:ratio=0.5+knorm:ratio=0.5", "h2o:ratio=0.5,every=2+think:ratio=0.25",
                                 "snapkv:ratio=0.5+think:ratio=0.25+knorm:ratio=0.5"])
def test_bad_compositions_are_one_line(bad):
    with pytest.raises(LengthwiseError, match="compose"):
        kv.parse(bad)
