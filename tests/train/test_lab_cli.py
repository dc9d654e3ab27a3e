"""lengthwise train, lab and report: a checkpoint lw.load scores the same, one-line errors, the smoke preset."""
import json

import pytest
import torch
from typer.testing import CliRunner

import lengthwise as lw
import lengthwise.cli as cli
from lengthwise.tasks.algorithmic import get_task
from lengthwise.train.loop import TrainConfig, backend_for, build_model, forward_logits, score_length, train

runner = CliRunner()


def run(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def one_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("pe", ["t5", "abacus:base=fire"])
def test_a_trained_checkpoint_reloads_and_scores_the_same(tmp_path, pe):
    out = tmp_path / "run"
    r = run("train", "--task", "addition:reverse=true", "--pe", pe, "--steps", "6", "--dim", "32",
            "--tokens-per-step", "256", "--train-max-len", "5", "-o", out)
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} >= {"model", "train_config.json", "metrics.jsonl"}
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 6 and all(m["loss"] > 0 and m["tokens_per_s"] > 0 for m in metrics)
    cfg = TrainConfig(**json.loads((out / "train_config.json").read_text()))
    lm = lw.load(out / "model", device="cpu", dtype="float32")
    assert lm.backend.kernel == "reference" and lm.module.cfg.pe == cfg.pe
    # the same weights: rebuild the model from the run's config and the reloaded state
    model = build_model(cfg).eval()
    model.load_state_dict(lm.module.state_dict())
    task = get_task(cfg.task)
    for n in (3, 10):  # inside and past the training length
        ids = [task.sample(n, i).encode().ids for i in range(6)]
        for a, b in zip(lm.logits(ids), forward_logits(model, backend_for(model, torch.device("cpu")))(ids)):
            assert torch.equal(a, b)
        assert score_length(lm.logits, task, n, 6, 0) == score_length(forward_logits(model, lm.backend), task, n, 6, 0)
    # the same config again: the model is there, nothing is trained
    again = run("train", "--task", "addition:reverse=true", "--pe", pe, "--steps", "6", "--dim", "32",
                "--tokens-per-step", "256", "--train-max-len", "5", "-o", out)
    assert again.exit_code == 0 and "already holds" in again.stderr


def test_bias_models_refuse_a_kv_cache(tmp_path):
    train(TrainConfig(task="copy", pe="alibi", steps=1, dim=32), tmp_path / "r")
    lm = lw.load(tmp_path / "r" / "model", device="cpu", dtype="float32")
    with pytest.raises(lw.LengthwiseError, match="not against a KV cache"):
        lm.generate_ids([[0, 5, 6, 1]], max_new_tokens=2)
    with pytest.raises(lw.LengthwiseError, match="reference kernel"):
        lw.load(tmp_path / "r" / "model", device="cpu", dtype="float32", backend="cpu_flash")


def test_bad_input_is_one_line(tmp_path):
    one_error(run("train", "--task", "kopy", "-o", tmp_path / "a"), "unknown algorithmic task 'kopy'")
    one_error(run("train", "--pe", "rope2", "-o", tmp_path / "a"), "unknown position encoding 'rope2'")
    one_error(run("lab", "--tasks", "copy:unique=true", "--pes", "nope", "--lengths", "1-30", "-o", tmp_path / "b"),
              "cannot make length 27")
    one_error(run("train", "--budget", "0", "-o", tmp_path / "a"), "wall-clock budget must be a positive")
    one_error(run("lab", "--preset", "smoke", "--budget", "-5", "-o", tmp_path / "b"), "wall-clock budget")
    assert run("train", "--steps", "1", "--dim", "32", "-o", tmp_path / "c").exit_code == 0
    one_error(run("train", "--steps", "2", "--dim", "32", "-o", tmp_path / "c"), "holds another run's config",
              "steps is 1 there, 2 here")
    one_error(run("lab", "--preset", "fast", "-o", tmp_path / "d"), "unknown preset 'fast'")
    one_error(run("lab", "--preset", "smoke", "--seeds", "2-0", "-o", tmp_path / "d"), "seeds range '2-0' runs backwards: write 0-2")
    # a step smaller than one sample of the longest training length: copy at 8 is 2 x 8 letters + 3 marks = 19 tokens
    one_error(run("train", "--tokens-per-step", "5", "-o", tmp_path / "a"),
              "tokens_per_step 5 is below one copy sample of length 8 (19 tokens)", "--tokens-per-step >= 19")
    lab = ("lab", "--tasks", "copy", "--pes", "nope", "--train-max-len", "2", "--samples", "2", "--dim", "32")
    assert run(*lab, "--steps", "1", "-o", tmp_path / "e").exit_code == 0
    one_error(run(*lab, "--steps", "2", "-o", tmp_path / "e"), "holds another lab's results")
    one_error(run(*lab, "--steps", "1", "--precision", "bf16", "-o", tmp_path / "e"), "holds another lab's results",
              "precision")
    assert run(*lab, "--steps", "1", "--precision", "fp32", "-o", tmp_path / "e").exit_code == 0  # the same run
    one_error(run("train", "--pe", "alibi", "--attention", "varlen", "-o", tmp_path / "g"), "only the reference kernel")
    assert not (tmp_path / "b").exists() and not (tmp_path / "a").exists()  # refused before anything is written


