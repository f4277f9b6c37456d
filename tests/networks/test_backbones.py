"""Tests for scdl_monai.networks.backbones.build_backbone."""

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import SegResNet, UNet
from torch import nn

from scdl_monai.networks.backbones import BACKBONES, UNET_DEFAULTS, build_backbone
from scdl_monai.networks.vnet import VNet, initialize_weights

#: every backbone with an n_filters that is valid for it (SegResNet's GroupNorm needs a multiple of 8)
WIDTHS = {"vnet": 4, "unet": 4, "segresnet": 8}


def _dropouts(net: nn.Module) -> list[float]:
    return [m.p for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def _first_conv_name(net: nn.Module) -> str:
    return next(name for name, m in net.named_modules() if isinstance(m, nn.Conv3d))


@pytest.mark.parametrize("name", list(WIDTHS))
def test_each_backbone_receives_n_filters_dropout_and_init(name):
    assert set(WIDTHS) == set(BACKBONES)  # a new backbone must be added here
    n = WIDTHS[name]
    torch.manual_seed(0)
    net = build_backbone(name, out_channels=3, n_filters=n, dropout=0.25, init="xavier")
    # init = the plain network re-initialised with initialize_weights: same draws, other weights than the default
    torch.manual_seed(0)
    plain = build_backbone(name, out_channels=3, n_filters=n, dropout=0.25, init=None)
    first = f"{_first_conv_name(net)}.weight"
    default = plain.state_dict()[first].clone()
    expected = initialize_weights(plain, "xavier").state_dict()
    state = net.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert not torch.equal(state[first], default)
    # n_filters reaches the first convolution, the head has C channels and the output keeps the input size
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert convs[0].out_channels == n and convs[-1].out_channels == 3
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert net.eval()(x).shape == (2, 3, 16, 16, 16)
        # dropout reaches the network as its probability and drops in training mode; dropout 0 drops nothing
        assert _dropouts(net) and set(_dropouts(net)) == {0.25}
        net.train()
        assert not torch.equal(net(x), net(x))
        none = build_backbone(name, out_channels=3, n_filters=n, dropout=0.0).train()
        assert torch.equal(none(x), none(x))


@pytest.mark.parametrize(
    "name, n_filters, cls",
    [("vnet", 4, VNet), ("unet", 4, UNet), ("segresnet", 8, SegResNet)],
)
def test_each_backbone_maps_32_cubed_to_logits(name, n_filters, cls):
    torch.manual_seed(0)
    net = build_backbone(name, spatial_dims=3, in_channels=1, out_channels=5, n_filters=n_filters).eval()
    assert type(net) is cls
    with torch.no_grad():
        out = net(torch.randn(2, 1, 32, 32, 32))
    assert out.shape == (2, 5, 32, 32, 32)


@pytest.mark.parametrize("name, n_filters", [("vnet", 4), ("unet", 4), ("segresnet", 8)])
def test_each_backbone_in_2d(name, n_filters):
    net = build_backbone(name, spatial_dims=2, in_channels=2, out_channels=3, n_filters=n_filters).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, 32, 32)).shape == (1, 3, 32, 32)


def test_n_filters_translation():
    assert build_backbone("vnet", n_filters=4).feature_channels == (4, 8, 16, 32, 64)
    unet = build_backbone("unet", n_filters=4)
    assert tuple(unet.channels) == (4, 8, 16, 32, 64)
    assert tuple(unet.strides) == (2, 2, 2, 2)
    assert build_backbone("segresnet", n_filters=8).init_filters == 8


def test_unet_defaults_and_overrides():
    unet = build_backbone("unet")
    assert tuple(unet.channels) == UNET_DEFAULTS["channels"] == (16, 32, 64, 128, 256)
    assert unet.num_res_units == 2
    assert any(isinstance(m, nn.BatchNorm3d) for m in unet.modules())
    # channels without strides: one stride-2 level per transition
    small = build_backbone("unet", channels=(4, 8, 16), norm="instance")
    assert tuple(small.strides) == (2, 2)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in small.modules())
    assert any(isinstance(m, nn.InstanceNorm3d) for m in small.modules())
    assert tuple(build_backbone("unet", channels=(4, 8, 16), strides=(1, 2)).strides) == (1, 2)


