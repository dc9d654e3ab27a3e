"""Batched generation over the ragged KV cache against HF generate, one prompt at a time."""
import pytest
import torch

import lengthwise as lw
from conftest import tiny_hf_causal

PROMPTS = [
    "The capital of France is",
    "Here is a short story about a robot who learns to paint. Once upon a time, in a quiet workshop at the edge of town,",
    "1, 2, 3,",
]


def _hf_greedy(hf, ids, n, eos=None):
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.slow
def test_greedy_matches_hf_generate(smol, hf_smol):
    ids = smol.tokenize(PROMPTS)
    assert len({len(i) for i in ids}) == 3
    ours = smol.generate_ids(ids, max_new_tokens=32)
    for o, p in zip(ours, ids):
        assert o == _hf_greedy(hf_smol, p, 32, eos=list(smol.eos_ids))


@pytest.mark.slow
def test_chat_template_and_text(smol):
    ids = smol.tokenize(["What is the capital of France?"], chat=True)[0]
    text = smol.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    out = smol.generate(["What is the capital of France?"], max_new_tokens=12, chat=True)
    assert "Paris" in out[0]


@pytest.mark.parametrize("window", [None, 8])
def test_random_model_generation_matches_hf(tmp_path, window):
    """Sliding-window decode too: the cache keeps every key, the mask hides the old ones."""
    kind, over = ("mistral", dict(sliding_window=window)) if window else ("qwen2", {})
    hf, folder = tiny_hf_causal(kind, tmp_path, **over)
    lm = lw.load(folder, device="cpu")
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 211, (n,), generator=g).tolist() for n in (20, 3, 11)]
    ours = lm.generate_ids(prompts, max_new_tokens=16)
    for o, p in zip(ours, prompts):
        assert o == _hf_greedy(hf, p, 16)


@pytest.mark.parametrize("kind,over", [("qwen2", {}), ("mistral", dict(sliding_window=8)),
                                       ("llama", dict(rope_scaling=dict(rope_type="yarn", factor=4.0,
                                                                        original_max_position_embeddings=128)))])
def test_fused_kernels_match_hf(tmp_path, monkeypatch, kind, over):
    """The GPU path's Triton kernels, run by Triton's interpreter here, in place of the plain-torch layers:
    the decode step's fused RoPE + cache write + attention (triton_decode.rope_cache_decode), and the fused
    residual add + RMSNorm and SiLU * up (attention/triton_fused.py) in prefill and decode. Against HF generate and
    against the unfused model's logits: qkv bias, a sliding window, YaRN's attention factor in the tables."""
    import os
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the kernel runs on CPU tensors under TRITON_INTERPRET=1 only")
    from lengthwise.attention import layer
    from lengthwise.attention import triton_fused
    hf, folder = tiny_hf_causal(kind, tmp_path, **over)
    lm = lw.load(folder, device="cpu")
    fused = []

    def applies(q, meta, mask, backend):  # what decode_kernel_applies says on a GPU for a decode step
        ok = meta.max_q == 1 and meta.cu_q.shape[0] == q.shape[0] + 1 and mask.causal
        fused.append(ok)
        return ok
    layers = []

    def layers_fused(x, backend, dtypes):
        layers.append(x.shape[0])
        return True
    monkeypatch.setattr(layer, "decode_kernel_applies", applies)
    monkeypatch.setattr(triton_fused, "fused_applies", layers_fused)  # Backend.fuses asks it
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 211, (n,), generator=g).tolist() for n in (20, 3, 11)]
    ours = lm.generate_ids(prompts, max_new_tokens=12)
    assert sum(fused) >= 11 * 2 and layers[0] == 34 and layers[1:] == [3] * 11  # prefill, every decode step
    for o, p in zip(ours, prompts):
        assert o == _hf_greedy(hf, p, 12)
    # logits of a prefill and three decode steps, fused against unfused (greedy tokens alone are too coarse)
    runs = []
    for on in (True, False):
        monkeypatch.setattr(layer, "decode_kernel_applies", applies if on else lambda *a: False)
        monkeypatch.setattr(triton_fused, "fused_applies", lambda x, backend, dtypes: on)
        runs.append(_decode_logits(lm, prompts, [ours[i][:3] for i in range(3)]))
    assert (runs[0] - runs[1]).norm() / runs[1].norm() < 1e-5


def _decode_logits(lm, prompts, feed):
    """Prefill the prompts into a ragged cache, then decode feed's tokens one step at a time -> logits."""
    from lengthwise import RaggedBatch
    from lengthwise.kv import RaggedKVCache
    from lengthwise.models.llama import Step
    cfg, B = lm.config, len(prompts)
    cache = RaggedKVCache(cfg.n_layers, [len(p) + 8 for p in prompts], cfg.n_kv_heads, cfg.head_dim,
                          torch.float32, "cpu")
    batch = RaggedBatch.from_lists(prompts, "cpu")
    out = []
    with torch.inference_mode():
        slots, positions, meta = cache.plan(torch.arange(B), batch.cu_seqlens.diff().long())
        out.append(lm.module(batch.tokens, positions, Step(meta, lm.module.mask, lm.backend, cache, slots),
                             out_rows=batch.last_index))
        for j in range(len(feed[0])):
            slots, positions, meta = cache.plan_decode_all()
            tok = torch.tensor([f[j] for f in feed])
            out.append(lm.module(tok, positions, Step(meta, lm.module.mask, lm.backend, cache, slots)))
    return torch.stack(out)


def test_eos_stops_each_sequence_on_its_own(tmp_path):
    hf, folder = tiny_hf_causal("llama", tmp_path)
    lm = lw.load(folder, device="cpu")
    prompts = [[5, 6, 7], [9], [100, 101, 102, 103]]
    free = lm.generate_ids(prompts, max_new_tokens=10)
    eos = free[0][2]  # make the third token of the first sequence an EOS
    from lengthwise.generate import generate_ids
    stopped = generate_ids(lm.module, prompts, 10, {eos})
    for f, s in zip(free, stopped):
        cut = f.index(eos) + 1 if eos in f else len(f)
        assert s == f[:cut]


def test_sampling_is_seeded_and_top_p_narrows(tmp_path):
    _, folder = tiny_hf_causal("llama", tmp_path)
    lm = lw.load(folder, device="cpu")
    prompts = [[1, 2, 3], [4, 5]]
    a = lm.generate_ids(prompts, max_new_tokens=12, temperature=1.5, seed=7)
    b = lm.generate_ids(prompts, max_new_tokens=12, temperature=1.5, seed=7)
    c = lm.generate_ids(prompts, max_new_tokens=12, temperature=1.5, seed=8)
    assert a == b and a != c
    # a vanishing nucleus keeps only the top token: sampling becomes greedy
    assert lm.generate_ids(prompts, max_new_tokens=12, temperature=1.5, top_p=1e-6, seed=7) == \
        lm.generate_ids(prompts, max_new_tokens=12)


def test_bad_sampling_arguments(tmp_path):
    _, folder = tiny_hf_causal("llama", tmp_path)
    lm = lw.load(folder, device="cpu")
    for kw, msg in [(dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(max_new_tokens=0), "max_new_tokens")]:
        with pytest.raises(lw.LengthwiseError, match=msg):
            lm.generate_ids([[1, 2]], **{"max_new_tokens": 4, **kw})
