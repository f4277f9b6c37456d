"""Tests for scdl_monai.networks.vnet (layout per docs/methods.md#backbone, DHC reference parameter count)."""

import math

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from scdl_monai.networks.vnet import VNet, initialize_weights

# Norm layers: encoder units 1·n + 2·2n + 3·4n + 3·8n + 3·16n = 89n, downs 2n+4n+8n+16n = 30n,
# ups 8n+4n+2n+n = 15n, decoder units 3·8n + 3·4n + 2·2n + 1·n = 41n -> 175n channels, 2 params each.
NORM_PARAMS_PER_FILTER = 2 * 175


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def small_net(**kwargs) -> VNet:
    torch.manual_seed(0)
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "n_filters": 4, **kwargs}
    return VNet(**kwargs)


def test_parameter_count_matches_dhc_reference():
    # DHC (Synapse, n_filters=32, 1 channel in, 14 classes, BatchNorm): 37,778,126 parameters.
    with torch.device("meta"):
        net = VNet(spatial_dims=3, in_channels=1, out_channels=14, n_filters=32, norm="batch")
    assert n_params(net) == 37_778_126
    with torch.device("meta"):
        plain = VNet(spatial_dims=3, in_channels=1, out_channels=14, n_filters=32, norm="none")
    assert n_params(plain) == 37_778_126 - NORM_PARAMS_PER_FILTER * 32


def test_channel_attributes():
    net = small_net(n_filters=8)
    assert net.feature_channels == (8, 16, 32, 64, 128)
    assert net.decoder_channels == (64, 32, 16, 8)
    assert net.decoder_scales == (8, 4, 2, 1)
    assert net.shape_factor() == (16, 16, 16)


def test_encode_shapes_and_decode_equals_forward():
    net = small_net().eval()
    x = torch.randn(2, 1, 32, 16, 16)
    feats = net.encode(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, 4, 32, 16, 16),
        (2, 8, 16, 8, 8),
        (2, 16, 8, 4, 4),
        (2, 32, 4, 2, 2),
        (2, 64, 2, 1, 1),
    ]
    logits, last = net.decode(feats)
    assert logits.shape == (2, 3, 32, 16, 16)
    assert last.shape == (2, 4, 32, 16, 16)
    torch.testing.assert_close(logits, net(x), rtol=0, atol=0)
    # the head is a 1x1x1 conv applied to the returned last feature
    torch.testing.assert_close(net.head(last), logits)


