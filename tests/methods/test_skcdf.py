"""SKCDF method: keep rates, the EMA order, the balanced-head masking, the gradient map, the
decoupling switch and error messages."""

import math

import numpy as np
import pytest
import torch

from scdl_monai.methods.skcdf import SKCDF, class_keep_rates, keep_rates_from_datalist, label_class_counts
from scdl_monai.networks.skcdf import SKCDFNetwork

from .conftest import random_batch

C = 3
PATCH = (32, 32, 32)


def _method(seed=0, network_kw=None, **kw):
    torch.manual_seed(seed)
    net = SKCDFNetwork(out_channels=C, n_filters=4, patch_size=PATCH, **(network_kw or {}))
    return SKCDF(net, C, **kw)


def test_keep_rates_counts_and_datalist_wrap_around():
    assert class_keep_rates([1000, 10, 50]).tolist() == [0.01, 1.0, 0.2]
    assert class_keep_rates([1000, 0, 50]).tolist() == [0.001, 1.0, 0.02]  # floor 1: no NaN for an absent class
    counts = label_class_counts([np.array([0, 0, 1]), torch.tensor([[2, 0]])], 3)
    assert counts.dtype == torch.float64 and counts.tolist() == [3, 1, 1]
    items = [{"image": f"img{i}", "label": np.full(4, i % 3)} for i in (2, 1)]  # given unsorted
    seen = []

    def load(item):
        seen.append(item["image"])
        return item

    # 2 volumes, 4 requested: the sorted list wraps around (img1, img2, img1, img2)
    rates = keep_rates_from_datalist(items, load, 3, num_volumes=4)
    assert seen == ["img1", "img2", "img1", "img2"] and rates.tolist() == [1.0, 0.125, 0.125]  # each counted twice; class 0 floored
    assert keep_rates_from_datalist([{"image": "a", "label": np.array([0, 0, 0, 1])}], lambda d: d, 2).tolist() == [1 / 3, 1.0]


def test_rho_schedule_runs_from_one_to_the_keep_rates():
    m = _method(keep_rates=[0.01, 1.0, 0.2], max_epochs=10)
    assert m.keep_rates_at(0).tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(m.keep_rates_at(10), torch.tensor([0.01, 1.0, 0.2], dtype=torch.float64))
    torch.testing.assert_close(m.keep_rates_at(5), torch.tensor([0.505, 1.0, 0.6], dtype=torch.float64))


def test_ema_order_i_ii_iii():
    m = _method(ema_momentum=0.9)
    net = m.network
    with torch.no_grad():
        for value, p in ((1.0, net.decoder_l.head.weight), (2.0, net.decoder_l.head_balanced.weight),
                         (3.0, net.decoder_u.head.weight), (4.0, net.decoder_u.head_balanced.weight)):  # fmt: skip
            p.fill_(value)
    before = {k: v.clone() for k, v in net.decoder_u.state_dict().items()}
    m.update_ema()
    l_head = 0.9 * 1 + 0.1 * 2  # (i)
    u_head, u_bal = 0.9 * 3 + 0.1 * l_head, 0.9 * 4 + 0.1 * 2  # (ii) uses the updated D_l head
    assert net.decoder_l.head.weight.unique().item() == pytest.approx(l_head)
    assert net.decoder_u.head_balanced.weight.unique().item() == pytest.approx(u_bal)
    assert net.decoder_u.head.weight.unique().item() == pytest.approx(0.9 * u_head + 0.1 * u_bal)  # (iii)
    assert torch.equal(net.decoder_u.state_dict()["stages.0.0.1.running_mean"], before["stages.0.0.1.running_mean"])


