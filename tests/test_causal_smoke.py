"""benchmarks/causal.py --smoke: the generation part runs on the CPU, with the HF static-cache peer's row and its
token agreement against HF's dynamic cache in the JSON."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_causal_generation_smoke(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "causal.py"), "--smoke", "--repeats", "1"], env=env,
                   check=True, capture_output=True, timeout=180)
    got = json.loads((tmp_path / "generation_smoke.json").read_text())
    rows = {r["system"]: r for r in got["rows"]}
    assert {"hf_generate_padded", "hf_generate_static", "lengthwise_eager_decode", "lengthwise"} <= set(rows)
    assert "error" not in rows["hf_generate_static"] and rows["hf_generate_static"]["output_tokens_per_s"] > 0
    assert got["hf_static"]["token_agreement_with_hf_dynamic"] >= 0.5  # float32 on the CPU: 100% here; a wrong slice ~0
    assert set(got["lengthwise_over_hf"]) == {"hf_generate_padded", "hf_generate_static"}
