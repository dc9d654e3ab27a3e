"""The report: hand-computed means, skipped bad lines with their numbers, last-duplicate-wins, PNGs, Markdown."""
import json
import math
import os
import re
from pathlib import Path

import pytest

from lengthwise import LengthwiseError
from lengthwise import report as R

TASKS = ["passkey", "niah_single:haystack=noise", "copy"]
LENGTHS = [1024, 2048, 4096]
DEPTHS = [0.0, 50.0, 100.0]
METHODS = ["none", "yarn:factor=4"]
BACKENDS = ["lengthwise", "hf"]
CAP = {"none": 1024, "yarn:factor=4": 2048}  # longest length a method gets fully right


def score(task, method, backend, length, depth, sample):
    if task == "copy":
        return 0.75 if backend == "lengthwise" else 0.5
    if length <= CAP[method]:
        return 1.0
    if task == "passkey":  # beyond the cap: depth 0 found, depth 50 half the samples, depth 100 lost
        return {0.0: 1.0, 50.0: 1.0 - sample, 100.0: 0.0}[depth]
    return 1.0 if depth == 0.0 and sample == 0 else 0.0  # niah: one hit in six


# (method, task, length) -> mean score, worked out by hand from the rules above; the same for both backends
EXPECTED = {
    ("none", "passkey", 1024): 1.0, ("none", "passkey", 2048): 0.5, ("none", "passkey", 4096): 0.5,
    ("yarn:factor=4", "passkey", 2048): 1.0, ("yarn:factor=4", "passkey", 4096): 0.5,
    ("none", "niah_single:haystack=noise", 2048): 1 / 6, ("yarn:factor=4", "niah_single:haystack=noise", 4096): 1 / 6,
    ("yarn:factor=4", "niah_single:haystack=noise", 1024): 1.0,
}


def make_records():
    recs = []
    for method in METHODS:
        for backend in BACKENDS:
            for task in TASKS:
                for length in LENGTHS:
                    for depth in DEPTHS:
                        for sample in range(2):
                            recs.append(dict(
                                id=f"{method}|{backend}|{task}|{length}|{depth}|{sample}", model="smollm2-135m",
                                method=method, backend=backend, task=task, length=length, depth=depth,
                                sample=sample, seed=sample, score=score(task, method, backend, length, depth, sample),
                                output="x", answers=["x"], prompt_tokens=length, prefill_s=0.1, decode_s=0.1,
                                peak_mem_gib=None, config={}, time="2025-01-01T00:00:00"))
    return recs


def write(path, recs, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + tail)
    return path


def row(table, method, backend, task, length):
    (r,) = [r for r in table if (r["method"], r["backend"], r["task"], r["length"]) == (method, backend, task, length)]
    return r


def test_accuracy_equals_hand_computed_means(tmp_path):
    recs, warnings = R.read_results(write(tmp_path / "res.jsonl", make_records()))
    assert warnings == [] and len(recs) == 2 * 2 * 3 * 3 * 3 * 2
    table = R.accuracy_table(recs)
    assert len(table) == 2 * 2 * 3 * 3
    for (method, task, length), want in EXPECTED.items():
        for backend in BACKENDS:
            r = row(table, method, backend, task, length)
            assert r["accuracy"] == pytest.approx(want) and r["n"] == 6
    assert row(table, "none", "lengthwise", "copy", 4096)["accuracy"] == 0.75
    assert row(table, "none", "hf", "copy", 4096)["accuracy"] == 0.5
    # sorted: baseline method first, lengths numeric within a task
    assert table[0]["method"] == "none"
    first = [r["length"] for r in table if (r["method"], r["backend"], r["task"]) == ("none", "hf", "passkey")]
    assert first == LENGTHS
    text = R.format_table(table)
    assert "passkey" in text and "16.7" in text and "50.0" in text and "2k" in text


def test_bad_lines_are_skipped_with_their_line_numbers(tmp_path):
    good = make_records()[:10]
    lines = [json.dumps(r) for r in good[:4]]
    lines.append("[1, 2, 3]")  # line 5: not an object
    lines.append("")  # line 6: blank, ignored silently
    bad = dict(good[4]); del bad["score"]
    lines.append(json.dumps(bad))  # line 7: missing key
    lines += [json.dumps(r) for r in good[5:]]  # lines 8..12
    lines.append(json.dumps(make_records()[10])[:37])  # line 13: a writer killed mid-line, no newline
    path = tmp_path / "res.jsonl"
    path.write_text("\n".join(lines))
    recs, warnings = R.read_results(path)
    assert len(warnings) == 3
    assert warnings[0].startswith("line 5: not a JSON object") and warnings[0].endswith("skipped")
    assert warnings[1].startswith("line 7: missing key 'score'")
    assert warnings[2].startswith("line 13: not valid JSON (") and "unfinished last line" in warnings[2]
    assert [r["id"] for r in recs] == [r["id"] for r in good if r is not good[4]]


