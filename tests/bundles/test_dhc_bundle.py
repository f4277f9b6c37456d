"""Smoke tests of the DHC method overlays (bundles/_components/methods/dhc) on fake NIfTI data.

The configs are composed from the component files in the generator's order (train, dataset,
backbone, method[, ablation overlay]) and run with MONAI's ``ConfigWorkflow`` on CPU with tiny
networks: train (with resume), the Table 3 ablation overlays, and inference with the trained
``models/model.pt``.
"""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from scdl_monai.bundles import build_metadata
from scdl_monai.weighting import DiffDW, DistDW

from ..conftest import REPO_ROOT

COMPONENTS = REPO_ROOT / "bundles" / "_components"
C = 14  # Synapse
SHAPE = (24, 24, 20)


def _write(path, array, dtype):
    nib.save(nib.Nifti1Image(array.astype(dtype), np.diag([1.5, 1.5, 2.0, 1.0])), str(path))
    return str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_synapse")
    rng = np.random.default_rng(0)
    entries = {"training": [], "unlabeled": [], "validation": []}
    for i in range(6):  # 2 labeled, 2 unlabeled, 2 validation (one per DDP rank)
        image = rng.normal(0, 100, SHAPE)
        label = np.zeros(SHAPE, dtype=np.uint8)
        for k in range(1, C):  # one small box per organ, so every class is present
            x, y, z = rng.integers(0, 18, 3)
            label[x : x + 5, y : y + 5, z : z + 2] = k
        item = {"image": _write(root / f"img{i}.nii.gz", image, np.float32), "case_id": str(i)}
        if i < 2:
            entries["training"].append({**item, "label": _write(root / f"lab{i}.nii.gz", label, np.uint8)})
        elif i < 4:
            entries["unlabeled"].append(item)
        else:
            entries["validation"].append({**item, "label": _write(root / f"lab{i}.nii.gz", label, np.uint8)})
    entries["test"] = entries["validation"][:1]
    (root / "datalist.json").write_text(json.dumps(entries))
    # metadata of a two-network Synapse bundle (same I/O as DHC) until "dhc" is in scdl_monai.bundles.METHODS
    (root / "metadata.json").write_text(json.dumps(build_metadata("cps", "synapse")))
    return root


def config_files(kind, *extra):
    files = [COMPONENTS / f"{kind}.json", COMPONENTS / "datasets" / "synapse.json", COMPONENTS / "backbones" / "vnet.json"]
    files += [COMPONENTS / "methods" / "dhc" / f"{kind}.json"] + [COMPONENTS / "methods" / "dhc" / e for e in extra]
    return [str(f) for f in files]


TINY = {"n_filters": 4, "patch_size": [32, 32, 32], "num_workers": 0, "cache_rate": 0.0, "batch_size": 1,
        "unlabeled_batch_size": 1, "val_interval": 1, "class_weight_log_interval": 1, "amp": False}  # fmt: skip


def run_train(bundle_root, dataset, *extra, on_first_iteration=None, **overrides):
    workflow = ConfigWorkflow(
        config_file=config_files("train", *extra),
        workflow_type="train",
        meta_file=str(dataset / "metadata.json"),
        logging_file=str(COMPONENTS / "logging.conf"),
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset),
        **{**TINY, "train#trainer#max_epochs": 1, "resume_from": "", **overrides},
    )
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    if on_first_iteration is not None:
        trainer = workflow.parser.get_parsed_content("train#trainer")
        seen = []

        def first(engine):
            if not seen:
                seen.append(True)
                on_first_iteration(engine)

        trainer.add_event_handler(Events.ITERATION_STARTED, first)
    workflow.run()
    workflow.finalize()
    return workflow


def test_dhc_train_resume_evaluate_and_inference(tmp_path, dataset):
    workflow = run_train(tmp_path, dataset)
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

    resumed = run_train(
        tmp_path, dataset, on_first_iteration=snapshot, **{"resume_from": resume_from, "train#trainer#max_epochs": 2}
    )
    assert at_start and all(torch.equal(v, ckpt["method"][k]) for k, v in at_start.items())
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == 2

    evaluate = ConfigWorkflow(
        config_file=config_files("train") + [str(COMPONENTS / "evaluate.json")],
        workflow_type="eval",
        meta_file=str(dataset / "metadata.json"),
        logging_file=str(COMPONENTS / "logging.conf"),
        bundle_root=str(tmp_path),
        dataset_dir=str(dataset),
        **TINY,
    )
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    assert 0.0 <= evaluate.parser.get_parsed_content("validate#evaluator").state.metrics["val_mean_dice"] <= 1.0
    assert len(list((tmp_path / "eval" / "predictions").glob("*.nii.gz"))) == 1

    infer = ConfigWorkflow(
        config_file=config_files("inference"),
        workflow_type="infer",
        meta_file=str(dataset / "metadata.json"),
        logging_file=str(COMPONENTS / "logging.conf"),
        bundle_root=str(tmp_path),
        input_files=[json.loads((dataset / "datalist.json").read_text())["validation"][0]["image"]],
        output_dir=str(tmp_path / "pred"),
        n_filters=4,
        patch_size=[32, 32, 32],
        num_workers=0,
        progress=False,
        amp=False,
    )
    infer.initialize()
    infer.run()
    infer.finalize()
    (out,) = list((tmp_path / "pred").glob("*.nii.gz"))
    pred = np.asarray(nib.load(str(out)).dataobj)
    assert pred.shape == SHAPE and pred.min() >= 0 and pred.max() < C


@pytest.mark.parametrize(
    "overlay, types", [("dhc_distdw_distdw.json", (DistDW, DistDW)), ("dhc_diffdw_diffdw.json", (DiffDW, DiffDW))]
)
def test_table3_ablations_are_config_only(tmp_path, dataset, overlay, types):
    workflow = run_train(tmp_path, dataset, overlay)
    method = workflow.parser.get_parsed_content("method")
    assert (type(method.weighting_a), type(method.weighting_b)) == types
    name = overlay[:-5]
    assert workflow.parser.get_parsed_content("method_name") == name
    assert (tmp_path / f"models_{name}" / "checkpoint_final.pt").exists()
    assert all(torch.isfinite(w).all() for w in method.tracker_weights().values())


def test_dhc_multi_gpu_overlay_two_processes(tmp_path, dataset):
    """torchrun, 2 CPU processes (gloo): DDP networks, per-rank trackers, rank-0 logging and checkpoints."""
    files = config_files("train") + [str(COMPONENTS / "multi_gpu_train.json")]
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
            "run", "--config_file", repr(files), "--meta_file", str(dataset / "metadata.json"),
            "--logging_file", str(COMPONENTS / "logging.conf"), "--bundle_root", str(tmp_path),
            "--dataset_dir", str(dataset), "--resume_from", "''", "--train#trainer#max_epochs", "1"]  # fmt: skip
    for key, value in TINY.items():
        args += [f"--{key}", repr(value) if isinstance(value, bool) else json.dumps(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("DDP run hung (a collective run on rank 0 only?)")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert not any(k.startswith("module.") or ".module." in k for k in ckpt["method"])  # unwrapped networks
    assert bool(ckpt["method"]["trackers_started"])
    assert "DistDW weighting_b weights:" in proc.stdout + proc.stderr
