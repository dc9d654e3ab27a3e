"""The grid runner: resumable after a real kill, bad input refused, and passkey solved at 1k on CPU."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import lengthwise.cli as cli
from lengthwise import LengthwiseError
from lengthwise.evaluation import EvalConfig, ResultStore, make_runner, run
from lengthwise.evaluation.grid import parse_depths, parse_lengths
from conftest import tiny_smol_llama


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, smol_path):
    """A random 2-layer Llama that speaks SmolLM2's tokenizer: fast enough to run whole grids on CPU."""
    return tiny_smol_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", smol_path)


def _records(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # raises on any unreadable line
    assert "lengthwise_store" in lines[0]  # the store's header
    return lines[1:]


GRID = ["--tasks", "passkey,niah_single", "--lengths", "512,1k", "--depths", "3", "--samples", "3",
        "--max-batch-tokens", "1024", "--device", "cpu"]


def test_killed_run_resumes_without_duplicates_or_losses(tiny_lm, tmp_path):
    out = tmp_path / "runs" / "grid.jsonl"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "lengthwise.cli", "eval", "--model", str(tiny_lm), "--output", str(out), *GRID]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_text()
    n_before = before.count("\n")
    assert 5 <= n_before < 1 + 36  # killed mid-grid
    # a kill can land mid-line; simulate that worst case too
    with open(out, "a") as f:
        f.write('{"id": "half-writ')
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-1000:]
    recs = _records(out)  # every line parses: the partial one was cut
    ids = [x["id"] for x in recs]
    assert len(ids) == len(set(ids)), "a cell was written twice"
    assert len(ids) == 2 * 2 * 3 * 3, "a cell was lost"
    assert out.read_text().startswith(before)  # finished cells were kept as they were
    assert {(x["task"], x["length"], x["depth"], x["sample"]) for x in recs} == \
        {(t, n, d, s) for t in ("passkey", "niah_single") for n in (512, 1024) for d in (0.0, 50.0, 100.0) for s in range(3)}
    # a third run has nothing left to do
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "already" in r.stderr and out.read_text().count("\n") == 1 + 36  # header + cells


def test_records_carry_the_required_fields(tiny_lm, tmp_path):
    cfg = EvalConfig(model=str(tiny_lm), tasks=["passkey"], lengths=[300], depths=[50.0], samples=2, device="cpu")
    store = ResultStore(tmp_path / "r.jsonl")
    assert run(cfg, store, make_runner(cfg)) == 2
    for rec in _records(store.path):
        for key in ("task", "length", "depth", "sample", "method", "backend", "model", "score", "output",
                    "prompt_tokens", "prefill_s", "decode_s", "peak_mem_gib", "seed", "config"):
            assert key in rec
        assert 0 <= rec["score"] <= 1 and abs(rec["prompt_tokens"] - 300) <= 6
    assert run(cfg, store, make_runner(cfg)) == 0  # same config: nothing to do


def test_cells_at_the_trained_context_stay_inside_it_on_both_backends(tiny_lm, tmp_path):
    """The tiny model is trained to 4096 tokens: a 4096-token cell's prompt plus answer fit in 4096 (RULER's
    rule), built identically for lengthwise and hf, and keyed apart from a store built before that rule."""
    from lengthwise.evaluation.grid import cell_id, cells
    from lengthwise.tasks import get_task
    kw = dict(model=str(tiny_lm), tasks=["passkey", "niah_multikey"], lengths=[2048, 4096], depths=[0.0, 100.0],
              samples=2, device="cpu")
    built = {}
    for backend in ("lengthwise", "hf"):
        cfg = EvalConfig(**kw, backend=backend)
        store = ResultStore(tmp_path / f"{backend}.jsonl")
        assert run(cfg, store, make_runner(cfg)) == 16
        for r in _records(store.path):
            built.setdefault((r["task"], r["length"], r["depth"], r["sample"]), set()).add(r["prompt_tokens"])
            budget = get_task(r["task"]).max_new_tokens
            if r["length"] == 4096:
                assert 0.98 * 4096 <= r["prompt_tokens"] <= 4096 - budget, r
            assert r["id"] == cell_id(cfg, r["task"], r["length"], r["depth"], r["sample"], 4096)
            moved = r["id"] != cell_id(cfg, r["task"], r["length"], r["depth"], r["sample"])
            assert moved == (r["length"] == 4096)
        assert {c.id for c in cells(cfg, 4096)} == {r["id"] for r in _records(store.path)}
    assert all(len(v) == 1 for v in built.values())  # identical prompts on both backends


