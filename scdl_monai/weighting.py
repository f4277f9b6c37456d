"""Class-weighting trackers of DHC: distribution-aware (DistDW) and difficulty-aware (DiffDW).

DHC (Wang & Li, MICCAI'23) trains two CPS networks with heterogeneous class weights that are
recomputed every iteration: network A uses DiffDW, network B uses DistDW (docs/methods.md#dhc). The
same (C,) vector goes into that network's weighted CE, weighted Dice and CPS-CE. GenericSSL /
A&D (docs/methods.md#genericssl) reuses DiffDW without the final max-normalisation.

The maths are pure functions (:func:`class_counts`, :func:`distdw_weights`,
:func:`hard_dice_per_class`); the trackers :class:`DistDW` and :class:`DiffDW` are ``nn.Module``
objects whose whole state lives in registered buffers, so it is saved in ``state_dict`` (a resumed
run continues the same weights) and follows ``.to(device/dtype)``. Trackers take **integer label
maps** (``argmax`` of logits, computed by the caller) and never build autograd graphs.

Sources: ``xmed-lab/DHC:code/train_dhc.py`` (classes ``DistDW``, ``DiffDW``; the script builds
``DiffDW(num_cls, accumulate_iters=50)`` and ``DistDW(num_cls, momentum=0.99)``),
``xmed-lab/DHC:code/utils/loss.py`` (``SoftDiceLoss(smooth=1e-8, do_bg=True)`` used for the hard
Dice), ``xmed-lab/GenericSSL:code/train_diffusion.py`` (class ``Difficulty``), DHC paper Eq. 3-5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["class_counts", "distdw_weights", "hard_dice_per_class", "DistDW", "DiffDW"]

# Epsilons of the reference code (xmed-lab/DHC:code/train_dhc.py, DistDW._cal_weights and
# DiffDW / SoftDiceLoss(smooth=1e-8) followed by the loss' own "+ 1e-8" in the denominator).
_DIST_EPS = 1e-8
_DICE_SMOOTH = 1e-8
_DICE_DENOM_EPS = 1e-8
_DIFF_EPS = 1e-8


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    return num_classes


def _check_momentum(momentum: float) -> float:
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be a float in [0, 1), got {momentum!r}.")
    return float(momentum)


def _check_labels(labels: torch.Tensor, name: str) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor of class indices, got {type(labels).__name__}.")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(
            f"{name} must hold integer class indices (e.g. logits.argmax(1, keepdim=True)), got dtype {labels.dtype}."
        )


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Voxel count per class of an integer label map.

    Args:
        labels: integer tensor of any shape with values in ``[0, num_classes)``.
        num_classes: C, number of classes including background.

    Returns:
        int64 tensor (C,) on ``labels.device``; ``counts[k]`` = number of voxels equal to ``k``.

    Raises:
        TypeError: when ``labels`` is not an integer tensor.
        ValueError: when a value lies outside ``[0, num_classes)``.
    """
    _check_num_classes(num_classes)
    _check_labels(labels, "labels")
    flat = labels.reshape(-1).long()
    if flat.numel() == 0:
        return flat.new_zeros(num_classes)
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, num_classes={num_classes}), got values in [{lo}, {hi}].")
    return torch.bincount(flat, minlength=num_classes)


