"""Tests for scdl_monai.engines.trainer.SemiSupervisedTrainer (docs/methods_engine.md)."""

import math

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.handlers import (
    CheckpointLoader,
    CheckpointSaver,
    LrScheduleHandler,
    MeanDice,
    StatsHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
    from_engine,
)
from monai.transforms import AsDiscreted
from torch.utils.data import DistributedSampler

from scdl_monai.engines.keys import SSLKeys
from scdl_monai.engines.trainer import SemiSupervisedTrainer
from scdl_monai.handlers.schedules import UnsupWeightSchedule, poly_lr_scheduler
from scdl_monai.methods.cps import CPS
from scdl_monai.methods.supervised import Supervised
from scdl_monai.networks.vnet import VNet

C = 3
SHAPE = (16, 16, 16)


def labeled_items(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randn(1, *SHAPE, generator=g), "label": torch.randint(0, C, (1, *SHAPE), generator=g)}
        for _ in range(n)
    ]


def unlabeled_items(n):
    """Unlabeled images whose value is their index, so the order in which they are seen is observable."""
    return [{"image": torch.full((1, *SHAPE), float(i))} for i in range(n)]


def vnet(seed, **kwargs):
    """Tiny VNet; batch norm needs >1 sample at the 1^3 bottleneck, so single-sample tests use group norm."""
    torch.manual_seed(seed)
    return VNet(out_channels=C, n_filters=4, **kwargs)


class RecordingSupervised(Supervised):
    """Supervised method that also records the unlabeled indices and autocast state it was called with."""

    def __init__(self, network):
        super().__init__(network)
        self.seen_u = []
        self.autocast = []

    def train_step(self, engine, image_l, label_l, image_u):
        self.seen_u.append(None if image_u is None else image_u[:, 0, 0, 0, 0].tolist())
        self.autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return super().train_step(engine, image_l, label_l, image_u)


def make_trainer(n_lab=2, n_unl=3, batch_size=1, max_epochs=1, method=None, unlabeled_loader="default", **kwargs):
    lab = DataLoader(Dataset(labeled_items(n_lab)), batch_size=batch_size)
    if unlabeled_loader == "default":
        unlabeled_loader = DataLoader(Dataset(unlabeled_items(n_unl)), batch_size=batch_size)
    method = RecordingSupervised(vnet(0, norm="group", num_groups=4)) if method is None else method
    opt = torch.optim.SGD(method.parameters(), lr=0.01)
    kwargs.setdefault("optimizer", opt)
    return SemiSupervisedTrainer("cpu", max_epochs, lab, unlabeled_loader, method, **kwargs)


# ---------------------------------------------------------------- streams
@pytest.mark.parametrize("n_unl", [2, 5])
def test_unlabeled_stream_is_cycled(n_unl):
    trainer = make_trainer(n_lab=3, n_unl=n_unl, max_epochs=2)  # 6 iterations
    trainer.run()
    seen = [u[0] for u in trainer.method.seen_u]
    assert seen == [float(i % n_unl) for i in range(6)]
    assert trainer.state.iteration == 6
    assert trainer.state.unlabeled_epoch == (6 - 1) // n_unl
    assert trainer.state.unlabeled_iteration == (6 - 1) % n_unl + 1


class SpySampler(DistributedSampler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)
        super().set_epoch(epoch)


def test_set_epoch_called_when_unlabeled_iterator_is_recreated():
    ds = Dataset(unlabeled_items(3))
    sampler = SpySampler(ds, num_replicas=1, rank=0, shuffle=True, seed=7)
    loader = DataLoader(ds, batch_size=1, sampler=sampler)
    trainer = make_trainer(n_lab=4, max_epochs=2, unlabeled_loader=loader)  # 8 iterations -> 3 passes
    trainer.run()
    assert sampler.epochs == [0, 1, 2]
    expected = []
    for k in range(3):
        ref = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=7)
        ref.set_epoch(k)
        expected += [float(i) for i in ref]
    assert [u[0] for u in trainer.method.seen_u] == expected[:8]


def test_epoch_length_cycles_labeled_loader():
    trainer = make_trainer(n_lab=2, n_unl=7, max_epochs=2, epoch_length=5)
    trainer.run()
    assert trainer.state.epoch_length == 5
    assert trainer.state.iteration == 10
    assert [u[0] for u in trainer.method.seen_u] == [float(i % 7) for i in range(10)]


