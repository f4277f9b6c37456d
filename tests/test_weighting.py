"""Tests for scdl_monai.weighting: DistDW / DiffDW / SimiS / CLD maths and their buffer-backed trackers."""

from __future__ import annotations

import math

import pytest
import torch

from scdl_monai.weighting import (
    ConfidenceBank,
    DiffDW,
    DistDW,
    SimiSWeights,
    class_counts,
    cld_sampling_mask,
    cld_sampling_rate,
    cld_weights,
    distdw_weights,
    hard_dice_per_class,
    simis_weights,
)

# ----------------------------------------------------------------------------------------------
# DistDW: pure function
# ----------------------------------------------------------------------------------------------


def test_distdw_worked_example_from_methods():
    # docs/methods.md#distdw: counts [1e6, 1e4, 1e2, 0], C=4 -> [0, 0.571, 1.143, 4]
    w = distdw_weights(torch.tensor([1e6, 1e4, 1e2, 0.0]))
    assert torch.allclose(w, torch.tensor([0.0, 0.571, 1.143, 4.0]), atol=5e-4)
    # exact values: C * ln(P_k) / ln(P_max), P_k = (1e6 + 1e-8) / (N_k + 1e-8)
    log_p = [math.log((1e6 + 1e-8) / (n + 1e-8)) for n in (1e6, 1e4, 1e2, 0.0)]
    expected = [4 * v / max(log_p) for v in log_p]
    assert torch.allclose(w.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-7)


def test_distdw_all_equal_counts_give_ones_not_nan():
    for counts in ([5, 5, 5], [0, 0, 0, 0], [7]):
        w = distdw_weights(torch.tensor(counts))
        assert not torch.isnan(w).any()
        assert torch.equal(w, torch.ones(len(counts)))


def test_distdw_zero_count_class_gets_c_and_most_frequent_gets_zero():
    w = distdw_weights([300.0, 20.0, 0.0, 5.0, 1.0])
    assert w[2].item() == pytest.approx(5.0)
    assert w[0].item() == 0.0
    assert (w[1:] > 0).all() and (w <= 5.0).all()


def test_distdw_accepts_integer_counts_and_keeps_float_dtype():
    assert distdw_weights(torch.tensor([4, 2, 1])).dtype == torch.get_default_dtype()
    assert distdw_weights(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, -1.0]])
def test_distdw_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="counts"):
        distdw_weights(torch.tensor(bad))


def test_class_counts_and_errors():
    labels = torch.tensor([[0, 2, 2], [1, 2, 0]])
    assert class_counts(labels, 4).tolist() == [2, 1, 3, 0]
    with pytest.raises(ValueError, match=r"\[0, num_classes=2\)"):
        class_counts(labels, 2)
    with pytest.raises(TypeError, match="integer"):
        class_counts(labels.float(), 4)


# ----------------------------------------------------------------------------------------------
# DistDW tracker
# ----------------------------------------------------------------------------------------------


def _labels_with_counts(counts):
    """A flat integer label map holding counts[k] voxels of class k."""
    return torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(counts)])


def test_distdw_tracker_ema_two_updates_by_hand():
    tracker = DistDW(3, momentum=0.9)
    assert torch.equal(tracker.weights, torch.ones(3))  # neutral before init
    w0 = tracker.init_from_counts([100, 10, 1])
    # ln P = [0, ln 10, ln 100] -> 3 * [0, 0.5, 1]
    assert torch.allclose(w0, torch.tensor([0.0, 1.5, 3.0]), atol=1e-6)

    # update 1: counts [2, 2, 4] -> ln P = [ln 2, ln 2, 0] -> current = [3, 3, 0]
    w1 = tracker.update(_labels_with_counts([2, 2, 4]).view(1, 1, 2, 2, 2))
    expected1 = [0.9 * 0.0 + 0.1 * 3, 0.9 * 1.5 + 0.1 * 3, 0.9 * 3.0 + 0.1 * 0]  # [0.3, 1.65, 2.7]
    assert torch.allclose(w1, torch.tensor(expected1), atol=1e-6)

    # update 2: counts [0, 1, 3] -> P0 = (3 + 1e-8) / 1e-8 (largest), P1 = (3 + 1e-8) / (1 + 1e-8), P2 = 1
    ln_p0 = math.log((3 + 1e-8) / 1e-8)
    ln_p1 = math.log((3 + 1e-8) / (1 + 1e-8))
    current2 = [3.0, 3.0 * ln_p1 / ln_p0, 0.0]
    expected2 = [0.9 * e + 0.1 * c for e, c in zip(expected1, current2)]  # [0.57, 1.5019.., 2.43]
    w2 = tracker.update(_labels_with_counts([0, 1, 3]))
    assert torch.allclose(w2, torch.tensor(expected2), atol=1e-5)
    assert torch.allclose(tracker.weights, w2)


