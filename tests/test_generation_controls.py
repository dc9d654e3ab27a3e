"""Generation controls (stop strings and ids, top_k, min_p, repetition penalty, n, logprobs, finish reasons,
chat messages, the checkpoint's EOS ids) and bounded-memory generation, against HF generate on the same
weights (CPU, float32)."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers

import lengthwise as lw
from lengthwise import generate as G
from conftest import tiny_hf_causal, tiny_smol_llama

PROMPTS = [[5, 6, 7, 8], [9], [100, 101, 102, 103, 104, 105, 106], [42, 42, 7]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf, folder = tiny_hf_causal("llama", tmp_path_factory.mktemp("tiny"))
    return hf, lw.load(folder, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def smolish(tmp_path_factory, smol_path):
    """A random Llama with SmolLM2's tokenizer and chat template, its HF twin and our load of it."""
    folder = tiny_smol_llama(tmp_path_factory.mktemp("smolish") / "m", smol_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return hf, lw.load(folder, device="cpu", dtype="float32")


def _hf(hf, ids, n, **kw):
    """HF generate on one prompt; its EOS ids come from its generation config, as ours do."""
    if kw.get("do_sample"):
        kw.setdefault("top_k", 0)  # HF's generation config defaults top_k to 50; ours keeps every token
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, pad_token_id=0, **kw)
    return out[0, len(ids):].tolist()


def test_greedy_repetition_penalty_matches_hf(tiny):
    hf, lm = tiny
    for penalty in (1.3, 0.7):
        ours = lm.generate_ids(PROMPTS, max_new_tokens=16, repetition_penalty=penalty)  # one batch
        plain = lm.generate_ids(PROMPTS, max_new_tokens=16)
        assert ours != plain  # the penalty changes what greedy picks
        for o, p in zip(ours, PROMPTS):
            assert o == _hf(hf, p, 16, do_sample=False, repetition_penalty=penalty)


@pytest.mark.parametrize("kw", [dict(top_k=20), dict(min_p=0.1), dict(repetition_penalty=1.3),
                                dict(temperature=0.8, top_k=30, top_p=0.9, min_p=0.05, repetition_penalty=1.2)])
def test_seeded_sampling_matches_hf_draw_for_draw(tiny, kw):
    """The same processors and the same generator draws: torch.manual_seed(s) before HF generate seeds the
    global generator as seed=s seeds ours, so one prompt's samples are equal token for token."""
    hf, lm = tiny
    kw = {"temperature": 1.0, **kw}
    for seed in (0, 1):
        for p in PROMPTS[:2]:
            ours = lm.generate_ids([p], max_new_tokens=20, seed=seed, **kw)[0]
            torch.manual_seed(seed)
            assert ours == _hf(hf, p, 20, do_sample=True, **kw)


def test_top_k_and_min_p_narrow_a_batch(tiny):
    """Batched: top_k=1, or min_p=1 (only the top token's probability reaches it), sample greedily."""
    _, lm = tiny
    greedy = lm.generate_ids(PROMPTS, max_new_tokens=12)
    assert lm.generate_ids(PROMPTS, max_new_tokens=12, temperature=2.0, top_k=1, seed=3) == greedy
    assert lm.generate_ids(PROMPTS, max_new_tokens=12, temperature=2.0, min_p=1.0, seed=3) == greedy
    assert lm.generate_ids(PROMPTS, max_new_tokens=12, temperature=2.0, seed=3) != greedy


