"""Supervised baseline: one network trained on the labeled stream only."""

from __future__ import annotations

import torch
from torch import nn

from scdl_monai.losses.segmentation import DiceCELoss
from scdl_monai.methods.base import MethodOutput, SemiSupervisedMethod, call_loss

__all__ = ["Supervised"]


class Supervised(SemiSupervisedMethod):
    """Fully supervised training of one network ("V-Net fully" / labeled-only baselines).

    ``loss = sup_loss(network(image_l), label_l)``; unlabeled images, if any are passed, are ignored
    (use the trainer with ``unlabeled_data_loader=None`` so none are loaded).

    Args:
        network: segmentation network, ``forward(x) -> logits (B, C, *spatial)``.
        loss: supervised loss ``(logits, target[, weight]) -> scalar``; default
            ``DiceCELoss(mode="reference")`` (DHC CE + Dice, docs/methods.md#shared-losses-and-schedules).

    Raises:
        TypeError: when ``network`` is not an ``nn.Module``.
    """

    network_names = ("network",)
    requires_unlabeled = False

    def __init__(self, network: nn.Module, loss: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"Supervised: network must be an nn.Module, got {type(network).__name__}.")
        self.network = network
        self.loss = DiceCELoss(mode="reference") if loss is None else loss

    def forward(
        self, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None = None
    ) -> MethodOutput:
        self.check_batches(image_l, label_l, None)
        logits = self.net("network")(image_l)
        loss = call_loss(self.loss, logits, label_l)
        return MethodOutput(loss=loss, pred=logits.detach(), terms={"loss_sup": loss.detach()})

    def inference_network(self) -> nn.Module:
        """The trained network itself."""
        return self.network