def test_distdw_update_returns_snapshot_and_builds_no_graph():
    tracker = DistDW(2)
    w = tracker.update(torch.tensor([0, 0, 1]))
    before = w.clone()
    tracker.update(torch.tensor([1, 1, 1]))
    assert torch.equal(w, before)  # the returned tensor is not the buffer
    assert not w.requires_grad
    with torch.no_grad():
        assert tracker.update(torch.tensor([0, 1])).shape == (2,)


def test_distdw_tracker_state_dict_roundtrip_and_dtype():
    tracker = DistDW(4, momentum=0.5)
    tracker.init_from_counts([10, 5, 2, 1])
    tracker.update(torch.tensor([0, 0, 1, 3]))
    state = tracker.state_dict()
    assert set(state) == {"weights"}
    restored = DistDW(4, momentum=0.5)
    restored.load_state_dict(state)
    assert torch.equal(restored.weights, tracker.weights)
    x = torch.tensor([2, 2, 1, 0])
    assert torch.equal(restored.update(x), tracker.update(x))
    tracker.to(torch.float64)
    assert tracker.weights.dtype == torch.float64
    assert tracker.update(x).dtype == torch.float64


def test_distdw_tracker_errors():
    with pytest.raises(ValueError, match="momentum"):
        DistDW(3, momentum=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        DistDW(0)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        DistDW(3).init_from_counts([1, 2])
    with pytest.raises(TypeError, match="integer"):
        DistDW(3).update(torch.zeros(4))
    with pytest.raises(ValueError, match="num_classes=3"):
        DistDW(3).update(torch.tensor([0, 3]))


# ----------------------------------------------------------------------------------------------
# DiffDW
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# SimiS (docs/methods.md#simis)
# ----------------------------------------------------------------------------------------------


def test_simis_weights_worked_example():
    # P = [0.6, 0.3, 0.1] -> C (max P - P) = 3 [0, 0.3, 0.5]
    assert simis_weights(torch.tensor([6.0, 3.0, 1.0])).tolist() == pytest.approx([0.0, 0.9, 1.5], abs=1e-7)
    # a class with no voxel gets C max P; equal counts (or none at all) give zeros, never NaN
    assert simis_weights([5, 5, 0]).tolist() == pytest.approx([0.0, 0.0, 1.5], abs=1e-7)
    assert simis_weights([4, 4]).tolist() == [0.0, 0.0]
    assert simis_weights([0, 0, 0]).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="non-negative"):
        simis_weights([1, -1])


def test_simis_tracker_starts_at_c_initialises_one_ema_step_and_updates_by_hand():
    tracker = SimiSWeights(3, momentum=0.9)
    assert torch.equal(tracker.weights, torch.full((3,), 3.0))  # reference: ones * num_cls
    w0 = tracker.init_from_counts([6, 3, 1])  # 0.9 * 3 + 0.1 * [0, 0.9, 1.5]
    assert w0.tolist() == pytest.approx([2.7, 2.79, 2.85], abs=1e-6)
    # counts [1, 1, 2] -> P = [0.25, 0.25, 0.5] -> rule 3 [0.25, 0.25, 0] = [0.75, 0.75, 0]
    w1 = tracker.update(_labels_with_counts([1, 1, 2]).view(1, 1, 2, 2, 1))
    assert w1.tolist() == pytest.approx([0.9 * 2.7 + 0.075, 0.9 * 2.79 + 0.075, 0.9 * 2.85], abs=1e-6)
    assert set(tracker.state_dict()) == {"weights"}
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        tracker.init_from_counts([1, 2])


# ----------------------------------------------------------------------------------------------
# CLD (docs/methods.md#cld)
# ----------------------------------------------------------------------------------------------


def test_cld_weights_worked_example_and_the_absent_class_guard():
    # (1000 / N)^(1/3): 1000/125 = 2^3, 1000/8 = 5^3
    assert cld_weights(torch.tensor([1000.0, 125.0, 8.0])).tolist() == pytest.approx([1.0, 2.0, 5.0])
    # an absent class: the rarest present class's weight (default) or the reference's inf
    assert cld_weights([1000, 125, 8, 0]).tolist() == pytest.approx([1.0, 2.0, 5.0, 5.0])
    reference = cld_weights([1000, 125, 8, 0], absent="reference")
    assert reference[:3].tolist() == pytest.approx([1.0, 2.0, 5.0]) and math.isinf(float(reference[3]))
    assert cld_weights([0, 0]).tolist() == [1.0, 1.0]
    assert torch.isnan(cld_weights([0, 0], absent="reference")).all()
    with pytest.raises(ValueError, match="absent must be one of"):
        cld_weights([1, 2], absent="max")


