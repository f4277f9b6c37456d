"""Aggregation of per-case metrics into paper-style tables (CSV + Markdown).

Aggregation (``docs/evaluation.md``: per-class mean over cases, then the class average; mean ± std
across seeds, 3 in the published tables):

1. per class: mean (and std, ``ddof``) over cases of the not-NaN values, with the not-NaN count
   ``<metric>_n`` and the counts of missed / false-positive / both-empty cases next to it. In
   project mode only both-empty classes are NaN, so the counts say exactly what was left out.
2. ``Avg`` row: mean over classes of the per-class means (classes whose mean is NaN are left out
   and ``<metric>_n`` says how many classes were averaged).
3. over runs (seeds): mean ± std of each per-class mean and of the per-run ``Avg`` (the std of the
   class average across runs, as in ``xmed-lab/DHC:code/evaluate_Ntimes.py``), population std
   (``ddof=0``, numpy's default used there) unless told otherwise.

Dice is in percent; distances in the row's ``distance_unit`` (``mm`` or ``voxel``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scdl_monai.evaluation.files import atomic_write
from scdl_monai.evaluation.policy import REFERENCE_MODE_WARNING, ClassStatus, check_mode

__all__ = [
    "CASE_COLUMNS",
    "SUMMARY_COLUMNS",
    "AVG_INDEX",
    "case_rows_for",
    "summarize_cases",
    "combine_runs",
    "read_rows",
    "load_summary",
    "write_csv",
    "write_text",
    "format_markdown",
]

METRICS = ("dice", "asd", "hd95")
AVG_INDEX = "avg"
CASE_COLUMNS = ("case_id", "class_index", "class_name", "status", "dice", "asd", "hd95", "mode", "distance_unit")
SUMMARY_COLUMNS = (
    ("class_index", "class_name")
    + tuple(f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n"))
    + ("n_cases", "n_missed", "n_false_positive", "n_both_empty", "n_runs", "std_over", "mode", "distance_unit")
)
_FLOAT_COLUMNS = {"dice", "asd", "hd95"} | {f"{m}_{s}" for m in METRICS for s in ("mean", "std")}
_INT_COLUMNS = {f"{m}_n" for m in METRICS} | {"n_cases", "n_missed", "n_false_positive", "n_both_empty", "n_runs"}


def case_rows_for(
    case_id: str,
    result: dict[int, dict[str, Any]],
    class_names: Sequence[str],
    mode: str,
    distance_unit: str | None = None,
) -> list[dict[str, Any]]:
    """Rows (one per class) of the per-case CSV from :func:`~scdl_monai.evaluation.metrics.evaluate_case`.

    Args:
        case_id: case identifier.
        result: ``{class_index: {"dice", "asd", "hd95", "status"}}``.
        class_names: foreground names, ``class_names[c - 1]`` names class ``c``.
        mode: evaluation mode of ``result``.
        distance_unit: ``"mm"``/``"voxel"``; default ``"voxel"`` in reference mode, else ``"mm"``.

    Raises:
        ValueError: when a class index has no name.
    """
    check_mode(mode)
    unit = distance_unit or ("voxel" if mode == "reference" else "mm")
    rows = []
    for c in sorted(result):
        if not 1 <= c <= len(class_names):
            raise ValueError(f"class {c} has no name: {len(class_names)} class_names given.")
        r = result[c]
        rows.append(
            {
                "case_id": str(case_id),
                "class_index": int(c),
                "class_name": class_names[c - 1],
                "status": str(r["status"]),
                **{m: float(r[m]) for m in METRICS},
                "mode": mode,
                "distance_unit": unit,
            }
        )
    return rows


def _single(rows: Sequence[dict[str, Any]], key: str, what: str) -> str:
    values = sorted({str(r[key]) for r in rows})
    if len(values) != 1:
        raise ValueError(f"{what} mixes {key} values {values}; evaluate each {key} separately.")
    return values[0]


def _stats(values: Sequence[float], ddof: int) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(v, ddof=ddof)) if v.size > ddof else math.nan
    return float(v.mean()), std, int(v.size)


def summarize_cases(case_rows: Sequence[dict[str, Any]], ddof: int = 0) -> list[dict[str, Any]]:
    """Per-class mean/std/not-NaN count over cases, plus the ``Avg`` (class average) row.

    Args:
        case_rows: rows as made by :func:`case_rows_for` (one mode and unit).
        ddof: delta degrees of freedom of the std over cases.

    Returns:
        Rows with :data:`SUMMARY_COLUMNS`; the last has ``class_index == "avg"`` (its std is NaN:
        the spread of a single run is given per class).

    Raises:
        ValueError: for no rows or mixed modes/units.
    """
    if not case_rows:
        raise ValueError("case_rows is empty: nothing to summarize.")
    mode = _single(case_rows, "mode", "case_rows")
    unit = _single(case_rows, "distance_unit", "case_rows")
    by_class: dict[int, list[dict[str, Any]]] = {}
    for r in case_rows:
        by_class.setdefault(int(r["class_index"]), []).append(r)
    out = []
    for c in sorted(by_class):
        rows = by_class[c]
        status = [str(r["status"]) for r in rows]
        row: dict[str, Any] = {"class_index": c, "class_name": rows[0]["class_name"]}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_n"] = _stats([float(r[m]) for r in rows], ddof)
        row.update(
            n_cases=len({r["case_id"] for r in rows}),
            n_missed=status.count(ClassStatus.MISSED.value),
            n_false_positive=status.count(ClassStatus.FALSE_POSITIVE.value),
            n_both_empty=status.count(ClassStatus.BOTH_EMPTY.value),
            n_runs=1,
            std_over="cases",
            mode=mode,
            distance_unit=unit,
        )
        out.append(row)
    out.append(_average_row(out, std_over="cases"))
    return out


def _average_row(class_rows: Sequence[dict[str, Any]], std_over: str) -> dict[str, Any]:
    row: dict[str, Any] = {"class_index": AVG_INDEX, "class_name": "Avg"}
    for m in METRICS:
        mean, _, n = _stats([float(r[f"{m}_mean"]) for r in class_rows], 0)
        row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_n"] = mean, math.nan, n
    for k in ("n_missed", "n_false_positive", "n_both_empty"):
        row[k] = int(sum(int(r[k]) for r in class_rows))
    row.update(
        n_cases=max(int(r["n_cases"]) for r in class_rows),
        n_runs=max(int(r["n_runs"]) for r in class_rows),
        std_over=std_over,
        mode=class_rows[0]["mode"],
        distance_unit=class_rows[0]["distance_unit"],
    )
    return row


def combine_runs(
    runs: Sequence[Sequence[dict[str, Any]]], names: Sequence[str] | None = None, ddof: int = 0
) -> list[dict[str, Any]]:
    """Mean ± std over runs (seeds) of per-run summaries from :func:`summarize_cases`.

    Args:
        runs: one summary (list of rows incl. the ``Avg`` row) per run.
        names: run names for error messages (e.g. the CSV paths).
        ddof: delta degrees of freedom of the std over runs (0 = population std, as upstream).

    Returns:
        Rows with :data:`SUMMARY_COLUMNS`: ``<m>_mean``/``<m>_std`` over runs, ``<m>_n`` = runs with a
        value, counts summed over runs, ``std_over == "runs"``. The ``Avg`` row is the mean ± std of
        the per-run class averages.

    Raises:
        ValueError: for no runs, or runs whose classes, mode or unit differ.
    """
    if not runs:
        raise ValueError("runs is empty: give at least one summary.")
    names = list(names) if names is not None else [f"run {i}" for i in range(len(runs))]
    ref_classes = [(str(r["class_index"]), str(r["class_name"])) for r in runs[0]]
    for name, run in zip(names, runs):
        classes = [(str(r["class_index"]), str(r["class_name"])) for r in run]
        if classes != ref_classes:
            raise ValueError(f"{name}: classes {classes} differ from {names[0]}: {ref_classes}.")
        if run and str(run[0].get("std_over")) == "runs":
            raise ValueError(f"{name} is already a combined (over-runs) table; give per-run summaries.")
    flat = [r for run in runs for r in run]
    mode = _single(flat, "mode", "runs")
    unit = _single(flat, "distance_unit", "runs")
    out = []
    for i, (idx, cname) in enumerate(ref_classes):
        rows = [run[i] for run in runs]
        row: dict[str, Any] = {"class_index": rows[0]["class_index"], "class_name": cname}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_n"] = _stats([float(r[f"{m}_mean"]) for r in rows], ddof)
        for k in ("n_missed", "n_false_positive", "n_both_empty"):
            row[k] = int(sum(int(r[k]) for r in rows))
        row.update(
            n_cases=max(int(r["n_cases"]) for r in rows),
            n_runs=len(rows),
            std_over="runs",
            mode=mode,
            distance_unit=unit,
        )
        out.append(row)
    return out


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a CSV written by this module, converting numbers ("nan" stays NaN).

    Raises:
        FileNotFoundError / ValueError: naming the file when missing, empty or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV not found: {path}")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} holds no rows.")
    out = []
    for i, r in enumerate(rows, start=2):
        row: dict[str, Any] = dict(r)
        try:
            for k in r:
                if k in _FLOAT_COLUMNS:
                    row[k] = float(r[k]) if r[k] not in ("", None) else math.nan
                elif k in _INT_COLUMNS:
                    row[k] = int(float(r[k]))
            if "class_index" in r and r["class_index"] != AVG_INDEX:
                row["class_index"] = int(r["class_index"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}, line {i}: {err}") from None
        out.append(row)
    return out


def load_summary(path: str | Path, ddof: int = 0) -> list[dict[str, Any]]:
    """A per-run summary from ``summary.csv`` or, summarized on the fly, from ``cases.csv``.

    Raises:
        ValueError: naming the file when its columns are neither.
    """
    rows = read_rows(path)
    columns = set(rows[0])
    if set(CASE_COLUMNS) <= columns:
        return summarize_cases(rows, ddof=ddof)
    if set(SUMMARY_COLUMNS) <= columns:
        return rows
    raise ValueError(
        f"{path} is neither a per-case CSV (columns {list(CASE_COLUMNS)}) nor a summary CSV written by "
        f"'evaluate'; its columns are {sorted(columns)}."
    )


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(round(v, 6))
    return v


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Write rows to CSV atomically (temp file + ``os.replace``); NaN is written as ``nan``."""
    columns = list(columns or rows[0].keys())

    def _write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _cell(r.get(k, "")) for k in columns})

    return atomic_write(path, _write)