def distdw_weights(counts: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Distribution-aware class weights of DHC (paper Eq. 3-4, code form with the factor C).

    .. math::
        P_k = \\frac{\\max_j N_j + 10^{-8}}{N_k + 10^{-8}}, \\qquad
        w_k = C \\cdot \\frac{\\ln P_k}{\\max_j \\ln P_j}

    The most frequent class gets 0, the rarest gets C; a class with zero count gets C (its
    ``ln P`` is ~ ``ln(max N / 1e-8)``) and compresses the others towards 0. The factor C is in
    the code (``weights * self.num_cls``), not in the paper.

    **Guard (not in the reference):** when all counts are equal (including an empty label map
    and C = 1) every ``ln P_k`` is 0 and the reference divides 0 by 0 (NaN weights, which then
    poison every loss). We return **ones**: equal counts mean no imbalance, and all-ones weights
    turn the weighted CE/Dice into the plain unweighted losses. Zeros were rejected because an
    all-zero weight vector makes ``CrossEntropyLoss(weight=w)`` divide 0 by 0 as well.

    Args:
        counts: (C,) non-negative voxel counts per class (tensor, list or array).

    Returns:
        (C,) weights; floating dtype of ``counts`` if it is floating, else the default dtype;
        on ``counts.device``. Computed in float64 internally.

    Raises:
        ValueError: when ``counts`` is not one-dimensional, empty, or has a negative entry.

    Example:
        >>> distdw_weights(torch.tensor([1e6, 1e4, 1e2, 0.0]))  # docs/methods.md#distdw example
        tensor([0.0000, 0.5714, 1.1429, 4.0000])
    """
    counts_t = torch.as_tensor(counts)
    if counts_t.ndim != 1 or counts_t.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D (C,) sequence, got shape {tuple(counts_t.shape)}.")
    out_dtype = counts_t.dtype if counts_t.dtype.is_floating_point else torch.get_default_dtype()
    n = counts_t.to(torch.float64)
    if bool((n < 0).any()):
        raise ValueError(f"counts must be non-negative, got {counts_t.tolist()}.")
    num_classes = n.numel()
    log_p = torch.log((n.max() + _DIST_EPS) / (n + _DIST_EPS))
    max_log_p = log_p.max()
    if max_log_p <= 0:  # all counts equal: 0/0 in the reference, see the docstring
        return torch.ones_like(n).to(out_dtype)
    return (num_classes * log_p / max_log_p).to(out_dtype)


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


class DistDW(nn.Module):
    """Distribution-aware class weighting of DHC (model B), state in buffers.

    ``init_from_counts`` sets the weights from the ground-truth histogram of all labeled training
    volumes; ``update`` is then called every iteration with ``argmax`` of the network's own logits
    on the **unlabeled** half:

    .. math::  w \\leftarrow m\\,w + (1-m)\\,\\mathrm{distdw\\_weights}(\\mathrm{counts})

    No clamp or normalisation afterwards (docs/methods.md#distdw; ``xmed-lab/DHC@990998d0:code/train_dhc.py``
    ``DistDW.get_ema_weights``; momentum 0.99 as passed by the DHC script, the class default
    there is 0.95).

    Before ``init_from_counts`` the weights are all ones (the neutral weighting).

    Args:
        num_classes: C, including background.
        momentum: EMA momentum m in [0, 1).

    Buffers:
        weights: (C,) current class weights.

    Example:
        >>> tracker = DistDW(4)
        >>> w0 = tracker.init_from_counts([1e6, 1e4, 1e2, 0])
        >>> w = tracker.update(torch.randint(0, 4, (2, 1, 8, 8, 8)))  # (4,)
    """

    weights: torch.Tensor

    def __init__(self, num_classes: int, momentum: float = 0.99) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.momentum = _check_momentum(momentum)
        self.register_buffer("weights", torch.ones(num_classes))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, momentum={self.momentum}"

    @torch.no_grad()
    def init_from_counts(self, counts: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """Set the weights to :func:`distdw_weights` of ground-truth class counts; returns a copy.

        Raises:
            ValueError: when ``counts`` does not have C entries (or see :func:`distdw_weights`).
        """
        counts_t = torch.as_tensor(counts)
        if counts_t.shape != (self.num_classes,):
            raise ValueError(f"counts must have shape ({self.num_classes},), got {tuple(counts_t.shape)}.")
        self.weights.copy_(distdw_weights(counts_t.to(torch.float64)).to(self.weights))
        return self.weights.clone()

    @torch.no_grad()
    def update(self, pred_labels: torch.Tensor) -> torch.Tensor:
        """One EMA step from predicted labels (integer tensor, any shape, values in [0, C)).

        Returns:
            a copy (C,) of the new weights (a snapshot: later updates do not modify it, so it can
            safely be kept in a loss' autograd graph).
        """
        counts = class_counts(pred_labels, self.num_classes).to(self.weights.device)
        current = distdw_weights(counts.to(torch.float64)).to(self.weights)
        self.weights.mul_(self.momentum).add_((1.0 - self.momentum) * current)
        return self.weights.clone()


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
