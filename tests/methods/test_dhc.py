"""Tests for scdl_monai.methods.dhc (docs/methods.md#dhc) and its DistDW initialisation / resume."""

import copy
import json
from functools import partial

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.handlers import CheckpointLoader, CheckpointSaver, LrScheduleHandler

from scdl_monai.engines.trainer import SemiSupervisedTrainer
from scdl_monai.handlers.class_weights import DistDWInitHandler
from scdl_monai.handlers.schedules import UnsupWeightSchedule, poly_lr_scheduler
from scdl_monai.losses.segmentation import DiceCELoss
from scdl_monai.methods.dhc import DHC
from scdl_monai.networks.vnet import VNet
from scdl_monai.weighting import DiffDW, DistDW, distdw_weights

from .conftest import random_batch, two_vnets

C = 4
SHAPE = (16, 16, 16)
COUNTS = [1e6, 1e4, 1e2, 0]  # docs/methods.md#distdw example -> [0, 0.571, 1.143, 4]

nets = partial(two_vnets, C)
batch = partial(random_batch, C, shape=SHAPE)


def logits_of(method, image_l, image_u):
    x = torch.cat([image_l, image_u])
    with torch.no_grad():
        return method.network_a(x), method.network_b(x)


def test_defaults_are_dhc():
    dhc = DHC(*nets(), num_classes=C)
    assert isinstance(dhc.weighting_a, DiffDW) and isinstance(dhc.weighting_b, DistDW)
    assert dhc.weighting_a.momentum == 0.98 and dhc.weighting_a.alpha == 0.2 and dhc.weighting_a.normalize
    assert dhc.weighting_b.momentum == 0.99
    assert not bool(dhc.trackers_started)
    keys = dhc.state_dict().keys()
    for key in ("weighting_a.learn", "weighting_a.last_dice", "weighting_b.weights", "trackers_started"):
        assert key in keys


def test_one_step_updates_trackers_as_the_reference():
    dhc = DHC(*nets(), num_classes=C, init_counts=COUNTS)
    assert torch.allclose(dhc.weighting_b.weights, torch.tensor([0.0, 4 / 7, 8 / 7, 4.0]), atol=1e-6)
    ref_a, ref_b = copy.deepcopy(dhc.weighting_a), copy.deepcopy(dhc.weighting_b)
    image_l, label_l, image_u = batch(n_l=2, n_u=2)
    z_a, z_b = logits_of(dhc, image_l, image_u)  # train-mode BN: same outputs as inside the step
    dhc(image_l, label_l, image_u)
    # DiffDW: A's labeled argmax vs GT; DistDW: B's own argmax on the unlabeled half
    ref_a.update(z_a[:2].argmax(1, keepdim=True), label_l)
    ref_b.update(z_b[2:].argmax(1, keepdim=True))
    for name, buf in ref_a.named_buffers():
        assert torch.allclose(getattr(dhc.weighting_a, name), buf, atol=1e-6), name
    assert torch.allclose(dhc.weighting_b.weights, ref_b.weights, atol=1e-6)
    # the EMA moved DistDW away from its initialisation, by 1 % of the step
    assert not torch.allclose(dhc.weighting_b.weights, torch.tensor([0.0, 4 / 7, 8 / 7, 4.0]))
    assert bool(dhc.trackers_started)


