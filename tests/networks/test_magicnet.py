"""Tests for scdl_monai.networks.magicnet (MagicNet location head and VNet wrapper, docs/methods.md#magicnet)."""

import pytest
import torch
from torch import nn

from scdl_monai.networks.magicnet import LocationHead, MagicNetwork, location_head_in_features
from scdl_monai.networks.vnet import VNet


def tiny(norm="batch", **kwargs):
    torch.manual_seed(0)
    return MagicNetwork(VNet(out_channels=3, n_filters=4, norm=norm, init=None), cube_size=16, patch_size=48, **kwargs)


def test_in_features_reference_value_and_formula():
    assert location_head_in_features(256, 32) == 2048  # 16n · 2³ for n = 16 (docs/methods.md#magicnet)
    assert location_head_in_features(64, 16) == 64
    assert location_head_in_features(64, (32, 16, 48)) == 64 * 2 * 1 * 3
    with pytest.raises(ValueError, match="divisible by the backbone's shape factor 16"):
        location_head_in_features(256, 24)


def test_reference_size_head_layout():
    net = MagicNetwork(VNet(out_channels=14, n_filters=16, norm="instance", init=None))
    head = net.location_head.layers
    assert (net.grid, net.num_locations) == ((3, 3, 3), 27)
    assert isinstance(head[0], nn.Linear) and (head[0].in_features, head[0].out_features) == (2048, 4096)
    assert isinstance(head[1], nn.BatchNorm1d) and head[1].num_features == 4096
    assert isinstance(head[2], nn.LeakyReLU) and head[2].negative_slope == 0.2
    assert isinstance(head[3], nn.Linear) and (head[3].in_features, head[3].out_features) == (4096, 27)


def test_hooks_shapes_and_consistency():
    net = tiny(hidden_features=32).eval()
    x = torch.randn(2, 1, 48, 48, 48)
    logits, feature = net.features(x)
    assert logits.shape == (2, 3, 48, 48, 48) and feature.shape == (2, 4, 48, 48, 48)
    assert torch.allclose(net(x), logits)
    assert torch.allclose(net.head(feature), logits)  # the output conv applied to x9 gives the logits
    cube_bottleneck = net.encode(torch.randn(27, 1, 16, 16, 16))[-1]
    assert cube_bottleneck.shape == (27, 64, 1, 1, 1)
    net.train()
    assert net.locate(cube_bottleneck).shape == (27, 27)


def test_location_head_checks_width():
    head = LocationHead(64, 27, hidden_features=8)
    with pytest.raises(ValueError, match="expected in_features=64"):
        head(torch.randn(27, 63))
    with pytest.raises(ValueError, match="hidden_features"):
        LocationHead(64, 27, hidden_features=0)


def test_constructor_errors():
    with pytest.raises(TypeError, match="must be a scdl_monai.networks.vnet.VNet"):
        MagicNetwork(nn.Conv3d(1, 3, 1))
    with pytest.raises(ValueError, match="multiple of `cube_size`"):
        MagicNetwork(VNet(out_channels=3, n_filters=4), cube_size=32, patch_size=80)
    # a 16³ cube has a single bottleneck voxel: InstanceNorm cannot normalise it
    with pytest.raises(ValueError, match="InstanceNorm needs more than one"):
        MagicNetwork(VNet(out_channels=3, n_filters=4, norm="instance"), cube_size=16, patch_size=48)
    # ... which is why the tiny tests use batch norm (group norm would also work)
    MagicNetwork(VNet(out_channels=3, n_filters=4, norm="group", num_groups=2), cube_size=16, patch_size=48)
