"""CLD's per-class confidence and the voxel sampling it drives (Lin et al., MICCAI 2022).

:class:`ConfidenceBank` tracks, per class, the mean probability a network gives the true class on
the labeled voxels (state in buffers); :func:`cld_sampling_rate` turns it into keep probabilities
and :func:`cld_sampling_mask` draws the voxel mask (docs/methods.md#cld).

Source: ``xmed-lab/DHC@b3dee97:code/train_cld.py`` (``ConfidenceBank``, ``cal_sampling_rate``,
``cal_sampling_mask``), the DHC repository's re-implementation of CLD.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scdl_monai.weighting.counts import _check_labels, _check_momentum, _check_num_classes

__all__ = ["cld_sampling_rate", "cld_sampling_mask", "ConfidenceBank"]


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