def test_losses_equal_manual_composition_with_updated_weights():
    dhc = DHC(*nets(), num_classes=C, init_counts=COUNTS)
    dhc.set_unsup_weight(0.25)
    image_l, label_l, image_u = batch(seed=1, n_l=2, n_u=2)
    z_a, z_b = logits_of(dhc, image_l, image_u)
    before = dhc.tracker_weights()
    out = dhc(image_l, label_l, image_u)
    w = dhc.tracker_weights()  # the weights of this iteration are the ones after its update
    dice_ce = DiceCELoss(mode="reference")
    sup = dice_ce(z_a[:2], label_l, w["a"]) + dice_ce(z_b[:2], label_l, w["b"])
    y_a, y_b = z_a.argmax(1), z_b.argmax(1)
    cps = F.cross_entropy(z_a, y_b, weight=w["a"]) + F.cross_entropy(z_b, y_a, weight=w["b"])
    assert torch.allclose(out.terms["loss_sup"], sup, rtol=1e-5)
    assert torch.allclose(out.terms["loss_cps"], cps, rtol=1e-5)
    assert torch.allclose(out.loss, sup + 0.25 * cps, rtol=1e-5)
    stale = dice_ce(z_a[:2], label_l, before["a"]) + dice_ce(z_b[:2], label_l, before["b"])
    assert not torch.allclose(stale, sup, rtol=1e-4)
    # gradients reach both networks, never the weights (they are snapshots)
    out.loss.backward()
    for net in (dhc.network_a, dhc.network_b):
        assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize(
    "kwargs, types",
    [
        ({"weighting_a": "distdw"}, (DistDW, DistDW)),
        ({"weighting_b": "diffdw"}, (DiffDW, DiffDW)),
        ({"weighting_a": "DistDW", "weighting_b": "diffdw"}, (DistDW, DiffDW)),
    ],
)
def test_ablation_configs_swap_the_trackers(kwargs, types):
    dhc = DHC(*nets(), num_classes=C, init_counts=COUNTS, **kwargs)
    assert (type(dhc.weighting_a), type(dhc.weighting_b)) == types
    refs = copy.deepcopy(dhc.trackers())
    image_l, label_l, image_u = batch(seed=2)
    z = dict(zip("ab", logits_of(dhc, image_l, image_u)))
    dhc(image_l, label_l, image_u)
    for key, ref in refs.items():
        pred = z[key].argmax(1, keepdim=True)
        if isinstance(ref, DiffDW):
            ref.update(pred[:1], label_l)  # own labeled argmax vs GT
        else:
            assert torch.allclose(ref.weights, torch.tensor([0.0, 4 / 7, 8 / 7, 4.0]), atol=1e-6)  # initialised
            ref.update(pred[1:])  # own unlabeled argmax
        assert torch.allclose(dhc.trackers()[key].weights, ref.weights, atol=1e-6), key


def test_tracker_instances_and_errors():
    custom = DistDW(C, momentum=0.5)
    dhc = DHC(*nets(), num_classes=C, weighting_b=custom)
    assert dhc.weighting_b is custom
    with pytest.raises(ValueError, match="weighting_a"):
        DHC(*nets(), num_classes=C, weighting_a="dist")
    with pytest.raises(TypeError, match="weighting_b"):
        DHC(*nets(), num_classes=C, weighting_b=3)
    with pytest.raises(ValueError, match="tracks 3 classes"):
        DHC(*nets(), num_classes=C, weighting_a=DiffDW(3))
    with pytest.raises(ValueError, match="same object"):
        DHC(*nets(), num_classes=C, weighting_a=custom, weighting_b=custom)
    with pytest.raises(ValueError, match="num_classes"):
        DHC(*nets(), num_classes=1)
    with pytest.raises(ValueError, match="counts must have shape"):
        DHC(*nets(), num_classes=C, init_counts=[1, 2, 3])
    image_l, label_l, _ = batch()
    with pytest.raises(ValueError, match="image_u"):
        dhc(image_l, label_l, None)
    # DiffDW-DiffDW needs no unlabeled half for its weights
    diff_diff = DHC(*nets(), num_classes=C, weighting_b="diffdw")
    out = diff_diff(torch.cat([image_l, image_l]), torch.cat([label_l, label_l]))
    assert torch.isfinite(out.loss)


def write_nifti(path, array):
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.eye(4)), str(path))
    return str(path)


def test_distdw_init_from_label_files(tmp_path):
    a = np.zeros((8, 8, 8), dtype=np.uint8)
    a[:4, :4, :4] = 1  # 64 voxels
    a[0, 0, :3] = 2  # 3 voxels of class 2 (replacing class 1)
    b = np.zeros((8, 8, 8), dtype=np.uint8)
    b[:2, :2, :2] = 1  # 8
    counts = np.array([512 - 64 + 512 - 8, 64 - 3 + 8, 3, 0])  # class 3 absent -> weight C
    entries = [
        {"image": "unused.nii.gz", "label": write_nifti(tmp_path / "a.nii.gz", a)},
        {"image": "unused.nii.gz", "label": write_nifti(tmp_path / "b.nii.gz", b)},
    ]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": entries, "unlabeled": [{"image": "u.nii.gz"}]}))
    dhc = DHC(*nets(), num_classes=C)
    got = dhc.init_from_datalist(datalist)
    assert got.tolist() == counts.tolist()
    assert torch.allclose(dhc.weighting_b.weights, distdw_weights(torch.tensor(counts, dtype=torch.float64)).float())
    assert dhc.weighting_b.weights[3] == pytest.approx(C) and dhc.weighting_b.weights[0] == 0
    assert bool(dhc.trackers_started)
    assert torch.equal(dhc.weighting_a.weights, torch.full((C,), float(C)))  # DiffDW untouched


# ---------------------------------------------------------------- trainer, checkpoint, resume
def write_dataset(tmp_path, n_lab=2):
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n_lab):
        label = rng.choice(C, size=SHAPE, p=[0.7, 0.2, 0.08, 0.02]).astype(np.uint8)
        entries.append({"label": write_nifti(tmp_path / f"label_{i}.nii.gz", label), "case_id": str(i)})
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": entries}))
    return datalist


