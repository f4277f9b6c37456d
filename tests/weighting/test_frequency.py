"""Tests for scdl_monai.weighting.frequency: MagicNet class-frequency weights, tracker and pseudo-logit blending."""

from __future__ import annotations

import pytest
import torch

from scdl_monai.weighting.frequency import ClassFrequencyTracker, blend_pseudo_logits, class_frequency_weights


def test_class_frequency_weights_values_sum_and_max():
    w = class_frequency_weights(torch.tensor([100, 50, 10, 0]))
    assert torch.allclose(w, torch.tensor([1.0, 0.5, 0.1, 0.0]))
    w2 = class_frequency_weights([400.0, 100.0, 25.0], temperature=2.0)  # d = sqrt(n) = [20, 10, 5]
    assert torch.allclose(w2, torch.tensor([1.0, 0.5, 0.25]))
    assert w2.max() == 1.0 and (w2 >= 0).all()
    # proportional to the sum-normalised distribution (normalising first does not matter)
    d = torch.tensor([400.0, 100.0, 25.0]).sqrt()
    assert torch.allclose(w2, (d / d.sum()) / (d / d.sum()).max())
    assert torch.equal(class_frequency_weights([0, 0, 0]), torch.ones(3))
    with pytest.raises(ValueError, match="temperature"):
        class_frequency_weights([1, 2], temperature=0)
    with pytest.raises(ValueError, match="non-negative"):
        class_frequency_weights([1, -2])


def test_blend_pseudo_logits_uses_teacher_argmax_weight():
    teacher = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]]).transpose(1, 2)  # (1, C=3, 3 voxels)
    cube = torch.full_like(teacher, -1.0)
    d = torch.tensor([1.0, 0.25, 0.0])
    blended = blend_pseudo_logits(teacher, cube, d)
    # voxel 0: argmax 0 -> w=1 -> cube logits; voxel 1: argmax 1 -> w=0.25; voxel 2: argmax 2 -> teacher
    assert torch.allclose(blended[0, :, 0], cube[0, :, 0])
    assert torch.allclose(blended[0, :, 1], 0.75 * teacher[0, :, 1] + 0.25 * cube[0, :, 1])
    assert torch.allclose(blended[0, :, 2], teacher[0, :, 2])
    t = teacher.clone().requires_grad_(True)
    assert not blend_pseudo_logits(t, cube, d).requires_grad
    with pytest.raises(ValueError, match="class_weights"):
        blend_pseudo_logits(teacher, cube, torch.ones(4))
    with pytest.raises(ValueError, match="share"):
        blend_pseudo_logits(teacher, cube[..., :2], d)


def test_class_frequency_tracker_recounts_since_last_refresh_and_checkpoints():
    tracker = ClassFrequencyTracker(3)
    tracker.refresh()  # nothing pending: counts stay zero
    assert tracker.counts.tolist() == [0, 0, 0]
    tracker.observe(torch.tensor([0, 0, 1]))
    tracker.observe(torch.tensor([[0, 2], [0, 0]]))
    assert tracker.counts.tolist() == [0, 0, 0] and tracker.pending.tolist() == [5, 1, 1]
    tracker.refresh()
    assert tracker.counts.tolist() == [5, 1, 1] and tracker.pending.tolist() == [0, 0, 0]
    tracker.observe(torch.tensor([1, 1]))
    tracker.refresh()
    assert tracker.counts.tolist() == [0, 2, 0]  # replaced, not accumulated
    assert torch.allclose(tracker.weights(), torch.tensor([0.0, 1.0, 0.0]))
    restored = ClassFrequencyTracker(3)
    restored.load_state_dict(tracker.state_dict())
    assert restored.counts.tolist() == [0, 2, 0]
    with pytest.raises(ValueError, match="num_classes=3"):
        tracker.observe(torch.tensor([3]))
    with pytest.raises(TypeError, match="integer"):
        tracker.observe(torch.tensor([0.0]))
