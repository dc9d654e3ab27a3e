"""benchmarks/kv_grid.py: the job plan and the summary of its stores (hand-made stores, hand-computed means)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kv_grid  # noqa: E402


def test_plan_orders_targets_and_covers_every_method():
    jobs = kv_grid.plan("targets", "h.json", 50, (4096, 8192))
    assert [j["kv_dtype"] for j in jobs[:6]] == ["fp8"] * 6  # the FP8 rows first
    auto = [j for j in jobs if j["kv_dtype"] == "auto"]
    for length in (4096, 8192):
        specs = [j["kv"] for j in auto if j["length"] == length]
        assert specs[0] == "full" and specs.count("full") == 1
        for p in kv_grid.POLICIES:
            for r in (0.5, 0.75):
                want = kv_grid.spec(p, r, "h.json")
                assert (want in specs) == (p != "think")  # ThinK removes at most half the cache
    assert "duo:heads=0.5,calibration=h.json" in [j["kv"] for j in auto]
    names = [kv_grid.store_name(j) for j in kv_grid.plan("all", "h.json", 50)]
    assert len(set(names)) == len(names)  # one store (one writer) per job
    big = kv_grid.plan("all", "h.json", 50)
    assert {j["positions"] for j in big if j["length"] == 32768} == {kv_grid.EXTENSION}
    assert all(j["samples"] == 25 for j in big if j["length"] == 32768)


def _store(path: Path, kv: str, scores: dict, kv_bytes: int):
    cfg = {"model": "m", "kv": kv, "positions": "none", "device": "cuda", "dtype": "bfloat16"}
    lines = [{"lengthwise_store": 2, "config": cfg}]
    for task, ss in scores.items():
        for i, s in enumerate(ss):
            lines.append({"id": f"{kv}-{task}-{i}", "task": task, "length": 4096, "score": s, "kv": kv,
                          "kv_dtype": "auto", "kv_bytes": kv_bytes, "kv_bytes_prefill": 2 * kv_bytes, "config": cfg})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_summary_means_shares_and_lost_stores(tmp_path):
    full = {t: [1.0, 0.0] for t in kv_grid.TASKS}  # 50% on each task
    half = {t: [0.0, 0.0] for t in kv_grid.TASKS}
    half["niah_single"] = [1.0, 0.5]  # 75% on one task: mean 15%
    _store(tmp_path / "a.jsonl", "full", full, 1000)
    _store(tmp_path / "b.jsonl", "snapkv:ratio=0.5,window=64,kernel=5", half, 520)
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"length": 4096, "kv": "snapkv:ratio=0.5", "kv_dtype": "auto", "positions": None, "mean_pct": 99.0,
         "records": 10},  # has a store: the store's numbers win
        {"length": 4096, "kv": "tova:ratio=0.5", "kv_dtype": "auto", "positions": None, "mean_pct": 20.0,
         "records": 10},  # its store was lost: the log's mean, no per-task split
        {"length": 4096, "kv": "knorm:ratio=0.5", "kv_dtype": "auto", "positions": None, "error": "boom"}]) + "\n")
    s = kv_grid.summarize(tmp_path)
    rows = {r["kv"].split(":")[0]: r for r in s["rows"]}
    assert set(rows) == {"full", "snapkv", "tova"}
    assert rows["full"]["mean_pct"] == 50.0 and rows["full"]["samples_per_task"] == 2
    assert abs(rows["snapkv"]["mean_pct"] - 15.0) < 1e-9
    assert abs(rows["snapkv"]["share_of_full"] - 0.3) < 1e-9
    assert abs(rows["snapkv"]["kv_bytes_share_of_full"] - 0.52) < 1e-9
    assert rows["tova"]["mean_pct"] == 20.0 and rows["tova"]["accuracy_pct"] == {}
    assert abs(rows["tova"]["share_of_full"] - 0.4) < 1e-9 and "lost" in rows["tova"]["source"]
    table = kv_grid.table(s)
    assert "| 4k | `full` | auto | 50.0 |" in table and "| 15.0 | 0.30 | 2 | 0.0 |" in table
    kv_grid.plot(s, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