def test_duplicate_ids_keep_the_last(tmp_path):
    recs = make_records()
    again = dict(recs[0], score=0.0)  # a rerun of the first cell, now failing
    path = write(tmp_path / "res.jsonl", recs + [again])
    got, warnings = R.read_results(path)
    assert len(got) == len(recs)
    assert [g for g in got if g["id"] == recs[0]["id"]] == [again]
    assert len(warnings) == 1 and warnings[0].startswith("1 record repeat")
    r = row(R.accuracy_table(got), recs[0]["method"], recs[0]["backend"], recs[0]["task"], recs[0]["length"])
    assert r["accuracy"] == pytest.approx(5 / 6) and r["n"] == 6


def test_report_writes_pngs_and_markdown(tmp_path):
    path = write(tmp_path / "run1.jsonl", make_records())
    md_path = tmp_path / "out" / "summary.md"
    out = R.report(path, markdown_path=md_path)
    assert set(out) == {"table", "plots", "warnings", "markdown"}
    # a heatmap per (model, method, backend, task), a curve per task, one all-tasks curve
    assert len(out["plots"]) == 2 * 2 * 3 + 3 + 1
    assert len(set(out["plots"])) == len(out["plots"])
    for p in out["plots"]:
        assert p.parent == tmp_path / "run1_report"
        assert re.fullmatch(r"[A-Za-z0-9._-]+\.png", p.name), p.name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    names = {p.name for p in out["plots"]}
    assert "heatmap_smollm2-135m_yarn_factor-4_hf_niah_single_haystack-noise.png" in names
    assert "curve_all-tasks.png" in names
    md = out["markdown"]
    assert md_path.read_text() == md
    assert md.count("Accuracy (%)") == 4 and md.count("Cells:") == 4
    for pct in ("100.0", "50.0", "16.7", "75.0"):
        assert pct in md
    assert "| 1k | 2k | 4k |" in md


def test_degenerate_inputs_do_not_crash(tmp_path):
    one = make_records()[:1]
    nan = [dict(r, id=f"n{i}", score=float("nan") if i % 2 else None) for i, r in enumerate(make_records()[:3])]
    single_depth = [r for r in make_records() if r["depth"] == 50.0]
    for name, recs in [("one", one), ("nan", nan), ("depth", single_depth)]:
        out = R.report(write(tmp_path / f"{name}.jsonl", recs), out_dir=tmp_path / name)
        assert out["plots"] and all(p.stat().st_size > 0 for p in out["plots"])
        assert out["markdown"] and R.format_table(out["table"])
    out = R.report(tmp_path / "nan.jsonl", out_dir=tmp_path / "nan")
    assert any("NaN" in w for w in out["warnings"])
    assert math.isnan(out["table"][0]["accuracy"]) and "nan" in out["markdown"]


