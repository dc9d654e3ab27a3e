"""The `lengthwise` command line: one-line errors, input rules, output safety, happy paths.

Most tests drive the typer app in-process with CliRunner (stdout and stderr come back separately);
two run the installed console script to check real exit codes and the --debug traceback.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lengthwise
import lengthwise.cli as cli
from lengthwise import LengthwiseError
from lengthwise.models import load as L
from lengthwise.models.load import EMBEDDED, locate_embedded

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ROOT / "examples" / "texts.txt"
PROMPTS = ROOT / "examples" / "prompts.txt"

GGUF = locate_embedded(EMBEDDED["smollm2-135m"])
MINILM = locate_embedded(EMBEDDED["minilm-l6"])
# the embedded models are part of the setup: a missing one is a failure, never a skip
assert GGUF is not None and MINILM is not None, "the embedded models are not installed: run make setup"
needs_smollm2 = needs_minilm = pytest.mark.slow

runner = CliRunner()


def run(*args: str):
    return runner.invoke(cli.app, [str(a) for a in args])


def one_error(result, *needles: str, code: int = 2) -> str:
    """The run failed with exactly one stderr line, `error: ...`, containing every needle."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for n in needles:
        assert n in line, (n, line)
    assert result.stdout == ""
    return line


def lines_of(path: Path) -> list[dict]:
    return [json.loads(s) for s in path.read_text().splitlines()]


