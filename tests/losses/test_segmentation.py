"""Tests for scdl_monai.losses.segmentation (DHC reference forms and MONAI mode; docs/methods.md)."""

import math

import monai
import pytest
import torch
import torch.nn.functional as F

from scdl_monai.losses.segmentation import DiceCELoss, MaskedCELoss, SoftDiceLoss, WeightedCELoss


def tiny_case():
    """Two voxels, two classes: voxel 0 logits (0, 0), label 0; voxel 1 logits (0, ln 3), label 1."""
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])  # (B=1, C=2, N=2)
    target = torch.tensor([[[0, 1]]])  # (1, 1, 2)
    return logits, target


def random_case(seed=0, b=2, c=4, shape=(5, 6, 7)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, *shape, generator=g)
    target = torch.randint(0, c, (b, 1, *shape), generator=g)
    return logits, target


# ---------------------------------------------------------------- reference values
def test_weighted_ce_hand_computed():
    logits, target = tiny_case()
    # p(voxel0 = 0) = 1/2, p(voxel1 = 1) = 3/4
    nll0, nll1 = math.log(2.0), math.log(4.0 / 3.0)
    assert WeightedCELoss()(logits, target).item() == pytest.approx((nll0 + nll1) / 2, rel=1e-6)
    w = torch.tensor([1.0, 3.0])
    assert WeightedCELoss()(logits, target, w).item() == pytest.approx((nll0 + 3 * nll1) / 4, rel=1e-6)


def test_weighted_ce_equals_torch_cross_entropy():
    logits, target = random_case()
    w = torch.tensor([0.0, 0.5, 2.0, 4.0])
    expected = F.cross_entropy(logits, target[:, 0], weight=w)
    assert torch.allclose(WeightedCELoss()(logits, target, w), expected, rtol=1e-6)


def test_weighted_ce_all_zero_weight_is_zero_not_nan():
    logits, target = random_case()
    target = torch.zeros_like(target)
    w = torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert torch.isnan(F.cross_entropy(logits, target[:, 0], weight=w))  # what torch (and DHC) return
    logits.requires_grad_(True)
    loss = WeightedCELoss()(logits, target, w)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_masked_ce_hand_computed_divides_by_all_voxels():
    logits, target = tiny_case()
    nll0, nll1 = math.log(2.0), math.log(4.0 / 3.0)
    w = torch.tensor([1.0, 3.0])
    assert MaskedCELoss()(logits, target).item() == pytest.approx((nll0 + nll1) / 2, rel=1e-6)
    # w[y]·nll over both voxels / 2, not / Σw (the WeightedCrossEntropyLoss of the CLD reference)
    assert MaskedCELoss()(logits, target, w).item() == pytest.approx((nll0 + 3 * nll1) / 2, rel=1e-6)
    mask = torch.tensor([[[0.0, 1.0]]])
    assert MaskedCELoss()(logits, target, w, mask=mask).item() == pytest.approx(3 * nll1 / 2, rel=1e-6)


def test_masked_ce_mask_carries_no_gradient_and_is_checked():
    logits, target = random_case()
    logits.requires_grad_(True)
    mask = torch.rand(target.shape, requires_grad=True)
    loss = MaskedCELoss()(logits, target, torch.tensor([0.5, 1.0, 2.0, 4.0]), mask=mask)
    loss.backward()
    assert logits.grad is not None and mask.grad is None
    with pytest.raises(ValueError, match="mask must have the target's shape"):
        MaskedCELoss()(logits, target, mask=mask[:, :, :2])


def test_soft_dice_hand_computed():
    # C=2, logits zero -> p = 1/2 everywhere; labels [0, 1, 1, 1]
    logits = torch.zeros(1, 2, 4)
    target = torch.tensor([[[0, 1, 1, 1]]])
    # class 1: TP = 1.5, FP = 0.5, FN = 1.5 -> dc = (3 + 1) / (3 + 0.5 + 1.5 + 1 + 1e-8)
    dc1 = 4.0 / (6.0 + 1e-8)
    assert SoftDiceLoss()(logits, target).item() == pytest.approx(-dc1, rel=1e-6)
    assert SoftDiceLoss()(logits, target, torch.tensor([5.0, 3.0])).item() == pytest.approx(-3 * dc1, rel=1e-6)
    # with background: class 0 TP = 0.5, FP = 1.5, FN = 0.5 -> (1 + 1) / (1 + 2 + 1)
    dc0 = 2.0 / (4.0 + 1e-8)
    with_bg = SoftDiceLoss(include_background=True)(logits, target)
    assert with_bg.item() == pytest.approx(-(dc0 + dc1) / 2, rel=1e-6)


def test_soft_dice_is_batch_dice():
    # sums over the batch: splitting voxels across two samples must not change the value
    logits, target = random_case(b=1, shape=(4, 4, 8))
    split_logits = torch.cat([logits[..., :4], logits[..., 4:]], dim=0)
    split_target = torch.cat([target[..., :4], target[..., 4:]], dim=0)
    assert torch.allclose(SoftDiceLoss()(logits, target), SoftDiceLoss()(split_logits, split_target), atol=1e-6)


