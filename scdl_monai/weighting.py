"""Class-balancing rules and their trackers: DHC's DistDW and DiffDW, SimiS's and CLD's rules.

DHC (Wang & Li, MICCAI'23) trains two CPS networks with heterogeneous class weights that are
recomputed every iteration: network A uses DiffDW, network B uses DistDW (docs/methods.md#dhc). The
same (C,) vector goes into that network's weighted CE, weighted Dice and CPS-CE. GenericSSL /
A&D (docs/methods.md#genericssl) reuses DiffDW without the final max-normalisation. The comparators
SimiS (:class:`SimiSWeights`, :func:`simis_weights`) and CLD (:func:`cld_weights`,
:class:`ConfidenceBank`, :func:`cld_sampling_rate`) balance classes with other rules of the same
kind (docs/methods.md#simis, docs/methods.md#cld).

The maths are pure functions (:func:`class_counts`, :func:`distdw_weights`,
:func:`hard_dice_per_class`); the trackers :class:`DistDW` and :class:`DiffDW` are ``nn.Module``
objects whose whole state lives in registered buffers, so it is saved in ``state_dict`` (a resumed
run continues the same weights) and follows ``.to(device/dtype)``. Trackers take **integer label
maps** (``argmax`` of logits, computed by the caller) and never build autograd graphs.

Sources: ``xmed-lab/DHC:code/train_dhc.py`` (classes ``DistDW``, ``DiffDW``; the script builds
``DiffDW(num_cls, accumulate_iters=50)`` and ``DistDW(num_cls, momentum=0.99)``),
``xmed-lab/DHC:code/utils/loss.py`` (``SoftDiceLoss(smooth=1e-8, do_bg=True)`` used for the hard
Dice), ``xmed-lab/GenericSSL:code/train_diffusion.py`` (class ``Difficulty``), DHC paper Eq. 3-5;
``xmed-lab/DHC@b3dee97:code/train_simis.py`` (class ``SimiS``) and ``code/train_cld.py``
(``Synapse_AMOS_cld.weight``, ``ConfidenceBank``, ``cal_sampling_rate``), the DHC repository's
re-implementations of SimiS (Chen et al., arXiv:2211.11086) and CLD (Lin et al., MICCAI 2022).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "class_counts",
    "distdw_weights",
    "simis_weights",
    "cld_weights",
    "cld_sampling_rate",
    "cld_sampling_mask",
    "hard_dice_per_class",
    "CountWeights",
    "DistDW",
    "SimiSWeights",
    "DiffDW",
    "ConfidenceBank",
]

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


def _as_counts(counts: torch.Tensor | Sequence[float]) -> tuple[torch.Tensor, torch.dtype]:
    """Validated (C,) counts in float64 and the dtype a rule returns (floating input: its own)."""
    counts_t = torch.as_tensor(counts)
    if counts_t.ndim != 1 or counts_t.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D (C,) sequence, got shape {tuple(counts_t.shape)}.")
    out_dtype = counts_t.dtype if counts_t.dtype.is_floating_point else torch.get_default_dtype()
    n = counts_t.to(torch.float64)
    if bool((n < 0).any()):
        raise ValueError(f"counts must be non-negative, got {counts_t.tolist()}.")
    return n, out_dtype


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
    n, out_dtype = _as_counts(counts)
    num_classes = n.numel()
    log_p = torch.log((n.max() + _DIST_EPS) / (n + _DIST_EPS))
    max_log_p = log_p.max()
    if max_log_p <= 0:  # all counts equal: 0/0 in the reference, see the docstring
        return torch.ones_like(n).to(out_dtype)
    return (num_classes * log_p / max_log_p).to(out_dtype)


def simis_weights(counts: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Class weights of SimiS as the DHC repository applies them to segmentation (class ``SimiS``).

    .. math::
        P_k = \\frac{N_k + 10^{-8}}{\\sum_j N_j + 10^{-8}}, \\qquad w_k = C\\,(\\max_j P_j - P_k)

    The most frequent class gets 0, a class with zero count gets ``C·max P`` (the largest weight).
    All counts equal (or all zero) give all zeros, as in the reference (no NaN: the weighted losses
    of :mod:`scdl_monai.losses.segmentation` return 0 when every voxel's weight is 0).

    Source: ``xmed-lab/DHC@b3dee97:code/train_simis.py:155-158`` (``_weight_wbg``) times ``num_cls``
    (L169, L183); SimiS: Chen et al., arXiv:2211.11086 (docs/methods.md#simis).

    Args:
        counts: (C,) non-negative voxel counts per class.

    Returns:
        (C,) weights, dtype as :func:`distdw_weights`; computed in float64.

    Raises:
        ValueError: ``counts`` not 1-D, empty, or with a negative entry.

    Example:
        >>> simis_weights(torch.tensor([6.0, 3.0, 1.0]))  # P = [0.6, 0.3, 0.1]
        tensor([0.0000, 0.9000, 1.5000])
    """
    n, out_dtype = _as_counts(counts)
    share = (n + _DIST_EPS) / (n.sum() + _DIST_EPS)
    return (n.numel() * (share.max() - share)).to(out_dtype)


