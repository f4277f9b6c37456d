"""Smoke tests of the MagicNet / GA-MagicNet bundles (``bundles/magicnet_synapse``, ``bundles/ga_magicnet_synapse``).

The shipped configs ("ga" protocol; GA-MagicNet = MagicNet with the GA losses and schedule) run with MONAI's
``ConfigWorkflow`` on CPU. Tiny size: 48³ patches with 16³ cubes (3×3×3 grid), n_filters 4 and
batch norm (a 16³ cube has one bottleneck voxel, too few for the reference's InstanceNorm),
location head width 32.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from scdl_monai.losses.ga import GACELoss, GADiceLoss
from scdl_monai.methods.magicnet import MagicNet, ema_momentum
from scdl_monai.networks.vnet import VNet

from .conftest import bundle_workflow, config_files, run_train, run_workflow, tiny, write_fake_synapse
from .conftest import FAKE_SHAPE as SHAPE
from .conftest import SYNAPSE_CLASSES as C

TINY = {**tiny("magicnet"), "val_interval": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_fake_synapse(
        tmp_path_factory.mktemp("fake_synapse_magicnet"),
        roles=("training", "training", "unlabeled", "unlabeled", "validation,test"),
        metadata_method="magicnet",
    )


def train(bundle_root, dataset, method="magicnet", run=True, **overrides):
    return run_train(config_files("train", method), dataset, bundle_root, run=run, **{**TINY, **overrides})


def test_magicnet_train_resume_and_inference(tmp_path, dataset):
    workflow = train(tmp_path, dataset)
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

    resumed = train(tmp_path, dataset, resume_from=str(tmp_path / "models" / "checkpoint_final.pt"),
                    **{"train#trainer#max_epochs": 2})  # fmt: skip
    resumed_method = resumed.parser.get_parsed_content("method")
    assert int(resumed_method.iteration) == 4 and resumed.parser.get_parsed_content("train#trainer").state.epoch == 2

    evaluate = run_workflow(bundle_workflow(config_files("evaluate", "magicnet"), dataset, tmp_path,
                                            dataset_dir=str(dataset), **TINY))  # fmt: skip
    assert 0.0 <= evaluate.parser.get_parsed_content("validate#evaluator").state.metrics["val_mean_dice"] <= 1.0
    assert len(list((tmp_path / "eval" / "predictions").glob("*.nii.gz"))) == 1

    image = json.loads((dataset / "datalist.json").read_text())["validation"][0]["image"]
    infer = bundle_workflow(config_files("inference", "magicnet"), dataset, tmp_path, workflow_type="infer",
                            input_files=[image], output_dir=str(tmp_path / "pred"),
                            **tiny("magicnet", kind="inference"))  # fmt: skip
    assert isinstance(infer.parser.get_parsed_content("network"), VNet)
    run_workflow(infer)
    (out,) = list((tmp_path / "pred").glob("*.nii.gz"))
    pred = np.asarray(nib.load(str(out)).dataobj)
    assert pred.shape == SHAPE and pred.min() >= 0 and pred.max() < C


def test_reference_configuration_values(tmp_path, dataset):
    """Reference-size settings are what the configs say (parsed, not run)."""
    reference = {"n_filters": 16, "patch_size": [96, 96, 96], "cube_size": 32, "location_hidden_features": 4096,
                 "network_def#norm": "instance", "train#trainer#max_epochs": None}  # fmt: skip
    parser = train(tmp_path, dataset, run=False, **reference).parser
    student = parser.get_parsed_content("student")
    assert student.backbone.norm == "instance" and student.backbone.n_filters == 16
    assert student.location_head.in_features == 2048 and student.num_locations == 27
    assert parser.get_parsed_content("train#trainer#max_epochs") == 70000 // 2 + 1


def test_ga_magicnet_is_config_only(tmp_path, dataset):
    workflow = train(tmp_path, dataset, method="ga_magicnet")
    parser = workflow.parser
    method = parser.get_parsed_content("method")
    assert method.ga_losses and isinstance(method.ce_loss, GACELoss) and isinstance(method.dice_loss, GADiceLoss)
    assert (tmp_path / "models" / "checkpoint_final.pt").exists()
    # literal GA-MagicNet schedule: poly over 70,000 iterations, training stopped after 17,000 // it + 1 epochs
    assert parser.get_parsed_content("lr_scheduler").total_iters == 70000
    assert parser.get_parsed_content("max_iterations") == 17000
    lr = parser.get_parsed_content("optimizer").param_groups[0]["lr"]
    assert lr == pytest.approx(0.01 * (1 - 2 / 70000) ** 0.9, rel=1e-6)
