"""Tests for scdl_monai.methods.cld (docs/methods.md#cld): CLD weights and sampling on CPS."""

import copy
from functools import partial

import numpy as np
import pytest
import torch
from ignite.engine import Events

from scdl_monai.handlers.class_weights import LabelHistogramInitHandler
from scdl_monai.losses.segmentation import DiceCELoss, MaskedCELoss
from scdl_monai.methods.cld import CLD
from scdl_monai.weighting import ConfidenceBank, cld_sampling_mask, cld_weights

from .conftest import joint_logits, label_datalist, random_batch, tiny_trainer, two_vnets

C = 4
SHAPE = (16, 16, 16)
COUNTS = [1000, 125, 8, 0]  # -> [1, 2, 5, 5]: the absent class gets the rarest present class's weight

nets = partial(two_vnets, C)
batch = partial(random_batch, C, shape=SHAPE)


def test_defaults_are_the_reference_script():
    torch.manual_seed(1)
    cld = CLD(*nets(), num_classes=C)
    for bank in (cld.bank_a, cld.bank_b):
        assert isinstance(bank, ConfidenceBank) and bank.momentum == 0.999 and bank.interval == 8
    assert torch.equal(cld.bank_b.confidence, cld.bank_a.confidence)  # B's bank starts as a copy of A's
    assert len(cld.bank_a.confidence.unique()) == C  # random, not a constant
    assert cld.gamma == 0.5 and isinstance(cld.cps_loss, MaskedCELoss)
    assert torch.equal(cld.class_weight, torch.ones(C)) and not bool(cld.trackers_started)
    keys = set(cld.state_dict())
    assert {"class_weight", "trackers_started", "bank_a.confidence", "bank_b.score_sum", "bank_b.steps"} <= keys
    started = CLD(*nets(), num_classes=C, init_counts=COUNTS)
    assert started.class_weight.tolist() == pytest.approx([1.0, 2.0, 5.0, 5.0]) and bool(started.trackers_started)
    reference = CLD(*nets(), num_classes=C, init_counts=COUNTS, absent_class="reference")
    assert torch.isinf(reference.class_weight[3])


def test_one_step_records_confidences_and_masks_the_cps_terms_as_the_reference():
    cld = CLD(*nets(), num_classes=C, init_counts=COUNTS, confidence_interval=1, initial_confidence=0.5)
    cld.set_unsup_weight(0.25)
    banks = copy.deepcopy([cld.bank_a, cld.bank_b])
    image_l, label_l, image_u = batch(seed=1, n_l=2, n_u=2)
    z_a, z_b = joint_logits(cld, image_l, image_u)
    torch.manual_seed(5)
    out = cld(image_l, label_l, image_u)

    # own labeled logits vs GT, then one mask per network from its own argmax (A's drawn first)
    for bank, z in zip(banks, (z_a, z_b)):
        bank.update(z[:2], label_l)
    assert torch.allclose(cld.bank_a.confidence, banks[0].confidence) and int(cld.bank_b.steps) == 1
    assert not torch.allclose(banks[0].confidence, torch.full((C,), 0.5))
    torch.manual_seed(5)
    mask_a = cld_sampling_mask(z_a.argmax(1, keepdim=True), banks[0].sampling_rate(0.5))
    mask_b = cld_sampling_mask(z_b.argmax(1, keepdim=True), banks[1].sampling_rate(0.5))
    assert 0 < float(mask_a.mean()) < 1

    w = cld.class_weight
    dice_ce, masked = DiceCELoss(mode="reference"), MaskedCELoss()
    sup = dice_ce(z_a[:2], label_l, w) + dice_ce(z_b[:2], label_l, w)
    # peer target weighted by the static w, own mask, mean over all voxels
    cps = masked(z_a, z_b.argmax(1, keepdim=True), w, mask_a) + masked(z_b, z_a.argmax(1, keepdim=True), w, mask_b)
    assert torch.allclose(out.terms["loss_sup"], sup, rtol=1e-5)
    assert torch.allclose(out.terms["loss_cps"], cps, rtol=1e-5)
    assert torch.allclose(out.loss, sup + 0.25 * cps, rtol=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in cld.network_b.parameters())


def test_fully_confident_classes_are_never_sampled():
    # confidence 1 everywhere and no refresh within the step: every rate is 0 -> no pseudo-label term
    cld = CLD(*nets(), num_classes=C, init_counts=COUNTS, initial_confidence=1.0)
    out = cld(*batch(seed=2))
    assert float(out.terms["loss_cps"]) == 0.0 and float(out.terms["loss_sup"]) != 0.0


def test_errors():
    with pytest.raises(ValueError, match="num_classes"):
        CLD(*nets(), num_classes=1)
    with pytest.raises(ValueError, match="absent_class must be one of"):
        CLD(*nets(), num_classes=C, absent_class="inf")
    with pytest.raises(ValueError, match="gamma"):
        CLD(*nets(), num_classes=C, gamma=0)
    with pytest.raises(ValueError, match="interval"):
        CLD(*nets(), num_classes=C, confidence_interval=0)
    with pytest.raises(ValueError, match=r"initial must have shape \(4,\)"):
        CLD(*nets(), num_classes=C, initial_confidence=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        CLD(*nets(), num_classes=C, init_counts=[1, 2, 3])


def test_short_trainer_run_initialises_from_the_label_files_then_refreshes(tmp_path):
    datalist = label_datalist(tmp_path, C, SHAPE)
    torch.manual_seed(0)
    cld = CLD(*nets(), num_classes=C, confidence_interval=2)
    start = cld.bank_a.confidence.clone()
    init = LabelHistogramInitHandler(cld, datalist)
    trainer = tiny_trainer(cld, C, SHAPE, handlers=[init])
    seen = []
    trainer.add_event_handler(Events.ITERATION_STARTED(once=1), lambda e: seen.append(cld.class_weight.clone()))
    trainer.run()
    assert trainer.state.iteration == 2
    assert torch.allclose(seen[0], cld_weights(init.counts.double()).float())  # set at STARTED
    assert int(cld.bank_a.steps) == 2 and not torch.allclose(cld.bank_a.confidence, start)  # refreshed at step 2
    assert np.isfinite(float(trainer.state.output[0]["loss"]))