#: what :func:`cld_weights` gives a class with no labeled voxel.
CLD_ABSENT_RULES = ("rarest", "reference")


def cld_weights(counts: torch.Tensor | Sequence[float], absent: str = "rarest") -> torch.Tensor:
    """Static class weights of CLD, from the ground-truth counts of the labeled volumes.

    .. math::  w_k = \\left(\\frac{\\max_j N_j}{N_k}\\right)^{1/3}

    The most frequent class gets 1, rarer classes more (no epsilon, no normalisation).

    **Guard (not in the reference):** a class with no labeled voxel gets ``w = inf`` in the
    reference, which turns the weighted Dice into ``-inf`` and the gradients into NaN as soon as
    the class appears in a prediction. ``absent="rarest"`` (default) gives such a class the weight
    of the rarest present class instead, and all-zero counts give ones; ``absent="reference"``
    keeps ``inf`` (and NaN for all-zero counts). Both agree whenever every class is present.

    Source: ``xmed-lab/DHC@b3dee97:code/train_cld.py:50-64`` (``Synapse_AMOS_cld.weight``, used for
    both networks at L312-318); CLD: Lin et al., MICCAI 2022 (docs/methods.md#cld).

    Args:
        counts: (C,) non-negative voxel counts per class.
        absent: "rarest" or "reference" (see above).

    Returns:
        (C,) weights, dtype as :func:`distdw_weights`; computed in float64.

    Raises:
        ValueError: bad ``counts`` (see :func:`distdw_weights`) or unknown ``absent``.

    Example:
        >>> cld_weights(torch.tensor([1000.0, 125.0, 8.0, 0.0]))  # 1000/125 = 2^3, 1000/8 = 5^3
        tensor([1., 2., 5., 5.])
    """
    if absent not in CLD_ABSENT_RULES:
        raise ValueError(f"cld_weights: absent must be one of {CLD_ABSENT_RULES}, got {absent!r}.")
    n, out_dtype = _as_counts(counts)
    weights = (n.max() / n) ** (1.0 / 3.0)
    if absent == "rarest":
        present = n > 0
        if not bool(present.any()):
            return torch.ones_like(n).to(out_dtype)
        weights = torch.where(present, weights, weights[present].max())
    return weights.to(out_dtype)


