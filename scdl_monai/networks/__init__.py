"""Networks: the VNet of this literature, the backbone factory and the SCDL block."""

from .backbones import BACKBONES, build_backbone
from .vnet import VNet, initialize_weights

__all__ = ["VNet", "initialize_weights", "build_backbone", "BACKBONES"]
