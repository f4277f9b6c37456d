"""Exact resume and determinism for every method, and resume after SIGKILL through the bundle CLI.

For each method (supervised, CPS, DHC, GA-CPS, MagicNet, GenericSSL, SimiS, CLD, SKCDF, CPS+SCDL), composed from the
bundle components and run with MONAI's ``ConfigWorkflow`` on CPU with shuffling and random crops on:

* 2 epochs straight == resume from the straight run's epoch-1 checkpoint + 1 epoch: every tensor and
  value of the final checkpoint (method incl. buffers, every optimizer and LR scheduler, GradScaler,
  trainer position, random states) is identical;
* two runs with one seed are identical.

A killed run resumes from its newest complete checkpoint, so "SIGKILL mid-epoch + ``--resume true``"
is "resume from the epoch checkpoint" above; the subprocess test kills a real training process
mid-epoch and checks that the resumed run ends with the uninterrupted run's weights.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from monai.bundle import ConfigWorkflow

from scdl_monai.bundles import component_files, components_dir
from scdl_monai.data.phantom import generate_phantom

from ..conftest import REPO_ROOT

LOGGING_CONF = str(components_dir() / "logging.conf")

TINY = {
    "cache_rate": 0.0,
    "num_workers": 0,
    "patch_size": [32, 32, 32],
    "n_filters": 4,
    "batch_size": 1,
    "unlabeled_batch_size": 1,
    "val_interval": 1,
    "device": "cpu",
    "amp": False,
    "checkpoint_n_saved": None,
}
#: name -> ((method, scdl), extra overrides)
METHODS = {
    "supervised": (("supervised", False), {}),
    "cps": (("cps", False), {}),
    "dhc": (("dhc", False), {"class_weight_log_interval": 1}),
    "ga_cps": (("ga_cps", False), {}),
    "magicnet": (("magicnet", False), {"cube_size": 16, "location_hidden_features": 16, "network_def#norm": "batch"}),
    "genericssl": (("genericssl", False), {"class_weight_log_interval": 1, "val_interval": 100}),  # DDIM validation is slow
    "simis": (("simis", False), {"class_weight_log_interval": 1}),
    "cld": (("cld", False), {"method_def#confidence_interval": 1}),  # a confidence refresh every step
    "skcdf": (("skcdf", False), {}),
    "cps_scdl": (("cps", True), {"scdl_block#z_dim": 8, "scdl_block#num_proxy_samples": 3, "scdl_warmup_iters": 2}),
}


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    # volumes larger than the patch: random crop positions, shuffled loaders (2 labeled, 2 unlabeled)
    root = tmp_path_factory.mktemp("phantom")
    return generate_phantom(root, num_cases=6, shape=(40, 36, 34), spacing=(1.5, 1.5, 2.0), seed=3, labeled_fraction=0.5, num_validation=1, num_test=1)


def _config_files(method_scdl):
    """The method's train config from the bundle components, native protocol (random crops of resampled volumes)."""
    method, scdl = method_scdl
    return [str(f) for f in component_files("train", method, "synapse", protocol="native", scdl=scdl)]


def _workflow(method, bundle_root, datalist, **overrides):
    dirs, extra = METHODS[method]
    wf = ConfigWorkflow(
        config_file=_config_files(dirs), logging_file=LOGGING_CONF, workflow_type="train",
        meta_file=str(REPO_ROOT / "bundles" / "cps_synapse" / "configs" / "metadata.json"),
        bundle_root=str(bundle_root), datalist=str(datalist),
        **{**TINY, **extra, "train#trainer#max_epochs": 2, "resume_from": "", **overrides},
    )  # fmt: skip
    wf.initialize()
    return wf


def _train(method, bundle_root, datalist, **overrides):
    wf = _workflow(method, bundle_root, datalist, **overrides)
    wf.run()
    wf.finalize()
    return bundle_root / "models"


def _load(path):
    return torch.load(path, weights_only=True)


def _flatten(obj, prefix=""):
    if isinstance(obj, dict):
        return {k: v for key, item in obj.items() for k, v in _flatten(item, f"{prefix}{key}/").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, item in enumerate(obj) for k, v in _flatten(item, f"{prefix}{i}/").items()}
    return {prefix: obj}


def _differences(a, b):
    flat_a, flat_b = _flatten(a), _flatten(b)
    if flat_a.keys() != flat_b.keys():
        return sorted(flat_a.keys() ^ flat_b.keys())[:5]
    bad = []
    for name, va in flat_a.items():
        vb = flat_b[name]
        same = torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb
        if not same:
            bad.append(name)
    return bad


@pytest.mark.parametrize("method", list(METHODS))
def test_resume_equals_straight_run_and_seed_reproduces(method, datalist, tmp_path):
    straight = _train(method, tmp_path / "straight", datalist)
    final = _load(straight / "checkpoint_final.pt")
    assert final["trainer"]["iteration"] == 4 and "rng" in final  # 2 epochs x 2 unlabeled (or labeled) batches
    resumed = _train(method, tmp_path / "resumed", datalist, resume_from=str(straight / "checkpoint_epoch=1.pt"))
    assert _differences(final, _load(resumed / "checkpoint_final.pt")) == []
    again = _train(method, tmp_path / "again", datalist)
    assert _differences(final, _load(again / "checkpoint_final.pt")) == []
    # the comparisons can fail: one more epoch changes the weights
    assert _differences(_load(straight / "checkpoint_epoch=1.pt")["method"], final["method"])


def test_sigkill_mid_epoch_then_resume_reproduces_the_uninterrupted_run(datalist, tmp_path):
    settings = {**TINY, "train#trainer#max_epochs": 2, "train#trainer#epoch_length": 6, "val_interval": 100}
    straight = _load(_train("cps", tmp_path / "straight", datalist, **settings) / "checkpoint_final.pt")

    bundle = tmp_path / "killed"
    args = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(_config_files(METHODS["cps"][0])),
        "--meta_file", str(REPO_ROOT / "bundles" / "cps_synapse" / "configs" / "metadata.json"),
        "--logging_file", LOGGING_CONF, "--bundle_root", str(bundle), "--datalist", str(datalist),
        *[x for k, v in settings.items() if k not in ("checkpoint_n_saved", "amp") for x in (f"--{k}", str(v))],
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    try:
        deadline = time.time() + 240
        for line in proc.stdout:  # the saver logs after the file is closed
            log.append(line)
            if "Saved checkpoint at epoch: 1" in line:
                break
            assert time.time() < deadline, "".join(log[-30:])
        for line in proc.stdout:  # now in epoch 2: kill at its third iteration
            log.append(line)
            if "Epoch: 2/2, Iter: 3/6" in line:
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
    assert "Epoch: 2/2, Iter: 1/6" in text and "Epoch: 1/2" not in text  # continues with epoch 2
    resumed = _load(models / "checkpoint_final.pt")
    assert resumed["trainer"]["iteration"] == 12
    assert _differences(straight["method"], resumed["method"]) == []
