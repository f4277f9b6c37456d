"""Bad inputs for the reliability tests (docs/reliability.md): a small valid phantom dataset and,
next to it, one broken file per kind of mistake. Everything is 32³ or smaller."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scdl_monai.data.phantom import generate_phantom

REPO_ROOT = Path(__file__).resolve().parents[2]
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
SHAPE = (32, 32, 32)


def save(path: Path, array, dtype=np.int16, affine=AFFINE) -> str:
    nib.save(nib.Nifti1Image(np.asarray(array).astype(dtype), affine), str(path))
    return str(path)


def ct_volume(seed: int = 0, shape=SHAPE) -> np.ndarray:
    """Air around a soft-tissue block with a bright structure: HU-like values."""
    rng = np.random.default_rng(seed)
    vol = np.full(shape, -1000.0)
    vol[4:-4, 4:-4, 4:-4] = rng.normal(40, 20, tuple(s - 8 for s in shape))
    vol[10:16, 10:16, 10:16] = 300.0
    return vol


def write_json(path: Path, content) -> str:
    path.write_text(json.dumps(content, indent=1))
    return str(path)


@pytest.fixture(scope="package")
def phantom(tmp_path_factory) -> Path:
    """A valid datalist: 2 labeled, 2 unlabeled, 1 validation, 1 test phantom CT cases of 32³."""
    root = tmp_path_factory.mktemp("phantom")
    return generate_phantom(root, num_cases=6, shape=SHAPE, seed=1, labeled_fraction=0.5, num_validation=1, num_test=1)


@pytest.fixture(scope="package")
def bad_files(tmp_path_factory) -> dict:
    """name -> path of one broken (or suspicious) file each, plus a good image and label."""
    root = tmp_path_factory.mktemp("bad")
    label = np.zeros(SHAPE, np.uint8)
    label[8:20, 8:20, 8:20] = 1
    files = {"image": save(root / "image.nii.gz", ct_volume()), "label": save(root / "label.nii.gz", label, np.uint8)}
    raw = gzip.compress(nib.Nifti1Image(ct_volume().astype(np.int16), AFFINE).to_bytes())
    (root / "corrupt.nii.gz").write_bytes(raw[: len(raw) // 2])  # truncated download
    files["corrupt"] = str(root / "corrupt.nii.gz")
    (root / "empty.nii.gz").write_bytes(b"")
    files["empty"] = str(root / "empty.nii.gz")
    files["4d"] = save(root / "image_4d.nii.gz", np.stack([ct_volume(), ct_volume(1)], axis=-1))
    files["2d"] = save(root / "image_2d.nii.gz", ct_volume()[:, :, 0], affine=np.diag([1.5, 1.5, 1.0, 1.0]))
    files["shape_mismatch"] = save(root / "label_small.nii.gz", label[:, :, :30], np.uint8)
    shifted = AFFINE.copy()
    shifted[:3, 3] = [5.0, 0.0, 0.0]
    files["affine_mismatch"] = save(root / "label_shifted.nii.gz", label, np.uint8, affine=shifted)
    big = label.copy()
    big[0, 0, 0] = 20
    files["label_id"] = save(root / "label_id20.nii.gz", big, np.uint8)
    files["float_label"] = save(root / "label_float.nii.gz", label * 0.5, np.float32)
    nan = ct_volume().astype(np.float32)
    nan[3, 3, 3], nan[4, 4, 4] = np.nan, np.inf
    files["nan"] = save(root / "image_nan.nii.gz", nan, np.float32)
    files["mr"] = save(root / "image_mr.nii.gz", np.clip(ct_volume(), 0, None))  # no negative value, MR-like
    files["missing"] = str(root / "does_not_exist.nii.gz")
    return files


def run_cli(*args, timeout=180):
    """``python <args>`` in a subprocess (one intra-op thread)."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
