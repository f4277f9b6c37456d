"""Difficulty-aware class weights: DHC's DiffDW (also GenericSSL / A&D's ``Difficulty``).

DHC (Wang & Li, MICCAI'23, paper Eq. 5) gives network A weights that grow for classes whose hard
Dice is low and learns slowly (docs/methods.md#dhc, docs/methods.md#diffdw); GenericSSL / A&D
(docs/methods.md#genericssl) reuses DiffDW without the final max-normalisation. The hard Dice is a
pure function (:func:`hard_dice_per_class`); :class:`DiffDW` keeps its state in buffers.

Sources: ``xmed-lab/DHC:code/train_dhc.py`` (class ``DiffDW``; the script builds
``DiffDW(num_cls, accumulate_iters=50)``), ``xmed-lab/DHC:code/utils/loss.py``
(``SoftDiceLoss(smooth=1e-8, do_bg=True)`` used for the hard Dice),
``xmed-lab/GenericSSL:code/train_diffusion.py`` (class ``Difficulty``).
"""

from __future__ import annotations

import torch
from torch import nn

from scdl_monai.weighting.counts import _check_labels, _check_momentum, _check_num_classes, class_counts

__all__ = ["hard_dice_per_class", "DiffDW"]

# Epsilons of the reference code (xmed-lab/DHC:code/train_dhc.py, DiffDW / SoftDiceLoss(smooth=1e-8)
# followed by the loss' own "+ 1e-8" in the denominator).
_DICE_SMOOTH = 1e-8
_DICE_DENOM_EPS = 1e-8
_DIFF_EPS = 1e-8


