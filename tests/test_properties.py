"""Issue 20: property-based bad input. Every input either works, or gives one line, exit code 2 and no changed file.

Covers the CLI's input files (txt, jsonl, any bytes), --positions, --tasks and --lengths values, results stores and
config.json. In-process (CliRunner), few examples each, no model loaded per example: the eval grid runs on a stub
runner (a model folder of config.json alone, a tokenizer that counts bytes), the embed runs on one MiniLM loaded
once. The whole module runs in well under 2 minutes on 2 CPU cores.
"""
import json
import shutil
import string
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import lengthwise as lw
import lengthwise.cli as cli
import lengthwise.evaluation as E
from lengthwise import LengthwiseError
from lengthwise.evaluation import ResultStore
from lengthwise.report import read_results

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MANY = settings(SETTINGS, max_examples=150)

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
                           | st.text(max_size=12), lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
spec_text = st.text(alphabet=string.ascii_letters + string.digits + ":=,._-% /k\x00é", max_size=40)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _works_or_one_line(r, folder: Path, before: dict) -> bool:
    """The invariant; True when it worked."""
    assert "Traceback" not in r.output, r.output
    assert r.exit_code in (0, 2), (r.exit_code, r.output, r.exception)
    if r.exit_code == 0:
        return True
    errors = [x for x in r.stderr.strip().splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    assert _snapshot(folder) == before, "a refused input changed a file"
    return False


# ---------------------------------------------------------------- input readers


@MANY
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".txt", ".jsonl"]))
def test_any_bytes_as_an_input_file_read_or_refused(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("in") / f"input{suffix}"
    path.write_bytes(data)
    try:
        linenos, texts = cli._read_inputs(path, "text", skip_empty=True)
    except LengthwiseError as e:
        assert "\n" not in str(e).strip()
        return
    assert len(linenos) == len(texts) > 0 and all(isinstance(t, str) and t.strip() for t in texts)
    assert all(t.encode("utf-8") for t in texts)  # never a lone surrogate past the reader


line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20)


@MANY
@given(lines=st.lists(line_text.filter(str.strip), min_size=1, max_size=6), end=st.sampled_from(["\n", "\r\n", "\r"]),
       final=st.booleans())
def test_line_endings_never_change_the_texts(tmp_path_factory, lines, end, final):
    folder = tmp_path_factory.mktemp("ends")
    txt = folder / "a.txt"
    txt.write_bytes((end.join(lines) + (end if final else "")).encode())
    jsonl = folder / "a.jsonl"
    jsonl.write_bytes((end.join(json.dumps({"text": t}) for t in lines) + (end if final else "")).encode())
    assert cli._read_inputs(jsonl, "text", False)[1] == lines
    assert cli._read_inputs(txt, "text", False)[1] == lines


@pytest.fixture(scope="module")
def minilm():
    return lw.load("minilm-l6", device="cpu", dtype="float32")


jsonl_lines = st.one_of(st.builds(lambda v: json.dumps({"text": v}), json_values),
                        st.builds(json.dumps, json_values), st.text(max_size=30))


@SETTINGS
@given(data=st.one_of(st.binary(max_size=200),
                      st.lists(jsonl_lines, min_size=1, max_size=4).map(lambda xs: "\n".join(xs).encode())),
       suffix=st.sampled_from([".txt", ".jsonl"]))
def test_embed_any_input_file(tmp_path_factory, monkeypatch, minilm, data, suffix):
    monkeypatch.setattr(cli, "_load", lambda *a, **k: minilm)
    folder = tmp_path_factory.mktemp("embed")
    src = folder / f"in{suffix}"
    src.write_bytes(data)
    before = _snapshot(folder)
    r = CliRunner().invoke(cli.app, ["embed", str(src), "-o", str(folder / "out.npy")])
    if _works_or_one_line(r, folder, before):
        assert (folder / "out.npy").exists()


# ---------------------------------------------------------------- eval: option values and stores


class StubRunner:
    """What grid.run needs of a backend, without a model: a token is 4 bytes of text, every answer is empty."""
    trained_context = context_length = 4096
    n_params, n_layers, width, on_cpu = 1000, 1, 8, True

    def __init__(self, cfg):
        pass

    @staticmethod
    def render(prompt: str, prefix: str) -> list[int]:
        return list(range(len((prompt + "\n" + prefix).encode()) // 4 + 1))

    def generate(self, samples):
        return ["" for _ in samples], {"prefill_s": 0.0, "decode_s": 0.0, "peak_mem_gib": None}


@pytest.fixture
def stub_model(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(E, "make_runner", StubRunner)
    folder = tmp_path_factory.mktemp("stub") / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                    "max_position_embeddings": 4096}))
    return folder


def _eval(model, out: Path, **opts):
    args = {"--tasks": "passkey", "--lengths": "200", "--depths": "1", "--samples": "1", "--device": "cpu", **opts}
    return CliRunner().invoke(cli.app, ["eval", "--model", str(model), "--output", str(out),
                                        *[x for kv in args.items() for x in kv]])


def _eval_property(tmp_path_factory, stub_model, **opts):
    folder = tmp_path_factory.mktemp("ev")
    before = _snapshot(folder)
    r = _eval(stub_model, folder / "r.jsonl", **opts)
    if _works_or_one_line(r, folder, before):
        recs = [json.loads(x) for x in (folder / "r.jsonl").read_text().splitlines()]
        assert "lengthwise_store" in recs[0] and all("id" in x for x in recs[1:])


