"""Tests for scdl_monai.networks.diffvnet (GenericSSL's DiffVNet)."""

import math

import pytest
import torch

from scdl_monai.networks.weight_ema import ema_average_into
from scdl_monai.networks.diffvnet import DiffVNet, timestep_embedding


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return DiffVNet(spatial_dims=3, in_channels=1, out_channels=3, n_filters=4).eval()


def _inputs(b=2, c=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, size, size, size, generator=g)
    x_t = torch.randn(b, c, size, size, size, generator=g)
    return x, x_t, torch.tensor([3, 900])[:b]


def test_shapes_of_every_path(net):
    x, x_t, t = _inputs()
    feats = net.encode(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, 4, 32, 32, 32),
        (2, 8, 16, 16, 16),
        (2, 16, 8, 8, 8),
        (2, 32, 4, 4, 4),
        (2, 64, 2, 2, 2),
    ]
    for out in (net.denoise(x, x_t, t), net.difficulty_logits(x), net.theta_logits(x), net(x)):
        assert out.shape == (2, 3, 32, 32, 32)


def test_forward_is_decoder_theta_and_decoders_differ(net):
    x, _, _ = _inputs()
    with torch.no_grad():
        feats = net.encode(x)
        assert torch.equal(net(x), net.decoder_theta(feats))
        assert torch.equal(net.difficulty_logits(x), net.decoder_psi(feats))
        assert not torch.allclose(net.decoder_theta(feats), net.decoder_psi(feats))


def test_time_conditioning_changes_features_and_t_none_path_ignores_it(net):
    x, x_t, t = _inputs()
    with torch.no_grad():
        plain = net.encode(x)
        timed = net.encode(x, t=t)
        other_t = net.encode(x, t=torch.tensor([500, 10]))
        assert torch.equal(plain[0], timed[0])  # stems carry no time projection
        assert not torch.allclose(plain[-1], timed[-1])
        assert not torch.allclose(timed[-1], other_t[-1])
        # the diffusion stem sees cat(image, x_t)
        assert not torch.allclose(net.encode(x, x_t=x_t)[0], plain[0])
        d1, d2 = net.denoise(x, x_t, t), net.denoise(x, x_t, torch.tensor([500, 10]))
        assert not torch.allclose(d1, d2)


def test_which_blocks_get_time_projections():
    net = DiffVNet(out_channels=2, n_filters=4)
    names = [n for n, _ in net.named_modules() if n.endswith("temb_proj")]
    enc = [n for n in names if n.startswith("encoder.")]
    dec = [n for n in names if n.startswith("decoder_xi.")]
    # encoder: 4 down blocks + all but the last unit of stages with 2, 3, 3, 3 units
    assert len(enc) == 4 + (1 + 2 + 2 + 2)
    # D_xi: 4 up blocks + all but the last unit of stages with 3, 3, 2, 1 units
    assert len(dec) == 4 + (2 + 2 + 1 + 0)
    assert len(names) == len(enc) + len(dec)  # stems, D_psi, D_theta have none
    assert "encoder.stages.0.units.1.temb_proj" not in names  # last unit of a stage
    assert net.encoder.stages[3].units[0].temb_proj.out_features == 64


def test_decoder_parameter_names_line_up_for_the_ema():
    net = DiffVNet(out_channels=2, n_filters=4)
    theta = dict(net.decoder_theta.named_parameters())
    xi = dict(net.decoder_xi.named_parameters())
    assert set(theta) <= set(xi)
    assert all("temb_proj" in n for n in set(xi) - set(theta))
    updated = ema_average_into(net.decoder_theta, [net.decoder_xi, net.decoder_psi], 0.99)
    assert updated == list(theta)


def test_gradients_reach_only_the_used_decoder():
    net = DiffVNet(out_channels=2, n_filters=4)
    x, _, _ = _inputs(c=2)
    net.theta_logits(x).sum().backward()
    assert net.decoder_theta.head.weight.grad is not None
    assert net.encoder.stages[0].units[0].conv.weight.grad is not None
    assert net.decoder_psi.head.weight.grad is None and net.decoder_xi.head.weight.grad is None
    assert net.time_embed.dense[0].weight.grad is None


def test_parameter_count_reference_config():
    with torch.device("meta"):
        big = DiffVNet(in_channels=1, out_channels=14, n_filters=32)
    assert sum(p.numel() for p in big.parameters()) == 56_803_210


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    half, k = 4, torch.arange(4, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000) * k / (half - 1))
    expected = torch.cat([torch.sin(7 * freqs), torch.cos(7 * freqs)])
    assert torch.allclose(emb[1], expected)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert timestep_embedding(torch.tensor([1.0]), 9).shape == (1, 9)


def test_two_dimensional_and_train_mode_dropout():
    net = DiffVNet(spatial_dims=2, in_channels=2, out_channels=3, n_filters=4)
    x = torch.randn(2, 2, 32, 16)
    assert net(x).shape == (2, 3, 32, 16)
    net.train()
    torch.manual_seed(0)
    a = net(x)
    b = net(x)
    assert not torch.allclose(a, b)  # dropout active in train mode (pseudo-labelling runs there)


def test_errors(net):
    x, x_t, t = _inputs()
    with pytest.raises(ValueError, match="divisible by"):
        net(torch.zeros(1, 1, 24, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        net(torch.zeros(1, 2, 32, 32, 32))
    with pytest.raises(ValueError, match="x_t"):
        net.denoise(x, x_t[:, :2], t)
    with pytest.raises(ValueError, match="must match"):
        net.denoise(x, x_t[:1], t)
    with pytest.raises(ValueError, match="`t`"):
        net.denoise(x, x_t, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="norm"):
        DiffVNet(norm="layer")
    with pytest.raises(ValueError, match="n_filters"):
        DiffVNet(n_filters=0)
    with pytest.raises(ValueError, match="num_groups"):
        DiffVNet(norm="group", n_filters=4, num_groups=16)
    assert net.is_valid_shape((32, 48, 16)) and not net.is_valid_shape((1, 1, 32, 40, 16))


def test_vnet_style_hooks_reproduce_d_theta_and_take_an_injection():
    torch.manual_seed(0)
    net = DiffVNet(out_channels=3, n_filters=4).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        features = net.encode(x)
        logits, last = net.decode(features)
        assert torch.equal(logits, net(x)) and last.shape == (1, 4, 16, 16, 16)
        assert net.decoder_channels == (32, 16, 8, 4) and net.head is net.decoder_theta.head
        zero = [torch.zeros(1, c, 1, 1, 1) for c in net.decoder_channels]
        assert torch.equal(net.decode(features, zero)[0], logits)
        bumped = [None, None, torch.ones(1, 8, 1, 1, 1), None]
        assert not torch.allclose(net.decode(features, bumped)[0], logits)
        with pytest.raises(ValueError, match="injection\\[0\\]"):
            net.decode(features, [torch.ones(1, 5, 1, 1, 1), None, None, None])