def test_cld_sampling_rate_worked_example():
    confidence = torch.tensor([0.96, 0.84, 0.36])  # 1 - c = [0.04, 0.16, 0.64] -> / 0.64 = [1/16, 1/4, 1]
    assert cld_sampling_rate(confidence).tolist() == pytest.approx([0.25, 0.5, 1.0], abs=1e-6)
    assert cld_sampling_rate(confidence, gamma=1.0).tolist() == pytest.approx([1 / 16, 0.25, 1.0], abs=1e-6)
    assert cld_sampling_rate(torch.ones(3)).tolist() == [0.0, 0.0, 0.0]  # fully confident: keep nothing
    with pytest.raises(ValueError, match="gamma"):
        cld_sampling_rate(confidence, gamma=0)
    with pytest.raises(ValueError, match=r"\(C,\)"):
        cld_sampling_rate(confidence[None])


def _grid(values):
    """Values of 4 voxels as a (1, 1, 2, 2) map."""
    return torch.tensor(values).view(1, 1, 2, 2)


def test_confidence_bank_accumulates_refreshes_every_interval_and_then_averages():
    bank = ConfidenceBank(3, momentum=0.5, interval=2, initial=[0.1, 0.2, 0.3])
    uniform = torch.zeros(1, 3, 2, 2)  # p = 1/3 for every class
    # step 1: labels [0, 1, 2, 2] -> sums [1/3, 1/3, 2/3], counts [1, 1, 2]; no refresh yet
    assert bank.update(uniform, _grid([0, 1, 2, 2])).tolist() == pytest.approx([0.1, 0.2, 0.3])
    # step 2: p = [1/2, 1/4, 1/4] everywhere, labels [0, 0, 1, 2] -> sums += [1, 1/4, 1/4], counts += [2, 1, 1]
    skewed = torch.zeros(1, 3, 2, 2)
    skewed[:, 0] = math.log(2.0)
    first = bank.update(skewed, _grid([0, 0, 1, 2]))  # the first refresh replaces the initial value
    assert first.tolist() == pytest.approx([4 / 9, 7 / 24, 11 / 36], abs=1e-6)
    assert bank.score_sum.tolist() == [0.0, 0.0, 0.0] and bank.voxel_count.tolist() == [0.0, 0.0, 0.0]
    # steps 3-4: only class 0, p = 1/3 -> c_new = [1/3, 0, 0] (absent classes: 0 / 1e-12); EMA 0.5
    bank.update(uniform, _grid([0, 0, 0, 0]))
    second = bank.update(uniform, _grid([0, 0, 0, 0]))
    assert second.tolist() == pytest.approx([7 / 18, 7 / 48, 11 / 72], abs=1e-6)
    assert int(bank.steps) == 4
    assert set(bank.state_dict()) == {"confidence", "score_sum", "voxel_count", "steps"}


def test_confidence_bank_random_start_and_errors():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(ConfidenceBank(4).confidence, expected)  # the reference's torch.rand(C)
    with pytest.raises(ValueError, match="interval"):
        ConfidenceBank(3, interval=0)
    with pytest.raises(ValueError, match="momentum"):
        ConfidenceBank(3, momentum=1.0)
    with pytest.raises(ValueError, match=r"initial must have shape \(3,\)"):
        ConfidenceBank(3, initial=[0.5, 0.5])
    with pytest.raises(ValueError, match="logits must have shape"):
        ConfidenceBank(3).update(torch.zeros(1, 2, 2, 2), _grid([0, 0, 0, 0]))
    with pytest.raises(ValueError, match="labels must have shape"):
        ConfidenceBank(3).update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_cld_sampling_mask_keeps_each_class_at_its_rate():
    pred = torch.arange(3).repeat_interleave(20000).view(1, 1, 60000)
    rate = torch.tensor([0.0, 1.0, 0.5])
    torch.manual_seed(0)
    mask = cld_sampling_mask(pred, rate)
    assert mask.shape == pred.shape and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    kept = [float(mask[pred == k].mean()) for k in range(3)]
    assert kept[0] == 0.0 and kept[1] > 0.999 and abs(kept[2] - 0.5) < 0.02
    torch.manual_seed(0)
    assert torch.equal(cld_sampling_mask(pred, rate), mask)  # one draw per voxel from the global generator
    with pytest.raises(TypeError, match="integer"):
        cld_sampling_mask(pred.float(), rate)