@pytest.fixture(autouse=True, scope="module")
def one_thread_and_cached_models():
    """Speed only, no change in what is checked.

    - One torch thread: on small shared VMs (2 vCPUs here) OpenMP's spin-waiting between two
      threads makes decoding 10-40x slower at random; one thread is steady.
    - lengthwise.load is memoized, so the CLI's lw.load(...) of a model already loaded by an
      earlier test is free (loading smollm2 dequantizes ~100 MB of GGUF: ~8 s here). Errors are
      never cached: a failing load raises every time.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    real, cache = lengthwise.load, {}

    def cached(name_or_path, device=None, dtype=None, backend="auto", positions=None, residual=None, kv=None,
               kv_dtype="auto"):
        key = (str(name_or_path), str(device), str(dtype), backend, str(positions), str(residual), str(kv), kv_dtype)
        if key not in cache:
            cache[key] = real(name_or_path, device=device, dtype=dtype, backend=backend, positions=positions,
                              residual=residual, kv=kv, kv_dtype=kv_dtype)
        return cache[key]

    mp = pytest.MonkeyPatch()
    mp.setattr(lengthwise, "load", cached)
    yield
    mp.undo()
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- broken models


def test_missing_model_path_is_one_line(tmp_path):
    r = run("embed", TEXTS, "--model", "/nonexistent")
    one_error(r, "no model", "/nonexistent")


def test_debug_lets_the_exception_through():
    r = run("--debug", "embed", TEXTS, "--model", "/nonexistent")
    assert r.exit_code != 0
    assert isinstance(r.exception, LengthwiseError)
    assert "no model" in str(r.exception)
    assert "error: " not in r.stderr


def _console_script() -> list[str]:
    exe = Path(sys.executable).parent / "lengthwise"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lengthwise.cli"]


def test_console_script_exit_codes_and_traceback():
    """A real process: exit 2 and one stderr line; with --debug, a traceback and exit 1."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*_console_script(), "embed", str(TEXTS), "--model", "/nonexistent"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith("error: no model"), p.stderr
    p = subprocess.run([*_console_script(), "--debug", "embed", str(TEXTS), "--model", "/nonexistent"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1
    assert "Traceback" in p.stderr and "LengthwiseError: no model" in p.stderr
    # typer's own usage errors keep their message and exit 2
    p = subprocess.run([*_console_script(), "embed", str(TEXTS), "--no-such-option"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "No such option" in p.stderr and "Traceback" not in p.stderr


def test_garbage_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    one_error(run("generate", PROMPTS, "--model", bad), "corrupted or truncated")


@needs_smollm2
def test_truncated_gguf(tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(GGUF, "rb") as f:
        cut.write_bytes(f.read(1 << 20))
    one_error(run("generate", PROMPTS, "--model", cut), "corrupted or truncated")


def test_truncated_safetensors(tmp_path):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=64)
    folder = tmp_path / "tiny-bert"
    BertModel(cfg).save_pretrained(folder)
    weights = folder / "model.safetensors"
    assert weights.exists() and (folder / "config.json").exists()
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    one_error(run("embed", TEXTS, "--model", folder), "corrupted or truncated")


def test_unsupported_architecture(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                                                    "n_embd": 64, "n_layer": 2, "n_head": 2}))
    one_error(run("generate", PROMPTS, "--model", folder), "unsupported architecture", "GPT2LMHeadModel")


# ---------------------------------------------------------------- input rules


def test_missing_and_empty_input(tmp_path):
    one_error(run("embed", tmp_path / "nope.txt"), "does not exist")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_error(run("embed", empty), "empty")


def test_a_table_is_not_read_as_lines_of_text(tmp_path):
    """A .csv read line by line would embed its header and its commas as texts: refused, with the fix."""
    for name, kind in (("rows.csv", "CSV table"), ("rows.TSV", "TSV table"), ("t.parquet", "Parquet table")):
        f = tmp_path / name
        f.write_text("text,label\nhello,1\n")
        for cmd in ("embed", "generate"):
            one_error(run(cmd, f), kind, "export its text column as .txt", ".jsonl")


def test_empty_line_is_named(tmp_path):
    f = tmp_path / "gap.txt"
    f.write_text("first\nsecond\n   \nfourth\n")
    one_error(run("embed", f), "line 3", "--skip-empty")


def test_bad_jsonl_lines_are_named(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"txt": "typo"}\n')
    one_error(run("embed", f), "line 3", '"text"')
    f.write_text('{"text": "fine"}\n{"text": oops}\n')
    one_error(run("embed", f), "line 2", "not valid JSON")


@needs_minilm
@pytest.mark.slow
def test_skip_empty_keeps_original_line_numbers(tmp_path):
    f = tmp_path / "gap.jsonl"
    f.write_text('{"text": "first"}\n\n{"text": "  "}\n{"text": "fourth"}\n')  # lines 2 and 3 are empty
    out = tmp_path / "e.jsonl"
    r = run("embed", f, "--skip-empty", "-o", out)
    assert r.exit_code == 0, r.output
    warnings = [s for s in r.stderr.splitlines() if s.startswith("warning:")]
    assert len(warnings) == 1 and "2 empty lines" in warnings[0], r.stderr
    rows = lines_of(out)
    assert [row["index"] for row in rows] == [0, 3]
    assert all(len(row["embedding"]) == 384 for row in rows)


@needs_minilm
@pytest.mark.slow
def test_embed_too_long_then_truncate(tmp_path):
    words = "the quick brown fox jumps over a lazy dog near riverbanks".split()
    f = tmp_path / "long.txt"
    f.write_text("a short one\n" + " ".join(words[i % len(words)] for i in range(2000)) + "\n")
    line = one_error(run("embed", f), "line 2", "tokens", "--truncate")
    assert "256" in line  # minilm-l6's max_seq_length
    out = tmp_path / "long.npy"
    r = run("embed", f, "--truncate", "-o", out)
    assert r.exit_code == 0, r.output
    e = np.load(out)
    assert e.shape == (2, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)


@needs_smollm2
@pytest.mark.slow
def test_generate_prompt_over_the_context(tmp_path):
    # Only the error path: with --truncate the 8k-token prefill takes minutes on a 2-core CPU.
    f = tmp_path / "long.txt"
    f.write_text("What is this?\n" + " ".join(["word"] * 9000) + "\n")
    line = one_error(run("generate", f, "--max-new-tokens", "1"), "line 2", "tokens", "--truncate")
    assert "8191" in line  # 8192-token context minus one new token


@needs_minilm
@pytest.mark.slow
def test_generate_with_an_encoder_is_refused():
    one_error(run("generate", PROMPTS, "--model", "minilm-l6"), "not a text generator")


@pytest.mark.parametrize("spec,needles", [
    ("warp", ("unknown position scheme 'warp'", "yarn")),
    ("yarn:factor=0", ("factor must be a finite number > 0",)),
    ("yarn:scale=2", ("cannot read option 'scale=2'", "factor")),
    ("self_extend:group=4,window=9000", ("window=9000", "8192-token trained context")),
])
def test_bad_positions_are_one_line(spec, needles):
    one_error(run("generate", PROMPTS, "--positions", spec), *needles)


@pytest.mark.slow
def test_positions_on_an_encoder_is_refused(tmp_path):
    one_error(run("embed", TEXTS, "--positions", "yarn:factor=4"), "learned absolute positions", "RoPE")


def test_eval_positions_errors(tmp_path):
    out = tmp_path / "r.jsonl"
    one_error(run("eval", "--engine", "hf", "--positions", "self_extend:group=4", "--output", out),
              "'self_extend' is not among them", "linear, dynamic_ntk and yarn", "--hf-rope")
    one_error(run("eval", "--positions", "nope:factor=2", "--output", out), "unknown position scheme")
    assert not out.exists()


def test_positions_reach_past_the_trained_context(tmp_path):
    """Past the 32-token trained context: the scheme's reach is the limit, and its error names it."""
    from conftest import tiny_hf_causal
    _, folder = tiny_hf_causal("llama", tmp_path, max_position_embeddings=32)
    with pytest.raises(LengthwiseError, match="over the 32 that the model was trained on"):
        lengthwise.load(folder, device="cpu").logits([[1] * 90])
    lm = lengthwise.load(folder, device="cpu", positions="self_extend:group=4,window=8")
    assert lm.context_length == (32 - 8) * 4 + 8
    with pytest.raises(LengthwiseError, match="--positions self_extend:group=4,window=8 reaches"):
        lm.logits([[1] * 200])
    assert len(lm.generate_ids([[1] * 90], max_new_tokens=4)[0]) == 4


# ---------------------------------------------------------------- output safety


def test_unwritable_output_fails_before_loading(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(lengthwise, "load", boom)
    one_error(run("embed", TEXTS, "-o", "/nonexistent_dir/out.npy"), "cannot write", "/nonexistent_dir")
    one_error(run("generate", PROMPTS, "-o", "/nonexistent_dir/out.jsonl"), "cannot write")
    one_error(run("embed", TEXTS, "-o", tmp_path), "cannot write", "directory")
    one_error(run("embed", TEXTS, "-o", tmp_path / "e.csv"), "cannot write", ".npy", ".jsonl")


def test_output_over_its_own_input_is_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(lengthwise, "load", lambda *a, **k: pytest.fail("loaded the model"))
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a"}\n')
    one_error(run("embed", src, "-o", src), "it is the input file")
    one_error(run("generate", src, "-o", tmp_path / "." / "in.jsonl"), "it is the input file")
    assert src.read_text() == '{"text": "a"}\n'


@pytest.mark.parametrize("args,needles", [
    (["--seed", str(10**24), "--temperature", "0.7"], ("seed must be an integer from 0",)),
    (["--temperature", "inf"], ("temperature must be a finite number",)),
    (["--top-p", "nan"], ("--top-p",)),
])
def test_bad_sampling_fails_before_loading(monkeypatch, args, needles):
    monkeypatch.setattr(lengthwise, "load", lambda *a, **k: pytest.fail("loaded the model"))
    one_error(run("generate", PROMPTS, *args), *needles)


def test_usage_errors_are_one_line_naming_the_help():
    one_error(run("eval", "-o", "x.jsonl", "--samples", "0"), "'--samples'", "eval --help)")
    one_error(run("report", "r.jsonl", "--threshold", "abc"), "'--threshold'")
    one_error(run("embed"), "Missing argument 'INPUT'")
    one_error(run("--nosuch"), "No such option: --nosuch")


@pytest.mark.parametrize("content,suffix,needles", [
    ("my notes\nfinal paragraph", ".jsonl", ("not an eval results store",)),
    ('{"id": "a", "score": 1}\n', ".txt", ("unknown output type .txt", ".jsonl")),
])
def test_eval_never_appends_to_a_file_that_is_not_its_store(tmp_path, monkeypatch, content, suffix, needles):
    monkeypatch.setattr(lengthwise, "load", lambda *a, **k: pytest.fail("loaded the model"))
    out = tmp_path / f"notes{suffix}"
    out.write_text(content)
    one_error(run("eval", "--lengths", "256", "--depths", "1", "--samples", "1", "-o", out), *needles)
    assert out.read_text() == content


def test_eval_with_no_task_or_an_unreadable_length(tmp_path):
    one_error(run("eval", "--tasks", ",", "-o", tmp_path / "r.jsonl"), "no task given")
    one_error(run("eval", "--lengths", "infk", "-o", tmp_path / "r.jsonl"), "cannot read length 'infk'")
    assert not (tmp_path / "r.jsonl").exists()


def test_report_outputs_are_checked_before_anything_is_written(tmp_path):
    store = tmp_path / "r.jsonl"
    store.write_text(json.dumps({"id": "a", "task": "passkey", "length": 1024, "depth": 0.0, "sample": 0,
                                 "method": "none", "backend": "lengthwise", "model": "m", "score": 1.0}) + "\n")
    (tmp_path / "md_dir").mkdir()
    one_error(run("report", store, "-o", tmp_path / "plots", "--markdown", tmp_path / "md_dir"), "it is a directory")
    assert not (tmp_path / "plots").exists()  # no plot was written before the failure
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    one_error(run("report", store, "-o", notes), "it is a file, not a directory")
    one_error(run("report", store, "-o", notes / "sub"), "is a file, not a directory")
    assert notes.read_text() == "keep me"


def test_a_model_dir_that_is_not_a_directory_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("LENGTHWISE_MODEL_DIR", str(tmp_path / "missing"))
    one_error(run("models"), "LENGTHWISE_MODEL_DIR=", "is not a directory")
    with pytest.raises(LengthwiseError, match="is not a directory"):
        L.resolve("minilm-l6")


def test_failed_run_keeps_earlier_result(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    f = tmp_path / "gap.txt"
    f.write_text("one\n\nthree\n")
    one_error(run("generate", f, "-o", out), "line 2")
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gap.txt", "out.jsonl"]


@needs_minilm
@pytest.mark.slow
def test_failure_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "e.npy"
    out.write_bytes(b"old")

    def half_then_fail(f, arr):
        f.write(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.np, "save", half_then_fail)
    r = run("embed", TEXTS, "-o", out)
    assert r.exit_code == 2 and "Traceback" not in r.output
    # the finished embedding bar may stay above the error: it did complete
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert len(errors) == 1 and "cannot write" in errors[0] and "No space left on device" in errors[0], r.stderr
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["e.npy"]  # no temp file left behind


# ---------------------------------------------------------------- happy paths


@needs_minilm
@pytest.mark.slow
def test_embed_npy_jsonl_and_stdout(tmp_path):
    n = len(TEXTS.read_text().splitlines())
    npy = tmp_path / "e.npy"
    r = run("embed", TEXTS, "-o", npy)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    e = np.load(npy)
    assert e.shape == (n, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)

    jl = tmp_path / "e.jsonl"
    assert run("embed", TEXTS, "-o", jl).exit_code == 0
    rows = lines_of(jl)
    assert [row["index"] for row in rows] == list(range(n))
    assert np.array_equal(np.array([row["embedding"] for row in rows], dtype=np.float32), e)

    r = run("embed", TEXTS)  # no -o: JSON lines on stdout, nothing else there
    assert r.exit_code == 0, r.output
    assert [json.loads(s) for s in r.stdout.splitlines()] == rows

    # --residual model: the bf16 stream HF runs; close to the float32 model's vectors, not equal to them
    b16 = tmp_path / "b.npy"
    assert run("embed", TEXTS, "--dtype", "bfloat16", "--residual", "model", "-o", b16).exit_code == 0
    cos = (np.load(b16) * e).sum(1)
    assert cos.min() > 0.999 and not np.array_equal(np.load(b16), e)
    r = run("embed", TEXTS, "--residual", "half", "-o", tmp_path / "x.npy")
    assert r.exit_code != 0 and "unknown residual 'half': choose one of float32, model" in r.output
    assert not (tmp_path / "x.npy").exists()


@needs_smollm2
@pytest.mark.slow
def test_generate_jsonl(tmp_path):
    prompts = PROMPTS.read_text().splitlines()
    out = tmp_path / "g.jsonl"
    r = run("generate", PROMPTS, "--chat", "--max-new-tokens", "8", "-o", out)
    assert r.exit_code == 0, r.output
    rows = lines_of(out)
    assert [row["index"] for row in rows] == list(range(len(prompts)))
    assert [row["prompt"] for row in rows] == prompts
    assert all(isinstance(row["completion"], str) and row["completion"].strip() for row in rows), rows
    assert "paris" in rows[0]["completion"].lower()  # "What is the capital of France?"


def test_models_lists_both(monkeypatch):
    from lengthwise.models import load
    monkeypatch.setenv("COLUMNS", "200")
    opened, real = [], load.open_gguf
    monkeypatch.setattr(load, "open_gguf", lambda p: opened.append(p) or real(p))
    r = run("models")
    assert r.exit_code == 0, r.output
    assert opened == [GGUF]  # metadata once: opening maps the file and touches its last tensor
    for name in EMBEDDED:
        assert name in r.stdout
    if GGUF is not None:
        assert "llama" in r.stdout and "8192" in r.stdout
    if MINILM is not None:
        assert "BertModel" in r.stdout and "256 (max 512)" in r.stdout


def test_help_is_there():
    r = run("--help")
    assert r.exit_code == 0
    assert "lengthwise generate examples/prompts.txt --chat -o runs/out.jsonl" in r.stdout
    for cmd in ("embed", "generate"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "--skip-empty" in r.stdout and "Input rules" in r.stdout


def test_help_paragraphs_reflow_but_examples_and_columns_stay():
    from lengthwise.cli import _reflow
    text = ("Intro that wraps\nhere (and here),\nAnd a new sentence.\n\n[bold]Output[/bold]\n  one line that\n"
            "  goes on\n  -o A.npy  an array\n  no -o     stdout\n\n[bold]Examples[/bold]\n  lengthwise a --x\n"
            "  lengthwise b\n")
    assert _reflow(text) == ("Intro that wraps here (and here), And a new sentence.\n\n[bold]Output[/bold]\n"
                             "  one line that goes on\n  -o A.npy  an array\n  no -o     stdout\n\n"
                             "[bold]Examples[/bold]\n  lengthwise a --x\n  lengthwise b\n")
