"""Weighted cross-entropy and soft Dice losses in the forms used by the reference SSL code.

Every loss here follows one tensor contract (docs/methods.md#shared-losses-and-schedules):

- ``logits``: (B, C, *spatial) raw network outputs; the softmax is applied inside.
- ``target``: (B, 1, *spatial) integer class indices (a float tensor holding integers is accepted).
- ``weight``: optional (C,) per-class weight passed **per call** (the class-weighting trackers of
  DHC change it every iteration); ``None`` means all ones. Weights are never stored in the loss.

Targets never receive gradient: they are detached and cast to ``long`` before use, so hard pseudo
labels (``argmax`` of another network) can be passed directly.

All computations are done in float32 even under autocast (:func:`as_float32`), because the sums
over all voxels of a 3D batch lose too much precision in bfloat16/float16.

Sources: docs/methods.md#shared-losses-and-schedules and ``xmed-lab/DHC@a6f72d37:code/utils/loss.py``
(``RobustCrossEntropyLoss``, ``SoftDiceLoss``, ``DC_and_CE_loss``, nnU-Net style); MONAI ``monai/losses/dice.py``
(``DiceLoss`` / ``DiceCELoss``) for the ``"monai"`` mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

__all__ = ["WeightedCELoss", "MaskedCELoss", "SoftDiceLoss", "DiceCELoss", "as_float32", "check_logits_target", "check_class_weight"]

_MODES = ("reference", "monai")


def as_float32(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` as a float32 tensor in the default (channels-first) layout; the same tensor if it already is.

    One copy does both the cast and the layout change: CPU ``softmax``/``log_softmax`` over the
    class axis work on the channels-first layout and would otherwise copy channels-last logits
    (``PrecisionPolicy(channels_last=True)``) again inside every loss term.
    """
    return logits.to(dtype=torch.float32, memory_format=torch.contiguous_format)


def check_logits_target(logits: torch.Tensor, target: torch.Tensor, name: str = "loss") -> None:
    """Validate the (B, C, *spatial) logits / (B, 1, *spatial) target contract.

    Raises:
        TypeError: when either argument is not a tensor.
        ValueError: when the shapes do not follow the contract.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(
            f"{name}: logits and target must be torch.Tensor, got {type(logits).__name__} and {type(target).__name__}."
        )
    if logits.ndim < 3:
        raise ValueError(f"{name}: logits must have shape (B, C, *spatial), got {tuple(logits.shape)}.")
    expected = (logits.shape[0], 1, *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"{name}: target must have shape (B, 1, *spatial) = {expected} to match logits "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}."
        )


def check_class_weight(weight: torch.Tensor | None, num_classes: int, name: str = "loss") -> torch.Tensor | None:
    """Validate a per-call (C,) class weight; returns it detached (weights are not learned here).

    Only the type and shape are checked (no value check: that would force a device sync per call).

    Raises:
        TypeError: when ``weight`` is not a tensor or None.
        ValueError: when its shape is not (C,).
    """
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name}: weight must be a (C,) torch.Tensor or None, got {type(weight).__name__}.")
    if weight.ndim != 1 or weight.shape[0] != num_classes:
        raise ValueError(
            f"{name}: weight must have shape (C,) = ({num_classes},) to match the logits channels, "
            f"got {tuple(weight.shape)}."
        )
    return weight.detach()


class WeightedCELoss(nn.Module):
    """Class-weighted cross-entropy with ``torch.nn.CrossEntropyLoss`` "mean" semantics.

    .. math::  \\mathrm{CE} = \\frac{\\sum_i w_{y_i}\\,(-\\log p_{i,y_i})}{\\sum_i w_{y_i}}

    over all voxels ``i`` of the batch (DHC ``RobustCrossEntropyLoss``). With
    ``weight=None`` this is the plain mean negative log-likelihood. One deliberate difference from
    torch: when every voxel's class has weight 0 (e.g. DistDW gives background weight ≈ 0 and a
    patch holds only background) torch returns NaN; this loss returns 0 (nothing to learn) so a
    single degenerate batch cannot poison training. For all other inputs the value is identical.

    Example:
        >>> loss = WeightedCELoss()
        >>> logits, target = torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)
        >>> round(float(loss(logits, target)), 4)  # log(3)
        1.0986
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Args: logits (B, C, *spatial); target (B, 1, *spatial) int; weight (C,) or None. Returns a scalar."""
        check_logits_target(logits, target, type(self).__name__)
        weight = check_class_weight(weight, logits.shape[1], type(self).__name__)
        logits = as_float32(logits)
        labels = target.detach()[:, 0].long()
        if weight is None:
            return F.cross_entropy(logits, labels)
        weight = weight.to(logits)
        per_voxel = F.cross_entropy(logits, labels, weight=weight, reduction="none")  # w[y]·nll
        denominator = weight[labels].sum()
        # where(): keep the exact torch value whenever the denominator is positive.
        return per_voxel.sum() / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


class MaskedCELoss(nn.Module):
    """Cross-entropy times a class weight and a voxel mask, averaged over **all** voxels.

    .. math::  \\mathrm{CE} = \\frac{1}{N} \\sum_i w_{y_i}\\, m_i\\, (-\\log p_{i,y_i})

    over the N voxels of the batch (masked-out voxels still count in N), the
    ``WeightedCrossEntropyLoss`` of ``xmed-lab/DHC@a6f72d37:code/utils/loss.py`` (L210-234), which
    CLD uses for its pseudo-label term (docs/methods.md#cld). Unlike :class:`WeightedCELoss` the
    sum is **not** divided by Σ w: with ``weight=None`` and ``mask=None`` it is the plain mean CE.

    Example:
        >>> loss = MaskedCELoss()
        >>> logits, target = torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)
        >>> mask = torch.zeros(1, 1, 2, 2, 2); mask[..., 0] = 1  # half the voxels
        >>> round(float(loss(logits, target, mask=mask)), 4)  # log(3) / 2
        0.5493
    """

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: logits (B, C, *spatial); target (B, 1, *spatial) int; weight (C,) or None; mask
        (B, 1, *spatial) voxel multipliers (detached) or None. Returns a scalar.

        Raises:
            ValueError: shapes off the contract, or a mask that is not (B, 1, *spatial).
        """
        check_logits_target(logits, target, type(self).__name__)
        weight = check_class_weight(weight, logits.shape[1], type(self).__name__)
        if mask is not None and tuple(mask.shape) != tuple(target.shape):
            raise ValueError(
                f"{type(self).__name__}: mask must have the target's shape {tuple(target.shape)}, got {tuple(mask.shape)}."
            )
        logits = as_float32(logits)
        labels = target.detach()[:, 0].long()
        per_voxel = F.cross_entropy(logits, labels, weight=None if weight is None else weight.to(logits), reduction="none")
        if mask is not None:
            per_voxel = per_voxel * mask.detach()[:, 0].to(per_voxel)
        return per_voxel.mean()


