"""Tests for scdl_monai.weighting.counts: DistDW, SimiS and CLD count rules and their buffer-backed trackers."""

from __future__ import annotations

import math

import pytest
import torch

from scdl_monai.weighting import DistDW, SimiSWeights, class_counts, cld_weights, distdw_weights, simis_weights


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
