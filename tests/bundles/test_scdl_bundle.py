"""Smoke test of the SCDL overlay (bundles/_components/scdl) on top of the CPS baseline, fake NIfTI data.

Configs are composed as the generator does (base, dataset, backbone, method, then the ``scdl``
overlay) and run with MONAI's ``ConfigWorkflow`` on CPU with tiny networks: train (SCDL terms in
the output, the SCDL parameter group of the optimizer following the baseline's schedule),
evaluate (the saved inference network reloads) and standalone inference (the prior path is
rebuilt by ``scdl/inference.json``).
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from scdl_monai.methods.scdl import SCDLMethod
from scdl_monai.networks.scdl_network import SCDLNetwork

from .conftest import run_torchrun, bundle_workflow, component_files, write_fake_synapse
from .conftest import FAKE_SHAPE as SHAPE
from .conftest import SYNAPSE_CLASSES as C

SCDL_TINY = {"scdl_block#z_dim": 8, "scdl_block#num_proxy_samples": 3}
TINY = {"n_filters": 4, "patch_size": [32, 32, 32], "num_workers": 0, "cache_rate": 0.0, "batch_size": 1,
        "unlabeled_batch_size": 1, "val_interval": 1, "amp": False, **SCDL_TINY}  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_fake_synapse(tmp_path_factory.mktemp("fake_synapse_scdl"))


def config_files(kind, *overlays):
    return component_files(kind, "methods/cps", "scdl", overlays=overlays)


workflow = bundle_workflow


def test_cps_scdl_train_evaluate_inference(tmp_path, dataset):
    train = workflow(config_files("train"), dataset, tmp_path, dataset_dir=str(dataset), resume_from="",
                     **{**TINY, "train#trainer#max_epochs": 1, "scdl_warmup_iters": 4})  # fmt: skip
    assert train.check_properties() in (None, [])
    parser = train.parser
    method = parser.get_parsed_content("method")
    assert isinstance(method, SCDLMethod) and method.targets == ("network_a", "network_b")
    train.run()
    train.finalize()
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

    evaluate = workflow(config_files("evaluate", "evaluate.json"), dataset, tmp_path, dataset_dir=str(dataset), **TINY)
    evaluate.run()
    evaluate.finalize()
    assert (tmp_path / "eval" / "metrics.csv").exists()

    image = json.loads((dataset / "datalist.json").read_text())["validation"][0]["image"]
    infer = workflow(config_files("inference"), dataset, tmp_path, workflow_type="infer", input_files=[image],
                     output_dir=str(tmp_path / "pred"), n_filters=4, patch_size=[32, 32, 32], num_workers=0,
                     progress=False, amp=False, **SCDL_TINY)  # fmt: skip
    network = infer.parser.get_parsed_content("network")
    assert all(isinstance(n, SCDLNetwork) for n in network.networks)
    infer.run()
    infer.finalize()
    (out,) = list((tmp_path / "pred").glob("*.nii.gz"))
    pred = np.asarray(nib.load(str(out)).dataobj)
    assert pred.shape == SHAPE and pred.min() >= 0 and pred.max() < C


def test_cps_scdl_two_process_ddp(tmp_path, dataset):
    """``scdl/multi_gpu_train.json`` keeps the SCDL wrapper under DDP (the base overlay rebuilds ``method``)."""

    files = config_files("train", "multi_gpu_train.json", "scdl/multi_gpu_train.json")
    overrides = {**TINY, "train#trainer#max_epochs": 1, "resume_from": "", "val_interval": 1000}
    run_torchrun(files, dataset, tmp_path, overrides)
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert ckpt["method"]["scdl_iteration"].item() == 1
    assert not any(k.startswith("module.") or ".module." in k for k in ckpt["method"])
