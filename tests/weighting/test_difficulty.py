"""Tests for scdl_monai.weighting.difficulty: the hard Dice and DiffDW against a plain-Python trace."""

from __future__ import annotations

import math

import pytest
import torch

from scdl_monai.weighting import DiffDW, hard_dice_per_class


# Three iterations, C = 3, eight voxels each (passed to the module as (1, 1, 2, 2, 2)).
TRACE = [
    # (target, pred)
    ([0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1, 2, 0, 0]),
    ([0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 0, 1, 1, 2, 2, 0]),  # better for classes 0 and 2
    ([0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0]),  # class 2 absent in both -> Dice 0.5
]


def plain_hard_dice(target, pred, num_classes):
    """Batch hard Dice per class written out voxel by voxel (independent of the package)."""
    dice = []
    for k in range(num_classes):
        tp = sum(1 for t, p in zip(target, pred) if t == k and p == k)
        fp = sum(1 for t, p in zip(target, pred) if t != k and p == k)
        fn = sum(1 for t, p in zip(target, pred) if t == k and p != k)
        dice.append((2 * tp + 1e-8) / (2 * tp + fp + fn + 2e-8))
    return dice


def plain_diffdw_trace(trace, num_classes, m=0.98, alpha=0.2, normalize=True):
    """DiffDW recurrence (docs/methods.md#diffdw, DHC train_dhc.py order) in plain Python floats."""
    last = [1e-8] * num_classes
    learn = [0.0] * num_classes
    unlearn = [0.0] * num_classes
    dw = [1.0] * num_classes
    outputs = []
    for target, pred in trace:
        lam = plain_hard_dice(target, pred, num_classes)
        new_learn, new_unlearn, new_dw, raw = [], [], [], []
        for k in range(num_classes):
            delta = lam[k] - last[k]
            log_ratio = math.log(lam[k] / last[k])
            l_k = delta * log_ratio if delta > 0 else 0.0
            u_k = delta * log_ratio if delta <= 0 else 0.0
            new_learn.append(m * learn[k] + (1 - m) * l_k)
            new_unlearn.append(m * unlearn[k] + (1 - m) * u_k)
            d_k = ((new_unlearn[k] + 1e-8) / (new_learn[k] + 1e-8)) ** alpha
            new_dw.append(m * dw[k] + (1 - m) * (1 - lam[k]))
            raw.append(d_k * new_dw[k])
        last, learn, unlearn, dw = lam, new_learn, new_unlearn, new_dw
        if normalize:
            outputs.append([num_classes * r / max(raw) for r in raw])
        else:
            outputs.append([num_classes * r for r in raw])
    return outputs


def _as_volume(values):
    return torch.tensor(values, dtype=torch.long).view(1, 1, 2, 2, 2)


def test_hard_dice_first_step_by_hand():
    target, pred = TRACE[0]
    dice = hard_dice_per_class(_as_volume(pred), _as_volume(target), 3)
    # class 0: TP 2, FP 2, FN 1 -> 4/7; class 1: TP 2, FP 1, FN 0 -> 4/5; class 2: TP 1, FP 0, FN 2 -> 2/4
    assert torch.allclose(dice, torch.tensor([4 / 7, 4 / 5, 1 / 2]), atol=1e-6)
    assert plain_hard_dice(target, pred, 3) == pytest.approx([4 / 7, 4 / 5, 1 / 2])
    # absent in both -> 0.5; present only in the target -> tiny but positive
    dice_abs = hard_dice_per_class(torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 0, 1]), 3)
    assert dice_abs[2].item() == pytest.approx(0.5)
    assert 0 < dice_abs[1].item() < 1e-7


@pytest.mark.parametrize("normalize", [True, False])
def test_diffdw_three_step_trace_matches_plain_python(normalize):
    expected = plain_diffdw_trace(TRACE, 3, normalize=normalize)
    tracker64 = DiffDW(3, normalize=normalize).to(torch.float64)
    tracker32 = DiffDW(3, normalize=normalize)
    for (target, pred), exp in zip(TRACE, expected):
        w64 = tracker64.update(_as_volume(pred), _as_volume(target))
        w32 = tracker32.update(_as_volume(pred), _as_volume(target))
        assert w64.dtype == torch.float64
        # float64 buffers (their 1e-8 initial value was rounded to float32 at construction)
        assert torch.allclose(w64, torch.tensor(exp, dtype=torch.float64), rtol=1e-7, atol=0)
        assert torch.allclose(w32, torch.tensor(exp, dtype=torch.float32), rtol=1e-4, atol=0)
    if normalize:
        assert max(expected[-1]) == pytest.approx(3.0)
    # the trace exercises both branches: class 1 fell in step 3 (unlearn > 0), class 0 rose in step 2
    assert tracker64.unlearn[1] > 0 and tracker64.learn[0] > 0
    assert tracker64.last_dice[2].item() == pytest.approx(0.5)


def test_diffdw_normalized_is_rescaled_unnormalized():
    a, b = DiffDW(3, normalize=True), DiffDW(3, normalize=False)
    for target, pred in TRACE:
        wa = a.update(_as_volume(pred), _as_volume(target))
        wb = b.update(_as_volume(pred), _as_volume(target))
        assert torch.allclose(wa, 3 * wb / wb.max(), rtol=1e-6)
        assert wa.max().item() == pytest.approx(3.0)


def test_diffdw_initial_state_and_state_dict_roundtrip():
    tracker = DiffDW(3)
    assert torch.equal(tracker.weights, torch.full((3,), 3.0))
    assert torch.allclose(tracker.last_dice, torch.full((3,), 1e-8))
    for target, pred in TRACE[:2]:
        tracker.update(_as_volume(pred), _as_volume(target))
    state = tracker.state_dict()
    assert set(state) == {"last_dice", "learn", "unlearn", "dice_weight", "weights"}
    restored = DiffDW(3)
    restored.load_state_dict(state)
    target, pred = TRACE[2]
    pred_v, target_v = _as_volume(pred), _as_volume(target)
    assert torch.equal(restored.update(pred_v, target_v), tracker.update(pred_v, target_v))
    restored.to(torch.float64)
    assert all(buf.dtype == torch.float64 for buf in restored.buffers())


def test_diffdw_all_perfect_for_long_never_gives_nan():
    tracker = DiffDW(2, momentum=0.5)
    labels = torch.tensor([0, 1, 1, 0])
    for _ in range(400):  # dw = 0.5**400 underflows to 0 in float32
        w = tracker.update(labels, labels)
    assert not torch.isnan(w).any()
    assert torch.equal(w, torch.full((2,), 2.0))


def test_diffdw_errors():
    with pytest.raises(ValueError, match="alpha"):
        DiffDW(3, alpha=0)
    with pytest.raises(TypeError, match="normalize"):
        DiffDW(3, normalize="yes")
    with pytest.raises(ValueError, match="same shape"):
        DiffDW(3).update(torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="pred_labels"):
        DiffDW(3).update(torch.zeros(4), torch.zeros(4, dtype=torch.long))
