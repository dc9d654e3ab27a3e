"""benchmarks/lab_parallel.py: cells' stores merge into one store that report and a lab resume read, once."""
import importlib
import json
import sys
from pathlib import Path

import pytest

from lengthwise.errors import LengthwiseError
from lengthwise.evaluation.store import ResultStore
from lengthwise.report import read_lab
from lengthwise.train.lab import run_dir
from lengthwise.train.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def par():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("lab_parallel")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


CONFIG = {"lab": 1, "samples": 4, "train": {"n_layers": 2, "dim": 64}}


def cell_store(path: Path, pe: str, lengths, config=CONFIG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    s = ResultStore(path)
    s.open_for_append(config)
    for n in lengths:
        s.append({"id": f"{pe}-{n}", "task": "copy", "pe": pe, "seed": 0, "train_max_len": 2, "length": n,
                  "accuracy": 1.0 if n <= 2 else 0.5, "n": 4, "config": config})
    s.close()
    return path


def test_cells_merge_into_one_store_once(tmp_path, par):
    a = cell_store(tmp_path / "a" / "results.jsonl", "nope", [1, 2, 3])
    b = cell_store(tmp_path / "b" / "results.jsonl", "rope", [1, 2, 3])
    with open(b, "ab") as f:
        f.write(b'{"id": "rope-4", "task": "co')  # a cell killed mid-write
    dest = tmp_path / "results.jsonl"
    r = par.merge_stores([a, b], dest)
    assert (r["added"], r["present"]) == (6, 0) and len(r["warnings"]) == 1
    assert ResultStore(dest).header()["config"] == CONFIG
    again = par.merge_stores([a, b], dest)
    assert (again["added"], again["present"]) == (0, 6)
    lines = dest.read_bytes().splitlines()
    assert len(lines) == 7 and json.loads(lines[0])["lengthwise_store"]  # one header, six records
    records, warnings = read_lab([dest])
    assert not warnings and {(x["pe"], x["length"]) for x in records} == {(p, n) for p in ("nope", "rope") for n in (1, 2, 3)}
    # what a lab resuming the merged folder checks: the same header config, every id done
    assert ResultStore(dest).done_ids() == {f"{p}-{n}" for p in ("nope", "rope") for n in (1, 2, 3)}


def test_a_cell_of_other_settings_is_refused(tmp_path, par):
    dest = tmp_path / "results.jsonl"
    par.merge_stores([cell_store(tmp_path / "a" / "results.jsonl", "nope", [1])], dest)
    other = cell_store(tmp_path / "b" / "results.jsonl", "rope", [1], {**CONFIG, "samples": 8})
    with pytest.raises(LengthwiseError, match="samples"):
        par.merge_stores([other], dest)
    assert len(dest.read_bytes().splitlines()) == 2


def test_cell_folders_are_the_labs_run_folders(par):
    for task, pe in [("copy", "nope"), ("addition:hints=true,reverse=true", "learned:max_positions=1024")]:
        cfg = TrainConfig(task=task, pe=pe, seed=2)
        assert par.cell_name(cfg.task, cfg.pe, 2) == run_dir(Path("x"), cfg).name


def test_the_plan_is_refused_past_the_wall(par, capsys):
    args = ["OUT", "--tasks", "copy", "--pes", "nope,rope,learned", "--seeds", "0-2", "--budget", "300",
            "--dry-run", "--startup-s", "30", "--eval-s", "60"]
    assert par.main([*args, "--parallel", "9", "--wall", "540"]) == 0
    assert "1 wave(s)" in capsys.readouterr().out
    assert par.main([*args, "--parallel", "4", "--wall", "540"]) == 2
    assert "lower --budget to 83" in capsys.readouterr().err
