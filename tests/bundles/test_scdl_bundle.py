"""Smoke test of the SCDL overlay ``configs/scdl.json`` of the shipped ``cps_synapse`` bundle, fake NIfTI data.

The same ``scdl.json`` follows ``train.json``, ``train.json + evaluate.json``, ``inference.json`` and
``train.json + multi_gpu_train.json``; run with MONAI's ``ConfigWorkflow`` on CPU with tiny networks: train (SCDL terms in
the output, the SCDL parameter group of the optimizer following the baseline's schedule),
evaluate (the saved inference network reloads) and standalone inference (``inference_network_def``
built around the wrapped networks).
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from scdl_monai.methods.scdl import SCDLMethod
from scdl_monai.networks.prior_injection import SCDLNetwork

from .conftest import bundle_workflow, config_files, run_torchrun, run_train, run_workflow, tiny, write_fake_synapse
from .conftest import FAKE_SHAPE as SHAPE
from .conftest import SYNAPSE_CLASSES as C

TINY = tiny("cps", scdl=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_fake_synapse(tmp_path_factory.mktemp("fake_synapse_scdl"), metadata_method="cps")


def files(kind):
    return config_files(kind, "cps", scdl=True)


workflow = bundle_workflow


def test_cps_scdl_train_evaluate_inference(tmp_path, dataset):
    train = run_train(files("train"), dataset, tmp_path, run=False, **{**TINY, "scdl_warmup_iters": 4})
    parser = train.parser
    method = parser.get_parsed_content("method")
    assert isinstance(method, SCDLMethod) and method.targets == ("network_a", "network_b")
    run_workflow(train)
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2 and method.scdl_iteration.item() == 2
    output = trainer.state.output[0]
    assert float(output["loss_scdl"]) > 0 and float(output["scdl_warmup"]) == pytest.approx(0.5)
    opt = trainer.optimizers[0]
    base_group, scdl_group = opt.param_groups
    assert scdl_group["scdl"] and scdl_group["weight_decay"] == 1e-4 and scdl_group["momentum"] == 0.9
    assert scdl_group["lr"] == pytest.approx(base_group["lr"])  # same poly schedule (one epoch, lag 1)
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert ckpt["method"]["scdl_iteration"].item() == 2
    assert any(k.startswith("base.network_a.scdl.") for k in ckpt["method"])

    run_workflow(workflow(files("evaluate"), dataset, tmp_path, dataset_dir=str(dataset), **TINY))
    assert (tmp_path / "eval" / "metrics.csv").exists()

    image = json.loads((dataset / "datalist.json").read_text())["validation"][0]["image"]
    infer = workflow(files("inference"), dataset, tmp_path, workflow_type="infer", input_files=[image],
                     output_dir=str(tmp_path / "pred"), **tiny("cps", scdl=True, kind="inference"))  # fmt: skip
    network = infer.parser.get_parsed_content("network")
    assert all(isinstance(n, SCDLNetwork) for n in network.networks)
    run_workflow(infer)
    (out,) = list((tmp_path / "pred").glob("*.nii.gz"))
    pred = np.asarray(nib.load(str(out)).dataobj)
    assert pred.shape == SHAPE and pred.min() >= 0 and pred.max() < C


def test_cps_scdl_two_process_ddp(tmp_path, dataset):
    """``multi_gpu_train.json`` + ``scdl.json`` (either order): DDP wraps the SCDL method (``train#trainer#method``)."""

    overrides = {**TINY, "train#trainer#max_epochs": 1, "resume_from": "", "val_interval": 1000}
    run_torchrun(files("multi_gpu_train"), dataset, tmp_path, overrides)
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert ckpt["method"]["scdl_iteration"].item() == 1
    assert not any(k.startswith("module.") or ".module." in k for k in ckpt["method"])
