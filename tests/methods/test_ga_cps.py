"""Tests for scdl_monai.methods.ga_cps (GA-CPS, docs/methods.md#ga-cps)."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.handlers import LrScheduleHandler

from scdl_monai.handlers.schedules import UnsupWeightSchedule, poly_lr_scheduler
from scdl_monai.losses.ga import GACELoss, GADiceLoss
from scdl_monai.methods.cps import CPS
from scdl_monai.methods.ga_cps import GACPS, GASupervisedLoss
from scdl_monai.networks.vnet import VNet

from .conftest import random_batch, two_vnets

C = 3
SHAPE = (16, 16, 16)

nets = partial(two_vnets, C)
batch = partial(random_batch, C, n_l=2, n_u=2, shape=SHAPE)


def test_is_cps_with_ga_losses():
    method = GACPS(*nets())
    assert isinstance(method, CPS)
    assert isinstance(method.sup_loss, GASupervisedLoss)
    assert (method.sup_loss.ce.k, method.sup_loss.ce.gamma) == (10, 0.5)
    assert isinstance(method.cps_loss, GACELoss) and (method.cps_loss.k, method.cps_loss.gamma) == (100, 0.5)


def test_supervised_loss_is_gace_plus_gadice():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, C, 8, 8, 8, generator=g)
    target = torch.randint(0, C, (2, 1, 8, 8, 8), generator=g)
    weight = torch.tensor([0.5, 1.0, 2.0])
    expected = GACELoss(k=10, gamma=0.5)(logits, target, weight) + GADiceLoss()(logits, target, weight)
    assert torch.allclose(GASupervisedLoss()(logits, target, weight), expected)


def test_losses_equal_manual_composition():
    net_a, net_b = nets()
    method = GACPS(net_a, net_b, init_a=None, init_b=None)
    method.set_unsup_weight(0.25)
    image_l, label_l, image_u = batch()
    out = method(image_l, label_l, image_u)

    # docs/methods.md#ga-cps written out with the loss classes and torch primitives
    x = torch.cat([image_l, image_u])
    z_a, z_b = net_a(x), net_b(x)
    gace10, gace100, gadice = GACELoss(k=10, gamma=0.5), GACELoss(k=100, gamma=0.5), GADiceLoss()
    sup = sum(gace10(z[:2], label_l) + gadice(z[:2], label_l) for z in (z_a, z_b))
    cps = gace100(z_a, z_b.argmax(1, keepdim=True)) + gace100(z_b, z_a.argmax(1, keepdim=True))
    assert torch.allclose(out.terms["loss_sup"], sup, rtol=1e-5)
    assert torch.allclose(out.terms["loss_cps"], cps, rtol=1e-5)
    assert torch.allclose(out.loss, sup + 0.25 * cps, rtol=1e-5)
    # the CPS term runs over the whole batch (labeled + unlabeled): restricting it changes the value
    cps_u_only = gace100(z_a[2:], z_b[2:].argmax(1, keepdim=True)) + gace100(z_b[2:], z_a[2:].argmax(1, keepdim=True))
    assert not torch.allclose(cps_u_only, cps)
    # GACE with k=100 and the hard pseudo-labels at gamma=1 would be plain CE: sanity of the k=100 path
    assert torch.allclose(
        GACELoss(k=100, gamma=1.0)(z_a, z_b.argmax(1, keepdim=True)), F.cross_entropy(z_a, z_b.argmax(1)), rtol=1e-5
    )
    assert out.pred.shape == (2, C, *SHAPE) and torch.allclose(out.pred, (z_a[:2] + z_b[:2]).detach() / 2, atol=1e-6)


def test_initialisation_a_kaiming_b_xavier():
    torch.manual_seed(5)
    net_a, net_b = VNet(out_channels=C, n_filters=4, init=None), VNet(out_channels=C, n_filters=4, init=None)
    GACPS(net_a, net_b)
    # a 64->64 3x3x3 conv (110,592 weights): std identifies the scheme (PyTorch default ~0.014)
    w_a = net_a.encoder_stages[4][0][0].weight
    w_b = net_b.encoder_stages[4][0][0].weight
    fan_in = fan_out = 64 * 27
    assert w_a.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.05)  # Kaiming-normal
    assert w_b.std().item() == pytest.approx(math.sqrt(2.0 / (fan_in + fan_out)), rel=0.05)  # Xavier-normal


def test_gradients_reach_both_networks_and_pseudo_labels_carry_none():
    net_a, net_b = nets()
    method = GACPS(net_a, net_b)
    method.set_unsup_weight(0.1)
    out = method(*batch())
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net_a.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net_b.parameters())


def test_errors():
    with pytest.raises(ValueError, match="init_a"):
        GACPS(*nets(), init_a="orthogonal")
    with pytest.raises(ValueError, match="k must be a percentage"):
        GACPS(*nets(), cps_k=0)


def test_reference_schedules_with_stock_handlers():
    """w_cps = 0.1·exp(−5(1 − e/E)²) per epoch (no lag), lr = 0.01(1 − i/T)^0.9 per iteration."""
    method = GACPS(*nets())
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.01)
    max_iterations, per_epoch = 40, 16  # GA: E = max_iterations // per_epoch + 1
    epochs = max_iterations // per_epoch + 1
    engine = Engine(lambda e, b: opt.step())
    UnsupWeightSchedule(method, w_max=0.1, ramp_epochs=epochs, epoch_level=True, lag=0).attach(engine)
    LrScheduleHandler(poly_lr_scheduler(opt, max_iterations), epoch_level=False).attach(engine)
    seen = []
    engine.add_event_handler(
        Events.ITERATION_STARTED, lambda e: seen.append((method.unsup_weight.item(), opt.param_groups[0]["lr"]))
    )
    engine.run(range(per_epoch), max_epochs=epochs)
    assert len(seen) == epochs * per_epoch  # whole epochs, like the reference loop (48 > 40 iterations)
    for i, (w, lr) in enumerate(seen):
        e = i // per_epoch
        assert w == pytest.approx(0.1 * math.exp(-5 * (1 - e / epochs) ** 2), rel=1e-6)
        if i < max_iterations:
            assert lr == pytest.approx(0.01 * (1 - i / max_iterations) ** 0.9, rel=1e-5, abs=1e-12)
