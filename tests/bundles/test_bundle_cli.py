"""Bundles through MONAI's command line: a copy of a shipped bundle run from an unrelated directory
without the generator's components (baseline with a one-override backbone swap, and with
``configs/scdl.json``), and the ``--tracking mlflow`` patch."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigWorkflow

import scdl_monai
from scdl_monai.bundles import write_bundle
from scdl_monai.data.phantom import generate_phantom

from ..conftest import REPO_ROOT

TINY = [
    "--train#trainer#max_epochs", "1", "--cache_rate", "0", "--num_workers", "0", "--patch_size", "[32,32,32]",
    "--n_filters", "4", "--batch_size", "1", "--unlabeled_batch_size", "1", "--val_interval", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    return generate_phantom(root, num_cases=5, shape=(32, 32, 32), seed=1, labeled_fraction=0.5, num_validation=1, num_test=1)


def _run(args, cwd, timeout=240):
    """``python -m monai.bundle run ARGS`` in ``cwd`` with only the scdl_monai package importable (no bundle
    folder on PYTHONPATH) and the generator's components out of reach (``SCDL_MONAI_COMPONENTS`` points nowhere)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(scdl_monai.__file__))  # the package, as an install provides it
    env["SCDL_MONAI_COMPONENTS"] = os.path.join(str(cwd), "no_components_here")
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_bundle_copy_runs_from_any_directory_and_swaps_backbone(datalist, tmp_path):
    bundle = tmp_path / "shared" / "cps_synapse"
    shutil.copytree(REPO_ROOT / "bundles" / "cps_synapse", bundle)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run(
        ["--config_file", str(bundle / "configs" / "train.json"), "--bundle_root", str(bundle),
         "--datalist", str(datalist), "--network_def#name", "unet", *TINY],
        cwd=elsewhere,
    )  # fmt: skip
    state = torch.load(bundle / "models" / "checkpoint_final.pt", weights_only=True)["method"]
    # MONAI UNet parameters ("model.0....") in both CPS networks, none of the VNet's blocks
    assert any(k.startswith("network_a.model.") for k in state) and any(k.startswith("network_b.model.") for k in state)
    assert not any("encoder_stages" in k for k in state)
    assert list(elsewhere.iterdir()) == []  # everything went to bundle_root


def test_bundle_copy_runs_with_the_scdl_overlay_from_any_directory(datalist, tmp_path):
    bundle = tmp_path / "ga_cps_synapse"
    shutil.copytree(REPO_ROOT / "bundles" / "ga_cps_synapse", bundle)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    files = f"['{bundle}/configs/train.json','{bundle}/configs/scdl.json']"
    _run(["--config_file", files, "--bundle_root", str(bundle), "--datalist", str(datalist), *TINY,
          "--resize_grid", "[32,32,32]", "--scdl_block#z_dim", "8", "--scdl_block#num_proxy_samples", "3"], cwd=elsewhere)  # fmt: skip
    state = torch.load(bundle / "models" / "checkpoint_final.pt", weights_only=True)["method"]
    assert any(k.startswith("base.network_a.scdl.") for k in state) and any(k.startswith("base.network_b.scdl.") for k in state)
    assert (bundle / "models" / "model.pt").is_file() and list(elsewhere.iterdir()) == []


def test_tracking_mlflow_adds_handlers(datalist, tmp_path):
    bundle = write_bundle("cps", "amos", tmp_path / "cps_amos")
    wf = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"), logging_file=False, workflow_type="train", tracking="mlflow",
        bundle_root=str(bundle), datalist=str(datalist),
    )  # fmt: skip
    for section in ("train#handlers", "validate#handlers"):
        assert wf.parser[section][-1]["_target_"] == "MLFlowHandler"
    if importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("sqlalchemy") is None:
        # MONAI's default tracking URI is an SQLite store, which needs the full mlflow (not mlflow-skinny)
        pytest.skip("mlflow with SQLAlchemy is not installed (pip install 'scdl_monai[mlflow]'): handler wiring checked, run skipped")
    wf.parser.update({k.lstrip("-"): json.loads(v) for k, v in zip(TINY[::2], TINY[1::2])})  # CLI strings -> values
    wf.initialize()
    wf.run()
    wf.finalize()
    assert (bundle / "eval" / "mlruns.db").is_file()
