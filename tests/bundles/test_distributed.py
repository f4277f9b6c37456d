"""Two-process DDP training of the CPS bundle on CPU (gloo) with torchrun (docs/bundles.md, Multi-GPU).

Checks: both processes finish (no collective hangs with rank-0-only handlers), both networks are
DDP-wrapped for training but saved unwrapped (no ``module.`` in the checkpoint), and the
DistributedSampler splits BOTH streams (2 unlabeled volumes / 2 ranks / batch 1 = 1 iteration per
epoch; without a sampler on the unlabeled loader an epoch would have 2).
"""

import os
import shutil
import subprocess
import sys

import torch

from scdl_monai.data.phantom import generate_phantom

from ..conftest import REPO_ROOT


def test_torchrun_two_process_gloo_cps(tmp_path):
    datalist = generate_phantom(tmp_path / "data", num_cases=7, shape=(32, 32, 32), seed=2, labeled_fraction=0.5, num_validation=2, num_test=1)
    bundle = tmp_path / "cps_synapse"
    shutil.copytree(REPO_ROOT / "bundles" / "cps_synapse", bundle)
    configs = f"['{bundle}/configs/train.json','{bundle}/configs/multi_gpu_train.json']"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(bundle), "--datalist", str(datalist),
        "--train#trainer#max_epochs", "2", "--cache_rate", "0", "--num_workers", "0", "--patch_size", "[32,32,32]",
        "--n_filters", "4", "--batch_size", "1", "--unlabeled_batch_size", "1", "--val_interval", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (bundle / "models" / "model.pt").is_file()
    state = torch.load(bundle / "models" / "checkpoint_final.pt", weights_only=True)
    assert state["trainer"]["epoch_length"] == 1 and state["trainer"]["iteration"] == 2
    keys = list(state["method"])
    assert any(k.startswith("network_a.") for k in keys) and any(k.startswith("network_b.") for k in keys)
    assert not any("module." in k for k in keys)
    best = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(k.startswith("networks.") for k in best)  # LogitMean([network_a, network_b]) state, unwrapped
