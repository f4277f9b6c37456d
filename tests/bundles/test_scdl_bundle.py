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
from monai.bundle import ConfigWorkflow

from scdl_monai.bundles import build_metadata
from scdl_monai.methods.scdl import SCDLMethod
from scdl_monai.networks.scdl_network import SCDLNetwork

from ..conftest import REPO_ROOT

COMPONENTS = REPO_ROOT / "bundles" / "_components"
C = 14  # Synapse
SHAPE = (24, 24, 20)
SCDL_TINY = {"scdl_block#z_dim": 8, "scdl_block#num_proxy_samples": 3}
TINY = {"n_filters": 4, "patch_size": [32, 32, 32], "num_workers": 0, "cache_rate": 0.0, "batch_size": 1,
        "unlabeled_batch_size": 1, "val_interval": 1, "amp": False, **SCDL_TINY}  # fmt: skip


def _write(path, array, dtype):
    nib.save(nib.Nifti1Image(array.astype(dtype), np.diag([1.5, 1.5, 2.0, 1.0])), str(path))
    return str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_synapse_scdl")
    rng = np.random.default_rng(0)
    entries = {"training": [], "unlabeled": [], "validation": [], "test": []}
    for i in range(7):  # 2 labeled, 2 unlabeled, 2 validation (one per DDP rank), 1 test
        image = rng.normal(0, 100, SHAPE)
        label = np.zeros(SHAPE, dtype=np.uint8)
        for k in range(1, C):
            x, y, z = rng.integers(0, 18, 3)
            label[x : x + 5, y : y + 5, z : z + 2] = k
        item = {"image": _write(root / f"img{i}.nii.gz", image, np.float32), "case_id": str(i)}
        key = {0: "training", 1: "training", 2: "unlabeled", 3: "unlabeled", 4: "validation", 5: "test", 6: "validation"}[i]
        if key != "unlabeled":
            item["label"] = _write(root / f"lab{i}.nii.gz", label, np.uint8)
        entries[key].append(item)
    (root / "datalist.json").write_text(json.dumps(entries))
    (root / "metadata.json").write_text(json.dumps(build_metadata("cps", "synapse")))
    return root


def config_files(kind, *overlays):
    base = "train" if kind == "evaluate" else kind
    files = [COMPONENTS / f"{base}.json", COMPONENTS / "datasets" / "synapse.json", COMPONENTS / "backbones" / "vnet.json",
             COMPONENTS / "methods" / "cps" / f"{base}.json", COMPONENTS / "scdl" / f"{base}.json"]  # fmt: skip
    return [str(f) for f in files + [COMPONENTS / o for o in overlays]]


def workflow(config_file, dataset, bundle_root, workflow_type="train", **overrides):
    wf = ConfigWorkflow(
        config_file=config_file,
        workflow_type=workflow_type,
        meta_file=str(dataset / "metadata.json"),
        logging_file=str(COMPONENTS / "logging.conf"),
        bundle_root=str(bundle_root),
        **overrides,
    )
    wf.initialize()
    return wf


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
    import os
    import subprocess
    import sys

    files = config_files("train", "multi_gpu_train.json", "scdl/multi_gpu_train.json")
    overrides = {**TINY, "train#trainer#max_epochs": 1, "resume_from": "", "val_interval": 1000}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
           "run", "--config_file", json.dumps(files), "--meta_file", str(dataset / "metadata.json"),
           "--logging_file", str(COMPONENTS / "logging.conf"), "--bundle_root", str(tmp_path),
           "--dataset_dir", str(dataset)]  # fmt: skip
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value) if isinstance(value, bool) else json.dumps(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = None
    for _ in range(2):  # one retry: the rendezvous port can race with other torchrun jobs on the machine
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        except subprocess.TimeoutExpired:
            continue
        if result.returncode == 0:
            break
    assert result is not None, "torchrun timed out twice"
    errors = "\n".join(line for line in result.stderr.splitlines() if "Error" in line)
    assert result.returncode == 0, (errors[-3000:], result.stderr[-4000:])
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert ckpt["method"]["scdl_iteration"].item() == 1
    assert not any(k.startswith("module.") or ".module." in k for k in ckpt["method"])
