"""Issue 20: bad input is one line, exit code 2, no traceback and no changed file; no global side effects."""
import json
import os
import stat
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import lengthwise as lw
import lengthwise.cli as cli
from lengthwise import LengthwiseError
from conftest import tiny_smol_llama


def _one_line(r, needle: str = "") -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], r.stderr
    assert "Traceback" not in r.output
    return err[0]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, smol_path):
    return tiny_smol_llama(tmp_path_factory.mktemp("bad") / "tiny-llama", smol_path, context=1024)


def test_import_sets_no_environment_variable():
    code = ("import os, json; before = dict(os.environ); import lengthwise, lengthwise.cli, lengthwise.evaluation; "
            "print(json.dumps([sorted(set(os.environ.items()) ^ set(before.items())), "
            "os.environ.get('HF_HUB_OFFLINE')]))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    changed, offline = json.loads(out.stdout.strip().splitlines()[-1])
    assert changed == [] and offline is None


def test_a_hub_id_is_refused_never_downloaded(tmp_path):
    for name in ("sentence-transformers/all-MiniLM-L6-v2", "org/name"):
        with pytest.raises(LengthwiseError, match="Hugging Face Hub id, and lengthwise never downloads"):
            lw.load(name, device="cpu")
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    r = CliRunner().invoke(cli.app, ["embed", str(src), "--model", "org/name"])
    _one_line(r, "never downloads")


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_cr_crlf_and_lf_files_give_the_same_prompts(tmp_path, ending):
    texts = ["first prompt", "second one", "a third, with a\u2028line separator inside"]
    path = tmp_path / "p.txt"
    path.write_bytes(ending.join(texts).encode() + ending.encode())
    assert cli._read_inputs(path, "prompt", False) == ([0, 1, 2], texts)
    path = tmp_path / "p.jsonl"
    path.write_bytes(ending.join(json.dumps({"prompt": t}, ensure_ascii=False) for t in texts).encode())
    assert cli._read_inputs(path, "prompt", False) == ([0, 1, 2], texts)


def test_a_read_only_output_is_refused_for_root_too(tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    out.write_text("earlier results\n")
    out.chmod(stat.S_IRUSR | stat.S_IRGRP)
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    monkeypatch.setattr(os, "access", lambda *a, **k: True)  # what root is told, whatever the mode
    r = CliRunner().invoke(cli.app, ["generate", str(src), "-o", str(out)])
    _one_line(r, "read-only")
    r = CliRunner().invoke(cli.app, ["eval", "--output", str(out), "--model", "no/such"])
    assert out.read_text() == "earlier results\n"


def test_names_past_the_system_limit(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    long = "x" * 300
    for args in (["embed", str(tmp_path / f"{long}.txt")], ["embed", str(src), "-o", str(tmp_path / f"{long}.npy")],
                 ["eval", "--output", str(tmp_path / f"{long}.jsonl")], ["report", str(tmp_path / f"{long}.jsonl")],
                 ["embed", str(src), "--model", str(tmp_path / long)]):
        _one_line(CliRunner().invoke(cli.app, args))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


@pytest.mark.parametrize("content,needle", [
    ('{"prompt": "' + "\\ud800" + '"}\n', "lone surrogate"),  # valid JSON, no text: the tokenizer cannot encode it
    ("[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
    ('{"prompt": ' + "1" * 5000 + "}\n", "past what the parser takes"),
])
def test_jsonl_the_parser_or_tokenizer_cannot_take(tmp_path, tiny_lm, content, needle):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    _one_line(CliRunner().invoke(cli.app, ["generate", str(path), "--model", str(tiny_lm), "--max-new-tokens", "1"]),
              needle)


def test_library_text_no_tokenizer_encodes(tiny_lm):
    lm = lw.load(tiny_lm, device="cpu")
    with pytest.raises(LengthwiseError, match="input 1 holds .* lone surrogate"):
        lm.generate(["fine", "bad \ud800"], max_new_tokens=1)


@pytest.mark.parametrize("temperature", ["1e-300", "5e-324", "1e-40", "1e-9"])
def test_sampling_values_so_small_they_overflow(tmp_path, tiny_lm, temperature):
    path = tmp_path / "p.txt"
    path.write_text("hello\n")
    _one_line(CliRunner().invoke(cli.app, ["generate", str(path), "--model", str(tiny_lm), "--temperature",
                                           temperature, "--seed", "0"]), "overflows")
    with pytest.raises(LengthwiseError, match="overflows"):
        lw.load(tiny_lm, device="cpu").generate(["hello"], max_new_tokens=1, temperature=float(temperature))


@pytest.mark.parametrize("edit,needle", [
    (lambda c: "{not json", "not valid JSON"),
    (lambda c: "[1, 2]", "not an object"),
    (lambda c: json.dumps({**c, "architectures": "LlamaForCausalLM"}), "must be a list of names"),
    (lambda c: json.dumps({k: v for k, v in c.items() if k != "hidden_size"}), "lacks 'hidden_size'"),
    (lambda c: json.dumps({**c, "hidden_size": "32"}), "wrong kind|whole number"),
    (lambda c: json.dumps({**c, "num_attention_heads": 0}), "wrong kind|whole number"),
    (lambda c: json.dumps({**c, "vocab_size": -5}), "whole number"),
    (lambda c: json.dumps({**c, "max_position_embeddings": "long"}), "max_position_embeddings"),
    (lambda c: json.dumps({**c, "rms_norm_eps": None}), "wrong kind|finite number"),
    (lambda c: json.dumps({**c, "intermediate_size": 1e400}), "wrong kind|whole number"),
    (lambda c: '{"a": ' + "[" * 50000 + "]" * 50000 + "}", "not JSON that lengthwise reads"),
])
def test_a_malformed_config_json(tmp_path, tiny_lm, edit, needle):
    import shutil
    folder = tmp_path / "m"
    shutil.copytree(tiny_lm, folder)
    c = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(edit(c))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    src = tmp_path / "p.txt"
    src.write_text("hello\n")
    out = tmp_path / "o.jsonl"
    _one_line(CliRunner().invoke(cli.app, ["generate", str(src), "--model", str(folder), "-o", str(out),
                                           "--max-new-tokens", "1"]), "")
    err = _one_line(CliRunner().invoke(cli.app, ["eval", "--model", str(folder), "--output", str(out),
                                                 "--lengths", "100", "--samples", "1", "--depths", "1"]))
    import re
    assert re.search(needle, err), err
    assert not out.exists() and {p.name: p.read_bytes() for p in folder.iterdir()} == before