def cld_sampling_rate(confidence: torch.Tensor, gamma: float = 0.5) -> torch.Tensor:
    """CLD's per-class probability of keeping a pseudo-labeled voxel, from class confidences.

    .. math::  s_k = \\left(\\frac{1 - c_k}{\\max_j (1 - c_j) + 10^{-12}}\\right)^{\\gamma}

    The least confident class is always kept (s ≈ 1), a class the network already predicts with
    confidence 1 never (s = 0). Source: ``xmed-lab/DHC@b3dee97:code/train_cld.py:239-243``
    (``cal_sampling_rate``, γ = 0.5).

    Args:
        confidence: (C,) mean probability of the true class per class, in [0, 1].
        gamma: exponent γ > 0.

    Returns:
        (C,) rates in [0, 1), same dtype/device as ``confidence``.

    Raises:
        ValueError: ``confidence`` not 1-D, or ``gamma`` not positive.

    Example:
        >>> cld_sampling_rate(torch.tensor([0.96, 0.84, 0.36]))  # (1 - c) / 0.64 = [1/16, 1/4, 1]
        tensor([0.2500, 0.5000, 1.0000])
    """
    if not isinstance(confidence, torch.Tensor) or confidence.ndim != 1:
        raise ValueError(f"confidence must be a (C,) tensor, got {type(confidence).__name__} "
                         f"{tuple(getattr(confidence, 'shape', ()))}.")  # fmt: skip
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ValueError(f"gamma must be a positive float, got {gamma!r}.")
    miss = 1.0 - confidence
    return (miss / (miss.max() + 1e-12)) ** gamma



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


