"""How each baseline's reference test script infers and scores, fact by fact, with its source.

One record per method (:data:`INFERENCE`) holds what the reference code does at test time: the
sliding-window strides per axis at its patch, how the windows are fused, the ensemble rule, the
evaluation grid and the metric convention. The shipped bundles' defaults are these values
(``sw_overlap`` = ``1 - stride / patch`` per axis, ``sw_fusion`` = ``"probabilities"``), the
inference/evaluation tables of ``docs/fidelity.md`` are rendered from these records
(:func:`markdown_table`), and ``tests/test_fidelity.py`` fails when a bundle, the docs or this
module drift apart.

Axis order is this project's (x, y, z): in-plane axes first, z last (the references' ``stride_xy``
applies to x and y, ``stride_z`` to z).

MONAI's ``SlidingWindowInferer`` places windows exactly as the reference loops do (start
``min(i * stride, size - window)``, ``ceil((size - window) / stride) + 1`` windows per axis,
``monai.data.utils.dense_patch_slices``) and, with ``mode="constant"``, divides the summed window
outputs by the number of windows covering each voxel (the references' ``cnt``). Volumes smaller
than the window are padded symmetrically with zeros (GALoss ``test_single_case_fast`` does the
same; GenericSSL pads ``(window - size) // 2 + 1`` on both sides and does not crop back, DHC does
not pad — neither case arises on their 160×160×80 grids).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

__all__ = ["InferenceFidelity", "INFERENCE", "reference_overlap", "markdown_table"]


@dataclass(frozen=True)
class InferenceFidelity:
    """The reference test-time behaviour of one method.

    Attributes:
        method: method name (``scdl_monai.bundles.METHODS``).
        script: the reference test entry point (repository@commit:path and lines).
        patch: reference window (x, y, z).
        stride: reference window stride (x, y, z).
        stride_source: where the strides are set.
        fusion_source: where each window is turned into probabilities and averaged.
        ensemble: the ensemble rule inside a window (reference and ours).
        ensemble_source: where the reference applies it.
        reference: :mod:`scdl_monai.evaluation` reference-mode convention.
        grid: evaluation grid (x, y, z) of the reference's numbers and where it comes from.
        grid_source: the script lines that make that grid.
        metrics: what the script reports, in which units.
    """

    method: str
    script: str
    patch: tuple[int, int, int]
    stride: tuple[int, int, int]
    stride_source: str
    fusion_source: str
    ensemble: str
    ensemble_source: str
    reference: str
    grid: str
    grid_source: str
    metrics: str


_DHC_TEST = "xmed-lab/DHC@a6f72d3:code/test.py"
_DHC_STRIDES = f"`{_DHC_TEST}:8,24-29` (`--speed 0` -> `stride_xy` 32, `stride_z` 16)"
_DHC_EVAL = "`xmed-lab/DHC@a6f72d3:code/evaluate_Ntimes.py:46-51`"
_DHC_GRID = "160×160×80: the original label nearest-resized to `patch + patch // 4` = 80×160×160 (z, y, x)"
_DHC_METRICS = (
    "Dice = medpy `dc` ×100, ASD = medpy `asd(pred, gt)` (directed) in voxels; one side empty -> 0 / 128, "
    "both empty -> Dice 1, ASD 0 (`evaluate_Ntimes.py:53-67`)"
)
_GA_GRID = "160×160×80: prediction and label nearest-resized to (160, 160, 80)"
_GA_METRICS = (
    "Dice = medpy `dc` (fraction), ASD = medpy `asd(pred, gt)` in voxels, HD95 printed as 0; one side "
    "empty -> 0 / 128, both empty -> Dice 1 (= 100 %), ASD 0; no foreground predicted -> every class 0 / 0 "
    "(`utils/test_util_vnet_AB.py:38-43,218-242`)"
)


def _dhc_two_network(method: str, trained_by: str) -> InferenceFidelity:
    """The record of a two-network method of the DHC repository, tested by ``test.py --cps AB``."""
    return InferenceFidelity(
        method=method,
        script=f"`{_DHC_TEST}` with `--cps AB` (`{trained_by}` checkpoints)",
        patch=(128, 128, 64),
        stride=(32, 32, 16),
        stride_source=_DHC_STRIDES,
        fusion_source="`xmed-lab/DHC:code/utils/__init__.py` `test_single_case_AB` (lines 302-312 at 990998d)",
        ensemble="softmax((A(x) + B(x)) / 2) per window: mean of the two networks' logits, then softmax",
        ensemble_source="`test_single_case_AB` (line 302 at 990998d)",
        reference="dhc",
        grid=_DHC_GRID,
        grid_source=_DHC_EVAL,
        metrics=_DHC_METRICS,
    )


#: Reference test-time behaviour per method (see the module docstring).
INFERENCE: dict[str, InferenceFidelity] = {
    "supervised": InferenceFidelity(
        method="supervised",
        script=f"`{_DHC_TEST}` with `--exp fully` (`train_fully.py` checkpoints)",
        patch=(128, 128, 64),
        stride=(32, 32, 16),
        stride_source=_DHC_STRIDES,
        fusion_source="`xmed-lab/DHC:code/utils/__init__.py` `test_single_case` (lines 171-181 at 990998d)",
        ensemble="one network",
        ensemble_source="`test_single_case`",
        reference="dhc",
        grid=_DHC_GRID,
        grid_source=_DHC_EVAL,
        metrics=_DHC_METRICS,
    ),
    "cps": _dhc_two_network("cps", "train_cps.py"),
    "dhc": _dhc_two_network("dhc", "train_dhc.py"),
    "simis": _dhc_two_network("simis", "train_simis.py"),
    "cld": _dhc_two_network("cld", "train_cld.py"),
    "ga_cps": InferenceFidelity(
        method="ga_cps",
        script="`cicailalala/GALoss@65642f5:train_Synapse_CPS.py` / `train_AMOS_CPS.py`, final test call",
        patch=(96, 96, 96),
        stride=(32, 32, 16),
        stride_source="final `validation_all_case(..., stride_xy=32, stride_z=16)` in `train_Synapse_CPS.py` and "
        "`train_AMOS_CPS.py` (validation during training: 80 / 64)",
        fusion_source="`cicailalala/GALoss:utils/test_util_vnet_AB.py:134-146` (`test_single_case_fast`)",
        ensemble="softmax((A(x) + B(x)) / 2) per window: mean of the two networks' logits, then softmax",
        ensemble_source="`utils/test_util_vnet_AB.py:135`",
        reference="ga",
        grid=_GA_GRID,
        grid_source="`cicailalala/GALoss:utils/test_util_vnet_AB.py:32-37`",
        metrics=_GA_METRICS,
    ),
    "magicnet": InferenceFidelity(
        method="magicnet",
        script="`DeepMed-Lab-ECNU/MagicNet@ae596e3:code/train_main_btcv.py`, test after the last iteration",
        patch=(96, 96, 96),
        stride=(16, 16, 16),
        stride_source="`validation_all_case(..., stride_xy=16, stride_z=16)` in `code/train_main_btcv.py`",
        fusion_source="`DeepMed-Lab-ECNU/MagicNet:code/utils/test_util.py` `test_single_case` (softmax of "
        "`model(patch)[0]`, `score_map / cnt`)",
        ensemble="one network (the student; its first output, the logits)",
        ensemble_source="`test_single_case` (`y = y[0]`)",
        reference="magicnet",
        grid="MagicNet's pre-made volumes (not public); here the 'ga' protocol's 160×160×80 grid",
        grid_source="`code/utils/test_util.py` `validation_all_case` (no resize)",
        metrics="Dice = medpy `dc` (fraction), HD95 = medpy `hd95`, ASD = medpy `asd(pred, gt)`, all in voxels; "
        "any empty side -> every metric 0 (`cal_metric`); no foreground predicted -> every class 0",
    ),
    "ga_magicnet": InferenceFidelity(
        method="ga_magicnet",
        script="`cicailalala/GALoss@65642f5:train_Synapse_MagicNet.py` / `train_AMOS_MagicNet.py`, final test call",
        patch=(96, 96, 96),
        stride=(32, 32, 16),
        stride_source="final `test_util.validation_all_case(..., stride_xy=32, stride_z=16)` in "
        "`train_Synapse_MagicNet.py` (validation during training: 80 / 64)",
        fusion_source="`cicailalala/GALoss:utils/test_util.py:137-150` (`test_single_case_fast`)",
        ensemble="one network (the student; its first output, the logits)",
        ensemble_source="`utils/test_util.py:138-139`",
        reference="ga",
        grid=_GA_GRID,
        grid_source="`cicailalala/GALoss:utils/test_util.py:32-37`",
        metrics=_GA_METRICS,
    ),
    "genericssl": InferenceFidelity(
        method="genericssl",
        script="`xmed-lab/GenericSSL@e73bde9:code/test.py`",
        patch=(128, 128, 64),
        stride=(16, 16, 4),
        stride_source="`xmed-lab/GenericSSL@e73bde9:code/test.py:8,21-26` (`--speed 0` -> `stride_xy` 16, "
        "`stride_z` 4)",
        fusion_source="`xmed-lab/GenericSSL:code/utils/__init__.py` `test_single_case` (softmax of "
        "`net(patch, pred_type=\"D_theta_u\")`, `score_map / cnt`)",
        ensemble="one network (D_θ)",
        ensemble_source="`test_single_case`",
        reference="genericssl",
        grid="160×160×80: the preprocessed label, nearest-resized to `patch + patch // 4` = 80×160×160 (z, y, x)",
        grid_source="`code/evaluate.py:35-36` reading `code/data/preprocess_synapse.py`'s label",
        metrics="as DHC: Dice ×100, ASD (directed) in voxels; one side empty -> 0 / 128, both empty -> Dice 1, "
        "ASD 0 (`code/evaluate.py:50-64`)",
    ),
    "skcdf": InferenceFidelity(
        method="skcdf",
        script="`yinguanchun/SKCDF@12f807d:SKCDF/code/test.py:26-78`",
        patch=(128, 128, 64),
        stride=(32, 32, 16),
        stride_source="`SKCDF/code/test.py` (`--speed 0` -> `stride_xy` 32, `stride_z` 16; as DHC)",
        fusion_source="`SKCDF/code/utils/__init__.py:127-200` `test_single_case` (softmax of "
        "`model(patch, pred_type=\"unlabeled\")[0]`, `score_map / cnt`)",
        ensemble="one network: encoder -> SKC in self mode -> D_u main head",
        ensemble_source="`test_single_case` (alternatives commented out at `utils/__init__.py:181-185`)",
        reference="dhc",
        grid="160×160×80: the preprocessed label on the 80×160×160 (z, y, x) grid",
        grid_source="`SKCDF/code/evaluate_Ntimes.py:66-132`",
        metrics="as DHC: Dice ×100, ASD (directed) in voxels; one side empty -> 0 / 128, both empty -> Dice 1, "
        "ASD 0 (`evaluate_Ntimes.py:66-132`)",
    ),
}


def reference_overlap(method: str) -> tuple[Fraction, ...]:
    """The reference overlap per axis, ``1 - stride / patch`` (exact fractions)."""
    rec = INFERENCE[method]
    return tuple(1 - Fraction(s, p) for s, p in zip(rec.stride, rec.patch))


def _frac(v: Fraction) -> str:
    return f"{float(v):g}" if v.denominator in (1, 2, 4, 8, 16) else f"{v.numerator}/{v.denominator}"


def markdown_table(method: str) -> str:
    """The inference/evaluation table of ``method`` in ``docs/fidelity.md`` (rendered from :data:`INFERENCE`)."""
    rec = INFERENCE[method]
    patch = "×".join(str(p) for p in rec.patch)
    strides = ", ".join(str(s) for s in rec.stride)
    overlap = ", ".join(_frac(v) for v in reference_overlap(method))
    rows = [
        ("behaviour", "reference value + source", "our default", "switch"),
        ("test script", rec.script, "`configs/inference.json`, `configs/evaluate.json`", "-"),
        ("sliding window", f"{patch} (x, y, z), the training patch", "`patch_size`, the training patch", "-"),
        (
            "window stride / overlap (x, y, z)",
            f"stride {strides} -> overlap {overlap}; {rec.stride_source}",
            f"`sw_overlap` = ({overlap}): MONAI scan interval {strides} at the reference patch",
            "`--sw_overlap 0.5` (one value for all axes) or a list",
        ),
        (
            "window fusion",
            f"softmax per window, probabilities summed and divided by the window count; {rec.fusion_source}",
            "`sw_fusion` = `probabilities` (softmax per window, uniform average)",
            "`--sw_fusion logits` (average logits, then softmax)",
        ),
        (
            "ensemble",
            f"{rec.ensemble}; {rec.ensemble_source}",
            "`inference_network()` of the method inside each window, then the window softmax",
            "`inference_network_def`",
        ),
        (
            "evaluation grid",
            f"{rec.grid}; {rec.grid_source}",
            "project mode: original image grid, mm",
            f"`python -m scdl_monai.evaluation evaluate --mode reference --reference {rec.reference} "
            "--grid \"[160,160,80]\" --pred_dir eval/predictions_grid`",
        ),
        (
            "metrics, units, empty classes",
            rec.metrics,
            "project mode: Dice %, symmetric ASD and HD95 in mm, miss = Dice 0 + image diagonal, both empty excluded",
            f"`--mode reference --reference {rec.reference}` (Dice always in %)",
        ),
    ]
    lines = [f"| {' | '.join(r)} |" for r in rows]
    lines.insert(1, "|---|---|---|---|")
    return "\n".join(lines)
