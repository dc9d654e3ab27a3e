"""The lm-evaluation-harness model `lengthwise` against the harness's own `hf` model on one checkpoint (issue 21,
item 4): float32 on CPU, offline, on the local toy tasks in lm_eval_tasks/ (YAMLs over a JSON lines file)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager

import lengthwise as lw
import lengthwise.integrations.lm_eval as integration
from conftest import tiny_smol_llama

TASKS = Path(__file__).parent / "lm_eval_tasks"
NAMES = ["lw_toy_choice", "lw_toy_rolling", "lw_toy_generate"]
CONTEXT = 64  # small, so rolling windows and left truncation happen on short texts
LONG = " ".join(f"word{i} and then" for i in range(60))  # past the 64-token context: several windows


@pytest.fixture(scope="module")
def folder(tmp_path_factory, smol_path):
    return tiny_smol_llama(tmp_path_factory.mktemp("lm_eval") / "tiny", smol_path, context=CONTEXT)


@pytest.fixture(scope="module")
def models(folder):
    hf = get_model("hf")(pretrained=str(folder), dtype="float32", device="cpu", batch_size=1)
    ours = get_model("lengthwise").create_from_arg_string(f"pretrained={folder},dtype=float32")
    assert isinstance(ours, integration.LengthwiseLM) and hf.max_length == ours.max_length == CONTEXT
    return hf, ours


@pytest.fixture(scope="module")
def hf_run(folder):
    """The harness's own hf model on the toy tasks, in this process."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(TASKS)  # the YAMLs name their data file relative to the working directory
        return lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(folder), "dtype": "float32"},
                                       tasks=NAMES, task_manager=TaskManager(include_path=str(TASKS)), device="cpu",
                                       batch_size=1, log_samples=True)


def _close(a, b, what):
    assert abs(a - b) <= 1e-4, f"{what}: {a} vs {b}"


def _req(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=tuple(args), idx=0)


def test_requests_at_the_edges(models):
    hf, ours = models
    tok = ours.tokenizer
    prompt = "Rivers run to the sea"
    pairs = [("", "An empty context"), (prompt + " ", "and back"), (LONG, " and then word61")]
    a = hf.loglikelihood([_req("loglikelihood", *p) for p in pairs])
    b = ours.loglikelihood([_req("loglikelihood", *p) for p in pairs])
    for (la, ga), (lb, gb), p in zip(a, b, pairs):
        _close(la, lb, p[0][:20])
        assert ga == gb
    ctx = tok.encode(prompt)  # in tokens: the model's own greedy continuation, and one token off it
    greedy = ours.lm.generate_ids([ctx], max_new_tokens=3)[0]
    reqs = [(None, ctx, greedy), (None, ctx, greedy[:2] + [(greedy[2] + 1) % 49152])]
    (la, ga), (la2, ga2) = hf._loglikelihood_tokens(reqs)
    (lb, gb), (lb2, gb2) = ours._loglikelihood_tokens(reqs)
    _close(la, lb, "greedy")
    _close(la2, lb2, "off greedy")
    assert (ga, ga2) == (gb, gb2) == (True, False)
    texts = [LONG, "Short.", LONG[:200]]
    assert len(ours.tok_encode(LONG)) > 3 * CONTEXT
    for x, y in zip(hf.loglikelihood_rolling([_req("loglikelihood_rolling", t) for t in texts]),
                    ours.loglikelihood_rolling([_req("loglikelihood_rolling", t) for t in texts])):
        _close(x, y, "rolling")
    gen = [_req("generate_until", LONG, {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}),
           _req("generate_until", "Say", {"until": ["e"], "max_gen_toks": 6})]
    assert hf.generate_until(gen) == ours.generate_until(gen)