def injection_shapes(net: VNet, batch: int, spatial):
    return [(batch, c, *(s // f for s in spatial)) for c, f in zip(net.decoder_channels, net.decoder_scales)]


def test_injection_shapes_zero_and_nonzero():
    net = small_net().eval()
    x = torch.randn(2, 1, 16, 16, 32)
    feats = net.encode(x)
    shapes = injection_shapes(net, 2, (16, 16, 32))
    assert shapes == [(2, 32, 2, 2, 4), (2, 16, 4, 4, 8), (2, 8, 8, 8, 16), (2, 4, 16, 16, 32)]
    base, _ = net.decode(feats)
    zeros = [torch.zeros(s) for s in shapes]
    torch.testing.assert_close(net.decode(feats, zeros)[0], base, rtol=0, atol=0)
    torch.testing.assert_close(net.decode(feats, {1: zeros[1]})[0], base, rtol=0, atol=0)
    for k, s in enumerate(shapes):
        out, _ = net.decode(feats, [None] * k + [torch.randn(s)] + [None] * (3 - k))
        assert out.shape == base.shape
        assert not torch.allclose(out, base), f"injection at stage {k} had no effect"


@pytest.mark.parametrize("stage, skip_index", [(0, 3), (3, 0)])
def test_injection_is_added_after_the_skip_sum(stage, skip_index):
    # stage 0 sums up(x5)+x4, stage 3 sums up(.)+x1: adding t there equals adding t to that skip.
    net = small_net().eval()
    feats = net.encode(torch.randn(1, 1, 16, 16, 16))
    t = torch.randn(injection_shapes(net, 1, (16, 16, 16))[stage])
    shifted = list(feats)
    shifted[skip_index] = shifted[skip_index] + t
    torch.testing.assert_close(net.decode(feats, {stage: t})[0], net.decode(shifted)[0])


def test_injection_broadcasts_but_never_changes_stage_shape():
    net = small_net().eval()
    feats = net.encode(torch.randn(1, 1, 16, 16, 16))
    per_channel = torch.randn(1, 32, 1, 1, 1)  # broadcasts over the stage-0 map
    assert net.decode(feats, {0: per_channel})[0].shape == (1, 3, 16, 16, 16)
    with pytest.raises(ValueError, match=r"injection\[0\].*\(1, 16, 2, 2, 2\)"):
        net.decode(feats, {0: torch.zeros(1, 16, 2, 2, 2)})  # wrong channel count
    with pytest.raises(ValueError, match="injection\\[2\\]"):
        net.decode(feats, {2: torch.zeros(1, 8, 16, 16, 16)})  # would broadcast the stage up
    with pytest.raises(ValueError, match="4 entries"):
        net.decode(feats, [None, None])
    with pytest.raises(ValueError, match="stage indices 0..3, got 4"):
        net.decode(feats, {4: per_channel})
    with pytest.raises(ValueError, match="expected 5 features"):
        net.decode(feats[:4])


@pytest.mark.parametrize("spatial", [(16, 16, 20), (8, 16, 16)])
def test_bad_spatial_size_names_the_size(spatial):
    net = small_net()
    x = torch.zeros(1, 1, *spatial)
    bad = next(s for s in spatial if s % 16)
    assert not net.is_valid_shape(x)
    for call in (net, net.encode):
        with pytest.raises(ValueError, match=rf"has size {bad}\b") as info:
            call(x)
        assert str(tuple(spatial)) in str(info.value)


def test_is_valid_shape_accepts_tensors_and_shapes():
    net = small_net()
    assert net.is_valid_shape((32, 16, 48))
    assert net.is_valid_shape((2, 1, 32, 16, 48))
    assert net.is_valid_shape(torch.Size([1, 1, 16, 16, 16]))
    assert not net.is_valid_shape((32, 16, 40))
    with pytest.raises(ValueError, match="3 \\(spatial\\) or 5"):
        net.is_valid_shape((16, 16))
    with pytest.raises(ValueError, match="in_channels=1"):
        net(torch.zeros(1, 2, 16, 16, 16))


@pytest.mark.parametrize(
    "norm, kwargs, norm_type, extra_params",
    [
        ("batch", {}, nn.BatchNorm3d, NORM_PARAMS_PER_FILTER * 4),
        ("instance", {}, nn.InstanceNorm3d, 0),
        ("group", {"num_groups": 2}, nn.GroupNorm, NORM_PARAMS_PER_FILTER * 4),
        ("none", {}, None, 0),
    ],
)
def test_norm_options(norm, kwargs, norm_type, extra_params):
    net = small_net(norm=norm, **kwargs)
    plain = small_net(norm="none")
    assert n_params(net) - n_params(plain) == extra_params
    norms = [m for m in net.modules() if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm))]
    if norm_type is None:
        assert norms == []
    else:
        # one per conv unit: encoder 1+2+3+3+3, 4 downs, 4 ups, decoder 3+3+2+1 (not the head)
        assert len(norms) == 12 + 4 + 4 + 9
        assert all(type(m) is norm_type for m in norms)
    if norm == "instance":
        assert all(not m.affine for m in norms)
    if norm == "group":
        assert {m.num_groups for m in norms} == {2}
    net.eval()
    # 32 in one dim: instance norm needs more than one voxel at the 1/16 bottleneck
    assert net(torch.randn(1, 1, 32, 16, 16)).shape == (1, 3, 32, 16, 16)


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError, match="did you mean 'batch'"):
        VNet(norm="bach")
    with pytest.raises(ValueError, match="num_groups`=16.*4 is not"):
        VNet(n_filters=4, norm="group")
    with pytest.raises(ValueError, match="spatial_dims.*got 4"):
        VNet(spatial_dims=4)
    with pytest.raises(ValueError, match="n_filters.*got 0"):
        VNet(n_filters=0)
    with pytest.raises(ValueError, match="dropout_prob.*1.5"):
        VNet(dropout_prob=1.5)
    with pytest.raises(ValueError, match="did you mean 'xavier'"):
        VNet(n_filters=4, init="xavir")


