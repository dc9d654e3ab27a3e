"""benchmarks/kvpress_peer.py's runner without kvpress: its decode loop (the context prefilled apart, the question
and answer at positions that continue it, greedy) against HF generate on the same ids, and the harness carrying
the policy it names. kvpress itself runs in its own virtualenv (docs/kv-compression.md); here the press is none,
or a stand-in that keeps the cache whole."""
import contextlib
import sys
from pathlib import Path

import torch

import lengthwise as lw
from conftest import tiny_smol_llama

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kvpress_peer import KVPressRunner  # noqa: E402


class KeepAll:
    """A press that hooks nothing: the context's cache stays whole, as kvpress's ratio-0 presses leave it."""
    calls = 0

    def __call__(self, model):
        KeepAll.calls += 1
        return contextlib.nullcontext()


def test_the_runner_decodes_as_hf_generate_and_carries_its_policy(tmp_path, smol_path):
    folder = tmp_path / "tiny"
    tiny_smol_llama(folder, smol_path)
    runner = KVPressRunner(str(folder), KeepAll(), chat=True)
    ids = runner.render("Remember 4417.\n\nWhat number?", "Answer:")
    new, kept = runner.answer(ids, len(ids) - 5, 6)
    with torch.no_grad():
        ref = runner.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=6, do_sample=False, eos_token_id=sorted(runner.eos),
                                    pad_token_id=runner.tok.eos_token_id)[0, len(ids):].tolist()
    assert new == ref[:len(new)] and kept == len(ids) - 5 and KeepAll.calls == 1
    with torch.no_grad():
        whole = runner.model(torch.tensor([ids])).logits[0, -1]
    assert (runner.last_logits - whole).norm() <= 1e-5 * whole.norm()  # the question continues the context's positions
    runner.kv = "snapkv:ratio=0.5"
    recs = lw.evaluate(str(folder), ["passkey"], [256], out=tmp_path / "peer.jsonl", depths=[50], samples=2,
                       engine=runner, chat=True, yes=True)
    assert len(recs) == 2 and {r["kv"] for r in recs} == {"snapkv:ratio=0.5,window=64,kernel=5"}
    assert {r["backend"] for r in recs} == {"kvpress"}