known_positions = st.sampled_from(list(lw.positions.SCHEMES) + ["none", "yarn", "linear"])
option = st.tuples(st.sampled_from(["factor", "group", "window", "cap", "beyond", "x", ""]),
                   st.sampled_from(["4", "0", "-1", "1e400", "nan", "true", "abc", "", "2.5"]))


@SETTINGS
@given(spec=st.one_of(spec_text, st.builds(lambda n, o: n + ":" + ",".join(f"{k}={v}" for k, v in o), known_positions,
                                           st.lists(option, max_size=3))))
def test_positions_values(tmp_path_factory, stub_model, spec):
    _eval_property(tmp_path_factory, stub_model, **{"--positions": spec})


@SETTINGS
@given(spec=st.one_of(spec_text, st.builds(lambda n, o: n + ":" + ",".join(f"{k}={v}" for k, v in o),
                                           st.sampled_from(["passkey", "niah_single", "frequent_words", "threads"]),
                                           st.lists(st.tuples(st.sampled_from(["haystack", "num_needles", "alpha",
                                                                               "depth", "x"]),
                                                              st.sampled_from(["noise", "2", "0", "-3", "inf", ""])),
                                                    max_size=2))))
def test_tasks_values(tmp_path_factory, stub_model, spec):
    _eval_property(tmp_path_factory, stub_model, **{"--tasks": spec})


@SETTINGS
@given(spec=st.one_of(spec_text, st.lists(st.sampled_from(["200", "1k", "0", "-5", "0.1k", "1e9", "nan", "infk",
                                                           "300", "k", "1e400"]), max_size=3).map(",".join)))
def test_lengths_values(tmp_path_factory, stub_model, spec):
    _eval_property(tmp_path_factory, stub_model, **{"--lengths": spec})


store_lines = st.one_of(
    st.just(json.dumps({"lengthwise_store": 2, "lengthwise": "0.1.0", "config": {}})),
    st.builds(lambda v: json.dumps({"lengthwise_store": v, "config": {}}), json_values),
    st.builds(lambda i, s: json.dumps({"id": i, "task": "passkey", "length": 200, "depth": 50.0, "method": "none",
                                       "backend": "lengthwise", "model": "m", "score": s}),
              st.text(max_size=5), json_values),
    st.builds(json.dumps, json_values), st.text(max_size=30))


@SETTINGS
@given(data=st.one_of(st.binary(max_size=200),
                      st.lists(store_lines, min_size=1, max_size=4).map(lambda xs: "\n".join(xs).encode()),
                      st.lists(store_lines, min_size=1, max_size=4).map(lambda xs: ("\n".join(xs) + "\n").encode())))
def test_any_bytes_as_a_store(tmp_path_factory, stub_model, data):
    folder = tmp_path_factory.mktemp("store")
    out = folder / "r.jsonl"
    out.write_bytes(data)
    before = _snapshot(folder)
    r = _eval(stub_model, out)
    if _works_or_one_line(r, folder, before):
        assert out.read_bytes().startswith(data.split(b"\n")[0])  # what it held is kept
    before = _snapshot(folder)
    r = CliRunner().invoke(cli.app, ["report", str(out), "--output", str(folder / "plots")])
    assert "Traceback" not in r.output and r.exit_code in (0, 2), (r.exit_code, r.output, r.exception)
    if r.exit_code == 2:
        assert len([x for x in r.stderr.splitlines() if x.startswith("error: ")]) == 1, r.stderr
    for call in (lambda: ResultStore(out).check({"model": "m"}), lambda: read_results(out)):
        try:
            call()
        except LengthwiseError:
            pass


# ---------------------------------------------------------------- config.json


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cfg") / "tiny"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


@SETTINGS
@given(edits=st.lists(st.tuples(st.sampled_from(["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                                 "num_key_value_heads", "intermediate_size", "head_dim",
                                                 "max_position_embeddings", "rms_norm_eps", "rope_theta",
                                                 "rope_scaling", "rope_parameters", "architectures", "model_type",
                                                 "tie_word_embeddings", "sliding_window", "use_sliding_window",
                                                 "layer_types", "attention_bias"]),
                                json_values), min_size=1, max_size=3),
       raw=st.none() | st.binary(max_size=60))
def test_any_config_json(tmp_path_factory, stub_model, tiny_folder, edits, raw):
    folder = tmp_path_factory.mktemp("cj") / "m"
    shutil.copytree(tiny_folder, folder)
    c = json.loads((folder / "config.json").read_text())
    c.update(dict(edits))
    (folder / "config.json").write_bytes(raw if raw is not None else json.dumps(c).encode())
    before = _snapshot(folder.parent)
    try:
        lm = lw.load(folder, device="cpu")
        lm.logits([[1, 2, 3]])
    except LengthwiseError as e:
        assert str(e).strip()
    assert _snapshot(folder.parent) == before
    r = _eval(folder, folder.parent / "r.jsonl")  # the stub runner: what eval reads of config.json before loading
    assert "Traceback" not in r.output and r.exit_code in (0, 2), (r.exit_code, r.output, r.exception)
