"""Tests for scdl_monai.weighting.confidence: CLD confidence bank, sampling rate and mask."""

from __future__ import annotations

import math

import pytest
import torch

from scdl_monai.weighting import ConfidenceBank, cld_sampling_mask, cld_sampling_rate


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
