"""Smoke tests of the DHC bundle (``bundles/dhc_synapse``, "dhc" protocol) on fake NIfTI data.

The shipped configs (``configs/train.json`` [+ an ablation overlay]) run with MONAI's
``ConfigWorkflow`` on CPU with tiny networks: train (with resume), evaluate, the Table 3 ablation
overlays, inference with the trained ``models/model.pt``, and two-process DDP.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from scdl_monai.weighting import DiffDW, DistDW

from .conftest import bundle_workflow, config_files, run_torchrun, run_train, run_workflow, tiny, write_fake_synapse
from .conftest import FAKE_SHAPE as SHAPE
from .conftest import SYNAPSE_CLASSES as C

TINY = {**tiny("dhc"), "class_weight_log_interval": 1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_fake_synapse(
        tmp_path_factory.mktemp("fake_synapse"),
        roles=("training", "training", "unlabeled", "unlabeled", "validation,test", "validation"),
        metadata_method="dhc",
    )


def files(kind, *ablation):
    return config_files(kind, "dhc", *ablation)


def train(bundle_root, dataset, *ablation, on_first_iteration=None, **overrides):
    return run_train(files("train", *ablation), dataset, bundle_root, on_first_iteration=on_first_iteration,
                     **{**TINY, **overrides})  # fmt: skip


def test_dhc_train_resume_evaluate_and_inference(tmp_path, dataset):
    workflow = train(tmp_path, dataset)
    method = workflow.parser.get_parsed_content("method")
    assert isinstance(method.weighting_a, DiffDW) and isinstance(method.weighting_b, DistDW)
    assert bool(method.trackers_started)
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert {"optimizer_b", "lr_scheduler_b"} <= ckpt.keys()
    assert "weighting_b.weights" in ckpt["method"] and "weighting_a.learn" in ckpt["method"]
    events = EventAccumulator(str(tmp_path / "eval"))
    events.Reload()
    assert "class_weights/weighting_b/pancreas" in events.Tags()["scalars"]

    # resume for one more epoch: the tracker state comes from the checkpoint, not a new histogram
    # (the init handler runs at STARTED before the loader, which then restores the saved buffers)
    resume_from = str(tmp_path / "models" / "checkpoint_final.pt")
    at_start = {}

    def snapshot(engine):
        at_start.update({k: v.clone() for k, v in engine.method.state_dict().items() if k.startswith("weighting_")})

    resumed = train(
        tmp_path, dataset, on_first_iteration=snapshot, **{"resume_from": resume_from, "train#trainer#max_epochs": 2}
    )
    assert at_start and all(torch.equal(v, ckpt["method"][k]) for k, v in at_start.items())
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == 2

    evaluate = run_workflow(bundle_workflow(files("evaluate"), dataset, tmp_path, dataset_dir=str(dataset), **TINY))
    assert 0.0 <= evaluate.parser.get_parsed_content("validate#evaluator").state.metrics["val_mean_dice"] <= 1.0
    assert len(list((tmp_path / "eval" / "predictions").glob("*.nii.gz"))) == 1

    image = json.loads((dataset / "datalist.json").read_text())["validation"][0]["image"]
    infer = bundle_workflow(files("inference"), dataset, tmp_path, workflow_type="infer", input_files=[image],
                            output_dir=str(tmp_path / "pred"), **tiny("dhc", kind="inference"))  # fmt: skip
    run_workflow(infer)
    (out,) = list((tmp_path / "pred").glob("*.nii.gz"))
    pred = np.asarray(nib.load(str(out)).dataobj)
    assert pred.shape == SHAPE and pred.min() >= 0 and pred.max() < C


@pytest.mark.parametrize(
    "overlay, types", [("dhc_distdw_distdw.json", (DistDW, DistDW)), ("dhc_diffdw_diffdw.json", (DiffDW, DiffDW))]
)
def test_table3_ablations_are_config_only(tmp_path, dataset, overlay, types):
    workflow = train(tmp_path, dataset, overlay)
    method = workflow.parser.get_parsed_content("method")
    assert (type(method.weighting_a), type(method.weighting_b)) == types
    name = overlay[:-5]
    assert workflow.parser.get_parsed_content("ckpt_dir").endswith(f"/models_{name}")
    assert (tmp_path / f"models_{name}" / "checkpoint_final.pt").exists()
    assert all(torch.isfinite(w).all() for w in method.tracker_weights().values())


def test_dhc_multi_gpu_overlay_two_processes(tmp_path, dataset):
    """torchrun, 2 CPU processes (gloo): DDP networks, per-rank trackers, rank-0 logging and checkpoints."""
    overrides = {**TINY, "resume_from": "", "train#trainer#max_epochs": 1}
    proc = run_torchrun(files("multi_gpu_train"), dataset, tmp_path, overrides, timeout=120)
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert not any(k.startswith("module.") or ".module." in k for k in ckpt["method"])  # unwrapped networks
    assert bool(ckpt["method"]["trackers_started"])
    assert "DistDW weighting_b weights:" in proc.stdout + proc.stderr
