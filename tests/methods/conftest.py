"""Shared scaffolding of the method tests: two tiny VNets and a random labeled + unlabeled batch."""

import torch

from scdl_monai.networks.vnet import VNet


def two_vnets(num_classes: int, seed: int = 0) -> tuple[VNet, VNet]:
    """Two VNets with 4 filters, drawn one after the other after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return VNet(out_channels=num_classes, n_filters=4), VNet(out_channels=num_classes, n_filters=4)


def random_batch(num_classes: int, seed: int = 0, n_l: int = 1, n_u: int = 1, shape=(16, 16, 16)):
    """``(image_l, label_l, image_u)``: normal images and uniform labels in ``[0, num_classes)``."""
    g = torch.Generator().manual_seed(seed)
    image_l = torch.randn(n_l, 1, *shape, generator=g)
    label_l = torch.randint(0, num_classes, (n_l, 1, *shape), generator=g)
    image_u = torch.randn(n_u, 1, *shape, generator=g)
    return image_l, label_l, image_u