def test_supervised_without_unlabeled_loader():
    trainer = make_trainer(n_lab=2, max_epochs=1, unlabeled_loader=None)
    trainer.run()
    assert trainer.method.seen_u == [None, None]
    assert math.isfinite(trainer.state.output[0][SSLKeys.LOSS])


# ---------------------------------------------------------------- outputs and events
def test_state_output_keys_and_values():
    method = CPS(vnet(0), vnet(1))
    method.set_unsup_weight(0.25)
    trainer = make_trainer(n_lab=2, batch_size=2, method=method, decollate=False)
    trainer.run()
    out = trainer.state.output
    expected = {"image", "label", "pred", "loss", "loss_sup", "loss_cps", "loss_sup_a", "loss_sup_b",
                "loss_cps_a", "loss_cps_b", "unsup_weight"}  # fmt: skip
    assert set(out) == expected
    assert out["pred"].shape == (2, C, *SHAPE) and out["label"].shape == (2, 1, *SHAPE)
    assert not any(v.requires_grad for v in out.values())
    assert out["loss"].item() == pytest.approx((out["loss_sup"] + 0.25 * out["loss_cps"]).item(), rel=1e-5)


def test_decollated_output_works_with_from_engine():
    trainer = make_trainer(n_lab=2, batch_size=2)
    trainer.run()
    assert isinstance(trainer.state.output, list) and len(trainer.state.output) == 2
    loss = from_engine(["loss"], first=True)(trainer.state.output)
    assert isinstance(loss, float) and math.isfinite(loss)


def test_iteration_events_fired_in_order():
    trainer = make_trainer(n_lab=3, max_epochs=2)
    log = []
    for event in (IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED,
                  IterationEvents.BACKWARD_COMPLETED, IterationEvents.MODEL_COMPLETED):  # fmt: skip
        trainer.add_event_handler(event, lambda e, name=event.name: log.append(name))
    trainer.run()
    assert log == ["FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"] * 6


def test_every_optimizer_is_stepped():
    method = CPS(vnet(0), vnet(1))
    opt_a = torch.optim.SGD(method.network_a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(method.network_b.parameters(), lr=0.1)
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in method.networks().items()}
    trainer = make_trainer(method=method, optimizer=[opt_a, opt_b])
    assert trainer.optimizers == [opt_a, opt_b] and trainer.optimizer is opt_a
    trainer.run()
    for name, net in method.networks().items():
        changed = [not torch.equal(p0, p) for p0, p in zip(before[name], net.parameters())]
        assert sum(changed) > len(changed) // 2, name


def test_amp_bfloat16_on_cpu():
    trainer = make_trainer(n_lab=2, amp=True, decollate=False)
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    # oneDNN's bf16 conv3d weight-gradient kernel intermittently returns NaN on this CPU
    # (torch 2.13; reproducible without the trainer); the native kernels are exact.
    mkldnn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        trainer.run()
    finally:
        torch.backends.mkldnn.enabled = mkldnn
    assert trainer.method.autocast == [(True, torch.bfloat16)] * 2
    assert torch.isfinite(trainer.state.output["loss"]) and trainer.state.output["pred"].dtype == torch.float32


def test_amp_off_and_dtype_override():
    trainer = make_trainer(n_lab=1)
    trainer.run()
    assert trainer.method.autocast[0][0] is False
    assert make_trainer(amp=True, amp_dtype="float16").amp_dtype == torch.float16
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        make_trainer(amp=True, amp_dtype="float8")


def test_constructor_errors():
    with pytest.raises(TypeError, match="method must be a SemiSupervisedMethod"):
        linear = torch.nn.Linear(1, 1)
        make_trainer(method=linear, optimizer=torch.optim.SGD(linear.parameters(), lr=1.0))
    with pytest.raises(ValueError, match="non-empty list"):
        make_trainer(optimizer=[])
    with pytest.raises(ValueError, match="epoch_length must be a positive integer"):
        make_trainer(epoch_length=0)


def test_unlabeled_batch_without_label_in_labeled_loader_is_an_error():
    method = Supervised(vnet(0, norm="group", num_groups=4))
    opt = torch.optim.SGD(method.parameters(), lr=0.01)
    loader = DataLoader(Dataset(unlabeled_items(2)), batch_size=1)
    trainer = SemiSupervisedTrainer("cpu", 1, loader, None, method, opt)
    with pytest.raises(ValueError, match="labeled batch has no 'label'"):
        trainer.run()


