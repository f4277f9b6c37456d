"""``python -m scdl_monai.data`` run as a user would: in a subprocess."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np

from scdl_monai.data.datasets import read_split, split_dir


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "scdl_monai.data", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def _synapse_tree(root):
    """Release layout with the synapse_2023 ids: images are tiny real NIfTIs, so verify can read them."""
    split = split_dir("synapse_2023")
    ids = sorted({i for name in ("train", "eval", "test") for i in read_split(split / f"{name}.txt")})
    for sub in ("img", "label"):
        (root / "RawData" / "Training" / sub).mkdir(parents=True)
    for cid in ids:
        image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
        label = nib.Nifti1Image(np.full((4, 4, 4), 13, np.uint8), np.eye(4))
        nib.save(image, str(root / "RawData" / "Training" / "img" / f"img{cid}.nii.gz"))
        nib.save(label, str(root / "RawData" / "Training" / "label" / f"label{cid}.nii.gz"))
    return ids


def test_datalist_then_verify_success(tmp_path):
    _synapse_tree(tmp_path / "Synapse")
    out = tmp_path / "lists" / "synapse_20p.json"
    run = _cli(
        "datalist", "--dataset", "synapse", "--root", "Synapse", "--split", "synapse_2023",
        "--labeled", "20p", "--out", out, "--relative", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "training 4, unlabeled 16, validation 4, test 6" in run.stdout
    stored = json.loads(out.read_text())
    assert stored["training"][0]["image"].startswith("../Synapse/RawData/Training/img/img")

    run = _cli("verify", "--datalist", out, "--dataset", "synapse", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "30 entries checked, no problem found" in run.stdout


def test_datalist_missing_files_fails_cleanly(tmp_path):
    _synapse_tree(tmp_path / "Synapse")
    training = tmp_path / "Synapse" / "RawData" / "Training"
    gone = [training / "label" / "label0004.nii.gz", training / "img" / "img0040.nii.gz"]  # a test and an eval case
    for path in gone:
        path.unlink()
    out = tmp_path / "lists" / "dl.json"
    run = _cli("datalist", "--dataset", "synapse", "--root", tmp_path / "Synapse", "--labeled", "0.2", "--out", out,
               cwd=tmp_path)  # fmt: skip
    assert run.returncode != 0
    assert all(str(path) in run.stderr for path in gone)
    assert "Traceback" not in run.stderr
    assert not out.parent.exists()


def test_verify_reports_every_bad_file_and_exits_nonzero(tmp_path):
    ids = _synapse_tree(tmp_path / "Synapse")
    out = tmp_path / "dl.json"
    assert _cli("datalist", "--dataset", "synapse", "--root", "Synapse", "--labeled", "10p", "--out", out,
                cwd=tmp_path).returncode == 0  # fmt: skip
    corrupt = tmp_path / "Synapse" / "RawData" / "Training" / "img" / f"img{ids[0]}.nii.gz"
    corrupt.write_bytes(b"garbage")
    run = _cli("verify", "--datalist", out, "--num_classes", 13, cwd=tmp_path)  # labels hold id 13
    assert run.returncode == 1
    assert str(corrupt) in run.stderr and "cannot be read" in run.stderr
    # case 0001 is unlabeled at 10p: its image is corrupt; the 2 + 4 + 6 labels hold id 13 >= C
    assert "found 13 problem(s)" in run.stderr
    assert "Traceback" not in run.stderr


def test_unknown_option_value_names_the_key(tmp_path):
    run = _cli("datalist", "--dataset", "amos", "--root", tmp_path, "--labeled", "20p", "--out", tmp_path / "x.json",
               cwd=tmp_path)  # fmt: skip
    assert run.returncode == 1
    assert "labeled='20p'" in run.stderr and "did you mean '2p'" in run.stderr
    assert not (tmp_path / "x.json").exists()


def test_phantom_is_forwarded_and_its_output_verifies(tmp_path):
    run = _cli("phantom", "--out_dir", tmp_path / "ph", "--num_cases", 3, "--size", "tiny", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    datalist = tmp_path / "ph" / "datalist.json"
    assert datalist.is_file()
    run = _cli("verify", "--datalist", datalist, "--dataset", "synapse", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "3 entries checked" in run.stdout
