"""Tests for scdl_monai.methods.simis (docs/methods.md#simis): SimiS weights on CPS."""

import copy
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events

from scdl_monai.handlers.class_weights import LabelHistogramInitHandler, find_trackers
from scdl_monai.losses.segmentation import DiceCELoss
from scdl_monai.methods.simis import SimiS
from scdl_monai.weighting import SimiSWeights, simis_weights

from .conftest import joint_logits, label_datalist, random_batch, tiny_trainer, two_vnets

C = 4
SHAPE = (16, 16, 16)
COUNTS = [6000, 3000, 1000, 0]

nets = partial(two_vnets, C)
batch = partial(random_batch, C, shape=SHAPE)


def test_defaults_are_the_reference_script():
    simis = SimiS(*nets(), num_classes=C)
    for tracker in (simis.weighting_a, simis.weighting_b):
        assert isinstance(tracker, SimiSWeights) and tracker.momentum == 0.99
        assert torch.equal(tracker.weights, torch.full((C,), float(C)))  # before the ground-truth init
    assert simis.count_scope == "all" and not bool(simis.trackers_started)
    assert {"weighting_a.weights", "weighting_b.weights", "trackers_started"} <= set(simis.state_dict())
    assert set(find_trackers(simis)) == {"weighting_a", "weighting_b"}  # logged by ClassWeightLogger
    started = SimiS(*nets(), num_classes=C, init_counts=COUNTS)
    expected = 0.99 * C + 0.01 * simis_weights(torch.tensor(COUNTS, dtype=torch.float64)).float()
    assert torch.allclose(started.weighting_b.weights, expected) and bool(started.trackers_started)


@pytest.mark.parametrize("scope, first", [("all", 0), ("unlabeled", 2)])
def test_each_tracker_counts_its_own_argmax_on_the_scoped_volumes(scope, first):
    simis = SimiS(*nets(), num_classes=C, init_counts=COUNTS, count_scope=scope)
    refs = copy.deepcopy([simis.weighting_a, simis.weighting_b])
    image_l, label_l, image_u = batch(n_l=2, n_u=2)
    z_a, z_b = joint_logits(simis, image_l, image_u)
    simis(image_l, label_l, image_u)
    for ref, z, tracker in zip(refs, (z_a, z_b), (simis.weighting_a, simis.weighting_b)):
        ref.update(z[first:].argmax(1, keepdim=True))
        assert torch.allclose(tracker.weights, ref.weights, atol=1e-6)


def test_losses_equal_manual_composition_with_updated_weights():
    simis = SimiS(*nets(), num_classes=C, init_counts=COUNTS)
    simis.set_unsup_weight(0.25)
    image_l, label_l, image_u = batch(seed=1, n_l=2, n_u=2)
    z_a, z_b = joint_logits(simis, image_l, image_u)
    out = simis(image_l, label_l, image_u)
    w_a, w_b = simis.weighting_a.weights, simis.weighting_b.weights  # this step's weights: after its update
    dice_ce = DiceCELoss(mode="reference")
    sup = dice_ce(z_a[:2], label_l, w_a) + dice_ce(z_b[:2], label_l, w_b)
    cps = F.cross_entropy(z_a, z_b.argmax(1), weight=w_a) + F.cross_entropy(z_b, z_a.argmax(1), weight=w_b)
    assert torch.allclose(out.terms["loss_sup"], sup, rtol=1e-5)
    assert torch.allclose(out.terms["loss_cps"], cps, rtol=1e-5)
    assert torch.allclose(out.loss, sup + 0.25 * cps, rtol=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in simis.network_a.parameters())


def test_errors():
    with pytest.raises(ValueError, match="num_classes"):
        SimiS(*nets(), num_classes=1)
    with pytest.raises(ValueError, match="count_scope must be one of"):
        SimiS(*nets(), num_classes=C, count_scope="labeled")
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        SimiS(*nets(), num_classes=C, init_counts=[1, 2, 3])
    with pytest.raises(ValueError, match="momentum"):
        SimiS(*nets(), num_classes=C, momentum=1.5)


def test_short_trainer_run_initialises_from_the_label_files_then_updates(tmp_path):
    datalist = label_datalist(tmp_path, C, SHAPE)
    simis = SimiS(*nets(), num_classes=C)
    init = LabelHistogramInitHandler(simis, datalist)
    trainer = tiny_trainer(simis, C, SHAPE, handlers=[init])
    seen = []
    trainer.add_event_handler(Events.ITERATION_STARTED(once=1), lambda e: seen.append(simis.weighting_a.weights.clone()))
    trainer.run()
    assert trainer.state.iteration == 2 and init.counts.sum() == 2 * np.prod(SHAPE)
    expected = 0.99 * C + 0.01 * simis_weights(init.counts.double()).float()
    assert torch.allclose(seen[0], expected)  # initialised at STARTED, before the first step
    assert not torch.allclose(simis.weighting_a.weights, seen[0])  # then one EMA step per iteration
    assert np.isfinite(float(trainer.state.output[0]["loss"]))
