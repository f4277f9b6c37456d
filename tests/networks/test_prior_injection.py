"""Tests for scdl_monai.networks.scdl_network (SCDL wrapper around a VNet, METHODS.md §7)."""

import pytest
import torch
from torch import nn

from scdl_monai.networks.scdl import SCDL
from scdl_monai.networks.scdl_network import (
    INJECTION_TARGETS,
    SCDLNetwork,
    scdl_param_groups,
    scdl_parameters,
    scdl_record,
)
from scdl_monai.networks.vnet import VNet

C = 3
SHAPE = (32, 32, 32)
SCDL_KW = {"z_dim": 8, "num_proxy_samples": 3}


def vnet(seed=0):
    torch.manual_seed(seed)
    return VNet(out_channels=C, n_filters=4)


def wrapper(injection="all_stages", token_source="encoder", seed=0, **kwargs):
    net = SCDLNetwork(vnet(seed), num_classes=C, injection=injection, token_source=token_source, scdl_kwargs=SCDL_KW, **kwargs)
    # projections start random and small; make the prior clearly visible in the output
    for proj in net.scdl.injection_projections:
        nn.init.normal_(proj.weight, std=1.0)
    return net


def image(n=2, seed=1):
    return torch.randn(n, 1, *SHAPE, generator=torch.Generator().manual_seed(seed))


CASES = [(t, "encoder") for t in INJECTION_TARGETS] + [("head", "decoder_final"), ("none", "decoder_final")]


@pytest.mark.parametrize("injection,source", CASES)
def test_forward_shapes_and_scdl_outputs(injection, source):
    net = wrapper(injection, source)
    x = image()
    logits, out = net.forward_scdl(x)
    assert logits.shape == (2, C, *SHAPE)
    # encoder x4 (patch/8) or the last decoder feature pooled by 8: a 4^3 token grid either way
    assert out.prior.shape == (2, 3 * SCDL_KW["z_dim"], 4, 4, 4)
    assert out.assignment.shape == (2, 64, C)
    assert torch.allclose(out.probs.sum(-1), torch.ones(2, 64))
    assert net(x).shape == (2, C, *SHAPE)
    expected = {"all_stages": 4, "bottleneck": 1, "head": 1, "none": 0}[injection]
    assert len(net.scdl.injection_channels) == expected


@pytest.mark.parametrize("injection", ["all_stages", "bottleneck", "head"])
def test_prior_changes_output_and_inference_switch(injection):
    net = wrapper(injection).eval()
    x = image()
    with torch.no_grad():
        plain = net.backbone(x)
        with_prior = net(x)
        net.use_prior_at_inference = False
        without = net(x)
    assert not torch.allclose(with_prior, plain, atol=1e-4)
    assert torch.equal(without, plain)


def test_injection_none_is_the_backbone_bit_for_bit():
    net = wrapper("none")
    x = image()
    for mode in (True, False):
        net.train(mode)
        torch.manual_seed(3)
        a = net(x)
        torch.manual_seed(3)
        b = net.backbone(x)
        assert torch.equal(a, b)
    # also while recording (the SCDL branch runs, the logits are the decoder's)
    net.eval()
    with torch.no_grad():
        ref = net.backbone(x)
        logits, _ = net.forward_scdl(x)
    assert torch.equal(logits, ref)


def test_all_stage_prior_reaches_every_projection_by_gradient():
    net = wrapper("all_stages")
    net(image()).square().mean().backward()
    for proj in net.scdl.injection_projections:
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert net.token_extractor.proj.weight.grad.abs().sum() > 0


def test_recording_only_training_calls_with_grad():
    net = wrapper("none")
    x, u = image(seed=1), image(1, seed=2)
    with scdl_record({"a": net}) as records:
        net(x)
        with torch.no_grad():
            net(u)  # teacher-like pass: not recorded
        net.eval()
        net(u)  # eval: not recorded
        net.train()
        net(u)
    calls = records["a"]
    assert len(calls) == 2
    assert calls[0].image is x and calls[1].image is u
    assert calls[0].logits.shape == (2, C, *SHAPE) and calls[0].scdl.z.requires_grad
    assert net._records is None  # dropped at exit
    with net.recording():
        with pytest.raises(RuntimeError, match="already recording"):
            with net.recording():
                pass
    with pytest.raises(TypeError, match="must be an SCDLNetwork"):
        with scdl_record({"a": vnet()}):
            pass


def test_token_embeddings_match_forward_tokens():
    for source in ("encoder", "decoder_final"):
        net = wrapper("none", source).eval()
        x = image()
        with torch.no_grad():
            _, out = net.forward_scdl(x)
            z_map = net.token_embeddings(x)
        assert z_map.shape == (2, SCDL_KW["z_dim"], 4, 4, 4)
        assert torch.allclose(z_map.flatten(2).transpose(1, 2), out.z, atol=1e-6)


def test_param_groups_hold_every_scdl_parameter_once():
    a, b = wrapper(seed=0), wrapper("head", seed=1)
    owner = nn.ModuleDict({"a": a, "b": b, "shared": a})  # a listed twice: still once
    groups = scdl_param_groups(owner, scdl_options={"momentum": 0.9})
    assert len(groups) == 2
    base_ids = [id(p) for p in groups[0]["params"]]
    scdl_ids = [id(p) for p in groups[1]["params"]]
    expected = {id(p) for net in (a, b) for p in list(net.scdl.parameters()) + list(net.token_extractor.parameters())}
    assert len(scdl_ids) == len(set(scdl_ids)) == len(expected) and set(scdl_ids) == expected
    assert set(base_ids) == {id(p) for p in owner.parameters()} - expected
    assert groups[1]["weight_decay"] == 1e-4 and groups[1]["momentum"] == 0.9 and "weight_decay" not in groups[0]
    assert len(scdl_parameters(owner)) == len(expected)
    opt = torch.optim.SGD(groups, lr=0.1, weight_decay=3e-5)
    assert [g["weight_decay"] for g in opt.param_groups] == [3e-5, 1e-4]
    with pytest.raises(ValueError, match="scdl_weight_decay"):
        scdl_param_groups(owner, scdl_weight_decay=-1)


def test_backbone_hooks_pass_through():
    net = wrapper()
    assert net.out_channels == C and net.shape_factor() == (16, 16, 16)
    assert net.encode.__self__ is net.backbone and net.head is net.backbone.head
    with pytest.raises(AttributeError):
        net.no_such_attribute


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="decoder_final"):
        SCDLNetwork(vnet(), num_classes=C, token_source="decoder_final", injection="all_stages")
    with pytest.raises(ValueError, match="injection"):
        SCDLNetwork(vnet(), num_classes=C, injection="all_stage")
    with pytest.raises(TypeError, match="encode"):
        SCDLNetwork(nn.Conv3d(1, C, 1), num_classes=C)
    with pytest.raises(ValueError, match="num_classes"):
        SCDLNetwork(vnet())
    with pytest.raises(ValueError, match="injection_channels"):
        SCDLNetwork(vnet(), scdl=SCDL(C, z_dim=8, injection_channels=(4,)), injection="all_stages")
    with pytest.raises(ValueError, match="token_stage"):
        SCDLNetwork(vnet(), num_classes=C, token_stage=5)
    ready = SCDL(C, z_dim=8, injection_channels=SCDLNetwork.required_injection_channels(vnet(), "bottleneck"))
    assert SCDLNetwork(vnet(), scdl=ready, injection="bottleneck").scdl is ready
