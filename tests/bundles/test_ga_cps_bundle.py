"""Smoke tests of the GA-CPS bundle (``bundles/ga_cps_synapse``, "ga" protocol) on fake NIfTI data.

Configs are composed exactly as the shipped ``ga_cps_synapse`` bundle (``scdl_monai.bundles``) and
run with MONAI's ``ConfigWorkflow`` on CPU with tiny networks: train (checking the per-iteration
poly LR and the per-epoch CPS weight of the GA reference), evaluate, inference, and two-process
DDP training with torchrun (gloo).
"""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from scdl_monai.losses.ga import GACELoss
from scdl_monai.methods.ga_cps import GACPS

from .conftest import bundle_workflow, config_files, run_torchrun, run_train, run_workflow, tiny, write_fake_synapse
from .conftest import FAKE_SHAPE as SHAPE
from .conftest import SYNAPSE_CLASSES as C

TINY = tiny("ga_cps")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_fake_synapse(tmp_path_factory.mktemp("fake_synapse_ga"), metadata_method="ga_cps")


def files(kind):
    return config_files(kind, "ga_cps")


def test_ga_cps_train_evaluate_inference(tmp_path, dataset):
    train = run_train(files("train"), dataset, tmp_path, run=False, **TINY)
    parser = train.parser
    method = parser.get_parsed_content("method")
    assert isinstance(method, GACPS) and isinstance(method.cps_loss, GACELoss) and method.cps_loss.k == 100
    assert parser.get_parsed_content("iterations_per_epoch") == 2  # two unlabeled cases, batch 1
    assert parser.get_parsed_content("cps_ramp_epochs") == 17000 // 2 + 1  # E = max_iter // it_per_epoch + 1
    run_workflow(train)
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2
    # per-iteration poly over 17,000 iterations, after two steps; per-epoch CPS weight of epoch 0
    for opt in trainer.optimizers:
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 2 / 17000) ** 0.9, rel=1e-6)
        assert opt.param_groups[0]["weight_decay"] == 1e-4 and not opt.param_groups[0]["nesterov"]
    assert method.unsup_weight.item() == pytest.approx(0.1 * math.exp(-5 * (1 - 0 / 8501) ** 2), rel=1e-5)
    assert all(math.isfinite(float(trainer.state.output[0][k])) for k in ("loss", "loss_sup", "loss_cps"))
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert {"method", "optimizer", "optimizer_b", "lr_scheduler", "lr_scheduler_b", "trainer"} <= ckpt.keys()
    assert (tmp_path / "models" / "model.pt").exists()  # iteration-level validation saved the best model

    run_workflow(bundle_workflow(files("evaluate"), dataset, tmp_path, dataset_dir=str(dataset), **TINY))
    assert (tmp_path / "eval" / "metrics.csv").exists()
    assert len(list((tmp_path / "eval" / "predictions").glob("*.nii.gz"))) == 1

    image = json.loads((dataset / "datalist.json").read_text())["validation"][0]["image"]
    run_workflow(bundle_workflow(files("inference"), dataset, tmp_path, workflow_type="infer", input_files=[image],
                                 output_dir=str(tmp_path / "pred"), **tiny("ga_cps", kind="inference")))  # fmt: skip
    (out,) = list((tmp_path / "pred").glob("*.nii.gz"))
    pred = np.asarray(nib.load(str(out)).dataobj)
    assert pred.shape == SHAPE and pred.min() >= 0 and pred.max() < C


def test_ga_cps_two_process_ddp(tmp_path, dataset):
    overrides = {**TINY, "train#trainer#max_epochs": 1, "resume_from": "", "val_interval": 1000}
    run_torchrun(files("multi_gpu_train"), dataset, tmp_path, overrides)
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert not any(k.startswith("module.") or ".module." in k for k in ckpt["method"])
    assert ckpt["trainer"]["iteration"] == 1  # one unlabeled case per rank -> one iteration per epoch
