"""lw.evaluate and lw.report (issue 21, item 6): a runner of one's own, evaluated on the prompts lengthwise gets."""
import pytest

import lengthwise as lw
from conftest import tiny_smol_llama
from lengthwise.evaluation import LengthwiseRunner, make_render
from lengthwise.models.load import load_tokenizer

GRID = dict(tasks=["passkey", "niah_single:haystack=noise"], lengths=[200, 400], depths=[0, 100], samples=2)


class Recording(LengthwiseRunner):
    """lengthwise's own runner, keeping the samples it was given."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen = []

    def generate(self, samples):
        self.seen += samples
        return super().generate(samples)


class Oracle:
    """A third-party engine in ten lines: it renders with the same tokenizer and answers from the sample."""
    name = "oracle"

    def __init__(self, tokenizer, context):
        self.render = make_render(tokenizer, chat=False)
        self.context_length = self.trained_context = context
        self.seen = []

    def generate(self, samples):
        self.seen += samples
        return [f"{s.answer_prefix} {s.answers[0]}" for s in samples], {"prefill_s": 0.0, "decode_s": 0.0,
                                                                        "peak_mem_gib": None}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, smol_path):
    return tiny_smol_llama(tmp_path_factory.mktemp("api") / "tiny", smol_path)


def _key(s):
    return (s.task, s.length, s.depth, s.seed, s.prompt, s.answer_prefix, s.answers, s.n_tokens)


def test_a_third_party_runner_gets_identical_prompts(folder, tmp_path):
    ours = Recording(str(folder), device="cpu", dtype="float32")
    a = lw.evaluate(folder, out=tmp_path / "a.jsonl", engine=ours, **GRID)
    oracle = Oracle(load_tokenizer(folder), 4096)
    b = lw.evaluate(folder, out=tmp_path / "b.jsonl", engine=oracle, **GRID)
    n = 2 * 2 * 2 * 2
    assert len(a) == len(b) == len(ours.seen) == len(oracle.seen) == n
    assert sorted(map(_key, ours.seen)) == sorted(map(_key, oracle.seen))  # byte-identical prompts, cell for cell
    assert {r["backend"] for r in a} == {"Recording"} and {r["backend"] for r in b} == {"oracle"}
    assert all(r["score"] == 1.0 for r in b) and sum(r["score"] for r in a) < n  # a random model finds few keys
    # the built-in engine by name runs the same grid into the same cells' prompts
    c = lw.evaluate(folder, out=tmp_path / "c.jsonl", engine="lengthwise", device="cpu", dtype="float32", **GRID)
    assert sorted((r["task"], r["length"], r["depth"], r["sample"], r["prompt_tokens"]) for r in c) == \
        sorted((r["task"], r["length"], r["depth"], r["sample"], r["prompt_tokens"]) for r in b)
    cell = lambda r: (r["task"], r["length"], r["depth"], r["sample"])  # noqa: E731  ids differ: the engine is keyed
    assert [r["output"] for r in sorted(c, key=cell)] == [r["output"] for r in sorted(a, key=cell)]
    # a second call resumes: nothing runs, the same records come back
    oracle.seen.clear()
    assert lw.evaluate(folder, out=tmp_path / "b.jsonl", engine=oracle, **GRID) == b and not oracle.seen
    # lw.report reads both stores together; each engine is its own row
    r = lw.report([tmp_path / "b.jsonl", tmp_path / "c.jsonl"], tmp_path / "plots")
    rows = {(x["backend"], x["task"], x["length"]): x["accuracy"] for x in r["table"]}
    assert rows[("oracle", "passkey", 200)] == 1.0 and ("lengthwise", "passkey", 400) in rows
    assert r["plots"] and all(p.exists() for p in r["plots"])


def test_what_evaluate_refuses(folder, tmp_path):
    with pytest.raises(lw.LengthwiseError, match="engine object is not a runner: it lacks render, generate, context_length, trained_context"):
        lw.evaluate(folder, out=tmp_path / "x.jsonl", engine=object(), **GRID)
    with pytest.raises(lw.LengthwiseError, match="unknown engine 'vllm'"):
        lw.evaluate(folder, out=tmp_path / "x.jsonl", engine="vllm", **GRID)
    with pytest.raises(lw.LengthwiseError, match="a runner of your own sets its positions itself"):
        lw.evaluate(folder, out=tmp_path / "x.jsonl", engine=Oracle(load_tokenizer(folder), 4096),
                    positions="yarn:factor=2", **GRID)
