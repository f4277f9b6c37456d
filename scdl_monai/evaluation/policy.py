"""The empty-class policy: the ONE place that decides what a metric is when a mask is empty.

Surface distances are undefined when the prediction or the ground truth of a class is empty, and
Dice is 0/0 when both are. Libraries answer differently (MONAI: HD95 NaN, ASD inf, Dice NaN;
medpy: an exception), and a silent NaN makes an average *improve* as more organs are missed
(``../shared/spec/PROTOCOL.md`` §4). Every metric in :mod:`scdl_monai.evaluation` therefore asks
:func:`empty_class_values` for the numbers of the three empty cases.

Per class ``c`` of one case the status is one of :class:`ClassStatus`:

============== =========== ============ ====================== ===========================
status          GT voxels   pred voxels  ``mode="project"``     ``mode="reference"``
============== =========== ============ ====================== ===========================
present         > 0         > 0          computed               computed
missed          > 0         0            Dice 0, dist = cap     Dice 0, ASD/HD95 = 128
false_positive  0           > 0          Dice 0, dist = cap     Dice 0, ASD/HD95 = 128
both_empty      0           0            NaN (excluded, counted) Dice **1**, ASD/HD95 = 0
============== =========== ============ ====================== ===========================

Project mode: the distance cap defaults to the image diagonal in mm,
``sqrt(sum_i (n_i * s_i)^2)`` for shape ``n`` and spacing ``s`` (:func:`resolve_distance_cap`).
No surface distance inside the image can exceed it, so a missed organ can never lower (improve) a
mean ASD/HD95, and Dice 0 can never raise a mean Dice. A fixed cap in mm may be configured instead;
it is only guaranteed to be a penalty when it is at least the diagonal.

Reference mode reproduces the DHC/GenericSSL test scripts (``xmed-lab/DHC:code/evaluate_Ntimes.py``,
``xmed-lab/GenericSSL:code/evaluate.py``): one side empty -> Dice 0 and ASD 128 (voxels); both
empty -> Dice **1** and ASD 0. The 1 is an upstream scale bug (their Dice is otherwise ×100, so it
should have been 100); it is reproduced on purpose so published tables can be matched, and flagged
in every output written in this mode. Upstream reports no HD95; using the ASD penalties for HD95
is this project's extension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum

import numpy as np

__all__ = [
    "ClassStatus",
    "MODES",
    "REFERENCE_EMPTY_DISTANCE",
    "REFERENCE_BOTH_EMPTY_DICE",
    "REFERENCE_MODE_WARNING",
    "class_status",
    "resolve_distance_cap",
    "empty_class_values",
    "check_mode",
]

MODES = ("project", "reference")

#: Distance (voxels) given to a class with exactly one empty side in the reference scripts
#: (``xmed-lab/DHC:code/evaluate_Ntimes.py``, ``xmed-lab/GenericSSL:code/evaluate.py``).
REFERENCE_EMPTY_DISTANCE = 128.0

#: Dice given when both masks are empty in the reference scripts: 1, although their Dice is in
#: percent (upstream scale bug, reproduced only in ``mode="reference"``).
REFERENCE_BOTH_EMPTY_DICE = 1.0

#: Flag written next to every reference-mode output.
REFERENCE_MODE_WARNING = (
    "REFERENCE MODE (DHC/GenericSSL conventions): Dice = medpy dc x100; ASD = medpy asd(pred, gt), "
    "directed pred->GT, in VOXELS (header spacing ignored); one side empty -> Dice 0, ASD 128; "
    "both empty -> Dice 1 (upstream scale bug: 1 instead of 100), ASD 0. "
    "Not comparable with project-mode (mm) numbers."
)


class ClassStatus(str, Enum):
    """Which of the masks of one class in one case hold voxels."""

    PRESENT = "present"
    MISSED = "missed"
    FALSE_POSITIVE = "false_positive"
    BOTH_EMPTY = "both_empty"

    def __str__(self) -> str:
        return self.value


def check_mode(mode: str) -> str:
    """Validate an evaluation mode.

    Raises:
        ValueError: when ``mode`` is not ``"project"`` or ``"reference"``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got mode={mode!r}.")
    return mode


def class_status(pred_present: bool, gt_present: bool) -> ClassStatus:
    """Status of one class from whether prediction and ground truth contain it."""
    if pred_present and gt_present:
        return ClassStatus.PRESENT
    if gt_present:
        return ClassStatus.MISSED
    if pred_present:
        return ClassStatus.FALSE_POSITIVE
    return ClassStatus.BOTH_EMPTY


def resolve_distance_cap(
    distance_cap: str | float, shape: Sequence[int], spacing: Sequence[float] | None = None
) -> float:
    """Numeric distance penalty for project mode.

    Args:
        distance_cap: ``"diagonal"`` (default policy: the field-of-view diagonal
            ``sqrt(sum_i (n_i * s_i)^2)``) or a positive number in the distance unit (mm when a
            spacing is given).
        shape: spatial shape ``n`` of the image, e.g. ``(H, W, D)``.
        spacing: voxel size ``s`` per spatial axis; ``None`` means 1 (voxel units).

    Returns:
        The cap as a float.

    Raises:
        ValueError: for an unknown string, a non-positive or non-finite number, or a spacing whose
            length does not match ``shape``.
    """
    if isinstance(distance_cap, str):
        if distance_cap != "diagonal":
            try:
                distance_cap = float(distance_cap)
            except ValueError:
                raise ValueError(
                    f"distance_cap must be 'diagonal' or a positive number, got distance_cap={distance_cap!r}."
                ) from None
        else:
            s = np.ones(len(shape)) if spacing is None else np.asarray(spacing, dtype=float)
            if s.shape != (len(shape),):
                raise ValueError(f"spacing {tuple(s.tolist())} does not match the image shape {tuple(shape)}.")
            return float(np.sqrt(np.sum((np.asarray(shape, dtype=float) * s) ** 2)))
    if isinstance(distance_cap, bool) or not isinstance(distance_cap, (int, float)):
        raise ValueError(f"distance_cap must be 'diagonal' or a positive number, got distance_cap={distance_cap!r}.")
    if not math.isfinite(distance_cap) or distance_cap <= 0:
        raise ValueError(f"distance_cap must be a positive finite number, got distance_cap={distance_cap!r}.")
    return float(distance_cap)


def empty_class_values(status: ClassStatus, mode: str, cap: float) -> tuple[float, float, float] | None:
    """(Dice %, ASD, HD95) for a class with an empty side, per the table in the module docstring.

    Args:
        status: the class status (:func:`class_status`).
        mode: ``"project"`` or ``"reference"``.
        cap: the project-mode distance cap (:func:`resolve_distance_cap`); unused in reference mode.

    Returns:
        ``None`` for :attr:`ClassStatus.PRESENT` (the metrics must be computed), else the triple.
        Dice is in percent; distances are in the unit of the mode (mm / voxels).
    """
    check_mode(mode)
    if status == ClassStatus.PRESENT:
        return None
    if mode == "reference":
        if status == ClassStatus.BOTH_EMPTY:
            return REFERENCE_BOTH_EMPTY_DICE, 0.0, 0.0
        return 0.0, REFERENCE_EMPTY_DISTANCE, REFERENCE_EMPTY_DISTANCE
    if status == ClassStatus.BOTH_EMPTY:
        # Nothing to score: excluded from means, counted by the summaries as ``n_both_empty``.
        return math.nan, math.nan, math.nan
    return 0.0, float(cap), float(cap)
