"""The results store never loses what a file held: only a record cut short by a kill is dropped."""
import json

import pytest

from lengthwise import LengthwiseError
from lengthwise.evaluation import EvalConfig, ResultStore
from lengthwise.evaluation.grid import parse_depths, parse_lengths


def _rec(i: int) -> dict:
    return {"id": f"cell{i}", "task": "passkey", "length": 512, "depth": 0.0, "sample": i, "score": 1.0}


def _line(i: int) -> str:
    return json.dumps(_rec(i)) + "\n"


HEADER = json.dumps({"lengthwise_store": 2, "lengthwise": "0.1.0", "config": {}}) + "\n"


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(HEADER + _line(0) + _line(1).rstrip("\n"))  # e.g. saved by an editor that drops the final newline
    store = ResultStore(path)
    store.open_for_append()
    store.append(_rec(2))
    assert [json.loads(x).get("id") for x in path.read_text().splitlines()] == [None, "cell0", "cell1", "cell2"]
    assert store.done_ids() == {"cell0", "cell1", "cell2"}


def test_a_record_cut_short_by_a_kill_is_dropped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(HEADER + _line(0) + _line(1)[:25])
    store = ResultStore(path)
    store.open_for_append()
    assert path.read_text() == HEADER + _line(0)


@pytest.mark.parametrize("content", [
    "my notes\nfinal paragraph",  # no record at all, no final newline: cutting would lose a line
    "my notes\n",
    "a,b\n1,2\n",
])
def test_a_file_that_is_not_a_store_is_refused_untouched(tmp_path, content):
    path = tmp_path / "notes.jsonl"
    path.write_text(content)
    store = ResultStore(path)
    for call in (store.check, store.open_for_append):
        with pytest.raises(LengthwiseError, match="not an eval results store"):
            call()
    assert path.read_text() == content


def test_a_store_ending_in_foreign_text_is_refused_untouched(tmp_path):
    path = tmp_path / "r.jsonl"
    content = HEADER + _line(0) + "a note typed at the end"
    path.write_text(content)
    with pytest.raises(LengthwiseError, match="ends in a line that is not a result record"):
        ResultStore(path).open_for_append()
    assert path.read_text() == content


def test_lines_that_are_not_utf8_are_named_and_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(HEADER.encode() + _line(0).encode() + b"\xff\xfe junk\n" + _line(1).encode())
    store = ResultStore(path)
    records, warnings = store.records()
    assert [r["id"] for r in records] == ["cell0", "cell1"] and warnings == ["line 3: not UTF-8 text; skipped"]
    store.check()  # a store with a damaged line is still a store: resuming keeps the damaged line as it is
    path.write_bytes(b"\xff\xfe\n")
    with pytest.raises(LengthwiseError, match="not an eval results store"):
        store.check()


@pytest.mark.parametrize("kw,needle", [
    ({"tasks": []}, "no task given"),
    ({"lengths": [1024, 512, 1024]}, "length 1024 is given twice"),
    ({"depths": [0.0, 50.0, 50.0]}, "depth 50 is given twice"),
    ({"tasks": ["passkey", "passkey"]}, "task 'passkey' is given twice"),
    ({"backend": "hf", "hf_rope": {"rope_type": "yarn", "factor": -1}}, "factor must be a finite number > 0"),
    ({"backend": "hf", "hf_rope": {"rope_type": "nosuch"}}, "RoPE scaling type 'nosuch' is not one lengthwise"),
    ({"method": "yarn:factor=4,factor=8"}, "option 'factor' is given twice"),
])
def test_bad_grids_fail_before_any_model_loads(kw, needle):
    base = {"model": "no/such/model", "tasks": ["passkey"], "lengths": [512], "depths": [0.0]}
    with pytest.raises(LengthwiseError, match=needle):
        EvalConfig(**{**base, **kw})


def test_lengths_and_depths_that_cannot_be_read():
    for text in ("infk", "1e400", "nan"):
        with pytest.raises(LengthwiseError, match="cannot read length"):
            parse_lengths(text)
    with pytest.raises(LengthwiseError, match=r"--depths 120 is a count.*like 50%"):
        parse_depths("120")
    assert len(parse_depths("101")) == 101 and parse_depths("101")[1] == 1.0