def write_text(text: str, path: str | Path) -> Path:
    """Write text atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _fmt(mean: float, std: float, with_std: bool, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    if with_std and not math.isnan(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def format_markdown(rows: Sequence[dict[str, Any]], title: str | None = None, digits: int = 2) -> str:
    """Markdown tables of a summary (:func:`summarize_cases`) or a combined table (:func:`combine_runs`).

    A long table (one row per class with not-NaN counts and empty-class counts) and a paper-style
    row (Avg Dice, Avg ASD, then the Dice of each organ). Over runs, cells read ``mean ± std``.
    Reference-mode tables carry :data:`~scdl_monai.evaluation.policy.REFERENCE_MODE_WARNING`.
    """
    over_runs = str(rows[0]["std_over"]) == "runs"
    unit = "vox" if str(rows[0]["distance_unit"]) == "voxel" else str(rows[0]["distance_unit"])
    lines = []
    if title:
        lines += [f"### {title}", ""]
    if str(rows[0]["mode"]) == "reference" and (not title or "REFERENCE MODE" not in title):
        lines += [f"> {REFERENCE_MODE_WARNING}", ""]
    count_head = "runs" if over_runs else "valid/cases"
    lines.append(f"| Class | Dice (%) | ASD ({unit}) | HD95 ({unit}) | {count_head} | missed | FP | both empty |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [_fmt(float(r[f"{m}_mean"]), float(r[f"{m}_std"]), over_runs, digits) for m in METRICS]
        if str(r["class_index"]) == AVG_INDEX:
            count = f"{r['dice_n']} classes"
        elif over_runs:
            count = f"{r['dice_n']}/{r['n_runs']}"
        else:
            count = f"{r['dice_n']}/{r['n_cases']}"
        name = f"**{r['class_name']}**" if str(r["class_index"]) == AVG_INDEX else str(r["class_name"])
        counts = f"{count} | {r['n_missed']} | {r['n_false_positive']} | {r['n_both_empty']}"
        lines.append(f"| {name} | {' | '.join(cells)} | {counts} |")
    classes = [r for r in rows if str(r["class_index"]) != AVG_INDEX]
    avg = [r for r in rows if str(r["class_index"]) == AVG_INDEX]
    if avg:
        a = avg[0]
        lines += ["", "Paper-style row (Dice %):", ""]
        head = ["Avg Dice", f"Avg ASD ({unit})"] + [str(r["class_name"]) for r in classes]
        vals = [
            _fmt(float(a["dice_mean"]), float(a["dice_std"]), over_runs, digits),
            _fmt(float(a["asd_mean"]), float(a["asd_std"]), over_runs, digits),
        ] + [_fmt(float(r["dice_mean"]), float(r["dice_std"]), False, 1) for r in classes]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(vals) + " |"]
    return "\n".join(lines) + "\n"