def build_dhc_run(datalist, max_epochs, seed, init_first=True, loader_path=None):
    """A DHC training run on random tensors (2 labeled + 3 unlabeled items, batch 1+1)."""
    torch.manual_seed(seed)
    method = DHC(VNet(out_channels=C, n_filters=4), VNet(out_channels=C, n_filters=4), num_classes=C)
    sgd = {"lr": 3e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 3e-5}  # DHC reference defaults
    opts = [torch.optim.SGD(net.parameters(), **sgd) for net in (method.network_a, method.network_b)]
    scheds = [poly_lr_scheduler(o, max(max_epochs, 2), lag=1) for o in opts]
    g = torch.Generator().manual_seed(7)
    lab = [{"image": torch.randn(1, *SHAPE, generator=g), "label": torch.randint(0, C, (1, *SHAPE), generator=g)}
           for _ in range(2)]  # fmt: skip
    unl = [{"image": torch.randn(1, *SHAPE, generator=g)} for _ in range(3)]
    trainer = SemiSupervisedTrainer(
        "cpu", max_epochs, DataLoader(Dataset(lab), batch_size=1), DataLoader(Dataset(unl), batch_size=1), method, opts,
        train_handlers=[LrScheduleHandler(s, print_lr=False) for s in scheds]
        + [UnsupWeightSchedule(method, w_max=0.1, ramp_epochs=2)],
    )  # fmt: skip
    save_dict = {"method": method, "optimizer_a": opts[0], "optimizer_b": opts[1], "trainer": trainer}
    init = DistDWInitHandler(method, datalist)
    loader = None if loader_path is None else CheckpointLoader(str(loader_path), save_dict)
    for handler in ([init, loader] if init_first else [loader, init]):
        if handler is not None:
            handler.attach(trainer)
    return trainer, method, save_dict


def test_short_trainer_run_initialises_and_updates(tmp_path):
    datalist = write_dataset(tmp_path)
    trainer, method, _ = build_dhc_run(datalist, max_epochs=1, seed=0)
    seen = []
    record = lambda e: seen.append(method.weighting_b.weights.clone())  # noqa: E731
    trainer.add_event_handler(Events.ITERATION_STARTED(once=1), record)
    trainer.run()
    assert trainer.state.iteration == 2
    counts = torch.from_numpy(sum(np.bincount(np.asarray(nib.load(e["label"]).dataobj).ravel(), minlength=C)
                                  for e in json.loads(datalist.read_text())["training"]))  # fmt: skip
    assert torch.allclose(seen[0], distdw_weights(counts.double()).float())  # init at STARTED, before step 1
    assert not torch.allclose(method.weighting_b.weights, seen[0])  # then updated every iteration
    assert np.isfinite(float(trainer.state.output[0]["loss"]))  # decollated output
    assert all(torch.isfinite(w).all() for w in method.tracker_weights().values())


@pytest.mark.parametrize("init_first", [True, False])
def test_resume_restores_trackers_and_does_not_reinitialise(tmp_path, init_first):
    datalist = write_dataset(tmp_path)
    straight, straight_method, _ = build_dhc_run(datalist, max_epochs=2, seed=0)
    straight.run()

    first, _, first_dict = build_dhc_run(datalist, max_epochs=1, seed=0)
    CheckpointSaver(str(tmp_path / "ckpt"), first_dict, save_final=True, final_filename="ckpt.pt").attach(first)
    first.run()
    saved = torch.load(tmp_path / "ckpt" / "ckpt.pt", weights_only=True)["method"]
    assert bool(saved["trackers_started"]) and "weighting_a.unlearn" in saved

    ckpt = tmp_path / "ckpt" / "ckpt.pt"
    resumed, method, _ = build_dhc_run(datalist, 2, seed=123, init_first=init_first, loader_path=ckpt)
    at_start = {}
    snapshot = lambda e: at_start.update({k: v.clone() for k, v in method.state_dict().items()})  # noqa: E731
    resumed.add_event_handler(Events.STARTED, snapshot)  # after the loader and the init handler
    resumed.run()
    for key in ("weighting_a.learn", "weighting_a.unlearn", "weighting_a.dice_weight", "weighting_b.weights"):
        assert torch.equal(at_start[key], saved[key]), key  # restored, not re-initialised
    # ... and the run continues exactly as the uninterrupted one
    for name, buf in straight_method.named_buffers():
        if name.startswith("weighting_"):
            assert torch.equal(dict(method.named_buffers())[name], buf), name
