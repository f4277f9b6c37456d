"""Tests for scdl_monai.methods.cps (docs/methods.md#cps) and the shared pieces of methods.base."""

from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from scdl_monai.losses.segmentation import DiceCELoss
from scdl_monai.methods.base import LogitMean, MethodOutput
from scdl_monai.methods.cps import CPS

from .conftest import random_batch, two_vnets

C = 3
SHAPE = (16, 16, 16)

nets = partial(two_vnets, C)
batch = partial(random_batch, C, shape=SHAPE)


def manual_cps(net_a, net_b, image_l, label_l, image_u, w, weight_a=None, weight_b=None):
    """CPS written out directly from docs/methods.md#cps with torch primitives."""
    x = torch.cat([image_l, image_u])
    z_a, z_b = net_a(x), net_b(x)
    n = image_l.shape[0]
    dice_ce = DiceCELoss(mode="reference")
    sup = dice_ce(z_a[:n], label_l, weight_a) + dice_ce(z_b[:n], label_l, weight_b)
    y_a, y_b = z_a.argmax(1), z_b.argmax(1)
    cps = F.cross_entropy(z_a, y_b, weight=weight_a) + F.cross_entropy(z_b, y_a, weight=weight_b)
    return sup + w * cps, sup, cps, (z_a[:n] + z_b[:n]) / 2


def test_loss_terms_match_manual_computation():
    net_a, net_b = nets()
    cps = CPS(net_a, net_b, init_b=None)
    cps.set_unsup_weight(0.3)
    image_l, label_l, image_u = batch(n_l=2, n_u=2)
    out = cps(image_l, label_l, image_u)
    assert isinstance(out, MethodOutput)
    loss, sup, cps_term, pred = manual_cps(net_a, net_b, image_l, label_l, image_u, 0.3)
    assert torch.allclose(out.loss, loss, rtol=1e-5)
    assert torch.allclose(out.terms["loss_sup"], sup, rtol=1e-5)
    assert torch.allclose(out.terms["loss_cps"], cps_term, rtol=1e-5)
    assert torch.allclose(out.terms["loss_sup_a"] + out.terms["loss_sup_b"], out.terms["loss_sup"])
    assert torch.allclose(out.terms["loss_cps_a"] + out.terms["loss_cps_b"], out.terms["loss_cps"])
    assert out.terms["unsup_weight"].item() == pytest.approx(0.3)
    assert torch.allclose(out.pred, pred, atol=1e-6) and out.pred.shape == (2, C, *SHAPE)
    assert out.loss.requires_grad and not out.pred.requires_grad
    assert not any(t.requires_grad for t in out.terms.values())


def test_unsup_weight_zero_gives_supervised_loss():
    cps = CPS(*nets(), init_b=None)
    out = cps(*batch())
    assert torch.allclose(out.loss, out.terms["loss_sup"])


class WeightedCPS(CPS):
    """CPS with fixed class weights through the hook DHC overrides."""

    def class_weights(self, logits_a, logits_b, label_l):
        return logits_a.new_tensor([0.2, 1.0, 3.0]), logits_a.new_tensor([1.0, 2.0, 0.5])


def test_class_weight_hook_is_used_for_sup_and_cps_terms():
    net_a, net_b = nets()
    cps = WeightedCPS(net_a, net_b, init_b=None)
    cps.set_unsup_weight(1.0)
    image_l, label_l, image_u = batch()
    out = cps(image_l, label_l, image_u)
    wa, wb = torch.tensor([0.2, 1.0, 3.0]), torch.tensor([1.0, 2.0, 0.5])
    loss, sup, cps_term, _ = manual_cps(net_a, net_b, image_l, label_l, image_u, 1.0, wa, wb)
    assert torch.allclose(out.terms["loss_sup"], sup, rtol=1e-5)
    assert torch.allclose(out.terms["loss_cps"], cps_term, rtol=1e-5)


class ZeroLoss(nn.Module):
    """A supervised loss that contributes nothing (isolates the CPS term)."""

    def forward(self, logits, target, weight=None):
        return logits.sum() * 0


def test_pseudo_labels_carry_no_gradient():
    # With the supervised term off, the gradient of every parameter equals that of
    # CE(z_A, sg(argmax z_B)) + CE(z_B, sg(argmax z_A)): each network's prediction reaches the other's
    # loss only as a hard label without gradient (a soft or non-detached target would change it).
    net_a, net_b = nets()
    cps = CPS(net_a, net_b, sup_loss=ZeroLoss(), init_b=None)
    cps.set_unsup_weight(1.0)
    image_l, label_l, image_u = batch()
    cps(image_l, label_l, image_u).loss.backward()
    grads = {name: p.grad.clone() for name, p in cps.named_parameters()}
    assert all(grads[f"{net}.head.weight"].abs().sum() > 0 for net in ("network_a", "network_b"))
    cps.zero_grad(set_to_none=True)
    x = torch.cat([image_l, image_u])
    z_a, z_b = net_a(x), net_b(x)
    (F.cross_entropy(z_a, z_b.detach().argmax(1)) + F.cross_entropy(z_b, z_a.detach().argmax(1))).backward()
    for name, p in cps.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-7), name


def test_without_unlabeled_batch():
    cps = CPS(*nets(), init_b=None)
    image_l, label_l, _ = batch(n_l=2)
    out = cps(image_l, label_l, None)
    assert out.pred.shape == (2, C, *SHAPE) and torch.isfinite(out.loss)