# ---------------------------------------------------------------- MONAI handlers
def test_works_with_monai_handlers(tmp_path):
    method = CPS(vnet(0), vnet(1))
    opt_a = torch.optim.SGD(method.network_a.parameters(), lr=0.01)
    opt_b = torch.optim.SGD(method.network_b.parameters(), lr=0.01)
    post = AsDiscreted(keys=["pred", "label"], argmax=(True, False), to_onehot=C)
    val_loader = DataLoader(Dataset(labeled_items(2, seed=5)), batch_size=1)
    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=val_loader,
        network=method.inference_network(),
        postprocessing=post,
        key_val_metric={"val_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
    )
    sched_a, sched_b = poly_lr_scheduler(opt_a, 2, lag=1), poly_lr_scheduler(opt_b, 2, lag=1)
    handlers = [
        StatsHandler(tag_name="train_loss", output_transform=from_engine(["loss"], first=True)),
        TensorBoardStatsHandler(log_dir=str(tmp_path / "tb"), output_transform=from_engine(["loss"], first=True)),
        ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
        LrScheduleHandler(sched_a, print_lr=False),
        LrScheduleHandler(sched_b, print_lr=False),
        UnsupWeightSchedule(method, w_max=0.1, ramp_epochs=2),
        CheckpointSaver(str(tmp_path / "ckpt"), {"method": method, "optimizer_a": opt_a}, save_final=True),
    ]
    trainer = make_trainer(
        n_lab=2,
        method=method,
        optimizer=[opt_a, opt_b],
        max_epochs=2,
        train_handlers=handlers,
        postprocessing=post,
        key_train_metric={"train_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
    )
    trainer.run()
    assert 0.0 <= trainer.state.metrics["train_dice"] <= 1.0
    assert 0.0 <= evaluator.state.metrics["val_dice"] <= 1.0 and evaluator.state.epoch == 2
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    assert (tmp_path / "ckpt" / "checkpoint_final_iteration=4.pt").exists()
    assert method.training  # the evaluator switched the networks to eval; the trainer switches back


# ---------------------------------------------------------------- checkpoint / resume / determinism
def build_cps_run(max_epochs, seed):
    """Everything a CPS run needs, freshly constructed (the seed only affects initial weights)."""
    torch.manual_seed(seed)
    method = CPS(VNet(out_channels=C, n_filters=4), VNet(out_channels=C, n_filters=4))
    opt_a = torch.optim.SGD(method.network_a.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=3e-5)
    opt_b = torch.optim.SGD(method.network_b.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=3e-5)
    sched_a, sched_b = poly_lr_scheduler(opt_a, 4, lag=1), poly_lr_scheduler(opt_b, 4, lag=1)
    lab = DataLoader(Dataset(labeled_items(4)), batch_size=2)
    unl = DataLoader(Dataset([{"image": torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(i))}
                              for i in range(3)]), batch_size=1)  # fmt: skip
    handlers = [
        LrScheduleHandler(sched_a, print_lr=False),
        LrScheduleHandler(sched_b, print_lr=False),
        UnsupWeightSchedule(method, w_max=0.1, ramp_epochs=4),
    ]
    trainer = SemiSupervisedTrainer("cpu", max_epochs, lab, unl, method, [opt_a, opt_b], train_handlers=handlers)
    save_dict = {"method": method, "optimizer_a": opt_a, "optimizer_b": opt_b, "lr_a": sched_a, "lr_b": sched_b,
                 "scaler": trainer.scaler, "trainer": trainer}  # fmt: skip
    return trainer, save_dict


def assert_same_state(dict_1, dict_2):
    for key in ("method", "optimizer_a", "optimizer_b", "lr_a", "lr_b"):
        s1, s2 = dict_1[key].state_dict(), dict_2[key].state_dict()
        flat1, flat2 = _flatten(s1), _flatten(s2)
        assert flat1.keys() == flat2.keys(), key
        for k in flat1:
            a, b = flat1[k], flat2[k]
            same = torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            assert same, f"{key}: {k} differs"


def _flatten(obj, prefix=""):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{i}/"))
        return out
    return {prefix: obj}


def test_resume_gives_identical_state(tmp_path):
    straight, straight_dict = build_cps_run(max_epochs=2, seed=0)
    straight.run()

    first, first_dict = build_cps_run(max_epochs=1, seed=0)
    CheckpointSaver(str(tmp_path), first_dict, save_final=True, final_filename="ckpt.pt").attach(first)
    first.run()
    assert first.state.unlabeled_iteration == 2  # stopped inside a pass over the 3 unlabeled batches

    resumed, resumed_dict = build_cps_run(max_epochs=2, seed=123)  # different init, overwritten by the loader
    CheckpointLoader(str(tmp_path / "ckpt.pt"), resumed_dict).attach(resumed)
    resumed.run()
    assert resumed.state.epoch == 2 and resumed.state.iteration == 4
    assert resumed.state.unlabeled_epoch == straight.state.unlabeled_epoch
    assert resumed.state.unlabeled_iteration == straight.state.unlabeled_iteration
    assert_same_state(straight_dict, resumed_dict)
    assert resumed_dict["method"].unsup_weight == straight_dict["method"].unsup_weight


