"""Full-state checkpoint and resume through the bundle (CheckpointLoader), including after SIGKILL.

* 2 epochs straight == 1 epoch + resume 1 epoch from the epoch-1 checkpoint (weights, both
  optimizers, both LR schedulers, the CPS weight buffer), and two runs with one seed are identical.
  The data pipeline is made deterministic for this (volumes of exactly the patch size, no shuffle):
  the random state of MONAI transforms and samplers is not part of a checkpoint.
* a training subprocess killed with SIGKILL in the middle of an epoch resumes with
  ``--resume true`` from its last checkpoint and finishes the planned iterations.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from monai.bundle import ConfigWorkflow

from scdl_monai.data.phantom import generate_phantom

from ..conftest import REPO_ROOT

TINY = {
    "cache_rate": 0.0,
    "num_workers": 0,
    "patch_size": [32, 32, 32],
    "n_filters": 4,
    "batch_size": 1,
    "unlabeled_batch_size": 1,
    "val_interval": 1,
    "device": "cpu",
    "checkpoint_n_saved": None,
    "train#dataloader#shuffle": False,
    "train#unlabeled_dataloader#shuffle": False,
}


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    # 32^3 at the protocol spacing: Spacingd is the identity and every crop is the whole volume
    root = tmp_path_factory.mktemp("phantom")
    return generate_phantom(root, num_cases=6, shape=(32, 32, 32), spacing=(1.5, 1.5, 2.0), seed=3, labeled_fraction=0.5, num_validation=1, num_test=1)


def _train(bundle_root, datalist, **overrides):
    if not bundle_root.exists():
        shutil.copytree(REPO_ROOT / "bundles" / "cps_synapse", bundle_root)
    wf = ConfigWorkflow(
        config_file=str(bundle_root / "configs" / "train.json"), logging_file=False, workflow_type="train",
        bundle_root=str(bundle_root), datalist=str(datalist), **TINY, **overrides,
    )  # fmt: skip
    wf.initialize()
    wf.run()
    wf.finalize()
    return torch.load(bundle_root / "models" / "checkpoint_final.pt", weights_only=True)


def _assert_same_state(a, b):
    for key in ("method", "optimizer", "optimizer_b", "lr_scheduler", "lr_scheduler_b"):
        flat_a, flat_b = _flatten(a[key]), _flatten(b[key])
        assert flat_a.keys() == flat_b.keys(), key
        for name in flat_a:
            va, vb = flat_a[name], flat_b[name]
            if isinstance(va, torch.Tensor):
                assert torch.equal(va, vb), f"{key}:{name}"
            else:
                assert va == vb, f"{key}:{name}"


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


def test_resume_equals_straight_run_and_seed_reproduces(datalist, tmp_path):
    straight = _train(tmp_path / "a", datalist, **{"train#trainer#max_epochs": 2})
    assert straight["trainer"]["iteration"] == 4  # 2 epochs x 2 unlabeled batches
    assert float(straight["method"]["unsup_weight"]) > 0
    resumed = _train(
        tmp_path / "b", datalist,
        **{"train#trainer#max_epochs": 2, "resume_from": str(tmp_path / "a" / "models" / "checkpoint_epoch=1.pt")},
    )  # fmt: skip
    assert resumed["trainer"]["iteration"] == 4
    _assert_same_state(straight, resumed)
    again = _train(tmp_path / "c", datalist, **{"train#trainer#max_epochs": 2})
    _assert_same_state(straight, again)
    # and the states are not trivially equal: one epoch less gives different weights
    one = torch.load(tmp_path / "a" / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert not torch.equal(one["method"]["network_a.head.weight"], straight["method"]["network_a.head.weight"])


def test_sigkill_mid_epoch_then_resume(datalist, tmp_path):
    bundle = tmp_path / "cps_synapse"
    shutil.copytree(REPO_ROOT / "bundles" / "cps_synapse", bundle)
    args = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.json"),
        "--bundle_root", str(bundle), "--datalist", str(datalist), "--train#trainer#max_epochs", "3",
        "--train#trainer#epoch_length", "12", "--val_interval", "100",
        *[x for k, v in TINY.items() if k not in ("device", "checkpoint_n_saved", "val_interval") for x in (f"--{k}", str(v))],
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    try:
        deadline = time.time() + 240
        for line in proc.stdout:  # the saver logs after the file is closed: no half-written checkpoint
            log.append(line)
            if "Saved checkpoint at epoch: 1" in line:
                break
            assert time.time() < deadline, "".join(log[-30:])
        for line in proc.stdout:  # now in epoch 2: kill at its third iteration
            log.append(line)
            if "Epoch: 2/3, Iter: 3/12" in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "".join(log[-30:])
    models = bundle / "models"
    assert (models / "checkpoint_epoch=1.pt").is_file()
    assert not (models / "checkpoint_epoch=2.pt").exists() and not (models / "checkpoint_final.pt").exists()

    out = subprocess.run([*args, "--resume", "true"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "Restored all variables from " + str(models / "checkpoint_epoch=1.pt") in text
    assert "Epoch: 2/3, Iter: 1/12" in text and "Epoch: 1/3" not in text  # continues with epoch 2
    final = torch.load(models / "checkpoint_final.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 36
