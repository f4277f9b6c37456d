"""Gradient-aware losses of GA (Qi, Wu, Chan, ECCV'24): GADice and GACE.

GA only replaces the segmentation losses of a baseline (GA-CPS, GA-MagicNet; docs/methods.md#ga-losses):

- :class:`GADiceLoss` — batch soft Dice with squared denominators, background included, where a
  class **absent from the batch target** gets a stop-gradient surrogate whose gradient is exactly
  ``p/N`` (plain Dice gives that class almost no gradient).
- :class:`GACELoss` — per-voxel CE with online hard-voxel mining (top-k %) and a per-class
  normalisation interpolating between the ordinary mean (γ = 1) and a sum of per-class means
  (γ = 0).

Tensor contract (the same as :mod:`scdl_monai.losses.segmentation`): ``logits``
(B, C, *spatial), softmax / log-softmax applied inside; ``target`` (B, 1, *spatial) integer class
indices (hard pseudo-labels allowed; targets never receive gradient); optional per-call (C,)
``weight``. Everything is computed in float32 even under autocast: the sums run over every voxel of
a 3D batch (millions), which overflows float16.

Source: ``cicailalala/GALoss:GALoss.py`` (classes ``GADice``, ``GACE``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scdl_monai.losses.segmentation import check_class_weight, check_logits_target

__all__ = ["GADiceLoss", "GACELoss"]

_GA_SMOOTH = 1e-10  # GALoss.py: smooth = 1e-10 in both GADice._dice_loss and GACE
_REDUCTIONS = ("mean", "sum", "none")


class GADiceLoss(nn.Module):
    """Gradient-aware batch Dice loss (GA, ECCV'24), background included.

    With ``p`` the softmax probabilities and ``t`` the one-hot target, sums taken over the whole
    batch and all voxels, ``s = 1e-10`` and ``N`` = number of voxels in the batch (B × spatial):

    - class ``i`` present in the batch target:
      ``ℓ_i = 1 − (2Σ p_i t_i + s) / (Σ p_i² + Σ t_i² + s)``;
    - class ``i`` absent: ``ℓ_i = Σ_v sg(p_{i,v}/N)·p_{i,v}`` — value ``Σ p_i²/N``, gradient with
      respect to ``p_{i,v}`` exactly ``p_{i,v}/N`` (``sg`` = stop-gradient / ``detach``).

    Presence is decided on the whole batch, like the reference (``torch.sum(target[:, i]) > 0``).
    With a per-call ``weight`` each term is multiplied by ``w_i``; ``reduction="mean"`` then divides
    by C (not by Σw), as the reference does (``loss / self.n_classes``).

    The reference's ``GA=False`` branch silently reuses the previous class's value for an absent
    class (``cicailalala/GALoss@65642f50:GALoss.py``); it is not reproduced: this loss always uses the GA term.

    Args:
        softmax: apply softmax over channels to the input (default). ``False``: the input already
            holds probabilities (as the MagicNet code passes ``outputs_soft``).
        reduction: "mean" (over classes, default), "sum" (over classes) or "none" ((C,) per-class
            terms).

    Raises:
        ValueError: unknown ``reduction``; shapes violating the contract (in ``forward``).
        TypeError: non-tensor inputs or weight.

    Example:
        >>> loss = GADiceLoss()
        >>> logits = torch.randn(2, 4, 8, 8, 8, requires_grad=True)
        >>> target = torch.randint(0, 3, (2, 1, 8, 8, 8))  # class 3 absent -> GA term
        >>> loss(logits, target).backward()
    """

    def __init__(self, softmax: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        if not isinstance(softmax, bool):
            raise TypeError(f"softmax must be a bool, got {softmax!r}.")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
        self.softmax = softmax
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"softmax={self.softmax}, reduction={self.reduction!r}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: (B, C, *spatial) logits (probabilities when ``softmax=False``).
            target: (B, 1, *spatial) integer class indices in [0, C).
            weight: optional (C,) per-class multipliers (detached).

        Returns:
            scalar for "mean"/"sum", (C,) for "none".
        """
        check_logits_target(logits, target, "GADiceLoss")
        num_classes = logits.shape[1]
        weight = check_class_weight(weight, num_classes, "GADiceLoss")
        probs = torch.softmax(logits.float(), dim=1) if self.softmax else logits.float()
        onehot = F.one_hot(target.detach()[:, 0].long(), num_classes).movedim(-1, 1).to(probs.dtype)
        reduce_dims = [0, *range(2, probs.ndim)]
        intersection = (probs * onehot).sum(reduce_dims)
        pred_sq = (probs * probs).sum(reduce_dims)
        target_sq = onehot.sum(reduce_dims)  # t² = t for a one-hot target
        dice_term = 1.0 - (2.0 * intersection + _GA_SMOOTH) / (pred_sq + target_sq + _GA_SMOOTH)
        num_voxels = probs.numel() // num_classes
        ga_term = (probs.detach() / num_voxels * probs).sum(reduce_dims)
        per_class = torch.where(target_sq > 0, dice_term, ga_term)
        if weight is not None:
            per_class = per_class * weight.to(per_class)
        if self.reduction == "mean":
            return per_class.mean()
        if self.reduction == "sum":
            return per_class.sum()
        return per_class


class GACELoss(nn.Module):
    """Gradient-aware cross-entropy (GA, ECCV'24): top-k % hard voxels, class-normalised.

    Per-voxel CE ``ℓ_v`` (times ``w[y_v]`` when a per-call ``weight`` is given, like
    ``CrossEntropyLoss(weight, reduction="none")`` in the reference) is flattened over batch ×
    voxels (``n`` values); the ``K = ⌊n·k/100⌋`` largest are kept (online hard-voxel mining), and
    with ``N_i`` the number of kept voxels of target class ``i``:

    .. math::
        L = \\sum_{i=0}^{C-1} \\frac{\\sum_{v\\,\\text{kept},\\,y_v=i} \\ell_v}
                               {(N_i + 10^{-10})^{1-\\gamma}\\,K^{\\gamma} + 10^{-10}}

    γ = 1 gives the ordinary mean over the kept voxels; γ = 0 gives the **sum over classes** of
    the per-class mean CE (classes with no kept voxel contribute 0). ``k = 100`` keeps every voxel
    (no mining; used for the CPS pseudo-label term). Ties at the top-K boundary are broken by
    ``torch.topk``. Defaults k = 10, γ = 0.5 (supervised term of GA-CPS / GA-MagicNet).

    Args:
        k: percentage of voxels kept, in (0, 100].
        gamma: class-normalisation exponent γ in [0, 1].

    Raises:
        ValueError: ``k`` or ``gamma`` out of range; in ``forward``, shapes violating the contract
            or an input so small that K = 0.
        TypeError: non-numeric ``k``/``gamma``; non-tensor inputs.

    Example:
        >>> loss = GACELoss(k=10, gamma=0.5)
        >>> value = loss(torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8)))
    """

    def __init__(self, k: float = 10, gamma: float = 0.5) -> None:
        super().__init__()
        for name, value in (("k", k), ("gamma", gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}.")
        if not 0 < k <= 100:
            raise ValueError(f"k must be a percentage in (0, 100], got {k!r}.")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}.")
        self.k = k
        self.gamma = float(gamma)

    def extra_repr(self) -> str:
        return f"k={self.k}, gamma={self.gamma}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: (B, C, *spatial) logits.
            target: (B, 1, *spatial) integer class indices in [0, C).
            weight: optional (C,) class weights applied to the per-voxel CE before mining.

        Returns:
            scalar loss.
        """
        check_logits_target(logits, target, "GACELoss")
        num_classes = logits.shape[1]
        weight = check_class_weight(weight, num_classes, "GACELoss")
        labels = target.detach()[:, 0].long()
        per_voxel = F.cross_entropy(
            logits.float(), labels, weight=None if weight is None else weight.float(), reduction="none"
        ).reshape(-1)
        labels = labels.reshape(-1)
        n = per_voxel.numel()
        keep = int(n * self.k / 100)  # GALoss.py: int(n_instance * self.k / 100)
        if keep < 1:
            raise ValueError(
                f"GACELoss: k={self.k} keeps floor(n*k/100) = 0 of n={n} voxels; use a larger input or k."
            )
        if keep < n:
            per_voxel, index = torch.topk(per_voxel, keep, sorted=False)
            labels = labels[index]
        class_sum = per_voxel.new_zeros(num_classes).index_add_(0, labels, per_voxel)
        class_count = torch.bincount(labels, minlength=num_classes).to(per_voxel.dtype)
        denominator = (class_count + _GA_SMOOTH) ** (1.0 - self.gamma) * math.pow(keep, self.gamma) + _GA_SMOOTH
        return (class_sum / denominator).sum()