def test_case_insensitive_name_and_vnet_kwargs():
    net = build_backbone("VNet", out_channels=14, n_filters=4, norm="instance", has_dropout=True)
    assert isinstance(net, VNet)
    assert net.out_channels == 14 and net.norm == "instance" and net.has_dropout


def test_unknown_name_suggests():
    with pytest.raises(ValueError, match="did you mean 'unet'"):
        build_backbone("unt")
    with pytest.raises(ValueError, match="did you mean 'segresnet'"):
        build_backbone("segresnt")
    with pytest.raises(TypeError, match="name"):
        build_backbone(3)


def test_conflicting_and_unknown_kwargs():
    with pytest.raises(ValueError, match="n_filters.*channels"):
        build_backbone("unet", n_filters=4, channels=(4, 8))
    with pytest.raises(ValueError, match="n_filters.*init_filters"):
        build_backbone("segresnet", n_filters=8, init_filters=8)
    with pytest.raises(ValueError, match="n_filters.*-1"):
        build_backbone("unet", n_filters=-1)
    with pytest.raises(TypeError, match="build_backbone\\('segresnet'\\).*has_dropout"):
        build_backbone("segresnet", has_dropout=True)


def test_bundle_config_both_forms():
    config = {
        "num_classes": 4,
        "by_name": {
            "_target_": "scdl_monai.networks.backbones.build_backbone",
            "name": "unet",
            "out_channels": "@num_classes",
            "n_filters": 4,
        },
        "by_class": {"_target_": "scdl_monai.networks.vnet.VNet", "out_channels": "@num_classes", "n_filters": 4},
    }
    parser = ConfigParser(config)
    by_name, by_class = parser.get_parsed_content("by_name"), parser.get_parsed_content("by_class")
    assert isinstance(by_name, UNet) and by_name.out_channels == 4
    assert isinstance(by_class, VNet) and by_class.out_channels == 4


@pytest.mark.parametrize("name", ["vnet", "unet"])
def test_generic_dropout_is_active_in_train_mode_only(name):
    torch.manual_seed(0)
    net = build_backbone(name, out_channels=3, n_filters=4, dropout=0.5)
    x = torch.rand(2, 1, 16, 16, 16)
    net.train()
    assert not torch.allclose(net(x), net(x))  # a new dropout mask each call
    net.eval()
    assert torch.allclose(net(x), net(x))
    none = build_backbone(name, out_channels=3, n_filters=4, dropout=0.0).train()
    with torch.no_grad():
        assert torch.allclose(none(x), none(x))


def test_generic_dropout_and_init_translate_per_backbone():
    vnet = build_backbone("vnet", out_channels=3, n_filters=4, dropout=0.5, init=None)
    assert vnet.has_dropout and vnet.dropout.p == 0.5
    assert not build_backbone("vnet", out_channels=3, n_filters=4, dropout=None).has_dropout
    seg = build_backbone("segresnet", out_channels=3, n_filters=8, dropout=0.2)
    assert seg.dropout_prob == 0.2
    torch.manual_seed(0)
    a = build_backbone("unet", out_channels=3, n_filters=4)
    torch.manual_seed(0)
    b = build_backbone("unet", out_channels=3, n_filters=4, init="xavier")
    assert not torch.equal(next(a.parameters()), next(b.parameters()))
    with pytest.raises(ValueError, match="dropout"):
        build_backbone("vnet", out_channels=3, n_filters=4, dropout=1.5)
    with pytest.raises(ValueError, match="not both"):
        build_backbone("vnet", out_channels=3, n_filters=4, dropout=0.5, has_dropout=True)