def test_missing_empty_or_all_bad_file_is_a_lengthwise_error(tmp_path):
    with pytest.raises(LengthwiseError, match="does not exist"):
        R.read_results(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(LengthwiseError, match="no valid records"):
        R.report(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\nnot json\n')
    with pytest.raises(LengthwiseError, match="no valid records") as e:
        R.read_results(tmp_path / "bad.jsonl")
    assert "\n" not in str(e.value)


def test_gzip_store_reads_as_its_jsonl_and_a_cut_one_is_one_line(tmp_path):
    import gzip
    recs = make_records()
    plain = write(tmp_path / "res.jsonl", recs)
    packed = tmp_path / "res.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert R.read_results(packed) == R.read_results(plain)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed.read_bytes()[:len(packed.read_bytes()) // 2])  # a copy interrupted half-way
    with pytest.raises(LengthwiseError, match="not a complete gzip file") as e:
        R.read_results(cut)
    assert "\n" not in str(e.value)


def test_no_heatmap_for_a_task_without_a_key(tmp_path):
    """common_words has no needle: its depths only reseed prompts, so no depth x length heatmap is drawn
    (its table rows and curve stay); a task name this version does not know keeps its heatmap."""
    recs = [dict(r, task=t, id=f"{t}|{r['id']}") for r in make_records()[:24] for t in ("common_words", "mystery_task")]
    out = R.report(write(tmp_path / "agg.jsonl", recs), out_dir=tmp_path / "agg")
    names = {p.name for p in out["plots"]}
    assert not any(n.startswith("heatmap") and "common_words" in n for n in names)
    assert any(n.startswith("heatmap") and "mystery_task" in n for n in names)
    assert "curve_common_words.png" in names
    assert {r["task"] for r in out["table"]} == {"common_words", "mystery_task"}


def test_a_cell_rebuilt_under_a_new_id_counts_once(tmp_path):
    """A store resumed across the within-context rule holds a cell's old record and its new one (another id):
    the report keeps the later, says so, and leaves chat and plain runs of a cell apart."""
    recs = [dict(r, config={"chat": True}) for r in make_records()]
    rebuilt = dict(recs[0], id="new-id", score=0.0, prompt_tokens=recs[0]["prompt_tokens"] - 20)
    plain = dict(recs[1], id="plain-id", config={"chat": False})  # the same cell without the chat template
    got, warnings = R.read_results(write(tmp_path / "res.jsonl", recs + [rebuilt, plain]))
    assert len(got) == len(recs) + 1
    assert [g["id"] for g in got if g["id"] in (recs[0]["id"], "new-id")] == ["new-id"]
    assert len(warnings) == 1 and warnings[0].startswith("1 record repeat an earlier cell under another id")
    r = row(R.accuracy_table([g for g in got if g["config"]["chat"]]), recs[0]["method"], recs[0]["backend"],
            recs[0]["task"], recs[0]["length"])
    assert r["n"] == 6


# ---------------------------------------------------------------- effective length (RULER's rule)


def test_effective_length_on_hand_made_curves():
    eff = R.effective_length
    assert eff({1024: 1.0, 2048: 0.9, 4096: 0.5}) == (2048, False)
    # not monotone: a later recovery does not count, the first miss ends it
    assert eff({1024: 1.0, 2048: 0.5, 4096: 1.0}) == (1024, False)
    assert eff({1024: 0.8, 2048: 1.0}) == (None, True)
    assert eff({}) == (None, False)
    assert eff({1024: 1.0, 2048: math.nan}) == (1024, False)  # no scored cell is no evidence of reach
    assert eff({4096: sum([1.0] * 19 + [0.0]) / 20}, 0.95) == (4096, False)  # 19 of 20 meets a 95% bar
    assert eff({4096: 0.9499}, 0.95) == (None, True)
    assert eff({1024: 0.856, 8192: 0.8559}) == (1024, False)  # RULER's default bar, 85.6%
    assert eff({8192: 1.0, 1024: 1.0, 4096: 0.0}) == (1024, False)  # lengths are taken in order


def _effective_column(text: str, title: str) -> dict[str, str]:
    block = next(b for b in text.split("\n\n") if b.startswith(title + "  "))
    rows = block.splitlines()[3:]
    return {r.split()[0]: r.split()[-1] for r in rows}


def test_tables_carry_each_rows_effective_length(tmp_path):
    table = R.accuracy_table(make_records())
    # worked out from score(): none is right to 1k, yarn to 2k; copy scores 0.75 (lengthwise) and 0.5 (hf);
    # the mean of none/lengthwise at 1k is (1 + 1 + 0.75) / 3 = 0.917, at 2k (0.5 + 1/6 + 0.75) / 3 = 0.47
    got = _effective_column(R.format_table(table), "smollm2-135m / none / lengthwise")
    assert got == {"passkey": "1k", "niah_single:haystack=noise": "1k", "copy": "<1k", "mean": "1k"}
    got = _effective_column(R.format_table(table), "smollm2-135m / yarn:factor=4 / hf")
    assert got == {"passkey": "2k", "niah_single:haystack=noise": "2k", "copy": "<1k", "mean": "<1k"}
    # a lower bar: copy's flat 75% now reaches the longest length
    got = _effective_column(R.format_table(table, 0.75), "smollm2-135m / none / lengthwise")
    assert got["copy"] == "4k" and got["passkey"] == "1k"
    assert "effective" not in R.format_table(table, None)
    md = R.markdown(make_records(), [], 0.95)
    assert "| task | 1k | 2k | 4k | effective (≥95%) |" in md and "at least 95%" in md
    assert "| copy | 75.0 | 75.0 | 75.0 | <1k |" in md


def test_partial_scores_that_round_below_the_bar_still_meet_it():
    # three cells of 0.95 (partial credit) average to 0.9499999999999998 in floats: 95% is met
    recs = [dict(id=f"c{i}", model="m", method="none", backend="lengthwise", task="niah_multivalue", length=1024,
                 depth=0.0, sample=i, score=0.95) for i in range(3)]
    (row,) = R.accuracy_table(recs)
    assert row["accuracy"] < 0.95  # the float mean really does round below
    assert R.effective_length({1024: row["accuracy"]}, 0.95) == (1024, False)


def test_the_mean_row_reaches_only_lengths_where_every_task_scored():
    def rec(task, length, score, i=0):
        return dict(id=f"{task}{length}{i}", model="m", method="none", backend="lengthwise", task=task,
                    length=length, depth=0.0, sample=i, score=score)
    # a: right at 1k-8k; b: 90% at 1k and 2k, untested beyond. The mean shown at 4k and 8k is a's alone.
    recs = [rec("a", n, 1.0) for n in (1024, 2048, 4096, 8192)]
    recs += [rec("b", n, float(i < 9), i) for n in (1024, 2048) for i in range(10)]
    got = _effective_column(R.format_table(R.accuracy_table(recs)), "m / none / lengthwise")
    assert got == {"a": "8k", "b": "2k", "mean": "2k"}
    # an unscored (NaN) task at 2k stops the mean there too, though the mean shown at 2k is a's 100%
    recs = [rec("a", n, 1.0) for n in (1024, 2048)] + [rec("b", 1024, 1.0), rec("b", 2048, math.nan)]
    got = _effective_column(R.format_table(R.accuracy_table(recs)), "m / none / lengthwise")
    assert got == {"a": "2k", "b": "1k", "mean": "1k"}


@pytest.mark.parametrize("bad", [math.nan, 85.6, -0.1, 1.01])
def test_a_threshold_outside_0_1_is_one_clear_error_before_anything_is_written(tmp_path, bad):
    path = write(tmp_path / "res.jsonl", make_records())
    for call in (lambda: R.effective_length({1024: 1.0}, bad), lambda: R.format_table(R.accuracy_table(make_records()), bad),
                 lambda: R.markdown(make_records(), [], bad)):
        with pytest.raises(LengthwiseError, match="outside 0-1"):
            call()
    with pytest.raises(LengthwiseError, match="outside 0-1"):
        R.report(path, tmp_path / "plots", tmp_path / "s.md", threshold=bad)
    assert not (tmp_path / "plots").exists() and not (tmp_path / "s.md").exists()


def test_no_threshold_leaves_the_column_out_everywhere(tmp_path):
    out = R.report(write(tmp_path / "res.jsonl", make_records()), tmp_path / "p", threshold=None)
    assert "effective" not in out["markdown"] and "effective" not in R.format_table(out["table"], None)


def _png_size(p):
    import struct
    head = p.read_bytes()[:24]
    return struct.unpack(">II", head[16:24])


def test_plots_percent_threshold_cividis_and_linked(tmp_path):
    """Issue 21 item 9: >= 150 dpi, colour-blind-safe map, % on every axis, the 85.6% bar drawn, markers
    that keep equal curves apart, and the Markdown links every plot."""
    recs = make_records()
    path = write(tmp_path / "run1.jsonl", recs)
    md_path = tmp_path / "out" / "summary.md"
    out = R.report(path, markdown_path=md_path)
    for p in out["plots"]:
        w, h = _png_size(p)
        assert w >= 7.0 * 150 - 1 or p.name.startswith("heatmap"), (p.name, w)
        assert h >= 1.8 * 150 - 1, (p.name, h)
        link = f"]({Path(os.path.relpath(p, md_path.parent)).as_posix()})"
        assert md_path.read_text().count(link) == 1, link
    assert out["markdown"].count("](../run1_report/") == len(out["plots"])
    # the figures themselves: read back the artists, not the pixels
    rows = R.accuracy_table(recs)
    groups = sorted({tuple(r[k] for k in R.GROUP) for r in rows}, key=R._group_key)
    curves = {g: {r["length"]: r["accuracy"] for r in rows if tuple(r[k] for k in R.GROUP) == g
                  and r["task"] == rows[0]["task"]} for g in groups}
    fig = R._curves("t", curves, groups, R.RULER_THRESHOLD)
    ax = fig.axes[0]
    assert fig.dpi >= 150 and "%" in ax.get_ylabel() and ax.get_ylim() == (0.0, 102.0)
    bars = [ln for ln in ax.lines if set(ln.get_ydata()) == {100 * R.RULER_THRESHOLD}]
    assert len(bars) == 1 and "85.6%" in bars[0].get_label()
    series = [ln for ln in ax.lines if ln not in bars]
    assert len(series) == len(groups)
    for ln, g in zip(series, groups):  # y in percent: the hand-picked accuracies times 100
        assert list(ln.get_ydata()) == pytest.approx([100 * a for _, a in sorted(curves[g].items())])
    # two series of one colour never share both line style and marker
    looks = [(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in series]
    assert len(set(looks)) == len(looks)
    assert not R._curves("t", curves, groups, None).axes[0].lines[-1].get_label().startswith("effective")
    assert R._cmap().name.startswith("cividis")
    cells = {(0.5, 1024): [1.0, 0.0], (0.5, 2048): [0.25]}
    hm = R._heatmap(("m", "none", "lengthwise", "", "niah_single"), cells)
    im = hm.axes[0].images[0]
    assert im.get_clim() == (0.0, 100.0) and "%" in hm.axes[1].get_ylabel()
    assert sorted(t.get_text() for t in hm.axes[0].texts) == ["25.0", "50.0"]


def test_a_compressed_cache_is_named_even_when_every_record_agrees(tmp_path):
    """A store run with one KV policy throughout: its tables say kv=..., never a bare heading that reads as the
    full cache; the full cache and the default cache dtype stay unnamed."""
    for cfg, want in [({"kv": "snapkv:ratio=0.5"}, "kv=snapkv:ratio=0.5"),
                      ({"kv": "full", "kv_dtype": "fp8"}, "kv_dtype=fp8"), ({"kv": "full"}, ""),
                      ({"kv": "snapkv:ratio=0.5", "kv_question": "compressed"},
                       "kv=snapkv:ratio=0.5, kv_question=compressed")]:
        recs = [dict(r, config=cfg) for r in make_records()]
        got, _ = R.read_results(write(tmp_path / "res.jsonl", recs))
        assert {row["variant"] for row in R.accuracy_table(got)} == {want}


def test_question_kept_and_compressed_stay_apart(tmp_path):
    """Two stores of one policy, the question kept out of compression in one and compressed in the other: two
    rows, never their average."""
    kept = [dict(r, config={"kv": "snapkv:ratio=0.5", "kv_question": "kept"}) for r in make_records()]
    comp = [dict(r, id=f"{r['id']}-c", score=1.0, config={"kv": "snapkv:ratio=0.5", "kv_question": "compressed"})
            for r in make_records()]
    got, _ = R.read_results(write(tmp_path / "res.jsonl", kept + comp))
    table = R.accuracy_table(got)
    both = {"kv=snapkv:ratio=0.5, kv_question=kept", "kv=snapkv:ratio=0.5, kv_question=compressed"}
    assert {row["variant"] for row in table} == both
    assert all(row["accuracy"] == 1.0 for row in table if row["variant"].endswith("compressed"))


def test_lab_mrr_by_hand_and_a_tie_ranks_nothing():
    """Two tasks, two schemes: reverse ranks nope first (50% against 20% past the training length), copy has both
    at 0% and ranks neither, so MRR is nope 1/1, rope 1/2 over reverse alone, and the tie is said."""
    recs = []
    for t, accs in [("copy", {"nope": 0.0, "rope": 0.0}), ("reverse", {"nope": 0.5, "rope": 0.2})]:
        for p, a in accs.items():
            for n in (4, 12, 16):
                recs.append(dict(task=t, pe=p, seed=0, train_max_len=8, length=n, accuracy=a if n > 8 else 1.0, n=10))
    tasks, pes, cell, mrr = R.mrr_table(recs)
    assert cell[("copy", "nope")] == (0.0, None) and cell[("reverse", "rope")] == (pytest.approx(0.2), 2)
    assert mrr == {"nope": 1.0, "rope": 0.5} and pes == ["nope", "rope"]
    text = R.format_mrr(tasks, pes, cell, mrr)
    assert "0.0 (tie)" in text and "every scheme scores the same on copy" in text
    only_ties = [r for r in recs if r["task"] == "copy"]
    _, _, _, m = R.mrr_table(only_ties)
    assert all(math.isnan(v) for v in m.values())


def test_a_reused_plot_folder_shows_only_this_report(tmp_path):
    """Plots an earlier report wrote and this one does not (a task gone from the store) are removed; a file the
    reports never wrote stays."""
    recs = make_records()
    out = tmp_path / "plots"
    first = {p.name for p in R.report(write(tmp_path / "a.jsonl", recs), out_dir=out)["plots"]}
    (out / "mine.png").write_bytes(b"not a report's")
    kept = [r for r in recs if r["task"] == "passkey"]
    second = {p.name for p in R.report(write(tmp_path / "b.jsonl", kept), out_dir=out)["plots"]}
    assert second < first and any("copy" in n for n in first - second)
    assert {p.name for p in out.glob("*.png")} == second | {"mine.png"}
