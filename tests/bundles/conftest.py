"""Shared scaffolding of the per-method bundle smoke tests: a tiny fake Synapse dataset, the
component files of a composed bundle (same order as :func:`scdl_monai.bundles.compose_config`) and an
initialised :class:`monai.bundle.ConfigWorkflow`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.bundle import ConfigWorkflow

from scdl_monai.bundles import build_metadata

COMPONENTS = Path(__file__).resolve().parents[2] / "bundles" / "_components"
SYNAPSE_CLASSES = 14
FAKE_SHAPE = (24, 24, 20)
#: 2 labeled, 2 unlabeled, 2 validation (one per DDP rank), 1 test
DEFAULT_ROLES = ("training", "training", "unlabeled", "unlabeled", "validation", "test", "validation")


def write_nifti(path, array, dtype) -> str:
    """Write ``array`` as NIfTI with 1.5 x 1.5 x 2 mm spacing; returns the path as a string."""
    nib.save(nib.Nifti1Image(array.astype(dtype), np.diag([1.5, 1.5, 2.0, 1.0])), str(path))
    return str(path)


def write_fake_synapse(root: Path, roles=DEFAULT_ROLES, metadata_method: str = "cps", seed: int = 0) -> Path:
    """Random images with one small box per organ (every class present) and a datalist.

    ``roles[i]`` names the datalist key(s) of case ``i``; ``"validation,test"`` puts the case in both.
    ``metadata_method`` picks the metadata.json (network I/O) of a shipped bundle kind.
    """
    rng = np.random.default_rng(seed)
    entries: dict = {}
    for i, role in enumerate(roles):
        image = rng.normal(0, 100, FAKE_SHAPE)
        label = np.zeros(FAKE_SHAPE, dtype=np.uint8)
        for k in range(1, SYNAPSE_CLASSES):
            x, y, z = rng.integers(0, 18, 3)
            label[x : x + 5, y : y + 5, z : z + 2] = k
        item = {"image": write_nifti(root / f"img{i}.nii.gz", image, np.float32), "case_id": str(i)}
        if role != "unlabeled":
            item["label"] = write_nifti(root / f"lab{i}.nii.gz", label, np.uint8)
        for key in role.split(","):
            entries.setdefault(key, []).append(item)
    (root / "datalist.json").write_text(json.dumps(entries))
    (root / "metadata.json").write_text(json.dumps(build_metadata(metadata_method, "synapse")))
    return root


def component_files(kind, *method_dirs, overlays=(), dataset="synapse", backbone="vnet") -> list:
    """Base + dataset + backbone + ``<method_dir>/<kind>.json`` for each method dir + extra overlays.

    ``kind="evaluate"`` uses the train files (add ``"evaluate.json"`` to ``overlays``).
    """
    base = "train" if kind == "evaluate" else kind
    files = [COMPONENTS / f"{base}.json", COMPONENTS / "datasets" / f"{dataset}.json",
             COMPONENTS / "backbones" / f"{backbone}.json"]  # fmt: skip
    files += [COMPONENTS / d / f"{base}.json" for d in method_dirs]
    files += [COMPONENTS / o for o in overlays]
    return [str(f) for f in files]


def bundle_workflow(config_file, dataset, bundle_root, workflow_type="train", **overrides) -> ConfigWorkflow:
    """An initialised ConfigWorkflow on the fake dataset's metadata and the shared logging.conf."""
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


def run_torchrun(config_files, dataset, bundle_root, overrides, timeout=180):
    """``torchrun --standalone --nproc_per_node=2 -m monai.bundle run`` (gloo on CPU) on the fake dataset.

    One retry on a time-out or failure: the rendezvous port can race with other torchrun jobs on the
    machine (an intermittent hang is therefore reported only when it happens twice in a row).
    Asserts success and returns the completed process.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
           "run", "--config_file", json.dumps(list(config_files)), "--meta_file", str(dataset / "metadata.json"),
           "--logging_file", str(COMPONENTS / "logging.conf"), "--bundle_root", str(bundle_root),
           "--dataset_dir", str(dataset)]  # fmt: skip
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value) if isinstance(value, bool) else json.dumps(value)]  # fire: True/False
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = None
    for _ in range(2):
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=bundle_root)
        except subprocess.TimeoutExpired:
            continue
        if result.returncode == 0:
            break
    assert result is not None, f"torchrun timed out twice ({timeout} s each): {' '.join(cmd)}"
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return result