def test_logprobs_match_hf_raw_logits(tiny):
    hf, lm = tiny
    out = lm.complete(PROMPTS, max_new_tokens=10, logprobs=5)
    for c, p in zip(out, PROMPTS):
        with torch.no_grad():
            r = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=10,
                            do_sample=False, pad_token_id=0, output_logits=True,
                            return_dict_in_generate=True)
        assert c.token_ids == r.sequences[0, len(p):].tolist() and c.finish_reason == "length"
        want = torch.log_softmax(torch.cat(r.logits).double(), dim=-1)  # [N, V]
        got = torch.tensor([t.logprob for t in c.logprobs], dtype=torch.float64)
        assert (got - want[torch.arange(10), c.token_ids]).abs().max() < 1e-4
        for row, t in zip(want, c.logprobs):
            v, i = row.topk(5)
            assert list(t.top) == i.tolist()
            assert max(abs(t.top[k] - x) for k, x in zip(i.tolist(), v.tolist())) < 1e-4
            assert t.token_id in t.top  # greedy: the chosen token is the top one
    # sampled tokens report their own logprob under the model, not under the processed distribution
    s = lm.complete(PROMPTS[:1], max_new_tokens=6, temperature=1.0, top_k=3, seed=0, logprobs=0)[0]
    assert all(t.top == {} for t in s.logprobs)
    full = lm.logits([PROMPTS[0] + s.token_ids[:-1]])[0][len(PROMPTS[0]) - 1:]
    lp = torch.log_softmax(full.double(), -1)[torch.arange(6), s.token_ids]
    assert (torch.tensor([t.logprob for t in s.logprobs]) - lp).abs().max() < 1e-4


def test_stop_strings_match_hf(smolish):
    hf, lm = smolish
    tok = lm.tokenizer
    prompt = "Once upon a time"
    ids = tok(prompt)["input_ids"]
    free = lm.generate_ids([prompt], max_new_tokens=24)[0]
    pieces = [tok.decode(free[:k]) for k in range(len(free) + 1)]
    k = next(k for k in range(4, len(free)) if len(pieces[k + 1]) - len(pieces[k]) >= 2 and len(pieces[k]) >= 2)
    stop = pieces[k + 1][len(pieces[k]) - 1:len(pieces[k]) + 1]  # spans the boundary of tokens k-1 and k
    want = _hf(hf, ids, 24, do_sample=False, stop_strings=[stop], tokenizer=tok)
    c = lm.complete([prompt], max_new_tokens=24, stop=[stop, "never-in-this-text-\u2603"])[0]
    assert c.token_ids == want and len(want) < 24 and want == free[:len(want)]
    assert c.finish_reason == "stop" and c.stop == stop
    full = tok.decode(c.token_ids, skip_special_tokens=True)
    assert c.text == full[:full.index(stop)] and stop not in c.text
    # seeded sampling with a stop string, draw for draw against HF
    reasons = []
    for seed in (0, 1):
        c = lm.complete([prompt], max_new_tokens=30, temperature=1.0, top_k=50, seed=seed, stop=[" the", "e"])[0]
        torch.manual_seed(seed)
        assert c.token_ids == _hf(hf, ids, 30, do_sample=True, top_k=50, temperature=1.0, stop_strings=[" the", "e"],
                                  tokenizer=tok)
        reasons.append(c.finish_reason)
        assert c.finish_reason == "stop" and c.stop in (" the", "e") and c.stop not in c.text


def test_stop_token_ids_and_finish_reasons(tiny):
    _, lm = tiny
    free = lm.generate_ids(PROMPTS, max_new_tokens=10)
    stop = free[0][3]
    out = lm.complete(PROMPTS, max_new_tokens=10, stop_token_ids=[stop])
    for f, c in zip(free, out):
        cut = f.index(stop) + 1 if stop in f else len(f)
        assert c.token_ids == f[:cut]
        assert c.finish_reason == ("stop" if stop in f else "length") and c.stop == (stop if stop in f else None)
    assert [c.index for c in out] == [0, 1, 2, 3]


def test_eos_from_generation_config_joins_the_tokenizers(tmp_path):
    hf, folder = tiny_hf_causal("qwen2", tmp_path)
    free = lw.load(folder, device="cpu").generate_ids(PROMPTS, max_new_tokens=12)
    ends = [free[0][4], free[2][2]]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": ends}))
    lm = lw.load(folder, device="cpu")
    assert lm.eos_ids == set(ends)
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()  # reads it too
    out = lm.complete(PROMPTS, max_new_tokens=12)
    for c, p in zip(out, PROMPTS):
        assert c.token_ids == _hf(hf2, p, 12, do_sample=False)
    assert out[0].finish_reason == out[2].finish_reason == "stop"
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": "two"}))
    with pytest.raises(lw.LengthwiseError, match="eos_token_id must be a token id"):
        lw.load(folder, device="cpu")


