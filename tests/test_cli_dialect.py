"""The CLI's one dialect (issue 21 item 7): --version, - as stdin and -o - as stdout, generate's sampling and
stop flags against the library's own results, bad values as one line before the model loads, and the old
spellings working with one deprecation line."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import lengthwise as lw
import lengthwise.cli as cli
from conftest import tiny_smol_llama

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(cli.app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def model(tmp_path_factory, smol_path):
    return tiny_smol_llama(tmp_path_factory.mktemp("cli") / "m", smol_path)


@pytest.fixture
def prompts(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Once upon a time\nThe weather today\n")
    return f


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"lengthwise {lw.__version__}"


def test_stdin_and_stdout_dash(model, prompts, tmp_path):
    a = run("generate", prompts, "--model", model, "--max-new-tokens", "5")
    b = run("generate", "-", "--model", model, "--max-new-tokens", "5", "-o", "-", "--max-batch-tokens", "12",
            input=prompts.read_text())  # one prompt per group: the same lines, in input order
    assert a.exit_code == b.exit_code == 0, b.stderr
    assert a.stdout == b.stdout and len(a.stdout.splitlines()) == 2
    jl = "".join(json.dumps({"prompt": p}) + "\n" for p in prompts.read_text().splitlines())
    c = run("generate", "-", "--model", model, "--max-new-tokens", "5", input=jl)  # JSON lines, sniffed
    assert c.exit_code == 0 and c.stdout == a.stdout
    bad = run("generate", "-", "--model", model, input="ok\n\n")
    assert bad.exit_code == 2 and "line 2 of <stdin> is empty" in bad.stderr


def test_generate_flags_give_the_librarys_results(model, prompts):
    args = dict(max_new_tokens=8, temperature=0.9, top_k=20, min_p=0.05, repetition_penalty=1.2, n=2, seed=3,
                logprobs=2, stop=[" the"], system="Be brief.")
    r = run("generate", prompts, "--model", model, "--max-new-tokens", "8", "--temperature", "0.9", "--top-k", "20",
            "--min-p", "0.05", "--repetition-penalty", "1.2", "--n", "2", "--seed", "3", "--logprobs", "2",
            "--stop", " the", "--system", "Be brief.")
    assert r.exit_code == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    lm = lw.load(model, device="cpu")
    want = lm.complete(prompts.read_text().splitlines(), **args)
    assert [(x["index"], x["sample"]) for x in lines] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for x, c in zip(lines, want):
        assert x["completion"] == c.text and x["finish_reason"] == c.finish_reason
        assert [t["token_id"] for t in x["logprobs"]] == c.token_ids
        assert all(len(t["top"]) == 2 for t in x["logprobs"])
        assert x["logprobs"][0]["token"] == lm.tokenizer.decode([c.token_ids[0]])


def test_messages_lines(model, tmp_path):
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour."}]
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps({"messages": convo}) + "\n" + json.dumps({"prompt": "plain"}) + "\n")
    r = run("generate", f, "--model", model, "--max-new-tokens", "4", "--chat")
    assert r.exit_code == 0, r.stderr
    lm = lw.load(model, device="cpu")
    assert json.loads(r.stdout.splitlines()[0])["completion"] == lm.generate([convo], max_new_tokens=4)[0]
    f.write_text(json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    r = run("generate", f, "--model", "no/such")
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        f"error: message 0 of line 1 of {f} has role 'robot': roles are system, user, assistant, tool"]


@pytest.mark.parametrize("args,needle", [
    (["--n", "0"], "--n must be an integer of at least 1"),
    (["--top-k", "-1"], "--top-k must be an integer >= 0"),
    (["--min-p", "1.5"], "--min-p must be a number in [0, 1]"),
    (["--min-p", "-0.1"], "--min-p must be a number in [0, 1]"),
    (["--stop", ""], "--stop string 0 is empty"),
    (["--stop", "ok", "--stop", ""], "--stop string 1 is empty"),
    (["--logprobs", "-1"], "--logprobs must be an integer from 0 to 100"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be a finite number > 0"),
])
def test_bad_generate_values_are_one_line_before_loading(prompts, args, needle):
    """--model no/such: had a check come after loading, the error would be about the missing model."""
    r = run("generate", prompts, "--model", "no/such", *args)
    err = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], r.stderr


@pytest.mark.parametrize("old,new", [
    (["eval", "--out", "x.jsonl"], ["eval", "--output", "x.jsonl"]),
    (["eval", "--out=x.jsonl", "--backend", "hf"], ["eval", "--output=x.jsonl", "--engine", "hf"]),
    (["eval", "--backend=lengthwise"], ["eval", "--engine=lengthwise"]),
    (["eval", "--backend", "reference"], ["eval", "--backend", "reference"]),  # the kernel: today's meaning
    (["report", "r.jsonl", "--out-dir", "plots"], ["report", "r.jsonl", "--output", "plots"]),
    (["--debug", "embed", "t.txt", "--max-tokens-per-forward", "8"], ["--debug", "embed", "t.txt", "--max-batch-tokens", "8"]),
    (["generate", "p.txt", "--out", "x"], ["generate", "p.txt", "--out", "x"]),  # never a generate flag
])
def test_old_spellings_are_rewritten(old, new, capsys):
    assert cli._modernize(old) == new
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == (old != new) + (old[:2] == ["eval", "--out=x.jsonl"])
    assert all(e.startswith("warning: ") and "deprecated" in e and "next release" in e for e in err)


def test_old_spellings_still_run(model, tmp_path, prompts):
    store = tmp_path / "x.jsonl"
    r = run("eval", "--model", model, "--out", store, "--tasks", "passkey", "--lengths", "256", "--depths", "50",
            "--samples", "1", "--backend", "lengthwise", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    warn = [x for x in r.stderr.splitlines() if x.startswith("warning: ")]
    assert len(warn) == 2 and "use --output" in warn[0] and "use --engine" in warn[1]
    assert len(store.read_text().splitlines()) >= 1
    r = run("report", tmp_path / "none.jsonl", "--out-dir", tmp_path / "plots")  # parsed as --output, then fails
    err = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(err) == 2 and "report --out-dir is deprecated" in err[0] and "none.jsonl" in err[1]


def test_eval_backend_is_the_kernel(model, tmp_path):
    from lengthwise.evaluation import EvalConfig
    from lengthwise.evaluation.grid import store_config
    base = dict(model=str(model), tasks=["passkey"], lengths=[256], depths=[50.0], samples=1, device="cpu")
    assert "kernel" not in store_config(EvalConfig(**base))  # the default keeps existing stores' cell keys
    assert store_config(EvalConfig(**base, kernel="reference"))["kernel"] == "reference"
    r = run("eval", "--model", model, "-o", tmp_path / "k.jsonl", "--engine", "hf", "--backend", "reference",
            "--tasks", "passkey", "--lengths", "256")
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        "error: --backend reference picks the lengthwise engine's attention kernel: drop it with --engine hf"]
    r = run("eval", "--model", model, "-o", tmp_path / "r.jsonl", "--backend", "reference", "--tasks", "passkey",
            "--lengths", "256", "--depths", "50", "--samples", "1", "--device", "cpu")
    assert r.exit_code == 0 and "warning" not in r.stderr, r.stderr
    assert json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])  # a store with its cells


def test_debug_after_the_command_is_the_roots_option():
    assert cli._modernize(["embed", "t.txt", "--debug", "-o", "x.npy"]) == ["--debug", "embed", "t.txt", "-o", "x.npy"]
    assert cli._modernize(["--debug", "embed", "t.txt"]) == ["--debug", "embed", "t.txt"]
    r = run("embed", "no-such-file.txt", "--debug")  # the traceback's exception, not "No such option: --debug"
    assert isinstance(r.exception, lw.LengthwiseError) and "does not exist" in str(r.exception)


def test_report_reads_a_store_from_stdin_and_eval_never_writes_to_stdout(tmp_path):
    from pathlib import Path
    store = Path(__file__).parents[1] / "benchmarks/results/eval/native_chat_hf.jsonl"
    r = run("report", "-", "-o", tmp_path / "rep", input=store.read_text())
    assert r.exit_code == 0, r.output
    assert r.stdout == run("report", store, "-o", tmp_path / "rep2").stdout  # the same table as from the file
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == sorted(p.name for p in (tmp_path / "rep2").iterdir())
    r = run("report", "-", input=store.read_text())
    assert r.exit_code == 2 and "needs -o DIR" in r.stderr
    r = run("eval", "--tasks", "passkey", "--lengths", "1k", "-o", "-")
    assert r.exit_code == 2 and "not standard output: give -o FILE.jsonl" in r.stderr


def test_a_missing_output_folder_is_named_with_its_fix(prompts, tmp_path):
    out = tmp_path / "new" / "out.jsonl"
    r = run("generate", prompts, "-o", out)
    assert r.exit_code == 2 and f"directory {out.parent} does not exist: create it (mkdir -p {out.parent})" in r.stderr
    assert not out.parent.exists()
