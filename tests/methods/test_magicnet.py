"""Tests for scdl_monai.methods.magicnet (MagicNet / GA-MagicNet, docs/methods.md#magicnet).

Tiny size: batch 2 + 2, 48³ patches, 16³ cubes (3×3×3 grid, 27 locations), n_filters 4. A 16³
cube has a single bottleneck voxel, which InstanceNorm cannot normalise (MagicNetwork refuses it),
so the tiny student uses batch norm; the reference size (96³ / 32³, InstanceNorm) is not run here.
"""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset
from monai.engines.utils import IterationEvents

from scdl_monai.engines.trainer import SemiSupervisedTrainer
from scdl_monai.handlers.ema import EMATeacherUpdate
from scdl_monai.losses.ga import GACELoss, GADiceLoss
from scdl_monai.methods.magicnet import MagicNet, ema_momentum, magicnet_dice_loss
from scdl_monai.networks.magicnet import MagicNetwork
from scdl_monai.networks.vnet import VNet

from .conftest import random_batch

C = 3
P = 48
SHAPE = (P, P, P)

batch = partial(random_batch, C, n_l=2, n_u=2, shape=SHAPE)


def student(seed=0):
    torch.manual_seed(seed)
    backbone = VNet(out_channels=C, n_filters=4, norm="batch", init=None)
    return MagicNetwork(backbone, cube_size=16, patch_size=P, hidden_features=32)


def method(seed=0, **kwargs):
    return MagicNet(student(seed), num_classes=C, **kwargs)


def reference_dice(logits, label):
    """MagicNet code/utils/losses.py DiceLoss on softmax probabilities, written out."""
    p = torch.softmax(logits, 1)
    t = F.one_hot(label[:, 0], logits.shape[1]).movedim(-1, 1).float()
    terms = [1 - (2 * (p[:, c] * t[:, c]).sum() + 1e-10) / ((p[:, c] ** 2).sum() + (t[:, c] ** 2).sum() + 1e-10)
             for c in range(logits.shape[1])]
    return torch.stack(terms).mean()


TERMS = ("loss_ce", "loss_dice", "loss_dice_cross", "loss_dice_within", "loss_sup", "loss_loc", "loss_consistency")


# ---------------------------------------------------------------- one step
def test_one_step_every_term_finite_and_loss_composition():
    m = method()
    image_l, label_l, image_u = batch()
    out = m(image_l, label_l, image_u)
    t = out.terms
    assert all(torch.isfinite(t[k]) for k in TERMS) and torch.isfinite(out.loss)
    four = t["loss_ce"] + t["loss_dice"] + t["loss_dice_cross"] + t["loss_dice_within"]
    assert torch.allclose(t["loss_sup"], four / 4)
    assert t["unsup_weight"].item() == pytest.approx(0.1 * math.exp(-5))  # 0.1·sigmoid_rampup(0 // 350, 200)
    assert torch.allclose(out.loss, t["loss_sup"] + 0.1 * t["loss_loc"] + t["unsup_weight"] * t["loss_consistency"])
    # 27-way location NLL of an untrained head is about log 27
    assert abs(t["loss_loc"].item() - math.log(27)) < 1.5
    assert t["blend_active"].item() == 0.0 and int(m.iteration) == 1
    assert out.pred.shape == (2, C, *SHAPE) and not out.pred.requires_grad
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.student.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())


def test_plain_terms_match_reference_losses():
    m = method()
    image_l, label_l, image_u = batch()
    out = m(image_l, label_l, image_u)
    logits = m.student(torch.cat([image_l, image_u]))[:2]  # train-mode BN on the same batch: same logits
    assert torch.allclose(out.terms["loss_ce"], F.cross_entropy(logits, label_l[:, 0]), rtol=1e-5)
    assert torch.allclose(out.terms["loss_dice"], reference_dice(logits, label_l), rtol=1e-5)
    assert torch.allclose(out.pred, logits.detach(), atol=1e-5)


def test_ga_losses_replace_ce_and_every_dice():
    m = method(ga_losses=True)
    assert isinstance(m.ce_loss, GACELoss) and (m.ce_loss.k, m.ce_loss.gamma) == (10, 0.5)
    assert isinstance(m.dice_loss, GADiceLoss)
    image_l, label_l, image_u = batch()
    out = m(image_l, label_l, image_u)
    logits = m.student(torch.cat([image_l, image_u]))[:2]
    assert torch.allclose(out.terms["loss_ce"], GACELoss(k=10, gamma=0.5)(logits, label_l), rtol=1e-5)
    assert torch.allclose(out.terms["loss_dice"], GADiceLoss()(logits, label_l), rtol=1e-5)
    assert all(torch.isfinite(out.terms[k]) for k in TERMS)


def test_magicnet_dice_equals_reference_formula_with_absent_class():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 6, 6, 6, generator=g)
    label = torch.randint(0, 3, (2, 1, 6, 6, 6), generator=g)  # class 3 absent
    assert torch.allclose(magicnet_dice_loss()(logits, label), reference_dice(logits, label), rtol=1e-6)


