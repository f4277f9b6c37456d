"""Command-line commands ``evaluate`` and ``table`` (run as ``python -m scdl_monai.evaluation``).

Every user error (bad path, unmatched files, shape mismatch, bad option) ends the program with
exit status 1 and one ``error: ...`` line on stderr; outputs are written atomically.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["evaluate", "table", "parse_list"]


def _user_errors_exit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ValueError/TypeError/OSError into ``SystemExit("error: ...")`` (status 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError, OSError) as err:
            raise SystemExit(f"error: {err}") from None

    return wrapper


def _check_out_dir(out_dir: str) -> None:
    """Refuse an output folder that cannot be written before any metric is computed."""
    from scdl_monai.engines.preflight import check_writable

    problems = check_writable(out_dir, "out_dir")
    if problems:
        raise ValueError(problems[0])


def parse_list(value: str | Sequence[str]) -> list[str]:
    """A list from fire: already a list/tuple, or a string ``"[a,b]"`` / ``"a,b"`` (paths stay strings)."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith(("[", "(")) and text.endswith(("]", ")")):
        text = text[1:-1]
    return [v.strip().strip("'\"") for v in text.split(",") if v.strip()]


@_user_errors_exit
def evaluate(
    pred_dir: str,
    label_dir: str,
    out_dir: str,
    dataset: str | None = None,
    num_classes: int | None = None,
    class_names: str | Sequence[str] | None = None,
    mode: str = "project",
    distance_cap: str | float = "diagonal",
    split: str | Sequence[str] | None = None,
    strict: bool = True,
    hd95: bool = True,
    check_affine: bool = True,
    plot: bool = True,
    reference: str = "dhc",
    grid: str | Sequence[int] | None = None,
) -> None:
    """Evaluate predicted NIfTI label maps against labels; write cases.csv, summary.csv/.md/.png.

    Args:
        pred_dir: folder of predictions (recursive); paired with labels by case id
            (``label0001.nii.gz`` <-> ``0001.nii.gz`` / ``img0001_seg.nii.gz``, see
            ``scdl_monai.evaluation.files``).
        label_dir: folder of ground-truth labels.
        out_dir: output folder.
        dataset: ``synapse`` or ``amos`` (organ names and number of classes).
        num_classes: C incl. background (needed without dataset/class_names).
        class_names: foreground class names, e.g. ``"[liver,spleen]"``.
        mode: ``project`` (mm on the original grid, documented empty-class policy) or ``reference``
            (what a reference test script scores: voxels of its grid, its empty-class values).
        distance_cap: project-mode distance for a missed organ / false positive: ``diagonal`` or mm.
        split: split file (one id per line) or ``"[id1,id2]"``: evaluate exactly these cases.
        strict: error when a label has no prediction.
        hd95: compute HD95.
        check_affine: error when prediction and label orientations differ.
        plot: write summary.png.
        reference: reference-mode convention: ``dhc`` (DHC, CPS, supervised), ``genericssl``,
            ``ga`` (GA-CPS, GA-MagicNet) or ``magicnet``; see docs/evaluation.md.
        grid: reference mode: the reference's evaluation grid, e.g. ``"[160,160,80]"`` (the
            bundle's ``resize_grid``); labels are nearest-resized onto it. Give the bundle's
            ``eval/predictions_grid`` as ``pred_dir``.
    """
    from scdl_monai.evaluation.metrics import evaluate_folder

    _check_out_dir(out_dir)
    if class_names is not None and isinstance(class_names, str):
        class_names = parse_list(class_names)
    if isinstance(split, (list, tuple)):
        split = [str(s) for s in split]
    result = evaluate_folder(
        pred_dir,
        label_dir,
        num_classes=num_classes,
        out_dir=out_dir,
        dataset=dataset,
        class_names=class_names,
        mode=mode,
        distance_cap=distance_cap,
        case_ids=split,
        strict=strict,
        include_hd95=hd95,
        check_affine=check_affine,
        plot=plot,
        reference=reference,
        grid=grid,
    )
    print(Path(result.paths["markdown"]).read_text())
    print("wrote: " + ", ".join(str(p) for p in result.paths.values()))


@_user_errors_exit
def table(runs: str | Sequence[str], out_dir: str, ddof: int = 0, plot: bool = True) -> None:
    """Mean ± std over runs (seeds): writes runs_summary.csv/.md/.png.

    Args:
        runs: ``"[run0/summary.csv,run1/summary.csv,...]"`` (per-case ``cases.csv`` files work too).
        out_dir: output folder.
        ddof: std degrees of freedom (0 = population std, as in the DHC/GenericSSL scripts).
        plot: write runs_summary.png.
    """
    from scdl_monai.evaluation.tables import (
        SUMMARY_COLUMNS,
        combine_runs,
        format_markdown,
        load_summary,
        write_csv,
        write_text,
    )

    _check_out_dir(out_dir)
    paths = parse_list(runs)
    if not paths:
        raise ValueError(f"runs must list at least one CSV, got runs={runs!r}.")
    if isinstance(ddof, bool) or not isinstance(ddof, int) or ddof < 0:
        raise ValueError(f"ddof must be an int >= 0, got ddof={ddof!r}.")
    summaries = [load_summary(p) for p in paths]
    rows = combine_runs(summaries, names=paths, ddof=ddof)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = format_markdown(rows, title=f"mean ± std over {len(paths)} runs (ddof={ddof})")
    written = [write_csv(rows, out / "runs_summary.csv", SUMMARY_COLUMNS), write_text(md, out / "runs_summary.md")]
    if plot:
        from scdl_monai.evaluation.plots import plot_class_bars

        written.append(plot_class_bars(rows, out / "runs_summary.png", title=f"{len(paths)} runs"))
    print(md)
    print("wrote: " + ", ".join(str(p) for p in written))
