"""Class weights from voxel counts: DHC's DistDW, SimiS's and CLD's rules, and their EMA trackers.

DHC (Wang & Li, MICCAI'23) gives network B the distribution-aware weights DistDW (paper Eq. 3-4,
docs/methods.md#dhc); SimiS (:func:`simis_weights`, :class:`SimiSWeights`) and CLD
(:func:`cld_weights`) balance classes with other rules of the same kind (docs/methods.md#simis,
docs/methods.md#cld). The rules are pure functions of a (C,) count vector; the trackers are
``nn.Module`` objects whose whole state lives in registered buffers, so it is saved in
``state_dict`` (a resumed run continues the same weights) and follows ``.to(device/dtype)``.
Trackers take **integer label maps** (``argmax`` of logits, computed by the caller) and never
build autograd graphs.

Sources: ``xmed-lab/DHC:code/train_dhc.py`` (class ``DistDW``; the script builds
``DistDW(num_cls, momentum=0.99)``), ``xmed-lab/DHC@b3dee97:code/train_simis.py`` (class ``SimiS``)
and ``code/train_cld.py`` (``Synapse_AMOS_cld.weight``), the DHC repository's re-implementations of
SimiS (Chen et al., arXiv:2211.11086) and CLD (Lin et al., MICCAI 2022).
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
    "CLD_ABSENT_RULES",
    "CountWeights",
    "DistDW",
    "SimiSWeights",
]

# Epsilon of the reference code (xmed-lab/DHC:code/train_dhc.py, DistDW._cal_weights).
_DIST_EPS = 1e-8


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