def test_n_samples_per_prompt(tiny):
    _, lm = tiny
    out = lm.complete(PROMPTS[:2], max_new_tokens=8, temperature=1.0, seed=0, n=3)
    assert [c.index for c in out] == [0, 0, 0, 1, 1, 1]
    assert len({tuple(c.token_ids) for c in out[:3]}) > 1  # samples of one prompt differ
    assert lm.generate_ids(PROMPTS[:2], max_new_tokens=8, temperature=1.0, seed=0, n=3) == [c.token_ids for c in out]
    greedy = lm.generate_ids(PROMPTS[:2], max_new_tokens=8)
    assert lm.generate_ids(PROMPTS[:2], max_new_tokens=8, n=2) == [greedy[0]] * 2 + [greedy[1]] * 2


def test_chat_with_a_system_turn_renders_as_apply_chat_template(smolish):
    hf, lm = smolish
    tok = lm.tokenizer
    convo = [{"role": "system", "content": "You answer in one word."},
             {"role": "user", "content": "Capital of France?"},
             {"role": "assistant", "content": "Paris."},
             {"role": "user", "content": "And of Italy?"}]
    want = tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    assert lm.chat_text(convo).encode() == want.encode()
    ids = lm.tokenize([convo])[0]
    assert ids == tok.apply_chat_template(convo, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    # system= with a string prompt is the same two turns
    two = [convo[0], convo[1]]
    assert lm.chat_text("Capital of France?", system="You answer in one word.") == \
        tok.apply_chat_template(two, tokenize=False, add_generation_prompt=True)
    assert lm.tokenize(["Capital of France?"], system="You answer in one word.") == lm.tokenize([two])
    assert "You answer in one word." in lm.chat_text(convo) and "You answer" not in lm.chat_text("hi")
    # generation from the conversation is HF generate on the rendered ids
    c = lm.complete([convo], max_new_tokens=8)[0]
    assert c.token_ids == _hf(hf, ids, 8, do_sample=False)[:len(c.token_ids)]


@pytest.mark.parametrize("kw,needle", [
    (dict(n=0), "n must be an integer of at least 1"),
    (dict(top_k=-1), "top_k must be an integer >= 0"),
    (dict(do_sample=True), "generate has no option 'do_sample': use sampling is temperature > 0"),
    (dict(max_tokens=4), "max_tokens is vLLM's name"),
    (dict(num_return_sequences=2), "n is the samples per prompt"),
    (dict(topk=2), "generate has no option 'topk': its options are max_new_tokens"),
    (dict(min_p=1.5), r"min_p must be a number in \[0, 1\]"),
    (dict(min_p=-0.1), r"min_p must be a number in \[0, 1\]"),
    (dict(stop=""), "stop string 0 is empty"),
    (dict(stop=["ok", ""]), "stop string 1 is empty"),
    (dict(repetition_penalty=0), "repetition_penalty must be"),
    (dict(logprobs=-1), "logprobs must be an integer"),
    (dict(logprobs=True), r"logprobs takes an int, not True: the number of top alternatives per token \(0 for"),
    (dict(logprobs=False), "logprobs takes an int, not False"),
    (dict(stop_token_ids=[10**9]), "stop_token_ids holds"),
    (dict(max_batch_tokens=0), "max_batch_tokens must be"),
])
def test_bad_controls_are_one_line(smolish, kw, needle):
    _, lm = smolish
    with pytest.raises(lw.LengthwiseError, match=needle) as e:
        lm.generate(["hi"], max_new_tokens=2, **kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("convo,needle", [
    ([{"role": "robot", "content": "hi"}], "message 0 of prompt 0 has role 'robot': roles are system, user"),
    ([{"role": "user"}], "message 0 of prompt 0 is not a"),
    ([{"role": "user", "content": 3}], "content must be a string"),
])
def test_bad_messages_are_one_line(smolish, convo, needle):
    _, lm = smolish
    with pytest.raises(lw.LengthwiseError, match=needle) as e:
        lm.generate([convo], max_new_tokens=2)
    assert "\n" not in str(e.value)


def test_groups_fit_the_budget_and_keep_input_order(tiny, monkeypatch):
    _, lm = tiny
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 211, (int(n),), generator=g).tolist() for n in torch.randint(1, 30, (60,), generator=g)]
    whole = lm.generate_ids(prompts, max_new_tokens=6)
    sizes, real = [], G.new_cache

    def spy(model, ps, new, *a, **k):
        sizes.append(sum(len(p) + new for p in ps))
        return real(model, ps, new, *a, **k)
    monkeypatch.setattr(G, "new_cache", spy)
    assert lm.generate_ids(prompts, max_new_tokens=6, max_batch_tokens=100) == whole
    assert len(sizes) > 5 and max(sizes) <= 100
    # the default budget comes from free memory: little of it makes many groups, and the same results
    sizes.clear()
    monkeypatch.setattr(G, "free_memory", lambda dev: 2 * 2**20)
    done = []
    assert lm.generate_ids(prompts, max_new_tokens=6, progress=done.append) == whole
    assert len(sizes) > 1 and done[-1] == 60 and done == sorted(done)
    tokens, seqs = G.memory_budget(lm.module, free=2 * 2**20)
    assert 0 < tokens < 2 * 2**20 and seqs >= 1


