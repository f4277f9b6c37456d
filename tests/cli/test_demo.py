"""scdl_monai.cli.demo end to end on the shipped real CT samples, shortened to 1 epoch and 4 filters.

This is the README's first command (CPS + SCDL) with fewer epochs (the full demo trains 80); it runs in the
default suite because every stage (bundle write-out, monai.bundle training on real CT with an
unlabeled stream, inference back to the original grid, evaluation, overlay) is exercised.
"""

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from scdl_monai.cli.demo import DEMO_CASES, main, prepare_data, run_demo


def test_demo_writes_metrics_prediction_and_overlay(samples_dir, tmp_path):
    paths = run_demo(tmp_path / "demo", epochs=1, val_interval=1, overrides={"n_filters": 4}, verbose=False)

    with open(paths["summary"]) as fh:
        rows = list(csv.DictReader(fh))
    organs = [r for r in rows if r["class_index"] not in ("", "avg", "mean")]
    names = [r["class_name"] for r in organs]
    assert names[:1] == ["spleen"] and names[-1] == "left adrenal gland" and len(names) == 13  # Synapse-13
    liver = organs[names.index("liver")]
    assert 0.0 <= float(liver["dice_mean"]) <= 100.0 and liver["n_cases"] == "1"

    ref = nib.load(str(samples_dir / DEMO_CASES["evaluation"]["image"]))
    pred = nib.load(str(paths["prediction"]))
    assert pred.shape == ref.shape == (122, 101, 30)
    assert np.allclose(pred.affine, ref.affine)
    assert int(np.asanyarray(pred.dataobj).max()) <= 13

    assert paths["overlay"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (paths["bundle"] / "models" / "model.pt").is_file()

    # the trained bundle is the SCDL variant itself (scdl.json baked in) and records the demo's sizes
    configs = paths["bundle"] / "configs"
    train, inference = (json.loads((configs / f"{k}.json").read_text()) for k in ("train", "inference"))
    assert not (configs / "scdl.json").exists()
    assert "scdl_method_def" in train and inference["n_filters"] == 4 and inference["pixdim"] == [3.0, 3.0, 3.0]
    # the plain command the demo prints segments another patient's real CT (the chest CT crop, LPS 1.5 mm)
    other = samples_dir / DEMO_CASES["unlabeled"][1]["image"]
    out = tmp_path / "other_seg.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "scdl_monai.cli.inference", "--input", str(other), "--bundle",
                           str(paths["bundle"]), "--output", str(out)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    seg, ct = nib.load(str(out)), nib.load(str(other))
    assert seg.shape == ct.shape and np.allclose(seg.affine, ct.affine)
    assert int(np.asanyarray(seg.dataobj).max()) <= 13


def test_demo_roles_keep_evaluation_labels_out_of_training(samples_dir, tmp_path):
    datalist = json.loads(prepare_data(samples_dir, tmp_path).read_text())
    train_files = {e["image"] for e in datalist["training"] + datalist["validation"] + datalist["unlabeled"]}
    assert {e["image"] for e in datalist["test"]}.isdisjoint(train_files)
    assert {e["label"] for e in datalist["test"]}.isdisjoint({e["label"] for e in datalist["training"]})
    assert all("label" not in e for e in datalist["unlabeled"]) and len(datalist["unlabeled"]) == 2
    with pytest.raises(FileNotFoundError, match="demo sample missing"):
        prepare_data(tmp_path / "nowhere", tmp_path / "out")


def test_demo_cli_rejects_bad_arguments(capsys):
    assert main(["--epochs", "0", "--out", "unused"]) == 1
    assert "epochs" in capsys.readouterr().err
