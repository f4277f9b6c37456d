"""CLD on CPS: static class weights and confidence-driven pseudo-label sampling (docs/methods.md#cld).

CLD (Lin et al., "Calibrating label distribution for class-imbalanced barely-supervised knee
segmentation", MICCAI 2022) as re-implemented on CPS in the DHC repository
(``xmed-lab/DHC@b3dee97:code/train_cld.py``), the form reported in the DHC and SCDL tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scdl_monai.losses.segmentation import MaskedCELoss
from scdl_monai.methods.base import LabelHistogramInit, check_num_classes, plain_tensor
from scdl_monai.methods.cps import CPS
from scdl_monai.weighting import CLD_ABSENT_RULES, ConfidenceBank, cld_sampling_mask, cld_weights

__all__ = ["CLD"]


class CLD(CPS, LabelHistogramInit):
    """CPS with CLD's static class weights and a confidence-driven random mask on the CPS terms.

    Per iteration, with x = cat(x_L, x_U), z_A = A(x), z_B = B(x) (one forward each):

    1. ``L_sup = DC_and_CE(z_A[L], y_L; w) + DC_and_CE(z_B[L], y_L; w)`` with the **static**
       weights ``w_k = (max_j N_j / N_k)^(1/3)`` of the labeled ground truth, the same for both
       networks (:func:`~scdl_monai.weighting.cld_weights`; ``train_cld.py:312-314,363``);
    2. each network's :class:`~scdl_monai.weighting.ConfidenceBank` records the mean softmax
       probability of the true class per class on the labeled half (own detached logits vs GT,
       L359-360) and refreshes its confidence c every 8 steps (momentum 0.999);
    3. sampling rates ``s = ((1 − c)/max(1 − c))^0.5`` (L370-371); network X's mask keeps each of
       its voxels (all volumes) with probability ``s[k]``, k = X's **own** argmax (L374-375);
    4. ``L_cps = mean_v[w_{ŷ_B}·CE(z_A, ŷ_B)·m_A] + mean_v[w_{ŷ_A}·CE(z_B, ŷ_A)·m_B]``: peer target,
       own mask, the mean over **all** voxels of the batch (:class:`MaskedCELoss`, not divided by
       Σw; L316, L378);
    5. ``loss = L_sup + λ(e)·L_cps`` (L381).

    State (buffers, checkpointed): ``class_weight`` (C,), set once from the ground-truth histogram
    (pass ``init_counts``, call :meth:`init_from_counts` / :meth:`init_from_datalist`, or attach
    :class:`~scdl_monai.handlers.class_weights.LabelHistogramInitHandler`; ones before), the two
    banks ``bank_a`` / ``bank_b`` and ``trackers_started``. A's bank starts from ``torch.rand(C)``
    (the reference's random confidences drive the first 7 steps), B's from a copy of it
    (L321-322). The masks draw from torch's global generator, which the bundles checkpoint.
    Networks: A Kaiming, B Xavier (L308-309), hence ``init_b="xavier"``. Inference: logit mean.

    Args:
        network_a, network_b: the two networks (different module instances).
        num_classes: C including background.
        confidence_momentum: EMA momentum of the banks (reference 0.999).
        confidence_interval: steps per confidence refresh (reference ``--confs_iter`` 8).
        gamma: exponent of the sampling rate (reference 0.5, ``cal_sampling_rate``).
        initial_confidence: None (reference: uniform random, shared by both banks), a number for
            every class, or (C,) values.
        absent_class: weight of a class absent from the labeled ground truth: "rarest" (default,
            the rarest present class's weight) or "reference" (``inf``, which makes the losses
            non-finite; see :func:`~scdl_monai.weighting.cld_weights`).
        init_counts: optional (C,) ground-truth class counts (calls :meth:`init_from_counts`).
        sup_loss, loss_mode, init_b: as :class:`CPS`.
        cps_loss: pseudo-label loss taking ``weight=`` and ``mask=``; default :class:`MaskedCELoss`.

    Raises:
        ValueError: ``num_classes`` < 2, bad momentum/interval/gamma/``absent_class`` or
            ``initial_confidence`` shape, the :class:`CPS` errors.

    Example:
        >>> from scdl_monai.networks.vnet import VNet
        >>> cld = CLD(VNet(out_channels=3, n_filters=4), VNet(out_channels=3, n_filters=4), num_classes=3,
        ...           init_counts=[1000, 125, 8])
        >>> cld.class_weight
        tensor([1., 2., 5.])
    """

    class_weight: torch.Tensor
    trackers_started: torch.Tensor

    def __init__(
        self,
        network_a: nn.Module,
        network_b: nn.Module,
        num_classes: int,
        confidence_momentum: float = 0.999,
        confidence_interval: int = 8,
        gamma: float = 0.5,
        initial_confidence: float | Sequence[float] | torch.Tensor | None = None,
        absent_class: str = "rarest",
        init_counts: torch.Tensor | Sequence[float] | None = None,
        sup_loss: nn.Module | None = None,
        cps_loss: nn.Module | None = None,
        loss_mode: str = "reference",
        init_b: str | None = "xavier",
    ) -> None:
        check_num_classes("CLD", num_classes)
        if absent_class not in CLD_ABSENT_RULES:
            raise ValueError(f"CLD: absent_class must be one of {CLD_ABSENT_RULES}, got {absent_class!r}.")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
            raise ValueError(f"CLD: gamma must be a positive float, got {gamma!r}.")
        cps_loss = MaskedCELoss() if cps_loss is None else cps_loss
        super().__init__(network_a, network_b, sup_loss=sup_loss, cps_loss=cps_loss, loss_mode=loss_mode, init_b=init_b)
        self.num_classes = num_classes
        self.gamma = float(gamma)
        self.absent_class = absent_class
        if isinstance(initial_confidence, (int, float)) and not isinstance(initial_confidence, bool):
            initial_confidence = [float(initial_confidence)] * num_classes
        bank = {"num_classes": num_classes, "momentum": confidence_momentum, "interval": confidence_interval}
        self.bank_a = ConfidenceBank(**bank, initial=initial_confidence)
        self.bank_b = ConfidenceBank(**bank, initial=self.bank_a.confidence)
        self.register_buffer("class_weight", torch.ones(num_classes))
        self.register_buffer("trackers_started", torch.zeros((), dtype=torch.bool))
        if init_counts is not None:
            self.init_from_counts(init_counts)

    @torch.no_grad()
    def init_from_counts(self, counts: torch.Tensor | Sequence[float]) -> None:
        """Set the static class weights from ground-truth class counts (C,); marks the state started.

        Raises:
            ValueError: ``counts`` does not have C non-negative entries.
        """
        counts_t = torch.as_tensor(counts)
        if counts_t.shape != (self.num_classes,):
            raise ValueError(f"CLD: counts must have shape ({self.num_classes},), got {tuple(counts_t.shape)}.")
        self.class_weight.copy_(cld_weights(counts_t.to(torch.float64), absent=self.absent_class).to(self.class_weight))
        self.trackers_started.fill_(True)

    def class_weights(
        self, logits_a: torch.Tensor, logits_b: torch.Tensor, label_l: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The static weights, for both networks (CLD changes them only at initialisation)."""
        weight = self.class_weight.detach().clone()
        return weight, weight

    @torch.no_grad()
    def pseudo_label_masks(
        self, logits_a: torch.Tensor, logits_b: torch.Tensor, label_l: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Record the labeled confidences, then draw each network's mask from its own argmax (A's first).

        Returns:
            float 0/1 masks (B_l + B_u, 1, *spatial) for A's and B's CPS terms.
        """
        n_l = label_l.shape[0]
        target = plain_tensor(label_l)
        masks = []
        for bank, logits in ((self.bank_a, logits_a), (self.bank_b, logits_b)):
            logits = plain_tensor(logits).detach()
            bank.update(logits[:n_l], target)
            masks.append(cld_sampling_mask(logits.argmax(dim=1, keepdim=True), bank.sampling_rate(self.gamma)))
        self.trackers_started.fill_(True)
        return masks[0], masks[1]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, gamma={self.gamma}, loss_mode={self.loss_mode!r}"
