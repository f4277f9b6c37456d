"""Class-frequency blending weights of MagicNet's cube-wise pseudo-labels (Chen et al., CVPR'23).

MagicNet (docs/methods.md#magicnet) blends the teacher's logits with the within-image cube-wise
logits (:mod:`scdl_monai.data.cubes`): :func:`class_frequency_weights` turns pseudo-label class
counts (kept by :class:`ClassFrequencyTracker`, state in buffers) into per-class blending weights
and :func:`blend_pseudo_logits` applies them.

Sources: ``DeepMed-Lab-ECNU/MagicNet:code/utils/cube_utils.py`` (``OrganClassLogger``),
``.../cube_losses.py`` (``get_mix_pl``), ``.../train_main_btcv.py`` (blending).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["class_frequency_weights", "blend_pseudo_logits", "ClassFrequencyTracker"]


def class_frequency_weights(counts: torch.Tensor | Sequence[float], temperature: float = 1.0) -> torch.Tensor:
    """Blending weights from pseudo-label class counts (MagicNet cube-wise pseudo-label blending).

    ``d_c = n_c^{1/T}``, normalised to sum 1, then divided by its maximum: the most frequent class
    (background) gets 1, rare classes get small weights, so :func:`blend_pseudo_logits` takes the
    cube-wise prediction for frequent classes and keeps the teacher's for rare ones.
    (Normalising to sum 1 before dividing by the max does not change the result; it is kept as in
    ``train_main_btcv.py``.) T = ``T_dist`` = 1.0 in the reference.

    Guard (not in the reference): all-zero counts (nothing observed yet) give ones instead of NaN.

    Args:
        counts: (C,) non-negative class counts.
        temperature: T > 0.

    Returns:
        (C,) weights in [0, 1] with maximum 1; floating dtype of ``counts`` (else the default dtype).

    Raises:
        ValueError: bad shape, negative counts or non-positive temperature.
    """
    counts_t = torch.as_tensor(counts)
    if counts_t.ndim != 1 or counts_t.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D (C,) sequence, got shape {tuple(counts_t.shape)}.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive float, got {temperature!r}.")
    out_dtype = counts_t.dtype if counts_t.dtype.is_floating_point else torch.get_default_dtype()
    n = counts_t.to(torch.float64)
    if bool((n < 0).any()):
        raise ValueError(f"counts must be non-negative, got {counts_t.tolist()}.")
    d = n ** (1.0 / temperature)
    if not bool(d.sum() > 0):
        return torch.ones_like(d).to(out_dtype)
    d = d / d.sum()
    return (d / d.max()).to(out_dtype)


def blend_pseudo_logits(
    teacher_logits: torch.Tensor, cube_logits: torch.Tensor, class_weights: torch.Tensor
) -> torch.Tensor:
    """Cube-wise pseudo-label blending: ``(1 − w)·T + w·U`` with ``w_v = d[argmax_c T_v]``.

    Args:
        teacher_logits: (B, C, *spatial) teacher logits T on the (noisy) unlabeled images.
        cube_logits: (B, C, *spatial) within-image cube-wise logits U (reassembled), same shape.
        class_weights: (C,) weights d from :func:`class_frequency_weights`.

    Returns:
        (B, C, *spatial) blended logits; the pseudo-label is their argmax. Computed without
        gradient (pseudo-labels carry none).

    Raises:
        ValueError: shape mismatches.
    """
    if teacher_logits.shape != cube_logits.shape or teacher_logits.ndim < 3:
        raise ValueError(
            f"teacher_logits and cube_logits must share a (B, C, *spatial) shape, got "
            f"{tuple(teacher_logits.shape)} and {tuple(cube_logits.shape)}."
        )
    if class_weights.shape != (teacher_logits.shape[1],):
        raise ValueError(
            f"class_weights must have shape (C,) = ({teacher_logits.shape[1]},), got {tuple(class_weights.shape)}."
        )
    with torch.no_grad():
        w = class_weights.to(teacher_logits)[teacher_logits.argmax(dim=1)].unsqueeze(1)
        return (1.0 - w) * teacher_logits + w * cube_logits


class ClassFrequencyTracker(nn.Module):
    """Pseudo-label class counts for the blending weights (MagicNet ``OrganClassLogger``).

    ``observe(labels)`` accumulates the class histogram of the current pseudo-labels into
    ``pending``; ``refresh()`` (called every 20 iterations by MagicNet) replaces ``counts`` by the
    pending histogram and clears it — the reference recounts only what was stored since the last
    refresh, it does not accumulate over training. A refresh with nothing pending keeps ``counts``
    (the reference skips it when its store is empty). State in buffers (checkpointed, ``.to()``).

    Args:
        num_classes: C.
        temperature: T of :func:`class_frequency_weights` (``T_dist`` = 1.0).

    Buffers:
        pending, counts: int64 (C,).
    """

    pending: torch.Tensor
    counts: torch.Tensor

    def __init__(self, num_classes: int, temperature: float = 1.0) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
        class_frequency_weights([1.0], temperature)  # validates the temperature
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.register_buffer("pending", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, temperature={self.temperature}"

    @torch.no_grad()
    def observe(self, labels: torch.Tensor) -> None:
        """Add the histogram of integer ``labels`` (any shape, values in [0, C)) to ``pending``."""
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point:
            got = getattr(labels, "dtype", type(labels).__name__)
            raise TypeError(f"labels must be an integer tensor of class indices, got {got}.")
        hist = torch.bincount(labels.reshape(-1).long(), minlength=self.num_classes)
        if hist.numel() != self.num_classes:
            raise ValueError(f"labels must lie in [0, num_classes={self.num_classes}), got max {hist.numel() - 1}.")
        self.pending.add_(hist.to(self.pending.device))

    @torch.no_grad()
    def refresh(self) -> None:
        """``counts ← pending; pending ← 0`` when anything is pending."""
        if bool(self.pending.sum() > 0):
            self.counts.copy_(self.pending)
            self.pending.zero_()

    def weights(self) -> torch.Tensor:
        """(C,) blending weights :func:`class_frequency_weights` of ``counts`` (float32)."""
        return class_frequency_weights(self.counts.float(), self.temperature)