def test_model_args_positions_kv_and_typos(folder):
    make = get_model("lengthwise").create_from_arg_string
    m = make(f"pretrained={folder},positions=yarn:factor=4,kv=window:sinks=4,recent=32,max_batch_tokens=512")
    assert m.lm.positions.spec().startswith("yarn:factor=4") and m.max_length == 4 * CONTEXT
    assert m.lm.kv.spec() == "window:sinks=4,recent=32" and m.max_batch_tokens == 512
    # a KV policy has no cache to act on when a whole text is scored: refused, never silently ignored
    with pytest.raises(lw.LengthwiseError, match="applies to generate_until only"):
        m.loglikelihood([_req("loglikelihood", LONG[:400], " and then")])
    with pytest.raises(lw.LengthwiseError, match="applies to generate_until only"):
        m.loglikelihood_rolling([_req("loglikelihood_rolling", LONG[:400])])
    plain = make(f"pretrained={folder},positions=yarn:factor=4,max_batch_tokens=512")
    lp = plain.loglikelihood([_req("loglikelihood", LONG[:400], " and then")])  # past the trained 64, within 256
    assert lp[0][0] < 0
    for key in ("n", "logprobs", "system"):  # one completion per request, as the harness reads it
        with pytest.raises(lw.LengthwiseError, match=f"gen_kwargs {key}="):
            plain.generate_until([_req("generate_until", "Hi", {"until": ["\n"], key: 2})])
    with pytest.raises(lw.LengthwiseError, match="unknown --model_args key 'pretraind' for lengthwise: did you mean 'pretrained'"):
        make(f"pretraind={folder}")
    with pytest.raises(lw.LengthwiseError, match="max_length=1000 is past the 64 tokens"):
        make(f"pretrained={folder},max_length=1000")
    with pytest.raises(lw.LengthwiseError, match="frobnicate"):
        m.generate_until([_req("generate_until", "Hi", {"until": ["\n"], "frobnicate": 1})])


def test_lm_eval_command_scores_as_the_hf_model_does(folder, hf_run, tmp_path, monkeypatch, capsys):
    """`lm_eval --model lengthwise`, offline, as `python -m lengthwise.integrations.lm_eval` (the harness's own
    command with the model registered): every request's answer and every metric within 1e-4 of the hf model's."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(lw.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "lengthwise.integrations.lm_eval", "--model", "lengthwise", "--model_args",
           f"pretrained={folder},dtype=float32", "--tasks", *NAMES, "--include_path", str(TASKS), "--device", "cpu",
           "--output_path", str(tmp_path / "out"), "--log_samples"]
    r = subprocess.run(cmd, cwd=TASKS, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lw_toy_choice" in r.stdout
    (results,) = (tmp_path / "out").rglob("results_*.json")
    got = json.loads(results.read_text())["results"]
    cut = 0
    for task in NAMES:
        (file,) = (tmp_path / "out").rglob(f"samples_{task}_*.jsonl")
        mine = sorted((json.loads(line) for line in file.read_text().splitlines()), key=lambda x: x["doc_id"])
        theirs = sorted(hf_run["samples"][task], key=lambda x: x["doc_id"])
        assert len(theirs) == len(mine) == 5
        for a, b in zip(theirs, mine):
            for ra, rb in zip(a["resps"], b["resps"], strict=True):
                if task == "lw_toy_choice":  # [[logprob, is_greedy]] per choice
                    _close(ra[0][0], float(rb[0][0]), task)
                    assert str(ra[0][1]) == str(rb[0][1])
                elif task == "lw_toy_rolling":
                    _close(ra[0], float(rb[0]), task)
                else:
                    assert ra == rb and "e" not in rb[0]
                    cut += len(rb[0]) < 40  # 12 new tokens of a random model run past 40 characters uncut
        for metric, value in hf_run["results"][task].items():
            if isinstance(value, float):
                _close(value, got[task][metric], f"{task} {metric}")
    assert cut >= 3  # the stop strings did cut
    from lengthwise.integrations.lm_eval.__main__ import main
    monkeypatch.chdir(TASKS)
    # a --model_args typo: one line, exit status 2 (in this process: the same main() the command runs)
    monkeypatch.setattr(sys, "argv", ["lm_eval", "--model", "lengthwise", "--model_args", f"pretrained={folder},kv_policy=window",
                                      "--tasks", "lw_toy_choice", "--include_path", str(TASKS)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("error: unknown --model_args key 'kv_policy'")
    assert not any("Traceback" in line for line in err)