@pytest.mark.slow
def test_passkey_at_1k_on_cpu(tmp_path):
    """The embedded SmolLM2-135M finds the pass key at its native 1k, every depth (CPU, few samples)."""
    cfg = EvalConfig(model="smollm2-135m", tasks=["passkey"], lengths=[1024], depths=parse_depths("3"), samples=2,
                     device="cpu")
    store = ResultStore(tmp_path / "passkey.jsonl")
    run(cfg, store, make_runner(cfg))
    recs = _records(store.path)
    assert len(recs) == 6
    assert sum(r["score"] for r in recs) / len(recs) >= 0.95, [(r["depth"], r["output"], r["answers"]) for r in recs]


def test_parsing_lengths_and_depths():
    assert parse_lengths("1k,2k,512") == [1024, 2048, 512]
    assert parse_depths("5") == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert parse_depths("10,50,90") == [10.0, 50.0, 90.0]
    assert parse_depths("0%") == [0.0] and parse_depths("1") == [50.0]
    with pytest.raises(LengthwiseError, match=r"count of zero depths.*0% \(depth 0 alone\)"):
        parse_depths("0")
    with pytest.raises(LengthwiseError, match="cannot read length"):
        parse_lengths("1q")
    with pytest.raises(LengthwiseError, match="has an empty item"):
        parse_lengths("1k,,")


@pytest.mark.parametrize("args,needle", [
    (["--tasks", "passkey,nosuchtask"], "nosuchtask"),
    (["--depths", "10,150"], "outside 0-100"),
    (["--lengths", "64k"], "beyond the 4096-token context"),
])
def test_bad_eval_input_is_one_line(tiny_lm, tmp_path, args, needle):
    r = CliRunner().invoke(cli.app, ["eval", "--model", str(tiny_lm), "--output", str(tmp_path / "x.jsonl"),
                                     "--device", "cpu", "--samples", "1", *args])
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr  # not even a blank line
    assert "Traceback" not in r.output


def test_cpu_estimate_refuses_absurd_grids(tiny_lm, tmp_path):
    cfg = EvalConfig(model="smollm2-135m", tasks=["passkey"], lengths=[8192], depths=parse_depths("11"), samples=50,
                     device="cpu")
    with pytest.raises(LengthwiseError, match="would take about .* pass --yes"):
        run(cfg, ResultStore(tmp_path / "big.jsonl"), make_runner(cfg))
    assert not (tmp_path / "big.jsonl").exists()  # refused before anything was written


def test_beyond_context_runs_only_when_allowed(tiny_lm, tmp_path):
    out = tmp_path / "beyond.jsonl"
    r = CliRunner().invoke(cli.app, ["eval", "--model", str(tiny_lm), "--output", str(out), "--device", "cpu",
                                     "--tasks", "passkey", "--lengths", "4500", "--depths", "1", "--samples", "1",
                                     "--allow-beyond-context"])
    assert r.exit_code == 0, r.output
    assert "beyond the 4096-token context" in r.stderr and "warning" in r.stderr
    assert len(_records(out)) == 1


