"""Losses: logits (B, C, *spatial) in, softmax inside; targets (B, 1, *spatial); per-call (C,) class weights."""

from scdl_monai.losses.ga import GACELoss, GADiceLoss
from scdl_monai.losses.class_distribution_loss import E2PLoss, P2ELoss, ProxyLoss, SACLoss
from scdl_monai.losses.segmentation import DiceCELoss, MaskedCELoss, SoftDiceLoss, WeightedCELoss

__all__ = [
    "DiceCELoss",
    "SoftDiceLoss",
    "WeightedCELoss",
    "MaskedCELoss",
    "GADiceLoss",
    "GACELoss",
    "E2PLoss",
    "P2ELoss",
    "ProxyLoss",
    "SACLoss",
]