def test_inference_network_is_mean_of_logits():
    net_a, net_b = nets()
    cps = CPS(net_a, net_b).eval()
    x = torch.randn(1, 1, *SHAPE)
    inf = cps.inference_network()
    assert isinstance(inf, LogitMean)
    with torch.no_grad():
        assert torch.allclose(inf(x), (net_a(x) + net_b(x)) / 2, atol=1e-6)
    # references the trained networks; does not duplicate parameters in the method's state_dict
    assert inf.networks[0] is net_a and inf.networks[1] is net_b
    assert not any(k.startswith("inference") for k in cps.state_dict())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # VNet's input-shape check is a Python branch
def test_inference_network_traces_with_vnets():
    cps = CPS(*nets()).eval()
    x = torch.randn(1, 1, *SHAPE)
    traced = torch.jit.trace(cps.inference_network(), x)
    with torch.no_grad():
        assert torch.allclose(traced(x), cps.inference_network()(x), atol=1e-6)


def test_logit_mean_is_torchscript_scriptable():
    torch.manual_seed(0)
    ensemble = LogitMean([nn.Conv3d(1, C, 3, padding=1), nn.Conv3d(1, C, 1)]).eval()
    scripted = torch.jit.script(ensemble)
    x = torch.randn(1, 1, 8, 8, 8)
    assert torch.allclose(scripted(x), ensemble(x))
    with pytest.raises(ValueError, match="at least one"):
        LogitMean([])


def test_init_b_reinitialises_network_b_only():
    net_a, net_b = nets()
    a0 = {k: v.clone() for k, v in net_a.state_dict().items()}
    b0 = {k: v.clone() for k, v in net_b.state_dict().items()}
    CPS(net_a, net_b, init_b="xavier")
    assert all(torch.equal(a0[k], v) for k, v in net_a.state_dict().items())
    # every (non-transposed) convolution is re-drawn; transposed convs keep their default init (docs/methods.md)
    conv_keys = [f"{name}.weight" for name, m in net_b.named_modules() if type(m) is nn.Conv3d]
    assert conv_keys and all(not torch.equal(b0[k], net_b.state_dict()[k]) for k in conv_keys)
    net_a2, net_b2 = nets()
    CPS(net_a2, net_b2, init_b=None)
    assert all(torch.equal(b0[k], v) for k, v in net_b2.state_dict().items())


def test_state_dict_holds_networks_and_unsup_weight():
    cps = CPS(*nets())
    cps.set_unsup_weight(0.05)
    state = cps.state_dict()
    assert state["unsup_weight"].item() == pytest.approx(0.05)
    assert any(k.startswith("network_a.") for k in state) and any(k.startswith("network_b.") for k in state)
    fresh = CPS(*nets(seed=1))
    fresh.load_state_dict(state)
    assert fresh.unsup_weight.item() == pytest.approx(0.05)
    assert list(cps.networks()) == ["network_a", "network_b"]


def test_constructor_errors():
    net_a, net_b = nets()
    with pytest.raises(ValueError, match="two different module instances"):
        CPS(net_a, net_a)
    with pytest.raises(ValueError, match="loss_mode must be one of"):
        CPS(net_a, net_b, loss_mode="dhc")
    with pytest.raises(ValueError, match="init_b must be one of"):
        CPS(net_a, net_b, init_b="orthogonal")
    with pytest.raises(TypeError, match="network_b must be an nn.Module"):
        CPS(net_a, "vnet")


def test_batch_shape_errors():
    cps = CPS(*nets(), init_b=None)
    image_l, label_l, image_u = batch()
    with pytest.raises(ValueError, match="image_u must have the channels and spatial size"):
        cps(image_l, label_l, image_u[..., :8])
    with pytest.raises(ValueError, match="label_l must have shape"):
        cps(image_l, label_l[:, 0], image_u)


def test_monai_loss_mode_uses_monai_dice_ce():
    from monai.losses import DiceCELoss as MonaiDiceCELoss

    net_a, net_b = nets()
    cps = CPS(net_a, net_b, loss_mode="monai", init_b=None)
    assert cps.sup_loss.mode == "monai"
    image_l, label_l, image_u = batch(n_l=2, n_u=2)
    out = cps(image_l, label_l, image_u)
    with torch.no_grad():
        x = torch.cat([image_l, image_u])
        z_a, z_b = net_a(x)[:2], net_b(x)[:2]
    monai_loss = MonaiDiceCELoss(
        to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1e-5, smooth_dr=1e-5
    )
    assert torch.allclose(out.terms["loss_sup_a"], monai_loss(z_a, label_l), rtol=1e-5)
    assert torch.allclose(out.terms["loss_sup_b"], monai_loss(z_b, label_l), rtol=1e-5)
    # the DHC reference form gives another supervised value on the same logits; the CPS term does not depend on it
    reference = CPS(net_a, net_b, loss_mode="reference", init_b=None)(image_l, label_l, image_u)
    assert not torch.allclose(reference.terms["loss_sup_a"], out.terms["loss_sup_a"], rtol=1e-3)
    assert torch.allclose(reference.terms["loss_cps"], out.terms["loss_cps"])


def test_wrap_ddp_keeps_state_dict_keys(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net_a, net_b = nets()
        cps = CPS(net_a, net_b, init_b=None)
        keys = list(cps.state_dict())
        assert cps.wrap_ddp() is cps
        assert list(cps.state_dict()) == keys  # no "module." prefixes
        assert isinstance(cps.net("network_a"), nn.parallel.DistributedDataParallel)
        assert cps.networks()["network_a"] is net_a
        cps.set_unsup_weight(1.0)
        cps(*batch()).loss.backward()
        assert all(p.grad is not None for p in net_b.parameters())
        cps.eval()
        assert not cps.net("network_b").training
    finally:
        dist.destroy_process_group()