def test_report_on_a_corrupted_store(tiny_lm, tmp_path):
    cfg = EvalConfig(model=str(tiny_lm), tasks=["passkey"], lengths=[300, 600], depths=[0.0, 100.0], samples=1, device="cpu")
    store = ResultStore(tmp_path / "r.jsonl")
    run(cfg, store, make_runner(cfg))
    lines = store.path.read_text().splitlines()
    lines.insert(2, '{"id": "broken", "task": ')
    store.path.write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(cli.app, ["report", str(store.path), "--output", str(tmp_path / "plots"),
                                     "--markdown", str(tmp_path / "summary.md")])
    assert r.exit_code == 2, r.output
    err = [x for x in r.stderr.strip().splitlines() if x.startswith("error")]
    assert len(err) == 1 and "line 3" in err[0] and "4 records" in err[0]
    assert "passkey" in r.stdout  # the rest was reported
    assert (tmp_path / "summary.md").exists() and list((tmp_path / "plots").glob("*.png"))


def test_report_threshold_sets_the_effective_length_and_a_bad_one_writes_nothing(tmp_path):
    recs = [dict(id=f"c{n}{i}", task="passkey", length=n, depth=0.0, sample=i, method="none", backend="lengthwise",
                 model="m", score=float(i < k)) for n, k in ((1024, 20), (2048, 19), (4096, 18)) for i in range(20)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    for pct, want in (("95", "2k"), ("90", "4k"), ("100", "1k")):  # 100%, 95%, 90% at 1k, 2k, 4k
        r = CliRunner().invoke(cli.app, ["report", str(path), "--output", str(tmp_path / "p"), "--threshold", pct])
        assert r.exit_code == 0, r.output
        assert r.stdout.splitlines()[-1].split()[-1] == want and f"effective (≥{pct}%)" in r.stdout
    r = CliRunner().invoke(cli.app, ["report", str(path), "--output", str(tmp_path / "q"), "--threshold", "120",
                                     "--markdown", str(tmp_path / "s.md")])
    assert r.exit_code == 2 and r.stdout == ""
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "--threshold 120 is outside 0-100" in err[0]
    assert not (tmp_path / "q").exists() and not (tmp_path / "s.md").exists()


def test_done_ids_follow_the_file_and_parse_it_only_when_it_changed(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    a, b = ResultStore(path), ResultStore(path)  # b: another process appending to the same store
    assert a.done_ids() == set()
    a.append({"id": "x", "score": 1.0})
    parses = []
    real = ResultStore.records
    monkeypatch.setattr(ResultStore, "records", lambda self: parses.append(1) or real(self))
    assert a.done_ids() == {"x"} and len(parses) == 1
    for _ in range(5):  # unchanged file: no new parse
        assert a.done_ids() == {"x"}
    assert len(parses) == 1
    b.append({"id": "y", "score": 0.0})
    assert a.done_ids() == {"x", "y"} and len(parses) == 2
    a.done_ids().add("z")  # callers get a copy: the cache cannot be changed from outside
    assert a.done_ids() == {"x", "y"}
    with open(path, "a") as f:
        f.write('{"id": "partial')  # a killed writer's half line is not a finished cell
    assert a.done_ids() == {"x", "y"}


def test_a_gated_remaps_two_sides_are_timed_apart(tiny_lm, monkeypatch):
    """A batch with prompts on both sides of a length gate runs as two generations; each one's time to its first
    token is prefill, so the second side's prefill is not counted as decoding (a fake clock: 1 s to the first
    token, 10 s more to the last)."""
    import lengthwise.generate as G
    from lengthwise.tasks import get_task
    clock = [0.0]
    monkeypatch.setattr(G.time, "perf_counter", lambda: clock[0])
    calls = []
    runner = make_runner(EvalConfig(model=str(tiny_lm), tasks=["passkey"], lengths=[300], depths=[50.0], device="cpu",
                                    method="self_extend:group=4,window=256,beyond=true"))
    V, eos = runner.lm.config.vocab_size, next(iter(runner.lm.eos_ids))

    def fake_prefill(model, prompts, cache, backend, policy, chunk):  # 1 s to the first token (id 0)
        calls.append([len(p) for p in prompts])
        clock[0] += 1.0
        return torch.zeros(len(prompts), V)

    def fake_decode(model, cache, tokens, seqs, backend, policy, evict=False):  # 10 s to the second, EOS
        clock[0] += 10.0
        return torch.zeros(len(seqs), V).index_fill_(1, torch.tensor([eos]), 1.0)

    monkeypatch.setattr(G, "prefill", fake_prefill)
    monkeypatch.setattr(G, "decode_step", fake_decode)
    task = get_task("passkey")
    samples = [task.make(runner.render, n, 50.0, 0) for n in (600, 4400, 700)]  # trained to 4096: both sides
    outputs, timing = runner.generate(samples)
    assert len(calls) == 2 and len(outputs) == 3
    assert timing["prefill_s"] == 2.0 and timing["decode_s"] == 20.0


def test_a_resumed_store_says_its_damage_and_report_counts_a_cell_once_across_stores(tiny_lm, tmp_path):
    """eval resumes around a damaged middle line and says so; the default kernel named (cpu_flash here) is the same
    run as auto; report of two stores holding the same cells counts each cell once, and says so."""
    args = ["eval", "--model", str(tiny_lm), "--device", "cpu", "--tasks", "passkey", "--lengths", "300",
            "--depths", "1", "--samples", "2"]
    out = tmp_path / "r.jsonl"
    assert CliRunner().invoke(cli.app, [*args, "-o", str(out)]).exit_code == 0
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2] + ["this is garbage"] + lines[2:]) + "\n")
    before = out.read_bytes()
    r = CliRunner().invoke(cli.app, [*args, "--backend", "cpu_flash", "-o", str(out)])
    assert r.exit_code == 0 and "already in" in r.stderr, r.output
    assert "line 3: not valid JSON" in r.stderr and "warning" in r.stderr
    assert out.read_bytes() == before  # said, not changed
    copy = tmp_path / "copy.jsonl"
    copy.write_text("\n".join(lines) + "\n")
    from lengthwise.report import report
    one = report([copy], tmp_path / "p1")
    two = report([copy, copy], tmp_path / "p2")
    assert [row["n"] for row in two["table"]] == [row["n"] for row in one["table"]] == [2]
    assert any("repeat a cell of an earlier store" in w for w in two["warnings"])


