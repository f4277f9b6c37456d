"""probe_scdl_network: token-assignment accuracy, proxies and prior strength of an SCDL network."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scdl_monai.networks.prior_injection import SCDLNetwork
from scdl_monai.networks.scdl_diagnostics import find_scdl_networks, probe_scdl_network
from scdl_monai.networks.vnet import VNet

C, D = 3, 16


def _network(**kwargs) -> SCDLNetwork:
    torch.manual_seed(0)
    return SCDLNetwork(VNet(out_channels=C, n_filters=4), num_classes=C, scdl_kwargs={"z_dim": D}, **kwargs)


def _label() -> torch.Tensor:
    """32³ label: class 1 fills the first quarter along the first axis, class 2 one 8³ cell (a token)."""
    label = torch.zeros(1, 1, 32, 32, 32, dtype=torch.long)
    label[:, :, :8] = 1
    label[:, :, 24:, :8, :8] = 2
    return label


def _assign_everything_to(network: SCDLNetwork, cls: int) -> None:
    """Constant token embedding v; μ_cls = v and every other μ = −v: each token goes to ``cls``."""
    v = torch.linspace(-1.0, 1.0, D)
    with torch.no_grad():
        for layer in network.scdl.projector:
            if isinstance(layer, nn.Linear):
                layer.weight.zero_()
                layer.bias.zero_()
        last = [m for m in network.scdl.projector if isinstance(m, nn.Linear)][-1]
        last.bias.copy_(v)
        mu = -v.expand(C, D).clone()
        mu[cls] = v
        network.scdl.proxies[:, :D] = mu


def test_counts_match_a_hand_computed_assignment():
    net = _network()
    _assign_everything_to(net, 1)
    report = probe_scdl_network(net, [(torch.rand(1, 1, 32, 32, 32), _label())])
    # 4³ = 64 tokens: 16 of class 1 (first quarter), 1 of class 2, 47 background
    assert report["tokens"] == 64
    assert report["assigned_histogram"] == [0, 64, 0]
    assert report["token_accuracy"] == pytest.approx(16 / 64)
    assert report["majority_baseline"] == pytest.approx(47 / 64)
    assert report["class_recall"] == [0.0, 1.0, 0.0]
    assert report["max_proxy_cosine"] == pytest.approx(1.0)  # classes 0 and 2 share −v


def test_proxy_summary_reads_the_parameters():
    net = _network()
    report = probe_scdl_network(net, [(torch.rand(1, 1, 32, 32, 32), _label())])
    mu, raw = net.scdl.proxies.detach()[:, :D], net.scdl.proxies.detach()[:, D:]
    assert report["sigma_mean"] == pytest.approx(float(F.softplus(raw).mean()), rel=1e-6)
    assert report["mu_norm_mean"] == pytest.approx(float(mu.norm(dim=-1).mean()), rel=1e-6)


def test_prior_strength_is_zero_at_initialisation_and_grows_with_the_projections():
    net = _network()
    batch = [(torch.rand(1, 1, 32, 32, 32), _label())]
    ratios = probe_scdl_network(net, batch)["prior_to_feature"]
    assert len(ratios) == len(net.decoder_channels) and all(r == 0.0 for r in ratios)  # SCDL-X starts as X
    with torch.no_grad():
        for p in net.scdl.parameters():
            if p.ndim == 5:  # the 1x1x1 injection convolutions
                p.normal_()
    assert all(r > 0 for r in probe_scdl_network(net, batch)["prior_to_feature"])


@pytest.mark.parametrize("injection,count", [("bottleneck", 1), ("none", 0)])
def test_prior_strength_follows_the_injection_target(injection, count):
    net = _network(injection=injection)
    with torch.no_grad():
        for p in net.scdl.parameters():
            if p.ndim == 5:
                p.normal_()
    ratios = probe_scdl_network(net, [(torch.rand(1, 1, 32, 32, 32), _label())])["prior_to_feature"]
    assert len(ratios) == count and all(r > 0 for r in ratios)


def test_mode_is_restored_and_classes_without_tokens_have_no_recall():
    net = _network().train()
    label = torch.zeros(1, 1, 32, 32, 32, dtype=torch.long)
    report = probe_scdl_network(net, [(torch.rand(1, 1, 32, 32, 32), label)])
    assert net.training
    assert report["majority_baseline"] == 1.0
    assert not math.isnan(report["class_recall"][0]) and math.isnan(report["class_recall"][1])


def test_find_scdl_networks_and_bad_input():
    a, b = _network(), _network()
    found = find_scdl_networks(nn.ModuleDict({"a": a, "plain": VNet(out_channels=C, n_filters=4), "b": b}))
    assert [n for n, _ in found] == ["a", "b"] and found[0][1] is a
    with pytest.raises(TypeError, match="SCDLNetwork"):
        probe_scdl_network(VNet(out_channels=C, n_filters=4), [])
    with pytest.raises(ValueError, match="no batches"):
        probe_scdl_network(a, [])
    with pytest.raises(ValueError, match="spatial shape"):
        probe_scdl_network(a, [(torch.rand(1, 1, 32, 32, 32), torch.zeros(1, 1, 16, 32, 32, dtype=torch.long))])
