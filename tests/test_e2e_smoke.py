"""benchmarks/e2e.py --smoke runs on CPU and writes its JSON with every row of issue 22."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_e2e_smoke(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--smoke"], env=env, check=True,
                   capture_output=True, timeout=120)
    got = json.loads((tmp_path / "e2e_smoke.json").read_text())
    rows = {(r["row"].split(" ")[0], r["system"]) for r in got["rows"]}
    assert {("texts->vectors", "lengthwise"), ("generation", "hf generate (static cache)"),
            ("remap", "self_extend:group=4,window=128")} <= rows
    assert got["device"] and got["date"] and (tmp_path / "e2e_smoke.png").stat().st_size > 0
    split = next(r for r in got["rows"] if r["system"] == "lengthwise" and r["row"] == "texts->vectors")["split"]
    assert set(split) >= {"tokenize", "pack", "copy", "forward", "pool", "back", "device_busy"}
