"""Tests for scdl_monai.networks.prior_injection (SCDL wrapper around a VNet)."""

import pytest
import torch
from torch import nn

from scdl_monai.networks.class_distribution import SCDL
from scdl_monai.networks.prior_injection import (
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


def wrapper(injection="all_stages", token_source="encoder", seed=0, has_dropout=True, **kwargs):
    kwargs.setdefault("scdl_kwargs", SCDL_KW)
    torch.manual_seed(seed)
    backbone = VNet(out_channels=C, n_filters=4, has_dropout=has_dropout)
    net = SCDLNetwork(backbone, num_classes=C, injection=injection, token_source=token_source, **kwargs)
    # projections start at zero (SCDL-X starts as X); make the prior clearly visible in the output
    for proj in net.scdl.injection_projections:
        nn.init.normal_(proj.weight, std=1.0)
    return net


def scdl_outputs(net, x):
    """Logits and SCDL outputs of one recorded training call."""
    with net.recording() as calls:
        logits = net(x)
    return logits, calls[0].scdl


def image(n=2, seed=1):
    return torch.randn(n, 1, *SHAPE, generator=torch.Generator().manual_seed(seed))


CASES = [(t, "encoder") for t in INJECTION_TARGETS] + [("head", "decoder_final"), ("none", "decoder_final")]


@pytest.mark.parametrize("injection,source", CASES)
def test_forward_shapes_and_scdl_outputs(injection, source):
    net = wrapper(injection, source)
    x = image()
    logits, out = scdl_outputs(net, x)
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
    assert [c.logits.shape[0] for c in calls] == [2, 1]
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
        net = wrapper("none", source, scdl_kwargs={**SCDL_KW, "dropout": 0.0}, has_dropout=False)
        x = image()
        _, out = scdl_outputs(net, x)
        with torch.no_grad():
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


def test_the_wrapper_implements_the_backbone_interface_itself():
    net = wrapper()
    assert (net.out_channels, net.in_channels, net.spatial_dims, net.norm) == (C, 1, 3, net.backbone.norm)
    assert net.shape_factor() == (16, 16, 16) and net.is_valid_shape((1, 1, *SHAPE))
    assert net.feature_channels == net.backbone.feature_channels and net.head is net.backbone.head
    assert type(net).__getattr__ is nn.Module.__getattr__  # no implicit delegation to the backbone
    with pytest.raises(AttributeError):
        net.decoder_scales  # a VNet attribute the wrapper does not offer
    # decode adds the prior of the features it is given: encode + decode == forward
    net.eval()
    x = image()
    with torch.no_grad():
        assert torch.equal(net.decode(net.encode(x))[0], net(x))
        assert not torch.allclose(net.decode(net.encode(x))[0], net.backbone(x), atol=1e-4)
        logits, last = net.decode(net.encode(x))
        assert torch.equal(net.head(last), logits)
    with pytest.raises(ValueError, match="injection"):
        net.decode(net.encode(x), injection=[None] * 4)


@pytest.mark.parametrize("injection", ["all_stages", "bottleneck", "head"])
def test_a_fresh_wrapper_computes_what_its_backbone_computes(injection):
    bare = vnet(seed=5)
    net = SCDLNetwork(vnet(seed=5), num_classes=C, injection=injection, scdl_kwargs=SCDL_KW, init_seed=3)
    x = image()
    for mode in (False, True):
        net.train(mode), bare.train(mode)
        torch.manual_seed(0)
        expected = bare.decode(bare.encode(x))[0] if mode else bare(x)
        torch.manual_seed(0)
        features = net.encode(x)  # same dropout draws as the bare encoder
        got = net.decode(features)[0] if mode else net(x)
        if not mode:
            assert torch.equal(got, expected)
        else:  # the SCDL block draws random numbers between encoder and decoder dropout: same without dropout
            assert got.shape == expected.shape
    plain = SCDLNetwork(VNet(out_channels=C, n_filters=4, has_dropout=False), num_classes=C, injection=injection,
                        scdl_kwargs=SCDL_KW).train()  # fmt: skip
    assert torch.equal(plain(x), plain.backbone(x))


def test_teacher_and_pseudo_label_passes_are_deterministic():
    net = wrapper("all_stages", has_dropout=False)  # train mode, random proxies/noise/dropout in the SCDL block
    x = image()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        # a train-mode call without gradients is the eval-mode call (up to the backbone's batch statistics)
        net.backbone.eval()
        deterministic = net(x)
        net.eval()
        assert torch.allclose(net(x), deterministic, atol=1e-6)
    net.train()
    assert not torch.equal(net(x), net(x))  # with gradients the block samples


def test_detached_prior_trains_only_the_projections_through_the_segmentation_loss():
    for detach in (False, True):
        net = wrapper("all_stages", detach_prior=detach)
        net(image()).square().mean().backward()
        assert all(p.grad.abs().sum() > 0 for p in net.scdl.injection_projections.parameters())
        reached = net.scdl.proxies.grad is not None and net.scdl.proxies.grad.abs().sum() > 0
        assert reached != detach
        assert (net.token_extractor.proj.weight.grad is not None) != detach


def test_initialize_weights_leaves_the_scdl_branch_alone():
    from scdl_monai.networks.vnet import initialize_weights

    net = SCDLNetwork(vnet(seed=1), num_classes=C, scdl_kwargs=SCDL_KW)
    bare = vnet(seed=1)
    extractor = net.token_extractor.proj.weight.detach().clone()
    torch.manual_seed(9)
    initialize_weights(net, "xavier")
    after = torch.rand(1)
    torch.manual_seed(9)
    initialize_weights(bare, "xavier")
    assert torch.equal(after, torch.rand(1))  # the same random numbers were drawn
    assert all(torch.equal(a, b) for a, b in zip(net.backbone.state_dict().values(), bare.state_dict().values()))
    assert all(torch.count_nonzero(p) == 0 for p in net.scdl.injection_projections.parameters())
    assert torch.equal(net.token_extractor.proj.weight, extractor)


def test_wrap_backbone_picks_the_wrapper_and_honours_enabled():
    from scdl_monai.networks.diffvnet import DiffVNet
    from scdl_monai.networks.magicnet import MagicNetwork
    from scdl_monai.networks.prior_injection import SCDLDiffVNet, wrap_backbone

    bare = vnet()
    assert wrap_backbone(bare, enabled=False) is bare
    wrapped = wrap_backbone(bare, settings={"num_classes": C, "scdl_kwargs": SCDL_KW}, injection="head")
    assert type(wrapped) is SCDLNetwork and wrapped.injection == "head"
    diff = wrap_backbone(DiffVNet(out_channels=C, n_filters=4), num_classes=C, scdl_kwargs=SCDL_KW)
    assert isinstance(diff, SCDLDiffVNet) and diff.decoder_theta is diff.backbone.decoder_theta
    assert MagicNetwork(wrapped, cube_size=16, patch_size=32, hidden_features=8).backbone is wrapped
    with pytest.raises(TypeError, match="VNet"):
        MagicNetwork(nn.Conv3d(1, 1, 1))


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
