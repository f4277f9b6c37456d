"""A non-editable install runs a shipped bundle: nothing at run time needs the repository's sources.

``pip install --no-deps --target SITE .`` builds the wheel's content (the package with its bundle
components as package data) into a folder that is put first on ``PYTHONPATH`` in subprocesses run
from a directory outside the repository. A copy of ``bundles/dhc_synapse`` then trains one epoch
with SCDL (``configs/scdl.json``) at smoke size and segments a CT with **no** size overrides: the
training run recorded its sizes in the copy's ``configs/inference.json``.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--n_filters", "4", "--resize_grid", "[32,32,32]", "--patch_size", "[32,32,32]"]


def _run(args, cwd, env):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_non_editable_install_trains_and_infers_a_bundle_copy(tmp_path):
    site, work = tmp_path / "site", tmp_path / "work"
    _run(["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), str(REPO_ROOT)],
         cwd=tmp_path, env=os.environ.copy())  # fmt: skip
    assert (site / "scdl_monai" / "resources" / "bundle_components" / "train.json").is_file()  # package data
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    work.mkdir()
    where = _run(["-c", "import scdl_monai; print(scdl_monai.__file__)"], cwd=work, env=env).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not the checkout
    shutil.copytree(REPO_ROOT / "bundles" / "dhc_synapse", work / "bundle")
    _run(["-m", "scdl_monai.data", "phantom", "data", "--size", "tiny"], cwd=work, env=env)

    _run(["-m", "monai.bundle", "run", "--config_file", "['bundle/configs/train.json','bundle/configs/scdl.json']",
          *SMALL, "--dataset_dir", "data", "--train#trainer#max_epochs", "1", "--bundle_root", "bundle"],
         cwd=work, env=env)  # fmt: skip
    assert (work / "bundle" / "models" / "model.pt").is_file()
    recorded = json.loads((work / "bundle" / "configs" / "inference.json").read_text())
    assert recorded["n_filters"] == 4 and recorded["patch_size"] == [32, 32, 32]

    image = work / "data" / "images" / "phantom_000.nii.gz"
    _run(["-m", "monai.bundle", "run", "--config_file", "['bundle/configs/inference.json','bundle/configs/scdl.json']",
          "--input_files", f"['{image}']", "--bundle_root", "bundle"], cwd=work, env=env)  # fmt: skip
    seg = nib.load(str(work / "bundle" / "eval" / "phantom_000_seg.nii.gz"))
    assert seg.shape == nib.load(str(image)).shape
