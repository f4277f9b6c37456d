"""The empty-class policy: the ONE place that decides what a metric is when a mask is empty.

Surface distances are undefined when the prediction or the ground truth of a class is empty, and
Dice is 0/0 when both are. Libraries answer differently (MONAI: HD95 NaN, ASD inf, Dice NaN;
medpy: an exception), and a silent NaN makes an average *improve* as more organs are missed
(``docs/evaluation.md``). Every metric in :mod:`scdl_monai.evaluation` therefore asks
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

Reference mode reproduces the test scripts that produced the published tables. Their empty-class
handling differs per code base, so reference mode takes a ``reference`` convention
(:data:`REFERENCE_CONVENTIONS`, default ``"dhc"``); the table above shows ``"dhc"``:

=========== ================================ ================= ================ =========================
convention  source                           one side empty    both empty       no foreground predicted
=========== ================================ ================= ================ =========================
dhc         DHC ``evaluate_Ntimes.py:53-67`` Dice 0, ASD 128   Dice **1**, 0    per class (rows left)
genericssl  GenericSSL ``evaluate.py:50-64`` Dice 0, ASD 128   Dice **1**, 0    per class (rows left)
ga          GALoss ``test_util*.py``          Dice 0, ASD 128   Dice 100 %, 0    every class Dice 0, ASD 0
            ``validation_all_case``/``cal_metric``
magicnet    MagicNet ``test_util.py``         Dice 0, ASD 0     Dice 0, ASD 0    every class Dice 0, ASD 0
            ``cal_metric``
=========== ================================ ================= ================ =========================

(File references are to ``xmed-lab/DHC@a6f72d3:code/``, ``xmed-lab/GenericSSL@e73bde9:code/``,
``cicailalala/GALoss@65642f5:utils/`` and ``DeepMed-Lab-ECNU/MagicNet@ae596e3:code/utils/``.)
The DHC/GenericSSL Dice 1 is an upstream scale bug (their Dice is otherwise ×100, so it should have
been 100); GALoss and MagicNet keep Dice as a fraction, where 1 is 100 %. Everything is reproduced on
purpose so published tables can be matched, and flagged in every output written in this mode
(:func:`reference_warning`). In all four the ASD of a present class is medpy ``asd(pred, gt)``
(directed, voxels). Only MagicNet reports HD95 (medpy ``hd95``, voxels); for the others the HD95
column is this project's extension (MONAI's symmetric HD95 in voxels, the ASD penalty when empty).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

__all__ = [
    "ClassStatus",
    "ReferenceConvention",
    "REFERENCE_CONVENTIONS",
    "check_reference",
    "reference_warning",
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

@dataclass(frozen=True)
class ReferenceConvention:
    """How one reference test script scores a class with an empty side (values as (Dice %, ASD, HD95)).

    Attributes:
        name: key in :data:`REFERENCE_CONVENTIONS`.
        source: the script (repository@commit:path and lines or function).
        missed: values when the ground truth holds the class and the prediction does not.
        false_positive: values when the prediction holds the class and the ground truth does not.
        both_empty: values when neither holds it.
        empty_prediction_zeroes_case: a prediction with no foreground voxel at all scores every
            class Dice 0, ASD 0, HD95 0 (GALoss/MagicNet ``if np.sum(prediction) == 0``).
        resizes_prediction: the script nearest-resizes the prediction to the evaluation grid too
            (GALoss); otherwise the prediction must already be on the grid.
        rule: one-line summary for the flag written with every output.
    """

    name: str
    source: str
    missed: tuple[float, float, float]
    false_positive: tuple[float, float, float]
    both_empty: tuple[float, float, float]
    empty_prediction_zeroes_case: bool
    resizes_prediction: bool
    rule: str


_DHC_LIKE = dict(
    missed=(0.0, REFERENCE_EMPTY_DISTANCE, REFERENCE_EMPTY_DISTANCE),
    false_positive=(0.0, REFERENCE_EMPTY_DISTANCE, REFERENCE_EMPTY_DISTANCE),
    both_empty=(REFERENCE_BOTH_EMPTY_DICE, 0.0, 0.0),
    empty_prediction_zeroes_case=False,
    resizes_prediction=False,
    rule="one side empty -> Dice 0, ASD 128; both empty -> Dice 1 (upstream scale bug: 1 instead of 100), ASD 0",
)

#: The reference conventions of reference mode (see the module docstring).
REFERENCE_CONVENTIONS: dict[str, ReferenceConvention] = {
    "dhc": ReferenceConvention(
        name="dhc", source="xmed-lab/DHC@a6f72d3:code/evaluate_Ntimes.py:47-67", **_DHC_LIKE
    ),
    "genericssl": ReferenceConvention(
        name="genericssl", source="xmed-lab/GenericSSL@e73bde9:code/evaluate.py:35-64", **_DHC_LIKE
    ),
    "ga": ReferenceConvention(
        name="ga",
        source="cicailalala/GALoss@65642f5:utils/test_util_vnet_AB.py:23-44,218-242 (test_util.py, test_amos*.py alike)",
        missed=(0.0, REFERENCE_EMPTY_DISTANCE, REFERENCE_EMPTY_DISTANCE),
        false_positive=(0.0, REFERENCE_EMPTY_DISTANCE, REFERENCE_EMPTY_DISTANCE),
        both_empty=(100.0, 0.0, 0.0),
        empty_prediction_zeroes_case=True,
        resizes_prediction=True,
        rule=(
            "one side empty -> Dice 0, ASD 128; both empty -> Dice 100 % (1 as a fraction), ASD 0; "
            "no foreground predicted at all -> every class Dice 0, ASD 0"
        ),
    ),
    "magicnet": ReferenceConvention(
        name="magicnet",
        source="DeepMed-Lab-ECNU/MagicNet@ae596e3:code/utils/test_util.py (validation_all_case, cal_metric)",
        missed=(0.0, 0.0, 0.0),
        false_positive=(0.0, 0.0, 0.0),
        both_empty=(0.0, 0.0, 0.0),
        empty_prediction_zeroes_case=True,
        resizes_prediction=False,
        rule="any empty side -> Dice 0, ASD 0, HD95 0 (a missed organ lowers the mean ASD)",
    ),
}


def check_reference(reference: str) -> ReferenceConvention:
    """The :class:`ReferenceConvention` named ``reference``.

    Raises:
        ValueError: for an unknown name (listing the known ones).
    """
    if reference not in REFERENCE_CONVENTIONS:
        raise ValueError(f"reference must be one of {tuple(REFERENCE_CONVENTIONS)}, got reference={reference!r}.")
    return REFERENCE_CONVENTIONS[reference]


def reference_warning(reference: str = "dhc") -> str:
    """The flag written next to every reference-mode output of convention ``reference``."""
    conv = check_reference(reference)
    return (
        f"REFERENCE MODE ({conv.name} conventions, {conv.source}): Dice = medpy dc x100; ASD = medpy "
        "asd(pred, gt), directed pred->GT, in VOXELS of the evaluation grid (header spacing ignored); "
        f"{conv.rule}. Not comparable with project-mode (mm) numbers."
    )


#: Flag written next to every reference-mode output (DHC convention; :func:`reference_warning`).
REFERENCE_MODE_WARNING = reference_warning("dhc")


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


def empty_class_values(
    status: ClassStatus, mode: str, cap: float, reference: str = "dhc"
) -> tuple[float, float, float] | None:
    """(Dice %, ASD, HD95) for a class with an empty side, per the tables in the module docstring.

    Args:
        status: the class status (:func:`class_status`).
        mode: ``"project"`` or ``"reference"``.
        cap: the project-mode distance cap (:func:`resolve_distance_cap`); unused in reference mode.
        reference: the reference convention (:data:`REFERENCE_CONVENTIONS`); reference mode only.

    Returns:
        ``None`` for :attr:`ClassStatus.PRESENT` (the metrics must be computed), else the triple.
        Dice is in percent; distances are in the unit of the mode (mm / voxels).
    """
    check_mode(mode)
    if status == ClassStatus.PRESENT:
        return None
    if mode == "reference":
        conv = check_reference(reference)
        if status == ClassStatus.BOTH_EMPTY:
            return conv.both_empty
        return conv.missed if status == ClassStatus.MISSED else conv.false_positive
    if status == ClassStatus.BOTH_EMPTY:
        # Nothing to score: excluded from means, counted by the summaries as ``n_both_empty``.
        return math.nan, math.nan, math.nan
    return 0.0, float(cap), float(cap)
