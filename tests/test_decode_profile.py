"""benchmarks/decode_profile.py: kernels find the code that launched them (a GPU trace made up here, since this
machine has no GPU), the two-region step splits into its passes, and --smoke runs on the CPU."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def profile_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("decode_profile")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def host(cat, name, ts, dur, corr=None):
    return {"ph": "X", "cat": cat, "name": name, "tid": 1, "ts": ts, "dur": dur,
            "args": {} if corr is None else {"correlation": corr}}


def kernel(name, ts, dur, corr):
    return {"ph": "X", "cat": "kernel", "name": name, "tid": 7, "ts": ts, "dur": dur, "args": {"correlation": corr}}


TRACE = {"traceEvents": [
    host("python_function", "lengthwise/attention/layer.py(60): attention_step", 0, 100),
    host("python_function", "lengthwise/kv/cache.py(146): write_far", 1, 4),
    host("cpu_op", "aten::index_put_", 2, 2),
    host("cuda_runtime", "cudaLaunchKernel", 2.5, 1, corr=11),
    host("python_function", "lengthwise/attention/two_region.py(20): attend_two_region", 10, 80),
    host("python_function", "lengthwise/attention/__init__.py(64): attend", 11, 20),
    host("cpu_op", "aten::_flash_attention_forward", 12, 10),
    host("cuda_runtime", "cudaLaunchKernel", 13, 1, corr=12),
    host("python_function", "lengthwise/attention/__init__.py(64): attend", 40, 20),
    host("cuda_driver", "cuLaunchKernel", 45, 1, corr=13),  # a Triton launch: no aten op around it
    host("cpu_op", "aten::exp", 70, 5),
    host("cuda_runtime", "cudaLaunchKernel", 71, 1, corr=14),
    host("python_function", "nn.Module: Linear_0", 100, 10),
    host("cpu_op", "aten::mm", 101, 8),
    host("cuda_runtime", "cudaLaunchKernel", 102, 1, corr=15),
    kernel("index_put_kernel", 200, 2, 11), kernel("flash_fwd_splitkv_kernel", 203, 10, 12),
    kernel("decode_attn", 214, 40, 13), kernel("vectorized_elementwise_kernel", 255, 3, 14),
    kernel("nvjet_hsh_128x64", 260, 20, 15), kernel("mystery_kernel", 281, 1, 99),
]}


def test_kernels_take_the_family_of_the_code_that_launched_them():
    dp = profile_module()
    got = dp.launches(TRACE, cuda=True)
    assert [k[0] for k in got][:2] == ["index_put_kernel", "flash_fwd_splitkv_kernel"]
    assert dp.labels(got) == [("two-region / far keys", "far keys (writes, tables)"), ("attention decode", "near pass"),
                              ("two-region / far keys", "far pass"), ("two-region / far keys", "merge"),
                              ("matmuls", None), ("other", None)]
    same = dp.split(got, [(n, 2 * us, []) for n, us, _ in got], n=1)  # a graph replay of the same kernels
    assert same["split_from"].startswith("the graph's kernels, families from the eager step's")
    assert same["split_ms"]["two-region / far keys"] == pytest.approx(2 * (2 + 40 + 3) / 1e3)
    assert same["two_region_ms"]["far pass"] == pytest.approx(2 * 40 / 1e3)
    other = dp.split(got, [("decode_attn", 5.0, [])], n=1)  # not one to one: by kernel names alone
    assert other["split_from"].endswith("(not the eager step's one to one)")
    assert other["split_ms"] == {"attention decode": 5.0 / 1e3}


def test_cpu_ops_count_their_own_time():
    dp = profile_module()
    trace = {"traceEvents": [host("cpu_op", "aten::linear", 0, 10), host("cpu_op", "aten::addmm", 1, 7),
                             host("cpu_op", "aten::add", 20, 2)]}
    assert [(n, us) for n, us, _ in dp.launches(trace, cuda=False)] == [("aten::linear", 3), ("aten::addmm", 7),
                                                                         ("aten::add", 2)]


def test_decode_profile_smoke(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_profile.py"), "--smoke"], env=env, check=True,
                   capture_output=True, timeout=180)
    got = json.loads((tmp_path / "decode_profile_smoke.json").read_text())
    rows = {r["positions"]: r for r in got["rows"]}
    assert set(rows) == {"rope", "distance_cap:cap=64", "self_extend:group=4,window=32"}
    assert not rows["rope"]["far_keys"] and not rows["rope"]["two_region_ms"]
    for spec in ("distance_cap:cap=64", "self_extend:group=4,window=32"):
        assert rows[spec]["far_keys"] and {"near pass", "far pass", "merge"} <= set(rows[spec]["two_region_ms"])
    for r in got["rows"]:
        assert r["step_ms"] > 0 and r["roofline_ms"] > 0 and r["split_ms"]["matmuls"] > 0
    assert got["device"] and got["date"] and (tmp_path / "decode_profile_smoke.png").stat().st_size > 0