def hard_dice_per_class(
    pred_labels: torch.Tensor, target: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Per-class hard batch Dice, background included, with the reference smoothing.

    .. math::  \\lambda_k = \\frac{2TP_k + 10^{-8}}{(2TP_k + FP_k + FN_k + 10^{-8}) + 10^{-8}}

    TP/FP/FN are summed over the whole batch and all voxels (nnU-Net "batch Dice"). A class absent
    from both prediction and target gets 0.5; a class present in only one of them gets a tiny
    positive value (never 0, so ``ln`` stays finite in :class:`DiffDW`).

    Source: ``xmed-lab/DHC:code/utils/loss.py`` ``SoftDiceLoss(smooth=1e-8, do_bg=True)`` on one-hot
    argmax maps with ``is_training=False`` (docs/methods.md#diffdw, step 1).

    Args:
        pred_labels: integer predicted labels, any shape.
        target: integer ground-truth labels, same shape as ``pred_labels``.
        num_classes: C.
        dtype: floating dtype of the result (the counts are exact integers before the division).

    Returns:
        tensor (C,) of ``dtype`` on the labels' device.

    Raises:
        TypeError: non-integer labels. ValueError: shape mismatch or out-of-range values.
    """
    _check_labels(pred_labels, "pred_labels")
    _check_labels(target, "target")
    if pred_labels.shape != target.shape:
        raise ValueError(
            "pred_labels and target must have the same shape, got "
            f"{tuple(pred_labels.shape)} and {tuple(target.shape)}."
        )
    pred_n = class_counts(pred_labels, num_classes)
    target_n = class_counts(target, num_classes)
    hit = pred_labels.reshape(-1) == target.reshape(-1)
    tp = torch.bincount(target.reshape(-1).long()[hit], minlength=num_classes)
    tp, fp, fn = tp.to(dtype), (pred_n - tp).to(dtype), (target_n - tp).to(dtype)
    return (2 * tp + _DICE_SMOOTH) / ((2 * tp + fp + fn + _DICE_SMOOTH) + _DICE_DENOM_EPS)


class DiffDW(nn.Module):
    """Difficulty-aware class weighting of DHC (model A) and GenericSSL, state in buffers.

    Each call to ``update(pred_labels, target)`` (argmax of the network's **labeled** logits and
    the ground truth) runs, in the reference order (``xmed-lab/DHC:code/train_dhc.py``
    ``DiffDW.cal_weights``; docs/methods.md#diffdw):

    1. ``λ = hard_dice_per_class(pred, target)`` — background included, batch Dice.
    2. ``Δ = λ − last``; ``l = max(Δ, 0)·ln(λ/last)``; ``u = min(Δ, 0)·ln(λ/last)`` (both ≥ 0);
       then ``last ← λ``.
    3. ``learn ← m·learn + (1−m)·l``; ``unlearn ← m·unlearn + (1−m)·u``.
    4. ``d = ((unlearn + 1e-8)/(learn + 1e-8))^α``; ``dw ← m·dw + (1−m)·(1 − λ)``.
    5. ``w = d·dw``; ``normalize=True`` (DHC): ``w ← C·w/max(w)`` (the hardest class gets C);
       ``normalize=False`` (GenericSSL ``Difficulty.cal_weights``): ``w ← C·w`` (no max).

    Initial state (reference): ``last = 1e-8``, ``learn = unlearn = 0``, ``dw = 1``; ``weights``
    starts at ``C·1`` (the reference ``init_weights``, only used if a loss runs before the first
    update). **First update:** since ``last = 1e-8``, every class with ``λ > 1e-8`` records a large
    "learn" increment ``(λ−1e-8)·ln(λ·1e8)`` (≈ 17 for λ ≈ 1), so at the start classes that are
    already segmented get small weights and classes with λ ≈ 0 get ``d`` ≈ 1 — this warm start is
    the reference behaviour and is kept.

    **Paper vs code:** paper Eq. 5 sums ``1[Δ>0]·ln(λ/last)`` over a window of τ = 50 iterations;
    the code (followed here) keeps an EMA with momentum ``(τ−1)/τ = 0.98`` and multiplies each
    log-ratio by ``|Δ|``. α = 1/5 in both.

    **Guard (not in the reference):** if ``max(w)`` is 0 (only reachable when every class has been
    perfect long enough for ``dw`` to underflow) the normalised weights are set to ``C·1`` instead
    of NaN.

    Args:
        num_classes: C, including background.
        momentum: EMA momentum m = (τ−1)/τ; 0.98 for τ = 50 (DHC script, GenericSSL script).
        alpha: exponent α of the learn/unlearn ratio (paper: 1/5).
        normalize: True for DHC (``C·w/max w``), False for GenericSSL (``C·w``).

    Buffers:
        last_dice, learn, unlearn, dice_weight, weights: (C,) each.

    Example:
        >>> tracker = DiffDW(3)
        >>> pred = torch.randint(0, 3, (2, 1, 8, 8, 8)); gt = torch.randint(0, 3, (2, 1, 8, 8, 8))
        >>> w = tracker.update(pred, gt)  # (3,), max == 3
    """

    last_dice: torch.Tensor
    learn: torch.Tensor
    unlearn: torch.Tensor
    dice_weight: torch.Tensor
    weights: torch.Tensor

    def __init__(self, num_classes: int, momentum: float = 0.98, alpha: float = 0.2, normalize: bool = True) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.momentum = _check_momentum(momentum)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"alpha must be a positive float, got {alpha!r}.")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {normalize!r}.")
        self.alpha = float(alpha)
        self.normalize = normalize
        self.register_buffer("last_dice", torch.full((num_classes,), _DIFF_EPS))
        self.register_buffer("learn", torch.zeros(num_classes))
        self.register_buffer("unlearn", torch.zeros(num_classes))
        self.register_buffer("dice_weight", torch.ones(num_classes))
        self.register_buffer("weights", torch.full((num_classes,), float(num_classes)))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, momentum={self.momentum}, alpha={self.alpha}, "
            f"normalize={self.normalize}"
        )

    @torch.no_grad()
    def update(self, pred_labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One step of the DiffDW recurrence (see the class docstring).

        Args:
            pred_labels: integer predicted labels (e.g. ``logits_l.argmax(1, keepdim=True)``).
            target: integer ground truth of the same shape.

        Returns:
            a copy (C,) of the new weights.

        Raises:
            TypeError / ValueError: see :func:`hard_dice_per_class`.
        """
        m = self.momentum
        dice = hard_dice_per_class(pred_labels, target, self.num_classes, self.last_dice.dtype).to(self.last_dice)
        delta = dice - self.last_dice
        log_ratio = torch.log(dice / self.last_dice)
        learn_now = torch.where(delta > 0, delta, torch.zeros_like(delta)) * log_ratio
        unlearn_now = torch.where(delta <= 0, delta, torch.zeros_like(delta)) * log_ratio
        self.last_dice.copy_(dice)
        self.learn.mul_(m).add_((1.0 - m) * learn_now)
        self.unlearn.mul_(m).add_((1.0 - m) * unlearn_now)
        difficulty = ((self.unlearn + _DIFF_EPS) / (self.learn + _DIFF_EPS)) ** self.alpha
        self.dice_weight.mul_(m).add_((1.0 - m) * (1.0 - dice))
        weights = difficulty * self.dice_weight
        if self.normalize:
            peak = weights.max()
            safe_peak = peak.clamp_min(torch.finfo(weights.dtype).tiny)
            weights = torch.where(peak > 0, weights / safe_peak, torch.ones_like(weights))
        self.weights.copy_(self.num_classes * weights)
        return self.weights.clone()
