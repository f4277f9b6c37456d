"""Per-case, per-class Dice / ASD / HD95 and folder evaluation.

Built on MONAI's metric functions (``monai.metrics.compute_dice``,
``compute_average_surface_distance``, ``compute_hausdorff_distance``); what happens when a mask is
empty is decided only in :mod:`scdl_monai.evaluation.policy`. Protocol: ``docs/evaluation.md``.

Two modes:

* ``"project"`` (default): Dice ×100; ASD = MONAI's *symmetric* average surface distance (the mean
  over the pooled pred->GT and GT->pred edge distances) and HD95 = MONAI's 95th-percentile
  symmetric Hausdorff distance, both in **mm** using the voxel spacing of the image header;
  empty classes per the project policy (cap = image diagonal in mm, both empty -> NaN, counted).
* ``"reference"``: what a reference test script scores (``reference="dhc"``, ``"genericssl"``,
  ``"ga"`` or ``"magicnet"``; :data:`scdl_monai.evaluation.policy.REFERENCE_CONVENTIONS`):
  medpy-style Dice ×100 and medpy ``asd(pred, gt)`` — the *directed* mean distance from the
  predicted surface to the GT surface (what every upstream script calls ASD) — in **voxels** of the
  evaluation grid (unit spacing), with that script's empty-class values. HD95 is MONAI's symmetric
  HD95 in voxels (medpy ``hd95``; reported upstream by MagicNet only). :func:`evaluate_folder` with
  ``grid=`` first nearest-resizes the label (and for ``"ga"`` the prediction) onto the reference's
  own grid (:mod:`scdl_monai.evaluation.grid`), as the scripts do.

Surface voxels are the mask minus its erosion by the face-connected cross (MONAI ``get_mask_edges``,
the same definition as medpy's ``connectivity=1``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

from scdl_monai.evaluation.files import load_label_volume, pair_files, read_case_ids
from scdl_monai.evaluation.grid import parse_grid, resize_nearest
from scdl_monai.evaluation.policy import (
    check_mode,
    check_reference,
    class_status,
    empty_class_values,
    reference_warning,
    resolve_distance_cap,
)

__all__ = ["METRIC_KEYS", "evaluate_case", "evaluate_folder", "resolve_class_names", "EvaluationResult"]

METRIC_KEYS = ("dice", "asd", "hd95")


def _as_label_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]  # channel-first (1, *spatial)
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D/3D label map (optionally (1, *spatial)), got shape {x.shape}.")
    if x.dtype.kind == "b":
        return x.astype(np.int64)
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)) or not np.array_equal(x, np.round(x)):
            raise ValueError(f"{name} must hold integer class indices, found non-integer values.")
    elif x.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer/float/bool array, got dtype {x.dtype}.")
    return x.astype(np.int64)


def _check_range(x: np.ndarray, num_classes: int, name: str) -> None:
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= num_classes:
        bad = sorted(int(v) for v in np.unique(x) if v < 0 or v >= num_classes)
        raise ValueError(
            f"{name} holds label values {bad[:10]} outside [0, num_classes-1] = [0, {num_classes - 1}]; "
            "check num_classes / the dataset."
        )


def evaluate_case(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    mode: str = "project",
    distance_cap: str | float = "diagonal",
    include_hd95: bool = True,
    reference: str = "dhc",
) -> dict[int, dict[str, Any]]:
    """Dice, ASD and HD95 of every foreground class of one case.

    Args:
        pred: predicted class indices, shape ``(H, W[, D])`` or ``(1, H, W, D)``.
        label: ground-truth class indices, same shape as ``pred``.
        num_classes: C, including background; classes ``1..C-1`` are scored.
        spacing: voxel size per spatial axis (mm) from the image header; ``None`` = 1 (distances
            then in voxels). Ignored (with a warning) in reference mode, which is in voxels.
        mode: ``"project"`` (mm, project empty-class policy) or ``"reference"`` (DHC/GenericSSL
            conventions, see module docstring).
        distance_cap: project-mode distance for a missed organ / false positive:
            ``"diagonal"`` (image diagonal) or a number (same unit as distances).
        include_hd95: compute HD95 (NaN in the output when False).
        reference: reference-mode convention (``"dhc"``, ``"genericssl"``, ``"ga"``,
            ``"magicnet"``; :data:`~scdl_monai.evaluation.policy.REFERENCE_CONVENTIONS`): the
            empty-class values and whether an all-background prediction zeroes every class.

    Returns:
        ``{c: {"dice": %, "asd": d, "hd95": d, "status": ClassStatus value}}`` for ``c = 1..C-1``.
        Distances are in mm (project mode with spacing) or voxels.

    Raises:
        ValueError: for mismatched shapes, bad ``num_classes``/``spacing``/``mode``, non-integer
            labels or label values ``>= num_classes``.

    Example:
        >>> p = np.zeros((8, 8, 8), int); p[2:5, 2:5, 2:5] = 1
        >>> evaluate_case(p, p, num_classes=2)[1]["dice"]
        100.0
    """
    check_mode(mode)
    convention = check_reference(reference)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (background + 1 class), got num_classes={num_classes!r}.")
    pred_a = _as_label_array(pred, "pred")
    label_a = _as_label_array(label, "label")
    if pred_a.shape != label_a.shape:
        raise ValueError(f"pred shape {pred_a.shape} does not match label shape {label_a.shape}.")
    _check_range(pred_a, num_classes, "pred")
    _check_range(label_a, num_classes, "label")
    ndim = label_a.ndim
    if spacing is not None:
        spacing = tuple(float(s) for s in np.asarray(spacing, dtype=float).reshape(-1))
        if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must hold {ndim} positive numbers, got spacing={spacing}.")
    if mode == "reference":
        if spacing is not None and any(abs(s - 1.0) > 1e-6 for s in spacing):
            warnings.warn(f"mode='reference' measures distances in voxels; spacing={spacing} is ignored.", stacklevel=2)
        spacing = None  # upstream medpy calls pass no voxelspacing
    cap = resolve_distance_cap(distance_cap, label_a.shape, spacing) if mode == "project" else math.nan

    # GALoss / MagicNet: ``if np.sum(prediction) == 0`` -> every class of the case scores 0.
    zero_case = mode == "reference" and convention.empty_prediction_zeroes_case and not bool((pred_a > 0).any())
    results: dict[int, dict[str, Any]] = {}
    for c in range(1, int(num_classes)):
        p = pred_a == c
        g = label_a == c
        status = class_status(bool(p.any()), bool(g.any()))
        values = (0.0, 0.0, 0.0) if zero_case else empty_class_values(status, mode, cap, reference)
        if values is None:
            values = _present_class_metrics(p, g, spacing, mode, include_hd95)
        dice, asd, hd95 = values
        if not include_hd95:
            hd95 = math.nan
        results[c] = {"dice": float(dice), "asd": float(asd), "hd95": float(hd95), "status": status.value}
    return results


def _present_class_metrics(
    p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...] | None, mode: str, include_hd95: bool
) -> tuple[float, float, float]:
    """Metrics of one class whose prediction and ground truth are both non-empty."""
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about its own internal use of a deprecated get_mask_edges argument.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        return _present_class_metrics_impl(p, g, spacing, mode, include_hd95)


def _present_class_metrics_impl(
    p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...] | None, mode: str, include_hd95: bool
) -> tuple[float, float, float]:
    pt = torch.from_numpy(p)[None, None].float()  # (B=1, C=1, *spatial), one-hot of this class
    gt = torch.from_numpy(g)[None, None].float()
    # medpy dc = 2|P∩G| / (|P| + |G|) = MONAI Dice on one binary channel.
    dice = 100.0 * float(compute_dice(pt, gt, include_background=True)[0, 0])
    # reference: medpy asd(pred, gt) is directed pred -> GT; project: symmetric.
    asd = float(
        compute_average_surface_distance(
            pt, gt, include_background=True, symmetric=(mode == "project"), spacing=spacing
        )[0, 0]
    )
    hd95 = math.nan
    if include_hd95:
        hd95 = float(
            compute_hausdorff_distance(pt, gt, include_background=True, percentile=95, spacing=spacing)[0, 0]
        )
    return dice, asd, hd95


def resolve_class_names(
    dataset: str | None = None, num_classes: int | None = None, class_names: Sequence[str] | None = None
) -> tuple[int, tuple[str, ...]]:
    """Number of classes and the names of the foreground classes ``1..C-1``.

    Sources, in order: explicit ``class_names`` (foreground only, or all C names starting with
    ``"background"``), the dataset's ``organ_names`` (:func:`scdl_monai.data.datasets.get_dataset`),
    or ``"class_<c>"`` when only ``num_classes`` is given.

    Raises:
        ValueError: when nothing is given, or the sources disagree on the number of classes.
    """
    names: tuple[str, ...] | None = None
    if class_names is not None:
        if isinstance(class_names, str):
            class_names = [n.strip() for n in class_names.strip("[]()").split(",") if n.strip()]
        names = tuple(str(n) for n in class_names)
        if names and names[0].lower() == "background":
            names = names[1:]
    elif dataset is not None:
        from scdl_monai.data.datasets import get_dataset

        names = tuple(get_dataset(dataset).organ_names)
    if names is not None:
        if num_classes is not None and int(num_classes) != len(names) + 1:
            raise ValueError(
                f"num_classes={num_classes} does not match the {len(names)} foreground class names "
                f"(expected num_classes={len(names) + 1})."
            )
        if not names:
            raise ValueError("class_names is empty.")
        return len(names) + 1, names
    if num_classes is None:
        raise ValueError("give dataset, num_classes or class_names so the classes are known.")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got num_classes={num_classes!r}.")
    return int(num_classes), tuple(f"class_{c}" for c in range(1, int(num_classes)))


class EvaluationResult(NamedTuple):
    """Output of :func:`evaluate_folder`: table rows and the files written (empty without out_dir)."""

    case_rows: list[dict[str, Any]]
    summary_rows: list[dict[str, Any]]
    paths: dict[str, Path]


def evaluate_folder(
    pred_dir: str | Path,
    label_dir: str | Path,
    num_classes: int | None = None,
    out_dir: str | Path | None = None,
    dataset: str | None = None,
    class_names: Sequence[str] | None = None,
    mode: str = "project",
    distance_cap: str | float = "diagonal",
    case_ids: str | Path | Sequence[str] | None = None,
    strict: bool = True,
    include_hd95: bool = True,
    check_affine: bool = True,
    plot: bool = True,
    reference: str = "dhc",
    grid: Sequence[int] | str | None = None,
) -> EvaluationResult:
    """Evaluate every predicted NIfTI of ``pred_dir`` against its label in ``label_dir``.

    Files are paired by case id (:func:`scdl_monai.evaluation.files.pair_files`); the spacing is
    read from the label's affine. Writes (atomically) ``cases.csv``, ``summary.csv``,
    ``summary.md`` and ``summary.png`` into ``out_dir`` when given.

    Args:
        pred_dir: folder of predictions (searched recursively, so MONAI ``SaveImage`` sub-folders work).
        label_dir: folder of labels (top level only).
        num_classes: C incl. background; may be inferred from ``dataset`` / ``class_names``.
        out_dir: where to write the tables; ``None`` writes nothing.
        dataset: ``"synapse"`` / ``"amos"`` for organ names and C.
        class_names: explicit foreground class names (overrides ``dataset``).
        mode: ``"project"`` or ``"reference"`` (see :func:`evaluate_case`).
        distance_cap: project-mode penalty distance (``"diagonal"`` or mm).
        case_ids: restrict to these ids (a list, or a split file with one id per line).
        strict: error when a label has no prediction (a prediction without label is always an error).
        include_hd95: compute HD95.
        check_affine: error when prediction and label orientations differ; warn on spacing mismatch.
        plot: write the bar chart.
        reference: reference-mode convention (see :func:`evaluate_case`).
        grid: reference mode only: the reference's evaluation grid, e.g. ``(160, 160, 80)`` (the
            bundle's ``resize_grid``). Each label is nearest-resized onto it
            (:func:`scdl_monai.evaluation.grid.resize_nearest`); the prediction must already be on
            it (a bundle's ``eval/predictions_grid/``), except for ``reference="ga"``, whose script
            nearest-resizes the prediction as well. ``None``: the arrays are scored as stored.

    Raises:
        ValueError / FileNotFoundError: naming the file for unmatched files, shape or orientation
            mismatches, unreadable files or out-of-range labels.
    """
    from scdl_monai.evaluation.tables import (
        CASE_COLUMNS,
        SUMMARY_COLUMNS,
        case_rows_for,
        format_markdown,
        summarize_cases,
        write_csv,
        write_text,
    )

    check_mode(mode)
    convention = check_reference(reference)
    grid = parse_grid(grid)
    if grid is not None and mode != "reference":
        raise ValueError(
            f"grid={grid} is for mode='reference' (the reference's evaluation grid); project mode scores on "
            "the original image grid."
        )
    num_classes, names = resolve_class_names(dataset, num_classes, class_names)
    ids = read_case_ids(case_ids) if case_ids is not None else None
    pairs = pair_files(pred_dir, label_dir, case_ids=ids, strict=strict)
    case_rows: list[dict[str, Any]] = []
    for case_id, pred_path, label_path in pairs:
        label, spacing, label_axcodes = load_label_volume(label_path)
        pred, pred_spacing, pred_axcodes = load_label_volume(pred_path)
        if grid is not None:
            try:
                label = resize_nearest(label, grid)
                if convention.resizes_prediction:
                    pred = resize_nearest(pred, grid)
            except ValueError as err:
                raise ValueError(f"case {case_id!r}: {err}") from None
            if pred.shape != grid:
                raise ValueError(
                    f"case {case_id!r}: prediction {pred_path} has shape {pred.shape}, not the evaluation grid "
                    f"{grid}; reference={reference!r} scores predictions made on that grid (a bundle's "
                    "eval/predictions_grid/)."
                )
        if pred.shape != label.shape:
            raise ValueError(
                f"shape mismatch for case {case_id!r}: prediction {pred_path} has shape {pred.shape}, "
                f"label {label_path} has shape {label.shape}."
            )
        if check_affine:
            if pred_axcodes != label_axcodes:
                raise ValueError(
                    f"orientation mismatch for case {case_id!r}: prediction {pred_path} is {''.join(pred_axcodes)}, "
                    f"label {label_path} is {''.join(label_axcodes)} "
                    "(pass check_affine=False to compare the arrays as stored)."
                )
            if grid is None and not np.allclose(pred_spacing, spacing, rtol=1e-3, atol=1e-4):
                warnings.warn(
                    f"spacing of prediction {pred_path} {tuple(pred_spacing)} differs from label {label_path} "
                    f"{tuple(spacing)}; using the label's.",
                    stacklevel=2,
                )
        try:
            result = evaluate_case(
                pred,
                label,
                num_classes,
                spacing=spacing if mode == "project" else None,
                mode=mode,
                distance_cap=distance_cap,
                include_hd95=include_hd95,
                reference=reference,
            )
        except ValueError as err:
            raise ValueError(f"case {case_id!r} ({pred_path} vs {label_path}): {err}") from None
        case_rows.extend(case_rows_for(case_id, result, names, mode))
    summary_rows = summarize_cases(case_rows)

    paths: dict[str, Path] = {}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths["cases"] = write_csv(case_rows, out / "cases.csv", CASE_COLUMNS)
        paths["summary"] = write_csv(summary_rows, out / "summary.csv", SUMMARY_COLUMNS)
        title = f"{len(pairs)} cases, mode={mode}"
        if mode == "reference":
            on = f"grid {list(grid)}" if grid is not None else "the stored arrays (no grid given)"
            title += f", reference={reference}, scored on {on}\n\n> {reference_warning(reference)}"
        paths["markdown"] = write_text(format_markdown(summary_rows, title=title), out / "summary.md")
        if plot:
            from scdl_monai.evaluation.plots import plot_class_bars

            paths["plot"] = plot_class_bars(summary_rows, out / "summary.png", title=f"mode={mode}")
    return EvaluationResult(case_rows, summary_rows, paths)
