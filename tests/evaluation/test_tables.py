"""Tests of aggregation: per-class means with not-NaN counts, class average, mean ± std over runs."""

import math

import numpy as np
import pytest

from scdl_monai.evaluation.plots import plot_class_bars
from scdl_monai.evaluation.tables import (
    SUMMARY_COLUMNS,
    case_rows_for,
    combine_runs,
    format_markdown,
    load_summary,
    read_rows,
    summarize_cases,
    write_csv,
)

NAMES = ("liver", "spleen")
NAN = math.nan


def _rows(per_case, mode="project"):
    """per_case: {case_id: {class: (dice, asd, hd95, status)}}."""
    rows = []
    for cid, classes in per_case.items():
        result = {c: dict(zip(("dice", "asd", "hd95", "status"), v)) for c, v in classes.items()}
        rows += case_rows_for(cid, result, NAMES, mode)
    return rows


CASES = _rows(
    {
        "a": {1: (80.0, 2.0, 4.0, "present"), 2: (NAN, NAN, NAN, "both_empty")},
        "b": {1: (60.0, 4.0, 8.0, "present"), 2: (0.0, 50.0, 50.0, "missed")},
        "c": {1: (0.0, 50.0, 50.0, "false_positive"), 2: (90.0, 1.0, 2.0, "present")},
    }
)


def _by_index(rows):
    return {r["class_index"]: r for r in rows}


def test_per_class_mean_std_and_counts():
    s = _by_index(summarize_cases(CASES))
    liver, spleen, avg = s[1], s[2], s["avg"]
    assert liver["dice_mean"] == pytest.approx(140 / 3)
    assert liver["dice_std"] == pytest.approx(np.std([80, 60, 0]))
    assert liver["dice_n"] == 3 and liver["n_false_positive"] == 1 and liver["n_missed"] == 0
    # the both-empty case is excluded, not silently dropped: counted and n = 2 of 3
    assert spleen["dice_mean"] == pytest.approx(45.0) and spleen["asd_mean"] == pytest.approx(25.5)
    assert spleen["dice_n"] == 2 and spleen["n_cases"] == 3 and spleen["n_both_empty"] == 1
    assert spleen["n_missed"] == 1
    # class average of the per-class means
    assert avg["dice_mean"] == pytest.approx((140 / 3 + 45) / 2) and avg["dice_n"] == 2
    assert avg["n_missed"] == 1 and avg["n_both_empty"] == 1 and math.isnan(avg["dice_std"])


def test_class_with_no_valid_case_is_nan_and_left_out_of_avg_with_count():
    rows = _rows({"a": {1: (50.0, 1.0, 1.0, "present"), 2: (NAN, NAN, NAN, "both_empty")}})
    s = _by_index(summarize_cases(rows))
    assert math.isnan(s[2]["dice_mean"]) and s[2]["dice_n"] == 0
    assert s["avg"]["dice_mean"] == 50.0 and s["avg"]["dice_n"] == 1


def test_mixed_modes_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        summarize_cases(CASES + _rows({"z": {1: (1.0, 0.0, 0.0, "both_empty")}}, mode="reference"))


def test_mean_and_std_over_runs():
    runs = []
    for shift in (0.0, 10.0, 20.0):
        rows = _rows({"a": {1: (50.0 + shift, 2.0, 3.0, "present"), 2: (70.0 + shift, 4.0, 5.0, "present")}})
        runs.append(summarize_cases(rows))
    t = _by_index(combine_runs(runs))
    assert t[1]["dice_mean"] == pytest.approx(60.0)
    assert t[1]["dice_std"] == pytest.approx(np.std([50, 60, 70]))  # population std, as upstream
    assert t["avg"]["dice_mean"] == pytest.approx(70.0)
    assert t["avg"]["dice_std"] == pytest.approx(np.std([60, 70, 80]))
    assert t[1]["n_runs"] == 3 and t[1]["std_over"] == "runs"
    t1 = _by_index(combine_runs(runs, ddof=1))
    assert t1[1]["dice_std"] == pytest.approx(10.0)
    md = format_markdown(list(t.values()))
    assert "60.00 ± 8.16" in md and "Avg Dice" in md


def test_runs_must_agree():
    a = summarize_cases(CASES)
    b = summarize_cases(_rows({"a": {1: (1.0, 1.0, 1.0, "present")}}))
    with pytest.raises(ValueError, match="run 1: classes"):
        combine_runs([a, b])
    with pytest.raises(ValueError, match="already a combined"):
        combine_runs([combine_runs([a, a])])


def test_csv_round_trip_keeps_nan_and_counts(tmp_path):
    summary = summarize_cases(CASES)
    write_csv(summary, tmp_path / "summary.csv", SUMMARY_COLUMNS)
    write_csv(CASES, tmp_path / "cases.csv")
    text = (tmp_path / "cases.csv").read_text()
    assert "nan" in text and "both_empty" in text
    back = read_rows(tmp_path / "summary.csv")
    assert back[1]["dice_n"] == 2 and back[1]["dice_mean"] == pytest.approx(45.0)
    # a per-case CSV is summarized on the fly to the same numbers
    from_cases = load_summary(tmp_path / "cases.csv")
    assert from_cases[1]["dice_mean"] == pytest.approx(back[1]["dice_mean"])
    (tmp_path / "other.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="other.csv is neither"):
        load_summary(tmp_path / "other.csv")


def test_reference_markdown_is_flagged():
    rows = _rows({"a": {1: (1.0, 0.0, 0.0, "both_empty"), 2: (0.0, 128.0, 128.0, "missed")}}, mode="reference")
    md = format_markdown(summarize_cases(rows))
    assert "REFERENCE MODE" in md and "scale bug" in md and "ASD (vox)" in md


def test_bar_chart_png(tmp_path):
    path = plot_class_bars(summarize_cases(CASES), tmp_path / "bars.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