class SoftDiceLoss(nn.Module):
    """Negative batch soft Dice of the nnU-Net / DHC form (the ``reference`` Dice of the DHC family).

    With p = softmax(logits) and y the one-hot target, sums run over the batch **and** all voxels
    ("batch Dice"):

    .. math::
        TP_k = \\sum p_k y_k,\\; FP_k = \\sum p_k (1-y_k),\\; FN_k = \\sum (1-p_k) y_k \\\\
        dc_k = \\frac{2TP_k + s}{2TP_k + FP_k + FN_k + s + 10^{-8}} \\\\
        \\mathcal{L} = -\\operatorname{mean}_{k \\in K}(w_k\\,dc_k)

    with K = {1..C-1} (background excluded, the default) or {0..C-1}, s = ``smooth`` (1 in DHC)
    and w = ones when ``weight`` is None. The loss is the **negative** Dice (range [-1, 0] for
    w = 1), not 1 − Dice, and the weighted mean is divided by |K|, not Σw — exactly as
    ``xmed-lab/DHC:code/utils/loss.py::SoftDiceLoss`` (batch_dice=True, do_bg=False).

    Args:
        smooth: additive smoothing ``s`` of numerator and denominator (DHC: 1.0).
        include_background: include class 0 in K.

    Raises:
        ValueError: when ``smooth`` is negative.
    """

    def __init__(self, smooth: float = 1.0, include_background: bool = False) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"SoftDiceLoss: smooth must be >= 0, got {smooth}.")
        self.smooth = float(smooth)
        self.include_background = bool(include_background)

    def dice_per_class(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft batch Dice per class, shape (C,) (all classes, before exclusion/weighting)."""
        logits = as_float32(logits)
        probs = torch.softmax(logits, dim=1)
        onehot = torch.zeros_like(probs).scatter_(1, target.detach().long(), 1.0)
        axes = [0, *range(2, logits.ndim)]
        tp = (probs * onehot).sum(axes)
        fp = (probs * (1 - onehot)).sum(axes)
        fn = ((1 - probs) * onehot).sum(axes)
        return (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth + 1e-8)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Args: logits (B, C, *spatial); target (B, 1, *spatial) int; weight (C,) or None. Returns a scalar."""
        check_logits_target(logits, target, type(self).__name__)
        weight = check_class_weight(weight, logits.shape[1], type(self).__name__)
        dc = self.dice_per_class(logits, target)
        if weight is not None:
            dc = dc * weight.to(dc)
        if not self.include_background:
            dc = dc[1:]
        return -dc.mean()


class DiceCELoss(nn.Module):
    """Cross-entropy + soft Dice with a per-call class weight, in the DHC or the MONAI form.

    ``loss = ce_weight · CE(logits, target; w) + dice_weight · Dice(logits, target; w)``

    ``mode="reference"`` (default) is ``DC_and_CE_loss`` of ``xmed-lab/DHC@a6f72d37:code/utils/loss.py``
    exactly:

    - CE: :class:`WeightedCELoss`, i.e. Σ w[y]·nll / Σ w[y] over all voxels (all classes weighted);
    - Dice: :class:`SoftDiceLoss`, batch soft Dice, smooth 1, background excluded,
      −mean_{k≥1}(w_k·dc_k) (a negative number; the total loss can be negative).

    ``mode="monai"`` reproduces ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True,
    include_background=..., weight=w, smooth_nr=s, smooth_dr=s)``: per-sample Dice loss
    1 − (2I + s)/(ΣP + ΣY + s) for every (b, k), multiplied by w_k (w[1:] when background is
    excluded) and averaged over batch and classes; CE as ``nn.CrossEntropyLoss(weight=w)``.

    Args:
        mode: "reference" (DHC/nnU-Net form) or "monai".
        smooth: Dice smoothing; ``None`` selects the mode's default (1.0 for "reference" as in DHC,
            1e-5 for "monai" as ``monai.losses.DiceLoss``).
        include_background: include class 0 in the Dice term (CE always covers all classes).
        ce_weight: multiplier of the CE term (DHC ``weight_ce`` = 1).
        dice_weight: multiplier of the Dice term (DHC ``weight_dice`` = 1).

    Raises:
        ValueError: unknown ``mode``, negative ``smooth``/``ce_weight``/``dice_weight``; in
            ``forward``: bad shapes or a weight that is not (C,).

    Example:
        >>> loss = DiceCELoss()
        >>> logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        >>> target = torch.randint(0, 3, (2, 1, 8, 8, 8))
        >>> loss(logits, target, weight=torch.tensor([0.1, 1.0, 2.0])).backward()
    """

    def __init__(
        self,
        mode: str = "reference",
        smooth: float | None = None,
        include_background: bool = False,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"DiceCELoss: mode must be one of {_MODES}, got {mode!r}.")
        if smooth is None:
            smooth = 1.0 if mode == "reference" else 1e-5
        for key, value in (("smooth", smooth), ("ce_weight", ce_weight), ("dice_weight", dice_weight)):
            if value < 0:
                raise ValueError(f"DiceCELoss: {key} must be >= 0, got {value}.")
        self.mode = mode
        self.smooth = float(smooth)
        self.include_background = bool(include_background)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.ce = WeightedCELoss()
        if mode == "reference":
            self.dice: nn.Module = SoftDiceLoss(smooth=self.smooth, include_background=self.include_background)
        else:
            # reduction="none": the per-call class weight is applied here, as MONAI applies its buffer.
            self.dice = DiceLoss(
                include_background=self.include_background,
                to_onehot_y=True,
                softmax=True,
                smooth_nr=self.smooth,
                smooth_dr=self.smooth,
                reduction="none",
            )

    def _monai_dice(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        f = self.dice(logits, target.detach().long())  # (B, C', 1, ..., 1)
        f = f.reshape(f.shape[0], f.shape[1])
        if weight is not None:
            w = weight if self.include_background else weight[1:]
            f = f * w.to(f)
        return f.mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: (B, C, *spatial) raw scores.
            target: (B, 1, *spatial) integer labels (no gradient flows into them).
            weight: optional (C,) class weight for this call (non-negative by convention; not checked).

        Returns:
            scalar tensor (float32).
        """
        check_logits_target(logits, target, type(self).__name__)
        weight = check_class_weight(weight, logits.shape[1], type(self).__name__)
        logits = as_float32(logits)
        ce = self.ce(logits, target, weight)
        if self.mode == "reference":
            dice = self.dice(logits, target, weight)
        else:
            dice = self._monai_dice(logits, target, weight)
        return self.ce_weight * ce + self.dice_weight * dice

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, smooth={self.smooth}, include_background={self.include_background}, "
            f"ce_weight={self.ce_weight}, dice_weight={self.dice_weight}"
        )
