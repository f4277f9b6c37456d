"""Smoke tests of the MagicNet / GA-MagicNet overlays (bundles/_components/methods/magicnet) on fake NIfTI.

Configs are composed in the generator's order (base, dataset, backbone, method[, ga_magicnet.json])
and run with MONAI's ``ConfigWorkflow`` on CPU. Tiny size: 48³ patches with 16³ cubes (3×3×3
grid), n_filters 4 and batch norm (a 16³ cube has one bottleneck voxel, too few for the
reference's InstanceNorm), location head width 32.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from scdl_monai.losses.ga import GACELoss, GADiceLoss
from scdl_monai.methods.magicnet import MagicNet, ema_momentum
from scdl_monai.networks.vnet import VNet

from .conftest import COMPONENTS, component_files, write_fake_synapse
from .conftest import FAKE_SHAPE as SHAPE
from .conftest import SYNAPSE_CLASSES as C

TINY = {"n_filters": 4, "patch_size": [48, 48, 48], "cube_size": 16, "location_hidden_features": 32,
        "network_def#norm": "batch", "num_workers": 0, "cache_rate": 0.0, "batch_size": 1,
        "unlabeled_batch_size": 1, "val_interval": 2, "amp": False}  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_fake_synapse(
        tmp_path_factory.mktemp("fake_synapse_magicnet"),
        roles=("training", "training", "unlabeled", "unlabeled", "validation"),
        metadata_method="supervised",  # single-network I/O until "magicnet" is in scdl_monai.bundles.METHODS
    )


def config_files(kind, *extra):
    return component_files(kind, "methods/magicnet", overlays=[f"methods/magicnet/{e}" for e in extra])


def run_train(bundle_root, dataset, *extra, run=True, **overrides):
    settings = {**TINY, "train#trainer#max_epochs": 1, "resume_from": "", **overrides}
    workflow = ConfigWorkflow(
        config_file=config_files("train", *extra),
        workflow_type="train",
        meta_file=str(dataset / "metadata.json"),
        logging_file=str(COMPONENTS / "logging.conf"),
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset),
        **{k: v for k, v in settings.items() if v is not None},  # None removes a default override
    )
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    if run:
        workflow.run()
        workflow.finalize()
    return workflow


def test_magicnet_train_resume_and_inference(tmp_path, dataset):
    workflow = run_train(tmp_path, dataset)
    parser = workflow.parser
    method = parser.get_parsed_content("method")
    assert isinstance(method, MagicNet) and not method.ga_losses and not method.reproduce_index_bug
    optimizer = parser.get_parsed_content("optimizer")
    head_params = {id(p) for p in method.student.location_head.parameters()}
    assert head_params <= {id(p) for p in optimizer.param_groups[0]["params"]}  # the location head is trained
    assert int(method.iteration) == 2  # two unlabeled cases, batch 1 -> 2 iterations per epoch
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 2 / 70000) ** 0.9, rel=1e-6)
    # the EMA handler ran after each optimizer step: step 0 (α=0) copied the student, step 1 (α=0.5)
    # averaged, so the teacher now differs from the student
    assert ema_momentum(1) == 0.5
    assert not all(torch.equal(t, s) for t, s in zip(method.teacher.parameters(), method.student.backbone.parameters()))
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert int(ckpt["method"]["iteration"]) == 2 and "class_tracker.counts" in ckpt["method"]
    assert any(k.startswith("teacher.") for k in ckpt["method"])
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith(("teacher.", "location_head.", "backbone.")) for k in model)  # the student VNet only

    resumed = run_train(tmp_path, dataset, resume_from=str(tmp_path / "models" / "checkpoint_final.pt"),
                        **{"train#trainer#max_epochs": 2})  # fmt: skip
    resumed_method = resumed.parser.get_parsed_content("method")
    assert int(resumed_method.iteration) == 4 and resumed.parser.get_parsed_content("train#trainer").state.epoch == 2

    infer = ConfigWorkflow(
        config_file=config_files("inference"),
        workflow_type="infer",
        meta_file=str(dataset / "metadata.json"),
        logging_file=str(COMPONENTS / "logging.conf"),
        bundle_root=str(tmp_path),
        input_files=[json.loads((dataset / "datalist.json").read_text())["validation"][0]["image"]],
        output_dir=str(tmp_path / "pred"),
        n_filters=4,
        patch_size=[48, 48, 48],
        num_workers=0,
        progress=False,
        amp=False,
        **{"network_def#norm": "batch"},
    )
    infer.initialize()
    assert isinstance(infer.parser.get_parsed_content("network"), VNet)
    infer.run()
    infer.finalize()
    (out,) = list((tmp_path / "pred").glob("*.nii.gz"))
    pred = np.asarray(nib.load(str(out)).dataobj)
    assert pred.shape == SHAPE and pred.min() >= 0 and pred.max() < C


def test_reference_configuration_values(tmp_path, dataset):
    """Reference-size settings are what the configs say (parsed, not run)."""
    reference = {"n_filters": 16, "patch_size": [96, 96, 96], "cube_size": 32, "location_hidden_features": 4096,
                 "network_def#norm": "instance", "train#trainer#max_epochs": None}  # fmt: skip
    parser = run_train(tmp_path, dataset, run=False, **reference).parser
    student = parser.get_parsed_content("student")
    assert student.backbone.norm == "instance" and student.backbone.n_filters == 16
    assert student.location_head.in_features == 2048 and student.num_locations == 27
    assert parser.get_parsed_content("train#trainer#max_epochs") == 70000 // 2 + 1


def test_ga_magicnet_overlay_is_config_only(tmp_path, dataset):
    workflow = run_train(tmp_path, dataset, "ga_magicnet.json")
    parser = workflow.parser
    method = parser.get_parsed_content("method")
    assert method.ga_losses and isinstance(method.ce_loss, GACELoss) and isinstance(method.dice_loss, GADiceLoss)
    assert parser.get_parsed_content("method_name") == "ga_magicnet"
    assert (tmp_path / "models_ga_magicnet" / "checkpoint_final.pt").exists()
    # literal GA-MagicNet schedule: poly over 70,000 iterations, training stopped after 17,000 // it + 1 epochs
    assert parser.get_parsed_content("lr_scheduler").total_iters == 70000
    assert parser.get_parsed_content("max_iterations") == 17000
    lr = parser.get_parsed_content("optimizer").param_groups[0]["lr"]
    assert lr == pytest.approx(0.01 * (1 - 2 / 70000) ** 0.9, rel=1e-6)
