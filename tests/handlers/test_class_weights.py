"""Tests for scdl_monai.handlers.class_weights (tracker weight logging, DistDW initialisation)."""

import logging
import math

import pytest
import torch
from monai.data import DataLoader, Dataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from scdl_monai.engines.trainer import SemiSupervisedTrainer
from scdl_monai.handlers.class_weights import ClassWeightLogger, DistDWInitHandler, find_trackers
from scdl_monai.methods.cps import CPS
from scdl_monai.methods.dhc import DHC
from scdl_monai.networks.vnet import VNet

C = 3
SHAPE = (16, 16, 16)


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def dhc_trainer(handlers, n_lab=3):
    torch.manual_seed(0)
    method = DHC(VNet(out_channels=C, n_filters=4), VNet(out_channels=C, n_filters=4), num_classes=C,
                 init_counts=[100, 10, 1])  # fmt: skip
    g = torch.Generator().manual_seed(0)
    lab = [{"image": torch.randn(1, *SHAPE, generator=g), "label": torch.randint(0, C, (1, *SHAPE), generator=g)}
           for _ in range(n_lab)]  # fmt: skip
    unl = [{"image": torch.randn(1, *SHAPE, generator=g)} for _ in range(2)]
    opt = torch.optim.SGD(method.parameters(), lr=1e-2)
    handlers = [h(method) for h in handlers]
    trainer = SemiSupervisedTrainer("cpu", 1, DataLoader(Dataset(lab)), DataLoader(Dataset(unl)), method, opt,
                                    train_handlers=handlers)  # fmt: skip
    return trainer, method, handlers


def test_logger_writes_tensorboard_scalars_and_stats_lines(tmp_path):
    records = ListHandler()
    logging.getLogger("test_class_weights").addHandler(records)
    names = ["background", "liver", "tumour"]
    trainer, method, (logger,) = dhc_trainer(
        [lambda m: ClassWeightLogger(m, 2, class_names=names, log_dir=str(tmp_path), name="test_class_weights")]
    )
    trainer.run()  # 3 iterations: logged at iteration 2 only
    logger.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {f"class_weights/weighting_{n}/{c}" for n in "ab" for c in names}
    assert tags == expected
    a = [events.Scalars(f"class_weights/weighting_a/{c}") for c in names]
    assert all(len(s) == 1 and s[0].step == 2 for s in a)
    assert max(s[0].value for s in a) == pytest.approx(C)  # DiffDW is max-normalised to C
    b0 = events.Scalars("class_weights/weighting_b/background")[0].value
    assert 0 <= b0 < 0.1  # DistDW: background (most frequent in the init histogram) stays near 0
    assert len(records.messages) == 2
    assert records.messages[0].startswith("Iteration 2 DiffDW weighting_a weights: background: ")
    assert "DistDW weighting_b" in records.messages[1] and "tumour:" in records.messages[1]


def test_logger_values_equal_tracker_buffers(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    trainer, method, (logger,) = dhc_trainer(
        [lambda m: ClassWeightLogger(m, interval=3, summary_writer=writer, name=None)]
    )
    trainer.run()  # logged at the last iteration, so the buffers still hold the logged values
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    for name, tracker in find_trackers(method).items():
        logged = [events.Scalars(f"class_weights/{name}/{k}")[0].value for k in range(C)]
        assert logged == pytest.approx(tracker.weights.tolist(), rel=1e-6)


def test_errors():
    cps = CPS(VNet(out_channels=C, n_filters=4), VNet(out_channels=C, n_filters=4))
    with pytest.raises(ValueError, match="no class-weight tracker"):
        ClassWeightLogger(cps)
    dhc = DHC(VNet(out_channels=C, n_filters=4), VNet(out_channels=C, n_filters=4), num_classes=C)
    with pytest.raises(ValueError, match="interval"):
        ClassWeightLogger(dhc, interval=0)
    with pytest.raises(ValueError, match="class_names has 2 names"):
        ClassWeightLogger(dhc, class_names=["a", "b"])
    with pytest.raises(TypeError, match="label histogram"):
        DistDWInitHandler(cps, source=[])


def test_init_handler_skips_started_trackers(tmp_path):
    import nibabel as nib
    import numpy as np

    path = tmp_path / "l.nii.gz"
    nib.save(nib.Nifti1Image(np.array([[[0, 0, 0, 1]]], dtype=np.uint8), np.eye(4)), str(path))
    trainer, method, (handler,) = dhc_trainer([lambda m: DistDWInitHandler(m, [str(path)])])
    assert bool(method.trackers_started)  # init_counts=[100, 10, 1] in the constructor
    before = method.weighting_b.weights.clone()
    handler(trainer)
    assert handler.counts is None and torch.equal(method.weighting_b.weights, before)
    method.trackers_started.fill_(False)
    handler(trainer)
    assert handler.counts.tolist() == [3, 1, 0]
    expected = [0.0, C * math.log(3) / math.log(3 / 1e-8), float(C)]  # P_k = (3 + eps)/(N_k + eps)
    assert method.weighting_b.weights.tolist() == pytest.approx(expected, abs=1e-6)


def test_init_handler_skips_methods_without_distdw():
    torch.manual_seed(0)
    dhc = DHC(VNet(out_channels=C, n_filters=4), VNet(out_channels=C, n_filters=4), num_classes=C, weighting_b="diffdw")
    handler = DistDWInitHandler(dhc, ["/does/not/exist.nii.gz"])  # never read
    handler(None)
    assert handler.counts is None and not bool(dhc.trackers_started)