def test_consistency_schedule_and_external_weight():
    m = method()
    assert m.consistency_weight(349) == pytest.approx(0.1 * math.exp(-5))
    assert m.consistency_weight(350 * 100) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert m.consistency_weight(350 * 200) == pytest.approx(0.1) == m.consistency_weight(10**6)
    external = method(consistency=None)
    external.set_unsup_weight(0.5)
    out = external(*batch())
    assert out.terms["unsup_weight"].item() == 0.5


# ---------------------------------------------------------------- teacher
def test_ema_momentum_warm_up():
    assert [ema_momentum(s) for s in (0, 1, 3, 98, 99, 5000)] == pytest.approx([0, 0.5, 0.75, 1 - 1 / 99, 0.99, 0.99])
    with pytest.raises(ValueError, match="step"):
        ema_momentum(-1)


def test_teacher_ema_arithmetic():
    m = method()
    params = lambda net: [p.detach().clone() for p in net.parameters()]  # noqa: E731
    with torch.no_grad():
        for p in m.student.backbone.parameters():
            p.add_(torch.randn_like(p))
    assert m.update_teacher(step=0) == 0.0  # α(0) = 0: the teacher becomes the student
    assert all(torch.equal(a, b) for a, b in zip(params(m.teacher), params(m.student.backbone)))
    teacher_before = params(m.teacher)
    with torch.no_grad():
        for p in m.student.backbone.parameters():
            p.mul_(3.0).add_(1.0)
    student_now = params(m.student.backbone)
    m.iteration.fill_(4)  # default step = iteration − 1 = 3 -> α = 0.75
    assert m.update_teacher() == pytest.approx(0.75)
    for t, t0, s in zip(params(m.teacher), teacher_before, student_now):
        assert torch.allclose(t, 0.75 * t0 + 0.25 * s, atol=1e-6)
    assert not any(p.requires_grad for p in m.teacher.parameters())


# ---------------------------------------------------------------- pseudo-labels
def logits_with_argmax(classes, n=2):
    """(n, C, 4, 4, 4) logits whose argmax in sample i is classes[i] everywhere."""
    out = torch.zeros(n, C, 4, 4, 4)
    for i, c in enumerate(classes):
        out[i, c] = 5.0
    return out


def test_blending_off_until_iteration_100_then_on():
    m = method()
    m.class_tracker.counts.fill_(7)  # equal counts -> every class weight 1 -> blended PL = argmax U
    teacher = logits_with_argmax([0, 0])
    within = logits_with_argmax([1, 1, 2, 2], n=4)  # unlabeled samples (2, 3) -> class 2
    pl, active = m.pseudo_label(teacher, within, labeled_bs=2, step=100)
    assert not active and (pl == 0).all()
    pl, active = m.pseudo_label(teacher, within, labeled_bs=2, step=101)
    assert active and (pl == 2).all()
    # frequent-class weights: teacher class 0 with weight 1 takes U, a rare teacher class keeps T
    m.class_tracker.counts.copy_(torch.tensor([90, 10, 0]))  # weights [1, 1/9, 0]
    teacher = logits_with_argmax([0, 2])
    pl, _ = m.pseudo_label(teacher, within, labeled_bs=2, step=101)
    assert (pl[0] == 2).all() and (pl[1] == 2).all()  # sample 1: weight 0 -> teacher's class 2
    teacher = logits_with_argmax([0, 1])
    pl, _ = m.pseudo_label(teacher, within, labeled_bs=2, step=101)
    assert (pl[0] == 2).all() and (pl[1] == 1).all()  # weight 1/9: (8/9)·5 on class 1 beats (1/9)·5 on class 2


def test_blending_switches_on_in_the_training_step():
    m = method()
    m.iteration.fill_(100)
    assert m(*batch()).terms["blend_active"].item() == 0.0
    assert m(*batch()).terms["blend_active"].item() == 1.0  # iteration 101


def test_class_counts_recounted_every_20_iterations():
    m = method()
    teacher_of = lambda step: logits_with_argmax([step % C, step % C])  # noqa: E731
    within = torch.zeros(4, C, 4, 4, 4)
    history = []
    for step in range(45):
        m.pseudo_label(teacher_of(step), within, labeled_bs=2, step=step)
        history.append(m.class_tracker.counts.clone())
    voxels = 2 * 64
    hist = lambda steps: torch.bincount(torch.tensor([s % C for s in steps]), minlength=C) * voxels  # noqa: E731
    assert torch.equal(history[0], hist([0]))  # refreshed at step 0, as the reference
    assert all(torch.equal(history[s], history[0]) for s in range(1, 20))
    assert torch.equal(history[20], hist(range(1, 21)))  # only what was seen since the last refresh
    assert all(torch.equal(history[s], history[20]) for s in range(21, 40))
    assert torch.equal(history[40], hist(range(21, 41)))


