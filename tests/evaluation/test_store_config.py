"""Issue 20: a store is one config's cells, says what it is, and has one writer at a time.

Every setting that can change a score keeps its cells apart, on resume (one error naming the field, unless
--append-config) and in the report (a row per config, naming what differs)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lengthwise.cli as cli
from lengthwise import LengthwiseError
from lengthwise.evaluation import EvalConfig, ResultStore
from lengthwise.evaluation.grid import cells, store_config

GRID = ["--tasks", "passkey", "--lengths", "300", "--depths", "1", "--samples", "1", "--device", "cpu"]
from conftest import tiny_smol_llama


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, smol_path):
    """A random 2-layer Llama with SmolLM2's tokenizer (and its chat template)."""
    return tiny_smol_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", smol_path)


def _eval(model, out, *extra):
    return CliRunner().invoke(cli.app, ["eval", "--model", str(model), "--output", str(out), *GRID, *extra])


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _one_error(r) -> str:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    return lines[0]


@pytest.mark.parametrize("extra,field,shown", [
    (["--chat"], "chat", "chat=true"),
    (["--dtype", "float64"], "dtype", "dtype=float64"),
    (["--seed", "7"], "seed", "seed=7"),
    (["--positions", "linear:factor=2"], "positions", None),  # the scheme is the report's method column
    (["--engine", "hf"], "backend", None),  # the backend column
])
def test_each_setting_keeps_its_cells_apart_on_resume_and_in_report(tiny_lm, tmp_path, extra, field, shown):
    out = tmp_path / "r.jsonl"
    assert _eval(tiny_lm, out).exit_code == 0
    before = out.read_bytes()
    err = _one_error(_eval(tiny_lm, out, *extra))
    assert f"{field} is" in err and "--append-config" in err and "new --output" in err
    assert out.read_bytes() == before  # refused before anything was written
    r = _eval(tiny_lm, out, *extra, "--append-config")
    assert r.exit_code == 0, r.output
    lines = _lines(out)
    assert "lengthwise_store" in lines[0] and "lengthwise_config" in lines[2]  # header, cell, added config, cell
    recs = [x for x in lines if "id" in x]
    assert len(recs) == 2 and recs[0]["id"] != recs[1]["id"]
    assert recs[0]["config"][field] != recs[1]["config"][field]
    # a rerun of either config finds its cell
    for args in ([], extra):
        r = _eval(tiny_lm, out, *args)
        assert r.exit_code == 0 and "already" in r.stderr, r.output
    r = CliRunner().invoke(cli.app, ["report", str(out), "--output", str(tmp_path / "plots")])
    assert r.exit_code == 0, r.output
    blocks = [b for b in r.stdout.split("\n\n") if "(accuracy %)" in b]
    assert len(blocks) == 2  # never one row averaging both
    from lengthwise.report import accuracy_table, read_results
    rows = accuracy_table(read_results(out)[0])
    assert [row["n"] for row in rows] == [1, 1]
    if shown:
        assert any(shown in b.splitlines()[0] for b in blocks), r.stdout
        assert all(f"{field}=" in b.splitlines()[0] for b in blocks)


def test_the_model_bytes_are_in_the_key(tiny_lm, tmp_path):
    """Same path, same size, same mtime, other weights: another config."""
    model = tmp_path / "m"
    subprocess.run(["cp", "-r", str(tiny_lm), str(model)], check=True)
    out = tmp_path / "r.jsonl"
    assert _eval(model, out).exit_code == 0
    weights = model / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the last byte of the last tensor
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    err = _one_error(_eval(model, out))
    assert "model_sha256 is" in err


def test_device_kind_and_kv_policy_are_in_the_key(tiny_lm, tmp_path):
    """No GPU here: the configs such runs would have, checked against a CPU store."""
    cfg = EvalConfig(model=str(tiny_lm), tasks=["passkey"], lengths=[300], depths=[50.0], samples=1, device="cpu")
    base = store_config(cfg)
    assert base["device"] == "cpu" and base["kv"] == "full" and base["dtype"] == "float32"
    assert len(base["model_sha256"]) == 64
    out = tmp_path / "r.jsonl"
    store = ResultStore(out)
    store.open_for_append(base)
    store.close()
    for field, value in (("device", "cuda"), ("kv", "snapkv:ratio=0.5")):
        other = {**base, field: value}
        with pytest.raises(LengthwiseError, match=f"{field} is"):
            store.check(other)
        store.check(other, append_config=True)
        ids = {c.id for c in cells(cfg, 4096, base)}
        assert not ids & {c.id for c in cells(cfg, 4096, other)}