def test_a_distractor_task_keeps_its_distractors_so_its_score_can_be_checked(tiny_lm, tmp_path):
    """confusing_facts scores 0 when a distractor's value appears: its records carry the distractors, and the
    score follows from output, answers and distractors alone."""
    from lengthwise.tasks.scoring import contains
    cfg = EvalConfig(model=str(tiny_lm), tasks=["confusing_facts"], lengths=[600], depths=[50.0], samples=2,
                     device="cpu")
    run(cfg, ResultStore(tmp_path / "cf.jsonl"), make_runner(cfg))
    for r in _records(tmp_path / "cf.jsonl"):
        assert len(r["distractors"]) == 4 and r["answers"][0] not in r["distractors"]
        right = contains(r["output"], r["answers"][0]) and not any(contains(r["output"], v) for v in r["distractors"])
        assert r["score"] == float(right)


def test_an_interrupted_eval_says_what_it_kept_and_how_to_resume(tiny_lm, tmp_path, monkeypatch):
    """Ctrl-C mid-grid: one line naming the cells the store holds and that the same command resumes; exit 130."""
    import lengthwise.evaluation as E
    real = E.run

    def interrupted(cfg, store, runner, progress=None, **kw):
        cfg.samples = 1  # the first sample's cells run, then the user presses Ctrl-C
        real(cfg, store, runner, progress=progress, **kw)
        raise KeyboardInterrupt
    monkeypatch.setattr(E, "run", interrupted)
    out = tmp_path / "i.jsonl"
    r = CliRunner().invoke(cli.app, ["eval", "--model", str(tiny_lm), "--device", "cpu", "--tasks", "passkey",
                                     "--lengths", "300", "--depths", "1", "--samples", "2", "-o", str(out)])
    assert r.exit_code == 130, r.output
    assert r.stderr.strip().splitlines()[-1] == (f"error: interrupted: {out} holds 1 of this grid's 2 cells; the same "
                                                 "command resumes from there")
    assert len(_records(out)) == 1
