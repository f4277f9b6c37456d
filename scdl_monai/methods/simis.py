"""SimiS on CPS: class weights from the predicted class shares (docs/methods.md#simis).

SimiS (Chen et al., "An embarrassingly simple baseline for imbalanced semi-supervised learning",
arXiv:2211.11086) was designed for classification; the DHC repository extends it to segmentation
on CPS (``xmed-lab/DHC@b3dee97:code/train_simis.py``) and reports it in the DHC and SCDL tables.
Only its class-rebalancing rule is used, as per-class loss weights of each CPS network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scdl_monai.methods.base import LabelHistogramInit, check_num_classes, plain_tensor
from scdl_monai.methods.cps import CPS
from scdl_monai.weighting import SimiSWeights

__all__ = ["SimiS", "COUNT_SCOPES"]

#: which volumes of the batch SimiS counts classes on.
COUNT_SCOPES = ("all", "unlabeled")


class SimiS(CPS, LabelHistogramInit):
    """CPS whose two networks weight their losses with SimiS class weights, one tracker each.

    Per iteration, with x = cat(x_L, x_U), z_A = A(x), z_B = B(x) (one forward each):

    1. each network's :class:`~scdl_monai.weighting.SimiSWeights` tracker takes one EMA step
       (momentum 0.99) from the class counts of that network's **own** detached argmax on **all**
       volumes of the batch, labeled half included (``train_simis.py:298-299``):
       ``w ← 0.99·w + 0.01·C·(max P − P)``, P the predicted class shares;
    2. the losses of this iteration use the updated weights (as DHC): for network m,
       ``L_sup,m = CE(z_m[L], y_L; w_m) + Dice(z_m[L], y_L; w_m)`` (:class:`DiceCELoss` reference
       form, ``DC_and_CE_loss(w_dc=w, w_ce=w)``, L75-76, L302-305, L308) and
       ``L_cps,m = CE(z_m, argmax z_other; w_m)`` over the whole batch (``RobustCrossEntropyLoss``
       weighted mean, L69-70, L309);
    3. ``loss = ΣL_sup + λ(e)·ΣL_cps`` (λ = ``unsup_weight``, L311).

    Initialisation (``init_weight``, L160-174): before training each tracker is set to
    ``0.99·C + 0.01·C·(max P − P)`` of the ground-truth histogram of all labeled training volumes,
    i.e. nearly uniform ``C``. Pass ``init_counts``, call :meth:`init_from_counts` /
    :meth:`init_from_datalist`, or attach
    :class:`~scdl_monai.handlers.class_weights.LabelHistogramInitHandler` (skipped on resume: the
    boolean buffer ``trackers_started`` is checkpointed). Networks: A Kaiming, B Xavier (L242-243),
    hence ``init_b="xavier"``. Inference: logit mean of A and B (inherited).

    The trackers are the sub-modules ``weighting_a`` / ``weighting_b`` (buffers: saved in the
    method's ``state_dict``, restored on resume, logged by
    :class:`~scdl_monai.handlers.class_weights.ClassWeightLogger`).

    Args:
        network_a, network_b: the two networks (different module instances).
        num_classes: C including background.
        momentum: EMA momentum of both trackers (the script passes 0.99, L246-247; class default 0.95).
        count_scope: "all" (reference: the whole batch) or "unlabeled" (the unlabeled half only,
            as DHC's DistDW counts).
        init_counts: optional (C,) ground-truth class counts (calls :meth:`init_from_counts`).
        sup_loss, cps_loss, loss_mode, init_b: as :class:`CPS`.

    Raises:
        ValueError: ``num_classes`` < 2, bad ``momentum`` or ``count_scope``, the :class:`CPS` errors.

    Example:
        >>> from scdl_monai.networks.vnet import VNet
        >>> simis = SimiS(VNet(out_channels=3, n_filters=4), VNet(out_channels=3, n_filters=4), num_classes=3,
        ...               init_counts=[1000, 100, 10])
        >>> x = torch.randn(1, 1, 16, 16, 16)
        >>> out = simis(x, torch.randint(0, 3, (1, 1, 16, 16, 16)), x)
        >>> simis.weighting_a.weights.shape
        torch.Size([3])
    """

    trackers_started: torch.Tensor

    def __init__(
        self,
        network_a: nn.Module,
        network_b: nn.Module,
        num_classes: int,
        momentum: float = 0.99,
        count_scope: str = "all",
        init_counts: torch.Tensor | Sequence[float] | None = None,
        sup_loss: nn.Module | None = None,
        cps_loss: nn.Module | None = None,
        loss_mode: str = "reference",
        init_b: str | None = "xavier",
    ) -> None:
        check_num_classes("SimiS", num_classes)
        if count_scope not in COUNT_SCOPES:
            raise ValueError(f"SimiS: count_scope must be one of {COUNT_SCOPES}, got {count_scope!r}.")
        super().__init__(network_a, network_b, sup_loss=sup_loss, cps_loss=cps_loss, loss_mode=loss_mode, init_b=init_b)
        self.num_classes = num_classes
        self.count_scope = count_scope
        self.weighting_a = SimiSWeights(num_classes, momentum=momentum)
        self.weighting_b = SimiSWeights(num_classes, momentum=momentum)
        self.register_buffer("trackers_started", torch.zeros((), dtype=torch.bool))
        if init_counts is not None:
            self.init_from_counts(init_counts)

    @torch.no_grad()
    def init_from_counts(self, counts: torch.Tensor | Sequence[float]) -> None:
        """Initialise both trackers from ground-truth class counts (C,); marks the trackers started.

        Raises:
            ValueError: ``counts`` does not have C non-negative entries.
        """
        self.weighting_a.init_from_counts(counts)
        self.weighting_b.init_from_counts(counts)
        self.trackers_started.fill_(True)

    def class_weights(
        self, logits_a: torch.Tensor, logits_b: torch.Tensor, label_l: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update each tracker from its own network's argmax and return the new (w_A, w_B) snapshots."""
        first = 0 if self.count_scope == "all" else label_l.shape[0]
        weights = []
        for tracker, logits in ((self.weighting_a, logits_a), (self.weighting_b, logits_b)):
            pred = plain_tensor(logits)[first:].detach().argmax(dim=1, keepdim=True)
            weights.append(tracker.update(pred))
        self.trackers_started.fill_(True)
        return weights[0], weights[1]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, count_scope={self.count_scope!r}, loss_mode={self.loss_mode!r}"
