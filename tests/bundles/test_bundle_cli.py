"""Bundles through MONAI's command line: components from the repository root, a written-out bundle
from an unrelated directory, a one-override backbone swap, and the ``--tracking mlflow`` patch."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigWorkflow

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
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_components_run_from_repository_root(datalist, tmp_path):
    comp = "bundles/_components"
    files = f"['{comp}/train.json','{comp}/datasets/synapse.json','{comp}/backbones/vnet.json','{comp}/methods/supervised/train.json']"
    _run(
        ["--config_file", files, "--meta_file", "bundles/supervised_synapse/configs/metadata.json",
         "--logging_file", f"{comp}/logging.conf", "--bundle_root", str(tmp_path), "--datalist", str(datalist), *TINY],
        cwd=REPO_ROOT,
    )  # fmt: skip
    assert (tmp_path / "models" / "model.pt").is_file()


def test_written_bundle_runs_from_any_directory_and_swaps_backbone(datalist, tmp_path):
    bundle = write_bundle("cps", "synapse", tmp_path / "shared" / "cps_synapse")
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