def test_task_options_and_lengths_key_cells_not_stores(tiny_lm):
    """Task options (defaults included) and lengths are in each cell's key; a grid may grow in a store."""
    kw = dict(model=str(tiny_lm), depths=[50.0], samples=1, device="cpu")
    a = cells(EvalConfig(tasks=["niah_single"], lengths=[300], **kw), 4096)
    b = cells(EvalConfig(tasks=["niah_single:haystack=noise"], lengths=[300], **kw), 4096)
    c = cells(EvalConfig(tasks=["niah_single"], lengths=[300, 600], **kw), 4096)
    assert a[0].id != b[0].id
    assert a[0].id == c[0].id and c[1].id not in {a[0].id}
    assert store_config(EvalConfig(tasks=["passkey"], lengths=[300], **kw)) == \
        store_config(EvalConfig(tasks=["niah_single"], lengths=[300, 600], max_batch_tokens=7, **kw))


def test_batch_size_and_output_path_are_not_in_the_key(tiny_lm, tmp_path):
    out = tmp_path / "r.jsonl"
    assert _eval(tiny_lm, out).exit_code == 0
    r = _eval(tiny_lm, out, "--max-batch-tokens", "512")
    assert r.exit_code == 0 and "already" in r.stderr, r.output


@pytest.mark.parametrize("content", [
    '{"id": "a", "text": "a line of someone else\'s data"}\n{"id": "b", "text": "more"}\n',  # looks like records
    '{"id": "x", "task": "passkey", "length": 512, "depth": 0, "score": 1.0}\n',  # a store of lengthwise <= 0.1
    '{"lengthwise_store": 99, "lengthwise": "9.0", "config": {}}\n',  # a newer format
    "[1, 2, 3]\n",
])
def test_a_foreign_jsonl_is_refused_as_a_store(tiny_lm, tmp_path, content):
    out = tmp_path / "foreign.jsonl"
    out.write_text(content)
    err = _one_error(_eval(tiny_lm, out))
    assert any(w in err for w in ("not an eval results store", "older lengthwise", "newer lengthwise", "format 99"))
    assert out.read_text() == content
    with pytest.raises(LengthwiseError):
        ResultStore(out).open_for_append({"model": "m"})
    assert out.read_text() == content


def test_an_old_store_gets_a_way_forward(tmp_path):
    out = tmp_path / "old.jsonl"
    out.write_text(json.dumps({"id": "x", "task": "passkey", "length": 512, "depth": 0.0, "method": "none",
                               "backend": "lengthwise", "model": "m", "score": 1.0}) + "\n")
    with pytest.raises(LengthwiseError, match="older lengthwise.*new --output.*report still reads it"):
        ResultStore(out).check()
    from lengthwise.report import read_results
    assert len(read_results(out)[0]) == 1


def test_a_second_writer_is_refused_with_the_holders_pid(tiny_lm, tmp_path):
    """Two real processes on one store: the second gets one line naming the first; the store stays whole."""
    out = tmp_path / "grid.jsonl"
    grid = ["--tasks", "passkey,niah_single", "--lengths", "512,1k,2k", "--depths", "3", "--samples", "12",
            "--max-batch-tokens", "600", "--device", "cpu"]
    cmd = [sys.executable, "-m", "lengthwise.cli", "eval", "--model", str(tiny_lm), "--output", str(out), *grid]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 2:  # the header and a first cell: it holds the lock
            break
        time.sleep(0.02)
    assert first.poll() is None, "the first run ended before a second could start: " + first.stderr.read().decode()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    still_running = first.poll() is None
    assert first.wait(timeout=600) == 0, first.stderr.read().decode()[-800:]
    assert still_running, "the first run ended while the second ran: the test proved nothing"
    assert second.returncode == 2, second.stderr
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and f"being written by process {first.pid}" in err[0], second.stderr
    lines = _lines(out)  # every line parses
    recs = lines[1:]
    assert "lengthwise_store" in lines[0] and all("id" in r for r in recs)
    assert len(recs) == len({r["id"] for r in recs}) == 2 * 3 * 3 * 12


def test_the_lock_is_held_only_while_cells_run(tiny_lm, tmp_path):
    out = tmp_path / "r.jsonl"
    a, b = ResultStore(out), ResultStore(out)
    a.open_for_append({"model": "m"})
    with pytest.raises(LengthwiseError, match=f"being written by process {os.getpid()}"):
        b.check({"model": "m"})
    with pytest.raises(LengthwiseError, match="being written by"):
        b.open_for_append({"model": "m"})
    a.close()
    b.open_for_append({"model": "m"})
    b.close()
    assert _lines(out)[0]["config"] == {"model": "m"} and len(_lines(out)) == 1
