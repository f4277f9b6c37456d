"""Tests for scdl_monai.losses.ga: GADiceLoss and GACELoss (GA, ECCV'24; docs/methods.md#ga-losses)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scdl_monai.losses.ga import GACELoss, GADiceLoss

S = 1e-10


def _probs_and_target(seed=0, absent=(3,), shape=(2, 4, 3, 4, 5)):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(shape, generator=g), dim=1)
    present = [c for c in range(shape[1]) if c not in absent]
    target = torch.tensor(present)[torch.randint(0, len(present), (shape[0], 1, *shape[2:]), generator=g)]
    return probs, target


def plain_squared_dice_loss(probs, target, cls):
    """1 - (2 sum p t + s) / (sum p^2 + sum t^2 + s) for one class over batch and voxels."""
    p = probs[:, cls].reshape(-1)
    t = (target[:, 0] == cls).reshape(-1).to(p.dtype)
    return 1 - (2 * (p * t).sum() + S) / ((p * p).sum() + (t * t).sum() + S)


# ----------------------------------------------------------------------------------------------
# GADice
# ----------------------------------------------------------------------------------------------


def test_gadice_values_present_classes_match_plain_dice_absent_is_sum_p2_over_n():
    probs, target = _probs_and_target()
    per_class = GADiceLoss(softmax=False, reduction="none")(probs, target)
    assert per_class.shape == (4,)
    for c in range(3):
        assert per_class[c].item() == pytest.approx(plain_squared_dice_loss(probs, target, c).item(), rel=1e-6)
    n = 2 * 3 * 4 * 5
    assert per_class[3].item() == pytest.approx((probs[:, 3] ** 2).sum().item() / n, rel=1e-6)
    assert GADiceLoss(softmax=False)(probs, target).item() == pytest.approx(per_class.mean().item(), rel=1e-6)
    assert GADiceLoss(softmax=False, reduction="sum")(probs, target).item() == pytest.approx(
        per_class.sum().item(), rel=1e-6
    )


def test_gadice_gradient_absent_class_is_p_over_n_present_classes_match_plain_dice():
    probs, target = _probs_and_target(seed=1)
    p = probs.clone().requires_grad_(True)
    GADiceLoss(softmax=False, reduction="sum")(p, target).backward()
    n = 2 * 3 * 4 * 5
    # absent class: gradient exactly p / N (plain Dice would give ~0 here)
    assert torch.allclose(p.grad[:, 3], probs[:, 3] / n, rtol=1e-5, atol=1e-9)
    # present classes: gradient of the plain squared-denominator Dice of an independent implementation
    q = probs.clone().requires_grad_(True)
    sum(plain_squared_dice_loss(q, target, c) for c in range(3)).backward()
    assert torch.allclose(p.grad[:, :3], q.grad[:, :3], rtol=1e-5, atol=1e-8)
    # contrast: plain Dice on the absent class has a vanishing gradient
    r = probs.clone().requires_grad_(True)
    plain_squared_dice_loss(r, target, 3).backward()
    assert r.grad[:, 3].abs().max() < 1e-6 * p.grad[:, 3].abs().max()


def test_gadice_softmax_inside_and_weight_per_call():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, 4, generator=g)
    target = torch.randint(0, 2, (2, 1, 4, 4, 4), generator=g)
    from_logits = GADiceLoss(reduction="none")(logits, target)
    from_probs = GADiceLoss(softmax=False, reduction="none")(torch.softmax(logits, 1), target)
    assert torch.allclose(from_logits, from_probs)
    weight = torch.tensor([0.0, 2.0, 0.5])
    weighted = GADiceLoss(reduction="none")(logits, target, weight)
    assert torch.allclose(weighted, from_logits * weight)
    # "mean" divides by C, not by the sum of the weights (reference: loss / n_classes)
    expected = (from_logits * weight).sum().item() / 3
    assert GADiceLoss()(logits, target, weight).item() == pytest.approx(expected, rel=1e-6)


def test_gadice_float32_under_half_inputs_and_target_gets_no_grad():
    logits = torch.randn(1, 3, 4, 4, 4).half().requires_grad_(True)
    target = torch.randint(0, 3, (1, 1, 4, 4, 4)).float()
    loss = GADiceLoss()(logits, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and not target.requires_grad


def test_gadice_errors():
    with pytest.raises(ValueError, match="reduction"):
        GADiceLoss(reduction="avg")
    with pytest.raises(TypeError, match="softmax"):
        GADiceLoss(softmax=1)
    with pytest.raises(ValueError, match="target must have shape"):
        GADiceLoss()(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="weight must have shape"):
        GADiceLoss()(torch.randn(1, 3, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long), torch.ones(2))


# ----------------------------------------------------------------------------------------------
# GACE
# ----------------------------------------------------------------------------------------------


def _logits_target(seed=0, shape=(2, 4, 5, 6, 7)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 2
    target = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=g)
    return logits, target


def _kept(logits, target, k, weight=None):
    """Per-voxel CE and labels of the floor(n*k/100) largest CE values (plain sort)."""
    ce = F.cross_entropy(logits, target[:, 0], weight=weight, reduction="none").reshape(-1)
    labels = target.reshape(-1)
    order = torch.argsort(ce, descending=True)[: int(ce.numel() * k / 100)]
    return ce[order], labels[order]


def test_gace_gamma_one_is_mean_ce_over_kept_voxels():
    logits, target = _logits_target()
    ce, _ = _kept(logits, target, 10)
    assert ce.numel() == 42  # floor(n * k / 100), n = 2 * 5 * 6 * 7 = 420
    assert GACELoss(k=10, gamma=1.0)(logits, target).item() == pytest.approx(ce.mean().item(), rel=1e-5)


def test_gace_gamma_zero_is_sum_over_classes_of_per_class_mean():
    logits, target = _logits_target(seed=1)
    ce, labels = _kept(logits, target, 25)
    expected = sum(ce[labels == c].mean() for c in range(4) if (labels == c).any())
    assert GACELoss(k=25, gamma=0.0)(logits, target).item() == pytest.approx(float(expected), rel=1e-5)


def test_gace_default_gamma_half_matches_formula():
    logits, target = _logits_target(seed=2)
    ce, labels = _kept(logits, target, 10)
    big_k = ce.numel()
    expected = 0.0
    for c in range(4):
        n_c = float((labels == c).sum())
        expected += float(ce[labels == c].sum()) / ((n_c + 1e-10) ** 0.5 * big_k**0.5 + 1e-10)
    assert GACELoss()(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_gace_k100_keeps_every_voxel():
    logits, target = _logits_target(seed=3)
    assert GACELoss(k=100, gamma=1.0)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target[:, 0]).item(), rel=1e-5
    )
    x = logits.clone().requires_grad_(True)
    GACELoss(k=100, gamma=0.5)(x, target).backward()
    assert (x.grad.abs().sum(1) > 0).all()  # every voxel contributes


def test_gace_only_kept_voxels_get_gradient():
    logits, target = _logits_target(seed=4)
    x = logits.clone().requires_grad_(True)
    GACELoss(k=10)(x, target).backward()
    assert int((x.grad.abs().sum(1) > 0).sum()) == int(420 * 10 / 100)  # n = B x voxels = 2 * 5 * 6 * 7


def test_gace_weight_scales_per_voxel_ce_before_mining():
    logits, target = _logits_target(seed=5)
    weight = torch.tensor([0.1, 1.0, 2.0, 0.5])
    ce, _ = _kept(logits, target, 20, weight=weight)
    assert GACELoss(k=20, gamma=1.0)(logits, target, weight).item() == pytest.approx(ce.mean().item(), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"k": 0}, ValueError, "k must"),
        ({"k": 101}, ValueError, "k must"),
        ({"gamma": -0.1}, ValueError, "gamma"),
        ({"gamma": 1.5}, ValueError, "gamma"),
        ({"k": True}, TypeError, "k must be a number"),
        ({"gamma": "0.5"}, TypeError, "gamma must be a number"),
    ],
)
def test_gace_constructor_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        GACELoss(**kwargs)


def test_gace_forward_errors():
    with pytest.raises(ValueError, match="target must have shape"):
        GACELoss()(torch.randn(2, 3, 4, 4, 4), torch.zeros(2, 1, 4, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="keeps floor"):
        GACELoss(k=10)(torch.randn(1, 3, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2, dtype=torch.long))