class CountWeights(nn.Module):
    """Class weights that follow an EMA of a class-count rule; the base of :class:`DistDW` and :class:`SimiSWeights`.

    ``init_from_counts(counts)`` sets the weights from the ground-truth histogram of the labeled
    training volumes (:meth:`initial_weights`); ``update(pred_labels)`` then runs, every iteration,

    .. math::  w \\leftarrow m\\,w + (1-m)\\,\\mathrm{rule}(\\mathrm{counts}(\\mathrm{pred\\_labels}))

    with no clamp or normalisation afterwards. Subclasses define :meth:`rule` (and may change
    :meth:`initial_weights` and the value before initialisation).

    Args:
        num_classes: C, including background.
        momentum: EMA momentum m in [0, 1).
        initial: value of every weight before ``init_from_counts``.

    Buffers:
        weights: (C,) current class weights.
    """

    weights: torch.Tensor

    def __init__(self, num_classes: int, momentum: float, initial: float = 1.0) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.momentum = _check_momentum(momentum)
        self.register_buffer("weights", torch.full((num_classes,), float(initial)))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, momentum={self.momentum}"

    def rule(self, counts: torch.Tensor) -> torch.Tensor:
        """(C,) weights of one class histogram (float64 counts in, any floating dtype out)."""
        raise NotImplementedError(f"{type(self).__name__} must implement rule().")

    def initial_weights(self, counts: torch.Tensor) -> torch.Tensor:
        """The weights set by :meth:`init_from_counts`: ``rule(counts)`` unless a subclass says otherwise."""
        return self.rule(counts)

    @torch.no_grad()
    def init_from_counts(self, counts: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """Set the weights from ground-truth class counts (:meth:`initial_weights`); returns a copy.

        Raises:
            ValueError: when ``counts`` does not have C non-negative entries.
        """
        counts_t = torch.as_tensor(counts)
        if counts_t.shape != (self.num_classes,):
            raise ValueError(f"counts must have shape ({self.num_classes},), got {tuple(counts_t.shape)}.")
        self.weights.copy_(self.initial_weights(counts_t.to(torch.float64)).to(self.weights))
        return self.weights.clone()

    @torch.no_grad()
    def update(self, pred_labels: torch.Tensor) -> torch.Tensor:
        """One EMA step from predicted labels (integer tensor, any shape, values in [0, C)).

        Returns:
            a copy (C,) of the new weights (a snapshot: later updates do not modify it, so it can
            safely be kept in a loss' autograd graph).
        """
        counts = class_counts(pred_labels, self.num_classes).to(self.weights.device)
        current = self.rule(counts.to(torch.float64)).to(self.weights)
        self.weights.mul_(self.momentum).add_((1.0 - self.momentum) * current)
        return self.weights.clone()


class DistDW(CountWeights):
    """Distribution-aware class weighting of DHC (model B), state in buffers.

    ``init_from_counts`` sets the weights to :func:`distdw_weights` of the ground-truth histogram
    of all labeled training volumes; ``update`` is then called every iteration with ``argmax`` of
    the network's own logits on the **unlabeled** half:

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

    def __init__(self, num_classes: int, momentum: float = 0.99) -> None:
        super().__init__(num_classes, momentum, initial=1.0)

    def rule(self, counts: torch.Tensor) -> torch.Tensor:
        return distdw_weights(counts)


class SimiSWeights(CountWeights):
    """SimiS class weighting of one CPS network (docs/methods.md#simis), state in buffers.

    Rule :func:`simis_weights`, ``C·(max P − P)`` of the class shares P. As in the reference
    (``xmed-lab/DHC@b3dee97:code/train_simis.py``, class ``SimiS``):

    - before initialisation the weights are ``C`` for every class;
    - ``init_from_counts`` is **one EMA step** from there towards the ground-truth rule,
      ``w = m·C + (1 − m)·simis_weights(counts)`` (``init_weight``, L160-174: nearly uniform C);
    - ``update`` (``get_weights``, L186-190) is the EMA step of :class:`CountWeights`; the SimiS
      method calls it with the network's own argmax on **every** volume of the batch, labeled
      half included (L298-299).

    Momentum 0.99 as passed by the script (L246-247); the class default there is 0.95.

    Args:
        num_classes: C, including background.
        momentum: EMA momentum m in [0, 1).

    Buffers:
        weights: (C,) current class weights.

    Example:
        >>> tracker = SimiSWeights(3, momentum=0.9)
        >>> tracker.init_from_counts([6, 3, 1])  # 0.9 * 3 + 0.1 * [0, 0.9, 1.5]
        tensor([2.7000, 2.7900, 2.8500])
    """

    def __init__(self, num_classes: int, momentum: float = 0.99) -> None:
        super().__init__(num_classes, momentum, initial=float(num_classes))

    def rule(self, counts: torch.Tensor) -> torch.Tensor:
        return simis_weights(counts)

    def initial_weights(self, counts: torch.Tensor) -> torch.Tensor:
        return self.momentum * float(self.num_classes) + (1.0 - self.momentum) * self.rule(counts)


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


def cld_sampling_mask(pred_labels: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """CLD's random voxel mask: keep a voxel predicted as class k with probability ``rate[k]``.

    ``mask = [u > 1 − rate[pred]]`` with one ``u ~ U(0, 1)`` per voxel from torch's global generator
    on ``pred_labels.device``. The reference (``xmed-lab/DHC@b3dee97:code/train_cld.py:245-256``,
    ``cal_sampling_mask``) draws a full uniform map per class and keeps class k's voxels where its
    map exceeds ``1 − rate[k]``; only the map of a voxel's own class matters, so one draw per voxel
    gives the same distribution with C times fewer random numbers (the random streams differ).

    Args:
        pred_labels: integer predicted classes, any shape (e.g. (B, 1, *spatial)).
        rate: (C,) keep probabilities in [0, 1].

    Returns:
        float32 0/1 tensor of ``pred_labels``' shape (no gradient).

    Raises:
        TypeError: non-integer ``pred_labels``.
    """
    _check_labels(pred_labels, "pred_labels")
    threshold = (1.0 - rate.detach().float()).to(pred_labels.device)[pred_labels.long()]
    uniform = torch.rand(pred_labels.shape, device=pred_labels.device, dtype=torch.float32)
    return (uniform > threshold).float()


class ConfidenceBank(nn.Module):
    """CLD's per-class confidence of one network (docs/methods.md#cld), state in buffers.

    ``update(logits_l, label_l)`` is called every iteration with the network's **labeled** logits
    and the ground truth (``xmed-lab/DHC@b3dee97:code/train_cld.py:203-236``, ``ConfidenceBank``;
    called at L359-360):

    1. ``score_sum_k += Σ_v p_k(v)·[y_v = k]`` and ``voxel_count_k += Σ_v [y_v = k]`` over the batch,
       ``p = softmax(logits)``;
    2. every ``interval`` calls: ``c_new = score_sum / (voxel_count + 1e-12)``; at the first of these
       ``confidence = c_new``, afterwards ``confidence ← m·confidence + (1 − m)·c_new``; the sums
       are reset.

    So ``confidence_k`` is the mean probability the network gives the true class over the labeled
    voxels of class k. Before the first ``interval`` calls it holds its initial value: uniform
    random in [0, 1) in the reference (``torch.rand``; the second network's bank starts as a copy
    of the first's, L321-322). The sums are kept in float64 (the reference accumulates float32
    sums of up to 8·2·64·128·128 voxels).

    Args:
        num_classes: C, including background.
        momentum: EMA momentum m in [0, 1) of the confidence (reference 0.999, L321-322).
        interval: calls per confidence update (reference ``--confs_iter`` 8, L25).
        initial: (C,) initial confidence; None draws ``torch.rand(C)`` from torch's global generator
            (the reference).

    Buffers:
        confidence: (C,) float32; score_sum, voxel_count: (C,) float64; steps: int64 call count.

    Raises:
        ValueError: bad ``num_classes``/``momentum``/``interval``, ``initial`` not (C,); in
            ``update``: logits not (B, C, *spatial) or labels not (B, 1, *spatial).

    Example:
        >>> bank = ConfidenceBank(3, interval=1)
        >>> labels = torch.tensor([0, 1, 1, 2, 2, 2, 2, 2]).view(1, 1, 2, 2, 2)
        >>> bank.update(torch.zeros(1, 3, 2, 2, 2), labels)  # p = 1/3 for every class
        tensor([0.3333, 0.3333, 0.3333])
    """

    confidence: torch.Tensor
    score_sum: torch.Tensor
    voxel_count: torch.Tensor
    steps: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        interval: int = 8,
        initial: torch.Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.momentum = _check_momentum(momentum)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be a positive int, got {interval!r}.")
        self.interval = interval
        if initial is None:
            start = torch.rand(num_classes)
        else:
            start = torch.as_tensor(initial, dtype=torch.float32).detach().clone().cpu()
            if start.shape != (num_classes,):
                raise ValueError(f"initial must have shape ({num_classes},), got {tuple(start.shape)}.")
        self.register_buffer("confidence", start.float())
        self.register_buffer("score_sum", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("voxel_count", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, momentum={self.momentum}, interval={self.interval}"

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Record one batch; every ``interval`` calls refresh the confidence (see the class docstring).

        Args:
            logits: (B, C, *spatial) logits of the labeled images (detached here).
            labels: (B, 1, *spatial) ground truth (integer, or float holding integers).

        Returns:
            a copy (C,) of the confidence after this call.
        """
        if logits.ndim < 3 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (B, {self.num_classes}, *spatial), got {tuple(logits.shape)}.")
        if tuple(labels.shape) != (logits.shape[0], 1, *logits.shape[2:]):
            raise ValueError(f"labels must have shape (B, 1, *spatial) matching logits {tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}.")  # fmt: skip
        labels = labels.detach()
        labels = labels.round().long() if labels.dtype.is_floating_point else labels.long()
        probs = torch.softmax(logits.detach().float(), dim=1)
        onehot = torch.zeros_like(probs).scatter_(1, labels, 1.0)
        axes = [0, *range(2, probs.ndim)]
        self.score_sum.add_((probs * onehot).sum(axes).to(self.score_sum))
        self.voxel_count.add_(onehot.sum(axes).to(self.voxel_count))
        self.steps.add_(1)
        if int(self.steps) % self.interval == 0:
            current = (self.score_sum / (self.voxel_count + 1e-12)).to(self.confidence)
            if int(self.steps) == self.interval:  # the first refresh replaces the initial value
                self.confidence.copy_(current)
            else:
                self.confidence.mul_(self.momentum).add_((1.0 - self.momentum) * current)
            self.score_sum.zero_()
            self.voxel_count.zero_()
        return self.confidence.clone()

    def sampling_rate(self, gamma: float = 0.5) -> torch.Tensor:
        """:func:`cld_sampling_rate` of the current confidence, (C,)."""
        return cld_sampling_rate(self.confidence, gamma)