BOUNDED = textwrap.dedent("""
    import json, resource, sys, torch
    import lengthwise as lw
    torch.set_num_threads(1)
    lm = lw.load(sys.argv[1], device="cpu", dtype="float32")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 49152, (int(n),), generator=g).tolist() for n in torch.randint(2, 24, (2000,), generator=g)]
    lm.generate_ids(prompts[:4], max_new_tokens=2, max_batch_tokens=256)  # warm: the allocator's first pages
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = lm.generate_ids(prompts, max_new_tokens=4, max_batch_tokens=int(sys.argv[2]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pick = [0, 1, 2, 777, 1500, 1998, 1999]
    again = lm.generate_ids([prompts[i] for i in pick], max_new_tokens=4, max_batch_tokens=10**6)
    print(json.dumps({"grew_mib": (peak - base) / 1024, "n": len(out), "lens": sorted({len(o) for o in out}),
                      "order": [out[i] for i in pick] == again}))
""")


def test_two_thousand_prompts_in_bounded_memory(tmp_path, smol_path):
    """2,000 prompts with a 256-token budget: the process's peak RSS grows under 150 MiB past the model's. One
    group would hold 2,000 rows of 49,152-wide float32 logits (375 MiB each copy); the budget keeps ~20."""
    folder = tiny_smol_llama(tmp_path / "m", smol_path)
    run = subprocess.run([sys.executable, "-c", BOUNDED, str(folder), "256"], capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(Path(lw.__file__).parents[1])})
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert r["n"] == 2000 and r["lens"] == [4] and r["order"]
    assert r["grew_mib"] < 150, r


def test_rows_that_stop_leave_the_penalty_and_stop_state_of_the_others_intact(smolish):
    """Rows finish at different steps (eager decode drops them): each survivor's repetition-penalty ids and
    stop-string window must stay its own. Batched against HF one prompt at a time."""
    hf, lm = smolish
    tok = lm.tokenizer
    prompts = ["Once upon a time", "The weather", "In a quiet village far away there lived", "Numbers: 1, 2,"]
    free = lm.generate_ids(prompts, max_new_tokens=12, repetition_penalty=1.4)
    stop_id = free[1][2]  # ends prompt 1 early, and any other that makes it
    out = lm.complete(prompts, max_new_tokens=12, repetition_penalty=1.4, stop_token_ids=[stop_id], stop=["zzq"])
    assert len({len(c.token_ids) for c in out}) > 1
    for c, p in zip(out, prompts):
        ids = tok(p)["input_ids"]
        assert c.token_ids == _hf(hf, ids, 12, do_sample=False, repetition_penalty=1.4,
                                  eos_token_id=sorted(lm.eos_ids | {stop_id}), stop_strings=["zzq"], tokenizer=tok)


@pytest.mark.slow
def test_gguf_eos_ids(smol):
    assert smol.generation_eos == (2,) and smol.eos_ids == {2}  # tokenizer.ggml.eos_token_id of SmolLM2's GGUF