def test_index_bug_switch_selects_which_samples_feed_the_pseudo_label():
    within = logits_with_argmax([0, 1, 2, 2], n=4)  # labeled: classes 0, 1; unlabeled: class 2
    teacher = logits_with_argmax([0, 0])
    fixed, buggy = method(), method(reproduce_index_bug=True)
    for m in (fixed, buggy):
        m.class_tracker.counts.fill_(1)
    pl_fixed, _ = fixed.pseudo_label(teacher, within, labeled_bs=2, step=101)
    pl_buggy, _ = buggy.pseudo_label(teacher, within, labeled_bs=2, step=101)
    assert (pl_fixed == 2).all()  # the unlabeled samples' own cubes
    assert (pl_buggy[0] == 0).all() and (pl_buggy[1] == 1).all()  # the labeled samples' cubes (GA/SCDL copies)


def run_twice(kwargs_a, kwargs_b, iteration=0, seed=11):
    outs = []
    for kwargs in (kwargs_a, kwargs_b):
        m = method(**kwargs)
        m.iteration.fill_(iteration)
        m.class_tracker.counts.fill_(1)
        torch.manual_seed(seed)
        outs.append(m(*batch()).terms)
    return outs


def test_bug_switches_change_only_their_terms_end_to_end():
    fixed, transposed = run_twice({}, {"reproduce_grid_transpose_bug": True})
    for key in ("loss_ce", "loss_dice", "loss_dice_cross", "loss_loc"):
        assert torch.allclose(fixed[key], transposed[key])
    assert not torch.allclose(fixed["loss_dice_within"], transposed["loss_dice_within"])
    fixed, buggy = run_twice({}, {"reproduce_index_bug": True}, iteration=101)
    for key in ("loss_sup", "loss_loc"):
        assert torch.allclose(fixed[key], buggy[key])
    assert not torch.allclose(fixed["loss_consistency"], buggy["loss_consistency"])


# ---------------------------------------------------------------- state, errors, inference
def test_state_dict_round_trip_restores_counter_tracker_and_teacher():
    m = method()
    opt = torch.optim.SGD(m.student.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        m(*batch()).loss.backward()
        opt.step()
        m.update_teacher()
    state = m.state_dict()
    assert {"iteration", "unsup_weight", "class_tracker.counts", "class_tracker.pending"} <= set(state)
    assert any(k.startswith("teacher.") for k in state) and any(k.startswith("student.location_head.") for k in state)
    fresh = method(seed=1)
    fresh.load_state_dict(state)
    assert int(fresh.iteration) == 2
    assert torch.equal(fresh.class_tracker.counts, m.class_tracker.counts) and fresh.class_tracker.counts.sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(fresh.teacher.parameters(), m.teacher.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(m.teacher.parameters(), m.student.backbone.parameters()))


def test_errors_and_inference_network():
    m = method()
    image_l, label_l, image_u = batch()
    with pytest.raises(ValueError, match="unlabeled batch"):
        m(image_l, label_l, None)
    with pytest.raises(ValueError, match="cube grid"):
        m(image_l[..., :32, :32, :32], label_l[..., :32, :32, :32], image_u[..., :32, :32, :32])
    with pytest.raises(ValueError, match="num_classes"):
        MagicNet(student(), num_classes=4)
    with pytest.raises(TypeError, match="MagicNetwork"):
        MagicNet(VNet(out_channels=C, n_filters=4), num_classes=C)
    with pytest.raises(TypeError, match="reproduce_index_bug"):
        method(reproduce_index_bug="yes")
    with pytest.raises(NotImplementedError, match="DDP"):
        m.wrap_ddp()
    assert m.inference_network() is m.student.backbone
    assert int(m.iteration) == 0  # failed calls do not advance the counter


def test_short_trainer_run_with_ema_handler():
    g = torch.Generator().manual_seed(0)
    labeled = [
        {"image": torch.randn(1, *SHAPE, generator=g), "label": torch.randint(0, C, (1, *SHAPE), generator=g)}
        for _ in range(4)
    ]
    unlabeled = [{"image": torch.randn(1, *SHAPE, generator=g)} for _ in range(4)]
    m = method()
    teacher0 = [p.detach().clone() for p in m.teacher.parameters()]
    opt = torch.optim.SGD(m.student.parameters(), lr=0.05, momentum=0.9)
    trainer = SemiSupervisedTrainer(
        "cpu", 1, DataLoader(Dataset(labeled), batch_size=2), DataLoader(Dataset(unlabeled), batch_size=2),
        m, opt, epoch_length=3, train_handlers=[EMATeacherUpdate(m)], decollate=False,
    )
    students = []  # student weights after each optimizer step, before the EMA handler runs
    snapshot = lambda e: students.append([p.detach().clone() for p in m.student.backbone.parameters()])  # noqa: E731
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, snapshot)
    trainer.run()
    assert int(m.iteration) == 3 and len(students) == 3
    assert all(torch.isfinite(trainer.state.output[k]) for k in TERMS)
    expected = teacher0
    for step, s in enumerate(students):
        a = ema_momentum(step)
        expected = [a * t + (1 - a) * p for t, p in zip(expected, s)]
    for t, e in zip(m.teacher.parameters(), expected):
        assert torch.allclose(t, e, atol=1e-6)