def test_two_dimensional():
    net = small_net(spatial_dims=2).eval()
    assert net.shape_factor() == (16, 16)
    assert any(isinstance(m, nn.Conv2d) for m in net.modules())
    assert not any(isinstance(m, nn.Conv3d) for m in net.modules())
    x = torch.randn(2, 1, 32, 48)
    assert net(x).shape == (2, 3, 32, 48)
    assert [f.shape[1] for f in net.encode(x)] == [4, 8, 16, 32, 64]
    with pytest.raises(ValueError, match="has size 40"):
        net(torch.zeros(1, 1, 32, 40))


def test_dropout_only_in_train_mode():
    net = small_net(has_dropout=True)
    ref = small_net(has_dropout=False)
    ref.load_state_dict(net.state_dict())
    x = torch.randn(2, 1, 16, 16, 16)

    net.eval()
    ref.eval()
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)

    net.train()
    ref.train()
    kept = ref.encode(x)[-1]  # (2, 64, 1, 1, 1) bottleneck without dropout
    dropped = net.encode(x)[-1]
    # Dropout3d(p=0.5): every (sample, channel) map is either zeroed or scaled by 1/(1-p) = 2
    zeroed = dropped.flatten(2).abs().sum(-1) == 0
    scaled = torch.isclose(dropped, 2 * kept).flatten(2).all(-1)
    assert torch.all(zeroed | scaled)
    assert (zeroed & (kept.flatten(2).abs().sum(-1) > 0)).any()
    torch.manual_seed(1)
    a = net(x)
    torch.manual_seed(2)
    b = net(x)
    assert not torch.allclose(a, b)
    # without dropout, train-mode forwards are deterministic
    torch.testing.assert_close(ref(x), ref(x), rtol=0, atol=0)


def conv_std(net: VNet) -> float:
    # widest plain conv: bottleneck 16n -> 16n, kernel 3^3
    return net.encoder_stages[4][1][0].weight.std().item()


def test_initialize_weights_kaiming_vs_xavier_statistics():
    n = 8
    fan_in = fan_out = 16 * n * 27  # 128 channels x 3^3
    expected = {
        "kaiming": math.sqrt(2.0 / fan_in),  # gain sqrt(2), fan_in
        "xavier": math.sqrt(2.0 / (fan_in + fan_out)),  # gain 1
        None: 1.0 / math.sqrt(3.0 * fan_in),  # PyTorch default: kaiming_uniform(a=sqrt 5)
    }
    for scheme, std in expected.items():
        torch.manual_seed(0)
        net = VNet(n_filters=n, init=scheme)
        assert conv_std(net) == pytest.approx(std, rel=0.02), scheme


def test_initialize_weights_leaves_transposed_convs_and_biases_alone():
    torch.manual_seed(0)
    net = small_net(init=None)
    ups = [m.weight.detach().clone() for m in net.modules() if isinstance(m, nn.ConvTranspose3d)]
    biases = [m.bias.detach().clone() for m in net.modules() if isinstance(m, nn.Conv3d)]
    conv_before = net.head.weight.detach().clone()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            nn.init.constant_(m.weight, 3.0)
            nn.init.constant_(m.bias, -2.0)

    assert initialize_weights(net, "xavier") is net
    assert len(ups) == 4
    for before, m in zip(ups, (m for m in net.modules() if isinstance(m, nn.ConvTranspose3d))):
        torch.testing.assert_close(m.weight, before, rtol=0, atol=0)
    for before, m in zip(biases, (m for m in net.modules() if isinstance(m, nn.Conv3d))):
        torch.testing.assert_close(m.bias, before, rtol=0, atol=0)
    assert not torch.equal(net.head.weight, conv_before)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_initialize_weights_on_any_module():
    torch.manual_seed(0)
    unet = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16), strides=(2,), norm="batch")
    plain = [m for m in unet.modules() if type(m) is nn.Conv3d]
    before = [m.weight.detach().clone() for m in plain]
    initialize_weights(unet, "kaiming")
    assert all(not torch.equal(m.weight, b) for m, b in zip(plain, before))
    with pytest.raises(ValueError, match="did you mean 'kaiming'"):
        initialize_weights(unet, "kaimin")
    with pytest.raises(TypeError, match="nn.Module"):
        initialize_weights(torch.zeros(3), "kaiming")
