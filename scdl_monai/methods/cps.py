"""Cross pseudo supervision (Chen et al., CVPR 2021) in the form used by DHC (docs/methods.md#cps)."""

from __future__ import annotations

import torch
from torch import nn

from scdl_monai.losses.segmentation import DiceCELoss, WeightedCELoss
from scdl_monai.methods.base import LogitMean, MethodOutput, SemiSupervisedMethod, call_loss

__all__ = ["CPS"]

_LOSS_MODES = ("reference", "monai")
_INIT_SCHEMES = ("xavier", "kaiming")


class CPS(SemiSupervisedMethod):
    """Two networks that supervise each other with hard pseudo-labels.

    One forward of each network on the whole batch x = cat(x_L, x_U) (BatchNorm sees labeled and
    unlabeled patches together, as in ``xmed-lab/DHC:code/train_cps.py``), then

    .. math::
        L_{sup} = \\ell_{sup}(z_A[L], y_L; w_A) + \\ell_{sup}(z_B[L], y_L; w_B) \\\\
        L_{cps} = \\ell_{cps}(z_A, \\arg\\max z_B; w_A) + \\ell_{cps}(z_B, \\arg\\max z_A; w_B) \\\\
        L = L_{sup} + \\lambda(e)\\,L_{cps}

    with the CPS term over the **whole** batch (L ∪ U), argmax detached, no confidence threshold;
    λ(e) is the ``unsup_weight`` buffer (set by
    :class:`~scdl_monai.handlers.schedules.UnsupWeightSchedule`, sigmoid ramp-up to 0.1 over
    all epochs in DHC). The class weights w_A, w_B come from :meth:`class_weights`, ``None`` for
    plain CPS; DHC overrides that hook (DiffDW for A, DistDW for B) and inherits the rest, as do
    SimiS (SimiS weights) and CLD, which also overrides :meth:`pseudo_label_masks` (a voxel mask
    per network passed to ``cps_loss`` as ``mask=``; ``None`` for plain CPS).

    Inference averages the **logits**: ``(z_A + z_B) / 2`` (:meth:`inference_network`).

    Args:
        network_a: network A (Kaiming-initialised VNet in DHC's CPS baseline).
        network_b: network B, a different module instance of the same task.
        sup_loss: supervised loss ``(logits, target[, weight])``; default
            ``DiceCELoss(mode=loss_mode)`` (CE + Dice 1:1).
        cps_loss: pseudo-label loss ``(logits, target[, weight])``; default :class:`WeightedCELoss`
            (cross-entropy, mean over voxels; identical in both modes).
        loss_mode: "reference" (DHC loss forms, docs/methods.md#shared-losses-and-schedules) or "monai"
            (MONAI DiceCELoss semantics); used only for the default ``sup_loss``.
        init_b: re-initialise network B's convolutions with
            ``scdl_monai.networks.vnet.initialize_weights(network_b, init_b)``: "xavier" (DHC's
            CPS: A Kaiming, B Xavier-normal, so the two networks start different), "kaiming", or
            None to keep B as given.

    Raises:
        TypeError: when a network is not an ``nn.Module``.
        ValueError: same object passed as both networks, unknown ``loss_mode`` or ``init_b``.

    Example:
        >>> from scdl_monai.networks.vnet import VNet
        >>> cps = CPS(VNet(out_channels=3, n_filters=4), VNet(out_channels=3, n_filters=4))
        >>> x_l, x_u = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 1, 16, 16, 16)
        >>> out = cps(x_l, torch.randint(0, 3, (1, 1, 16, 16, 16)), x_u)
        >>> sorted(out.terms)[:2]
        ['loss_cps', 'loss_cps_a']
    """

    network_names = ("network_a", "network_b")

    def __init__(
        self,
        network_a: nn.Module,
        network_b: nn.Module,
        sup_loss: nn.Module | None = None,
        cps_loss: nn.Module | None = None,
        loss_mode: str = "reference",
        init_b: str | None = "xavier",
    ) -> None:
        super().__init__()
        for key, net in (("network_a", network_a), ("network_b", network_b)):
            if not isinstance(net, nn.Module):
                raise TypeError(f"CPS: {key} must be an nn.Module, got {type(net).__name__}.")
        if network_a is network_b:
            raise ValueError(
                "CPS: network_a and network_b must be two different module instances, got the same object."
            )
        if loss_mode not in _LOSS_MODES:
            raise ValueError(f"CPS: loss_mode must be one of {_LOSS_MODES}, got {loss_mode!r}.")
        if init_b is not None and init_b not in _INIT_SCHEMES:
            raise ValueError(f"CPS: init_b must be one of {_INIT_SCHEMES} or None, got {init_b!r}.")
        if init_b is not None:
            from scdl_monai.networks.vnet import initialize_weights  # lazy: methods do not need networks otherwise

            initialize_weights(network_b, init_b)
        self.network_a = network_a
        self.network_b = network_b
        self.loss_mode = loss_mode
        self.sup_loss = DiceCELoss(mode=loss_mode) if sup_loss is None else sup_loss
        self.cps_loss = WeightedCELoss() if cps_loss is None else cps_loss

    def class_weights(
        self, logits_a: torch.Tensor, logits_b: torch.Tensor, label_l: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-call (C,) class weights (w_A, w_B) for this step; plain CPS uses none.

        Args:
            logits_a, logits_b: (B_l + B_u, C, *spatial) logits of A and B on cat(L, U); the
                first ``label_l.shape[0]`` items are the labeled ones.
            label_l: (B_l, 1, *spatial) labels.
        """
        return None, None

    def pseudo_label_masks(
        self, logits_a: torch.Tensor, logits_b: torch.Tensor, label_l: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-voxel masks (m_A, m_B) of the CPS terms of A and B for this step; plain CPS uses none.

        Called after :meth:`class_weights` and the supervised terms; a mask has the shape
        (B_l + B_u, 1, *spatial) of the pseudo-labels and carries no gradient.

        Args:
            logits_a, logits_b: (B_l + B_u, C, *spatial) logits of A and B on cat(L, U).
            label_l: (B_l, 1, *spatial) labels.
        """
        return None, None

    def forward(
        self, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None = None
    ) -> MethodOutput:
        self.check_batches(image_l, label_l, image_u)
        n_l = image_l.shape[0]
        image = image_l if image_u is None else torch.cat([image_l, image_u], dim=0)
        logits_a = self.net("network_a")(image)
        logits_b = self.net("network_b")(image)
        weight_a, weight_b = self.class_weights(logits_a, logits_b, label_l)

        sup_a = call_loss(self.sup_loss, logits_a[:n_l], label_l, weight_a)
        sup_b = call_loss(self.sup_loss, logits_b[:n_l], label_l, weight_b)
        # hard pseudo-labels carry no gradient (argmax of detached logits)
        pseudo_a = logits_a.detach().argmax(dim=1, keepdim=True)
        pseudo_b = logits_b.detach().argmax(dim=1, keepdim=True)
        mask_a, mask_b = self.pseudo_label_masks(logits_a, logits_b, label_l)
        cps_a = call_loss(self.cps_loss, logits_a, pseudo_b, weight_a, mask_a)
        cps_b = call_loss(self.cps_loss, logits_b, pseudo_a, weight_b, mask_b)

        loss_sup = sup_a + sup_b
        loss_cps = cps_a + cps_b
        loss = loss_sup + self.unsup_weight * loss_cps
        pred = (logits_a[:n_l].detach() + logits_b[:n_l].detach()) / 2
        terms = {
            "loss_sup": loss_sup.detach(),
            "loss_cps": loss_cps.detach(),
            "loss_sup_a": sup_a.detach(),
            "loss_sup_b": sup_b.detach(),
            "loss_cps_a": cps_a.detach(),
            "loss_cps_b": cps_b.detach(),
            "unsup_weight": self.unsup_weight.detach().clone(),
        }
        return MethodOutput(loss=loss, pred=pred, terms=terms)

    def inference_network(self) -> nn.Module:
        """``LogitMean([network_a, network_b])``: softmax((z_A + z_B)/2) after post-processing."""
        return LogitMean([self.network_a, self.network_b])
