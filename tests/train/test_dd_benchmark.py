"""benchmarks/dataset_decomposition.py's summary: the time each fill takes to reach the baseline's best held-out
loss, on runs written by hand."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import dataset_decomposition as dd  # noqa: E402


def _run(points):
    """(time_s, eval_loss) checkpoints, with a step between each."""
    recs = []
    for i, (t, loss) in enumerate(points):
        recs.append({"step": 2 * i + 1, "time_s": t - 0.5, "loss": 9.0, "tokens_per_s": 100.0})
        recs.append({"step": 2 * i + 2, "time_s": t, "loss": loss, "tokens_per_s": 100.0, "eval_loss": loss,
                     "accuracy": 0.5})
    return recs


def test_time_to_equal_loss():
    runs = {"chunk_masked": _run([(10, 3.0), (20, 2.0), (30, 1.5), (40, 1.6)]),
            "buckets_whole": _run([(5, 2.5), (10, 1.4), (40, 1.0)]),
            "buckets": _run([(10, 3.0), (40, 2.0)])}
    s = dd.time_to_equal_loss(runs)
    e = s["equal_loss"]
    assert e["loss"] == 1.5 and e["seconds"] == {"chunk_masked": 30, "buckets_whole": 10, "buckets": None}
    assert e["speedup_over_baseline"] == {"buckets_whole": pytest.approx(3.0), "buckets": None}
    assert s["chunk_masked"]["final_eval_loss"] == 1.6 and s["chunk_masked"]["best_eval_loss"] == 1.5
    assert s["buckets"]["steps"] == 4