def test_bf16_training_runs_and_keys_its_folder(tmp_path):
    """--precision bf16 on the CPU (autocast, torch's flash kernel): the mixed-precision path end to end."""
    out = tmp_path / "r"
    r = run("train", "--pe", "rope", "--steps", "2", "--dim", "32", "--tokens-per-step", "128", "--eval-every", "2",
            "--precision", "bf16", "--attention", "cpu_flash", "-o", out)
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "train_config.json").read_text())
    assert (cfg["precision"], cfg["attention"]) == ("bf16", "cpu_flash")
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["loss"] > 0 for m in metrics) and 0 <= metrics[-1]["accuracy"] <= 1
    train(TrainConfig(task="copy", pe="rope", steps=1, dim=32), tmp_path / "plain")  # the CPU default: keyed as before
    assert "precision" not in json.loads((tmp_path / "plain" / "train_config.json").read_text())


def test_smoke_preset_resumes_and_reports(tmp_path):
    out = tmp_path / "lab"
    r = run("lab", "--preset", "smoke", "-o", out)
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()[1:]]
    assert len(recs) == 3 * 16
    assert {r["pe"] for r in recs} == {"nope", "rope", "alibi"} and {r["length"] for r in recs} == set(range(1, 17))
    assert all(r["train_max_len"] == 8 and r["n"] == 16 and 0 <= r["accuracy"] <= 1 and r["seed"] == 0 for r in recs)
    assert max(r["accuracy"] for r in recs if r["length"] == 1) > 0  # it learned something
    again = run("lab", "--preset", "smoke", "-o", out)
    assert again.exit_code == 0 and "wrote 0 records" in again.stderr
    rep = run("report", out / "results.jsonl", "-o", tmp_path / "rep", "--markdown", tmp_path / "lab.md")
    assert rep.exit_code == 0, rep.output
    assert "MRR" in rep.stdout and "nope" in rep.stdout
    assert (tmp_path / "rep" / "lab_copy.png").stat().st_size > 10_000
    assert "lab_copy" in (tmp_path / "lab.md").read_text()
    from pathlib import Path
    ev = Path(__file__).parents[2] / "benchmarks/results/eval/native_chat_hf.jsonl"
    one_error(run("report", ev, out / "results.jsonl"), "is a lab store (lengthwise lab)", "report them apart")


@pytest.mark.parametrize("pe", ["nope", "learned", "rope"])
def test_cache_free_schemes_generate_as_they_score(tmp_path, pe):
    """Schemes that run against a KV cache generate what greedy decoding by full forwards gives."""
    train(TrainConfig(task="copy", pe=pe, steps=2, dim=32), tmp_path / "r")
    lm = lw.load(tmp_path / "r" / "model", device="cpu", dtype="float32")
    prompt = get_task("copy").sample(5, 0).encode().ids[:7]
    got = lm.generate_ids([prompt], max_new_tokens=4)[0]
    ids = list(prompt)
    for _ in range(len(got)):
        ids.append(int(lm.logits([ids])[0][-1].argmax()))
    assert got == ids[len(prompt):]
    from lengthwise.tasks.algorithmic.vocab import EOS, ID
    assert lm.eos_ids == {ID[EOS]} and ID[EOS] not in got[:-1]  # the checkpoint says </s> ends an answer


