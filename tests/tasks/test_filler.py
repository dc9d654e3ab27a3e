"""The essay filler is a frozen snapshot: the same prompts on every Python, and the cells measured on the GPU
machine (built there from CPython 3.12.3's own docs) are rebuilt here token for token."""
import argparse
import gzip
import hashlib
import json
import sys
import types
from pathlib import Path

import pytest

from lengthwise.evaluation.backends import make_render
from lengthwise.evaluation.grid import sample_seed
from lengthwise.models.load import load_tokenizer, resolve
from lengthwise.tasks import filler, get_task

ROOT = Path(__file__).resolve().parents[2]


def words(prompt, prefix):
    return (prompt + "\n" + prefix).split()


def test_prompts_ignore_the_running_pythons_docs(monkeypatch):
    before = get_task("niah_single").make(words, 3000, 40, 5).prompt
    fake = types.ModuleType("pydoc_data.topics")
    fake.topics = {"x": "Nothing here is like the snapshot at all. Every sentence differs from it."}
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", fake)
    filler.essay_sentences.cache_clear()
    try:
        assert get_task("niah_single").make(words, 3000, 40, 5).prompt == before
        assert "Nothing here is like the snapshot" not in " ".join(filler.essay_sentences())
    finally:
        filler.essay_sentences.cache_clear()


def test_cleaning_by_hand():
    topics = {
        "b": "Heading\n*******\n\nThe *first* sentence is kept[1]. So is the second one, e.g. this\n"
             "part of it. Changed in version 3.4: Short.\n\n>>> print('code is dropped')\n",
        "a": "A sentence that sits in topic a comes first.\n\nNote: Notes keep their words in place.",
    }
    assert filler.clean_topics(topics) == [
        "A sentence that sits in topic a comes first.",
        "Notes keep their words in place.",
        "The first sentence is kept.",
        "So is the second one, e.g. this part of it.",
    ]


def test_freeze_is_byte_stable_and_reads_back(tmp_path):
    src = tmp_path / "topics.py"
    src.write_text("# generated\ntopics = {'t': 'One plain sentence of prose here. And a second plain one here.'}\n")
    a, b = tmp_path / "a.gz", tmp_path / "b.gz"
    assert filler.freeze(src, a) == 2 and filler.freeze(src, b) == 2
    assert a.read_bytes() == b.read_bytes()  # no timestamp or file name inside the gzip header
    assert gzip.decompress(a.read_bytes()).decode().split("\n") == [
        "One plain sentence of prose here.", "And a second plain one here."]


def test_snapshot_contents():
    sents = filler.essay_sentences()
    assert len(sents) == 2272 and all(filler._is_prose(s) for s in sents)
    # pinned: an edit to the snapshot changes every essay prompt, so it must be deliberate
    text = gzip.decompress(filler.SNAPSHOT.read_bytes())
    assert hashlib.sha256(text).hexdigest() == PINNED


PINNED = "ebb76b42f7bb5c94b8c74c58c2a0aba9c0f47aa08bc14c9a89016c37f3e1af93"


@pytest.mark.slow
def test_rebuilds_the_gpu_cells_token_for_token():
    """Cells the GPU machines ran (Python 3.12.3, reading its own pydoc_data) carry their prompt's token count."""
    render = make_render(load_tokenizer(resolve("smollm2-135m")), True)
    with gzip.open(ROOT / "benchmarks/results/extension/full.jsonl.gz", "rt", encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    pick = [r for r in recs if r["method"] == "none" and r["task"] in ("niah_single", "niah_multikey")]
    recs = [r for r in pick if r["length"] == 4096][:8] + [r for r in pick if r["length"] == 8192][:4]
    assert len(recs) == 12
    for r in recs:  # the 8k cells (H200) were cut to fit the trained context, answer included
        s = get_task(r["task"]).make(render, r["length"], r["depth"],
                                     sample_seed(argparse.Namespace(seed=r["config"]["seed"]), r["sample"]), context=8192)
        assert (s.n_tokens, list(s.answers)) == (r["prompt_tokens"], r["answers"]), r["id"]