def test_balanced_masking_reference_and_exclude_modes():
    m = _method()
    logits = torch.randn(1, C, 4, 4, 4)
    target = torch.randint(0, C, (1, 1, 4, 4, 4))
    ones, zeros = torch.ones(1, 1, 4, 4, 4, dtype=torch.float64), torch.zeros(1, 1, 4, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(m.balanced_dice_ce(logits, target, ones), m.dice_ce(logits, target))
    # reference: a dropped voxel is a uniform-softmax background voxel: CE = ln C; FP 1/C per foreground class
    n = 64
    dice_fg = 1.0 / (n / C + 1.0 + 1e-8)  # (2·0 + 1) / (0 + FP + 0 + 1 + 1e-8)
    assert m.balanced_dice_ce(logits, target, zeros).item() == pytest.approx(math.log(C) + 1 - dice_fg, rel=1e-5)
    ex = _method(balanced_mask_mode="exclude")
    torch.testing.assert_close(ex.balanced_dice_ce(logits, target, ones), m.dice_ce(logits, target))
    half = ones.clone()
    half[..., :2] = 0
    kept = (slice(None), slice(None), slice(None), slice(None), slice(2, None))
    torch.testing.assert_close(ex.balanced_dice_ce(logits, target, half), m.dice_ce(logits[kept], target[kept]))


def test_gradient_map_and_no_gradient_through_pseudo_labels():
    m = _method(keep_rates=[0.2, 1.0, 0.5])
    image_l, label_l, image_u = random_batch(C, n_l=1, n_u=1, shape=PATCH)
    terms = m.compute_losses(image_l, label_l, image_u, epoch=3)
    assert not terms.passes.pseudo_label.requires_grad and terms.mask_l.dtype == torch.float64
    net = m.network

    def grads(loss):
        g = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True, allow_unused=True)
        return {n: (x is not None and bool(x.abs().sum() > 0)) for (n, _), x in zip(net.named_parameters(), g)}

    sup, uns = grads(terms.loss_sup), grads(terms.loss_u)
    dl = [n for n in sup if n.startswith("decoder_l.")]
    du = [n for n in sup if n.startswith("decoder_u.")]
    assert all(sup[n] for n in dl) and not any(uns[n] for n in dl)  # D_l: L_sup only
    assert all(uns[n] for n in du) and not any(sup[n] for n in du)  # D_u: L_u only
    assert any(sup[n] for n in sup if n.startswith("encoder.")) and any(uns[n] for n in uns if n.startswith("encoder."))
    assert not any(sup[n] or uns[n] for n in sup if ".map_in." in n)  # the reference's unused convolutions


def test_decoupling_off_one_decoder_learns_from_both_and_no_decoder_ema():
    m = _method(network_kw={"decoupled": False})
    head = m.network.decoder_l.head.weight.clone()
    m.update_ema()  # only (i): the head EMA of the single decoder
    assert not torch.equal(head, m.network.decoder_l.head.weight)
    terms = m.compute_losses(*random_batch(C, n_l=1, n_u=1, shape=PATCH))
    (g,) = torch.autograd.grad(terms.loss_u, [m.network.decoder_l.stages[0][0][0].weight])
    assert g.abs().sum() > 0


def test_train_step_runs_ema_and_trains_with_the_engine_epoch():
    m = _method(keep_rates=[0.2, 1.0, 0.5])
    before = m.network.decoder_u.head.weight.clone()
    out = m.train_step(None, *random_batch(C, n_l=1, n_u=1, shape=PATCH))
    out.loss.backward()
    assert sorted(out.terms) == ["loss_sup", "loss_u", "unsup_weight"] and out.pred.shape == (1, C, *PATCH)
    assert not torch.equal(before, m.network.decoder_u.head.weight)
    frozen = _method(decoder_u_trainable=False)
    assert not any(p.requires_grad for p in frozen.network.decoder_u.parameters())


def test_errors_name_the_problem():
    m = _method()
    image_l, label_l, image_u = random_batch(C, n_l=1, n_u=2, shape=PATCH)
    with pytest.raises(ValueError, match="as many unlabeled as labeled"):
        m.compute_losses(image_l, label_l, image_u)
    with pytest.raises(ValueError, match="image_u"):
        m.compute_losses(image_l, label_l, None)
    with pytest.raises(ValueError, match="label_l values"):
        m.compute_losses(image_l, label_l + C, image_u[:1])
    with pytest.raises(ValueError, match="keep_rates"):
        _method(keep_rates=[0.5, 2.0, 1.0])
    with pytest.raises(ValueError, match="balanced_mask_mode"):
        _method(balanced_mask_mode="drop")
    with pytest.raises(TypeError, match="SKCDFNetwork"):
        SKCDF(torch.nn.Conv3d(1, 3, 1), 3)