def test_train_and_lab_keep_out_of_each_others_folders_and_a_restart_is_said(tmp_path):
    t = tmp_path / "t"
    r = run("train", "--task", "copy", "--pe", "nope", "--steps", "2", "--dim", "32", "-o", t)
    assert r.exit_code == 0, r.output
    lab = run("lab", "--preset", "smoke", "--steps", "2", "-o", t)
    assert lab.exit_code == 2 and "is a `lengthwise train` run" in lab.output and not (t / "results.jsonl").exists()
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "results.jsonl").write_text("")
    tr = run("train", "--task", "copy", "--pe", "nope", "--steps", "2", "--dim", "32", "-o", tmp_path / "lab")
    assert tr.exit_code == 2 and "is a lab's folder" in tr.output and not (tmp_path / "lab" / "model").exists()
    import shutil
    shutil.rmtree(t / "model")  # as if killed before the model was saved
    again = run("train", "--task", "copy", "--pe", "nope", "--steps", "2", "--dim", "32", "-o", t)
    assert again.exit_code == 0 and "starts again from step 1" in again.stderr


def test_a_resumed_lab_records_its_models_training_and_report_keeps_labs_apart(tmp_path):
    """A lab that reloads a trained model (killed before its records, or given new lengths) records the same
    steps, training seconds and final loss as the run that trained it (from its metrics.jsonl); repeated or empty
    test lengths are refused; report ranks only on lengths past training, refuses labs of other settings, checks
    --threshold, and exits 2 on a damaged lab store after reporting it."""
    lab = ("lab", "--tasks", "copy", "--pes", "nope,rope", "--train-max-len", "3", "--samples", "2", "--dim", "32",
           "--steps", "3", "--tokens-per-step", "64")
    out = tmp_path / "lab"
    assert run(*lab, "--lengths", "1-4", "-o", out).exit_code == 0
    first = {(r["pe"], r["length"]): r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines()[1:])}
    assert all(r["steps"] == 3 and r["train_s"] > 0 and r["final_loss"] > 0 for r in first.values())
    r = run(*lab, "--lengths", "1-6", "-o", out)  # two more lengths: the models reload, nothing trains
    assert r.exit_code == 0 and "wrote 4 records" in r.stderr, r.output
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()[1:]]
    for rec in recs[len(first):]:
        old = first[(rec["pe"], 1)]
        assert (rec["steps"], rec["train_s"]) == (old["steps"], old["train_s"])
        assert rec["final_loss"] == pytest.approx(old["final_loss"], rel=1e-12)
    one_error(run(*lab, "--lengths", "1,2,2,3", "-o", tmp_path / "x"), "test length 2 is given twice")
    one_error(run(*lab, "--lengths", "1,,3", "-o", tmp_path / "x"), "has an empty item")
    # only lengths within training: nothing to rank on, said so, no MRR
    inside = tmp_path / "inside"
    assert run(*lab, "--lengths", "1-3", "-o", inside).exit_code == 0
    rep = run("report", inside / "results.jsonl", "-o", tmp_path / "rep1")
    assert rep.exit_code == 0, rep.output
    assert "no tested length is past the training length on copy" in rep.stdout and "#1" not in rep.stdout
    # a lab of other settings is not merged into this one
    other = tmp_path / "other"
    assert run(*lab[:-2], "--steps", "2", "--lengths", "1-4", "-o", other).exit_code == 0
    one_error(run("report", out / "results.jsonl", other / "results.jsonl", "-o", tmp_path / "rep2"),
              "are labs with other settings", "report them apart")
    one_error(run("report", out / "results.jsonl", "--threshold", "200", "-o", tmp_path / "rep3"), "outside 0-100")
    one_error(run("report", out, "-o", tmp_path / "rep4"), f"give its store, {out / 'results.jsonl'}")
    torn = tmp_path / "torn.jsonl"
    torn.write_text((out / "results.jsonl").read_text() + '{"id": "cut')
    rep = run("report", torn, "-o", tmp_path / "rep5")
    assert rep.exit_code == 2 and "MRR" in rep.stdout and "unreadable line" in rep.stderr, rep.output
