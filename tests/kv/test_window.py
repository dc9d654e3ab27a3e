"""The window policy (sinks + recent) against HF transformers' LlamaForCausalLM under a dense 4D mask that hides
the same tokens: prefill in chunks, decode with eviction after every step, packed batches of mixed lengths."""
import pytest
import torch

import lengthwise as lw
from lengthwise import kv
from lengthwise.generate import decode_step, new_cache, prefill

from conftest import rel_err, tiny_hf_causal

SINKS, RECENT, CHUNK = 3, 10, 8


def visible(p: int, j: int, prompt: int) -> bool:
    """What query p sees under window:sinks=SINKS,recent=RECENT, prefilled in chunks of CHUNK: inside its chunk
    [a, p] and, of the earlier tokens, what the cache kept after the last chunk (j < sinks or j >= a - recent);
    a decode step p (p >= prompt) sees j < sinks or j >= p - recent, the cache having evicted after each step."""
    if j > p:
        return False
    a = (p // CHUNK) * CHUNK if p < prompt else p
    return j >= a or j < SINKS or j >= a - RECENT


def hf_logits(hf, ids: list[int], prompt: int) -> torch.Tensor:
    """[len(ids), V] float64 logits of HF's model under the window's mask (a 4D additive mask, eager attention)."""
    n = len(ids)
    allow = torch.tensor([[visible(p, j, prompt) for j in range(n)] for p in range(n)])
    mask = torch.zeros(1, 1, n, n, dtype=torch.float64).masked_fill(~allow, float("-inf"))
    with torch.no_grad():
        return hf(torch.tensor([ids]), attention_mask=mask).logits[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf, folder = tiny_hf_causal("llama", tmp_path_factory.mktemp("window"))
    return hf.double(), folder


def _run(lm, prompts, feed):
    """Prefill (chunked, evicting) then one decode step per fed token -> per sequence [1 + steps, V] logits."""
    m, policy = lm.module, lm.kv
    cache = new_cache(m, prompts, len(feed[0]) + 1, policy, CHUNK)
    with torch.inference_mode():
        out = [prefill(m, prompts, cache, lm.backend, policy, CHUNK)]
        seqs = torch.arange(len(prompts))
        for t in range(len(feed[0])):
            out.append(decode_step(m, cache, torch.tensor([f[t] for f in feed]), seqs, lm.backend, policy, evict=True))
    return torch.stack(out, 1), cache


def test_window_prefill_and_decode_match_a_dense_masked_reference(models):
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float32", backend="reference", kv=f"window:sinks={SINKS},recent={RECENT}")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 211, (n,), generator=g).tolist() for n in (37, 5, 20, 13)]
    feed = [torch.randint(0, 211, (6,), generator=g).tolist() for _ in prompts]
    got, cache = _run(lm, prompts, feed)
    for i, (p, f) in enumerate(zip(prompts, feed)):
        ref = hf_logits(hf, p + f, len(p))[len(p) - 1:]  # the prompt's last token, then each fed one
        assert rel_err(got[i], ref) <= 1e-5, i
    # the cache holds the window, no more: sinks + recent per (layer, sequence), or all of a shorter one
    seen = torch.tensor([len(p) + len(f) for p, f in zip(prompts, feed)])
    assert torch.equal(cache.kept, seen.clamp(max=SINKS + RECENT).expand_as(cache.kept))
    # and the masking is real: the full cache gives other logits for the long prompt
    full = lw.load(folder, device="cpu", dtype="float32", backend="reference")
    assert rel_err(full.logits([prompts[0]])[0][-1], hf_logits(hf, prompts[0], len(prompts[0]))[-1]) > 1e-3


def test_packed_equals_per_sequence(models):
    _, folder = models
    lm = lw.load(folder, device="cpu", dtype="float32", kv=f"window:sinks={SINKS},recent={RECENT}")  # cpu_flash
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 211, (n,), generator=g).tolist() for n in (29, 2, 17)]
    feed = [torch.randint(0, 211, (5,), generator=g).tolist() for _ in prompts]
    packed, _ = _run(lm, prompts, feed)
    for i in range(len(prompts)):
        alone, _ = _run(lm, [prompts[i]], [feed[i]])
        assert rel_err(packed[i], alone[0]) <= 1e-5


def test_generate_ids_under_the_window_equals_greedy_on_the_reference(models):
    """The user's path (lm.generate_ids, eviction every step) gives HF's greedy tokens under the same mask."""
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float64", kv=f"window:sinks={SINKS},recent={RECENT}")
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 211, (n,), generator=g).tolist() for n in (8, 3, 6)]  # prefill in one chunk
    got = lm.generate_ids(prompts, max_new_tokens=12)
    for p, o in zip(prompts, got):
        ids = list(p)
        for _ in range(12):
            ids.append(int(hf_logits(hf, ids, len(p))[-1].argmax()))
        assert o == ids[len(p):]


def test_cache_bytes_fall_with_the_budget(models):
    _, folder = models
    prompts = [[1] * 400, [2] * 250]
    sizes = []
    for spec in ("full", "window:sinks=4,recent=256", "window:sinks=4,recent=64", "window:sinks=4,recent=16"):
        lm = lw.load(folder, device="cpu", kv=spec)
        sizes.append(new_cache(lm.module, prompts, 32, lm.kv, chunk=64).nbytes)
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    # the bytes are the storage torch allocated: keys, values and positions of the reserved slots
    cfg = lm.config
    slots = sum(min(n, 20 + 64) for n in (400, 250))  # budget + one chunk bounds prefill; decode: budget + 1
    assert sizes[-1] == cfg.n_layers * slots * cfg.n_kv_heads * (2 * cfg.head_dim * 4 + 4)


def test_policy_specs_and_errors(models):
    _, folder = models
    assert kv.parse("window:sinks=2,recent=7") == kv.Window(2, 7)
    assert kv.parse("window:recent=7,every=0").spec() == "window:sinks=4,recent=7,every=0"
    assert isinstance(kv.parse(None), kv.Full) and not kv.parse("full").evicts
    for bad, needle in [("window:recent=0", "recent >= 1"), ("window:sink=3", "no option 'sink'"),
                        ("snap", "unknown KV policy"), ("window:every=-1", "every must be >= 0")]:
        with pytest.raises(lw.LengthwiseError, match=needle):
            kv.parse(bad)
    with pytest.raises(lw.LengthwiseError, match="sliding window"):
        _, mistral = tiny_hf_causal("mistral", folder.parent, sliding_window=8)
        lw.load(mistral, device="cpu", kv="window:recent=8")