def test_same_seed_same_weights():
    run_1, dict_1 = build_cps_run(max_epochs=1, seed=0)
    run_1.run()
    run_2, dict_2 = build_cps_run(max_epochs=1, seed=0)
    run_2.run()
    assert_same_state(dict_1, dict_2)
    run_3, dict_3 = build_cps_run(max_epochs=1, seed=1)
    run_3.run()
    with pytest.raises(AssertionError):
        assert_same_state(dict_1, dict_3)


# ---------------------------------------------------------------- distributed (2 CPU ranks, gloo)
DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from monai.data import DataLoader, Dataset
from torch.utils.data import DistributedSampler
from scdl_monai.engines.trainer import SemiSupervisedTrainer
from scdl_monai.methods.cps import CPS
from scdl_monai.networks.vnet import VNet

dist.init_process_group("gloo")
torch.set_num_threads(1)
torch.manual_seed(0)
method = CPS(VNet(out_channels=3, n_filters=4), VNet(out_channels=3, n_filters=4)).wrap_ddp()
method.set_unsup_weight(0.1)
g = torch.Generator().manual_seed(0)
lab = Dataset([{"image": torch.randn(1, 16, 16, 16, generator=g),
                "label": torch.randint(0, 3, (1, 16, 16, 16), generator=g)} for _ in range(4)])
unl = Dataset([{"image": torch.randn(1, 16, 16, 16, generator=g)} for _ in range(6)])
lab_loader = DataLoader(lab, batch_size=1, sampler=DistributedSampler(lab, shuffle=True))
unl_loader = DataLoader(unl, batch_size=1, sampler=DistributedSampler(unl, shuffle=True))
opts = [torch.optim.SGD(method.network_a.parameters(), lr=0.05),
        torch.optim.SGD(method.network_b.parameters(), lr=0.05)]
trainer = SemiSupervisedTrainer("cpu", 2, lab_loader, unl_loader, method, opts)
trainer.run()
flat = torch.cat([p.detach().flatten() for p in method.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(2)]
dist.all_gather(gathered, flat)
if dist.get_rank() == 0:
    assert torch.equal(gathered[0], gathered[1]), "ranks diverged"
    assert not any("module." in k for k in method.state_dict())
    assert trainer.state.iteration == 4 and trainer.state.unlabeled_epoch == 1
    print("DDP_OK")
dist.destroy_process_group()
"""


def test_two_rank_ddp_keeps_networks_in_sync(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_cps.py"
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if result.returncode != 0:  # one retry: the rendezvous port can race with other jobs on the machine
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, (result.stdout[-1000:], result.stderr[-3000:])
    assert "DDP_OK" in result.stdout


def test_cps_receives_plain_tensors_from_metatensor_batches():
    """Labeled and unlabeled MetaTensor batches with different metadata (as LoadImaged gives for files
    of different shapes/affines) must not reach the method: CPS concatenates them and MetaTensor
    refuses inconsistent batched metadata."""
    from monai.data import MetaTensor

    def meta(t, affine_scale):
        return MetaTensor(t, affine=torch.diag(torch.tensor([affine_scale, affine_scale, 2.0, 1.0])),
                          meta={"filename_or_obj": f"case_{affine_scale}.nii.gz"})  # fmt: skip

    lab = [{k: meta(v, 1.0 + i) for k, v in item.items()} for i, item in enumerate(labeled_items(2))]
    unl = [{"image": meta(item["image"], 5.0 + i)} for i, item in enumerate(unlabeled_items(2))]
    method = CPS(vnet(0), vnet(1))
    opt = torch.optim.SGD(method.parameters(), lr=0.01)
    trainer = SemiSupervisedTrainer(
        "cpu", 1, DataLoader(Dataset(lab), batch_size=2), DataLoader(Dataset(unl), batch_size=2), method, opt
    )
    trainer.run()
    assert trainer.state.iteration == 1 and math.isfinite(float(trainer.state.output[0][SSLKeys.LOSS]))