def test_reference_dice_ce_hand_computed():
    logits = torch.zeros(1, 2, 4)
    target = torch.tensor([[[0, 1, 1, 1]]])
    dc1 = 4.0 / (6.0 + 1e-8)
    w = torch.tensor([2.0, 3.0])
    loss = DiceCELoss(mode="reference")
    assert loss(logits, target).item() == pytest.approx(math.log(2.0) - dc1, rel=1e-6)
    # CE: every voxel has nll ln 2, so the weighted mean is still ln 2; Dice: -(3 · dc1)
    assert loss(logits, target, w).item() == pytest.approx(math.log(2.0) - 3 * dc1, rel=1e-6)
    half = DiceCELoss(mode="reference", ce_weight=0.5, dice_weight=2.0)
    assert half(logits, target).item() == pytest.approx(0.5 * math.log(2.0) - 2 * dc1, rel=1e-6)


def test_reference_matches_independent_formula_random():
    logits, target = random_case(seed=3)
    w = torch.tensor([0.1, 1.0, 2.0, 3.5])
    p = torch.softmax(logits, 1)
    y = F.one_hot(target[:, 0], 4).permute(0, 4, 1, 2, 3).float()
    tp, fp, fn = (p * y).sum((0, 2, 3, 4)), (p * (1 - y)).sum((0, 2, 3, 4)), ((1 - p) * y).sum((0, 2, 3, 4))
    dc = (2 * tp + 1) / (2 * tp + fp + fn + 1 + 1e-8)
    expected = F.cross_entropy(logits, target[:, 0], weight=w) - (w[1:] * dc[1:]).mean()
    assert torch.allclose(DiceCELoss()(logits, target, w), expected, rtol=1e-5)


# ---------------------------------------------------------------- reduces to known losses
@pytest.mark.parametrize("include_background", [False, True])
def test_monai_mode_equals_monai_dice_ce(include_background):
    logits, target = random_case(seed=1)
    ours = DiceCELoss(mode="monai", include_background=include_background)
    ref = monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background)
    assert torch.allclose(ours(logits, target), ref(logits, target), rtol=1e-5)
    w = torch.tensor([0.5, 1.0, 2.0, 3.0])
    ref_w = monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background, weight=w)
    assert torch.allclose(ours(logits, target, w), ref_w(logits, target), rtol=1e-5)


@pytest.mark.parametrize("mode", ["reference", "monai"])
def test_weight_none_equals_ones(mode):
    logits, target = random_case(seed=2)
    loss = DiceCELoss(mode=mode)
    assert torch.allclose(loss(logits, target), loss(logits, target, torch.ones(4)), rtol=1e-6)


def test_default_smooth_depends_on_mode():
    assert DiceCELoss(mode="reference").smooth == 1.0
    assert DiceCELoss(mode="monai").smooth == 1e-5
    assert DiceCELoss(mode="monai", smooth=1.0).smooth == 1.0


def test_bfloat16_logits_computed_in_float32():
    logits, target = random_case(seed=4)
    out = DiceCELoss()(logits.bfloat16(), target)
    assert out.dtype == torch.float32
    assert torch.allclose(out, DiceCELoss()(logits.bfloat16().float(), target))


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("mode", ["reference", "monai"])
def test_gradient_reaches_logits_only(mode):
    logits, _ = random_case(seed=5)
    logits.requires_grad_(True)
    other = torch.randn_like(logits, requires_grad=True)
    # a float pseudo-label built from a tensor that requires grad: the loss must not back-propagate into it
    pseudo = other.argmax(1, keepdim=True).float() + 0 * other[:, :1]
    assert pseudo.requires_grad
    weight = torch.rand(4, requires_grad=True)
    DiceCELoss(mode=mode)(logits, pseudo, weight).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert other.grad is None
    assert weight.grad is None


def test_gradient_matches_finite_difference():
    logits = torch.randn(1, 3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (1, 1, 2, 2, 2))
    w = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    # the loss casts to float32 internally; check the analytic gradient with a loose tolerance
    assert torch.autograd.gradcheck(lambda x: DiceCELoss()(x, target, w).double(), (logits,), eps=1e-3, atol=1e-3)


# ---------------------------------------------------------------- errors
def test_bad_target_shape_message():
    logits, target = random_case()
    with pytest.raises(ValueError, match=r"target must have shape \(B, 1, \*spatial\)"):
        DiceCELoss()(logits, target[:, 0])
    with pytest.raises(ValueError, match="logits must have shape"):
        DiceCELoss()(logits[0, 0, 0], target[0, 0, 0])


def test_bad_weight_messages():
    logits, target = random_case()
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\) = \(4,\).*got \(3,\)"):
        DiceCELoss()(logits, target, torch.ones(3))
    with pytest.raises(TypeError, match="weight must be a"):
        WeightedCELoss()(logits, target, [1.0, 1.0, 1.0, 1.0])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        DiceCELoss(mode="nnunet")
    with pytest.raises(ValueError, match="smooth must be >= 0"):
        DiceCELoss(smooth=-1.0)
    with pytest.raises(ValueError, match="dice_weight must be >= 0"):
        DiceCELoss(dice_weight=-0.1)
