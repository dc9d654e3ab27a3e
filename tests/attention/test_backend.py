"""The Backend: one object, resolved at load, holding every switch that environment flags used to set."""
import dataclasses
import subprocess
import sys

import pytest
import torch

import lengthwise as lw
from lengthwise.attention import Backend

from conftest import tiny_hf_causal


def test_environment_seeds_the_defaults_only_when_resolved(monkeypatch):
    assert Backend.from_env("varlen") == Backend("varlen")
    monkeypatch.setenv("LENGTHWISE_TRITON_DECODE", "0")
    monkeypatch.setenv("LENGTHWISE_TRITON_PREFILL_MIN", "256")
    b = Backend.resolve("auto", torch.device("cpu"), torch.float32)
    assert b == Backend("cpu_flash", triton_decode=False, triton_prefill_min=256)
    monkeypatch.setenv("LENGTHWISE_TRITON_PREFILL_MIN", "many")
    with pytest.raises(lw.LengthwiseError, match="LENGTHWISE_TRITON_PREFILL_MIN='many' is not an integer"):
        Backend.from_env("varlen")


def test_a_backend_object_is_checked_and_kept(tmp_path):
    _, folder = tiny_hf_causal("llama", tmp_path)
    b = dataclasses.replace(Backend("reference"), fused=False, split_kv=False)
    lm = lw.load(folder, device="cpu", backend=b)
    assert lm.backend is b
    with pytest.raises(lw.LengthwiseError, match="varlen backend needs a CUDA device"):
        lw.load(folder, device="cpu", backend=Backend("varlen"))
    with pytest.raises(lw.LengthwiseError, match="unknown attention backend 'flash'"):
        Backend("flash")
    with pytest.raises(lw.LengthwiseError, match="fused must be true or false"):
        Backend("reference", fused="0")


def test_only_the_backend_module_reads_lengthwise_flags():
    """grep: os.environ appears in src/lengthwise only in attention/backend.py and the model-folder lookup."""
    from pathlib import Path
    src = Path(lw.__file__).parent
    hits = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if "os.environ" in p.read_text())
    assert set(hits) <= {"attention/backend.py", "models/load.py"}, hits
    text = (src / "models/load.py").read_text()
    assert all("LENGTHWISE_MODEL_DIR" in line for line in text.splitlines() if "os.environ" in line)


def test_the_llama_module_imports_no_triton_kernel_file():
    code = ("import sys, lengthwise.models.llama, lengthwise.models.bert;"
            "print(sorted(m for m in sys.modules if m.startswith('lengthwise.') and ('triton_' in m or "
            "m.endswith('two_region'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
