"""Bad data through the data command line (``python -m scdl_monai.data datalist|verify``).

One ``verify`` subprocess checks a datalist holding one broken case per row of docs/reliability.md
and must list every problem (exit 1, no traceback); ``datalist`` mistakes run in-process through
the same ``main``.
"""

import shutil

import pytest

from scdl_monai.data.__main__ import main

from .conftest import run_cli, write_json

#: row -> (datalist entry builder keys, expected text in the report)
ROWS = {
    "corrupt .nii.gz": ("corrupt", None, "training[0].image: {corrupt}: cannot be read"),
    "empty file": ("empty", None, "training[1].image: {empty}: empty file (0 bytes)"),
    "4-D image": ("4d", None, "training[2].image: {4d}: 4-D data of shape (32, 32, 32, 2): expected a 3-D single-channel volume"),
    "2-D image": ("2d", None, "training[3].image: {2d}: 2-D data of shape (32, 32): expected a 3-D single-channel volume"),
    "image/label shape mismatch": (None, "shape_mismatch", "training[4].label: {shape_mismatch}: shape (32, 32, 30) differs from image shape (32, 32, 32)"),
    "image/label affine mismatch": (None, "affine_mismatch", "training[5].label: {affine_mismatch}: affine differs from the image's by up to 5"),
    "label id >= num_classes": (None, "label_id", "training[6].label: {label_id}: label ids [20] outside [0, 14) (num_classes=14)"),
    "float labels": (None, "float_label", "training[7].label: {float_label}: label has 1728 non-integer voxel(s), e.g. [0.5]"),
    "NaN/Inf voxels": ("nan", None, "training[8].image: {nan}: image has 1 NaN and 1 Inf voxel(s)"),
    "missing file": ("missing", None, "training[9].image: {missing}: file not found"),
    "non-CT intensities": ("mr", None, "training[10].image: {mr}: intensities [0, 300] have no negative value, so they are not CT"),
}


@pytest.fixture()
def bad_datalist(bad_files, tmp_path):
    """Training entries 0..10 (one per row), plus a case id shared by training and validation."""
    entries = []
    for i, (image_key, label_key, _) in enumerate(ROWS.values()):
        image = bad_files[image_key] if image_key else shutil.copy(bad_files["image"], tmp_path / f"image{i}.nii.gz")
        label = bad_files[label_key] if label_key else shutil.copy(bad_files["label"], tmp_path / f"label{i}.nii.gz")
        entries.append({"image": str(image), "label": str(label), "case_id": f"case{i}"})
    leak = {"image": str(shutil.copy(bad_files["image"], tmp_path / "val.nii.gz")), "label": bad_files["label"], "case_id": "case4"}
    return write_json(tmp_path / "bad.json", {"training": entries, "validation": [leak]})


def test_verify_lists_every_bad_input_at_once(bad_datalist, bad_files, tmp_path):
    out = run_cli("-m", "scdl_monai.data", "verify", "--datalist", bad_datalist, "--num_classes", "14", "--ct")
    print(out.stderr)  # the exact report, copied into docs/reliability.md
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: dataset integrity check found 12 problem(s):")
    for row, (_, _, expected) in ROWS.items():
        assert expected.format(**bad_files) in out.stderr, row
    duplicate = f"validation[0].case_id: {tmp_path / 'val.nii.gz'}: case id 'case4' also listed as training[4]"
    assert duplicate in out.stderr and "(train/evaluation leak)" in out.stderr


def test_datalist_command_errors(tmp_path, capsys):
    assert main(["datalist", "--dataset", "synaps", "--root", str(tmp_path), "--labeled", "20p", "--out", str(tmp_path / "d.json")]) == 1
    assert "unknown dataset 'synaps'; did you mean 'synapse'?" in capsys.readouterr().err
    assert main(["datalist", "--dataset", "synapse", "--root", str(tmp_path / "nope"), "--labeled", "20p", "--out", str(tmp_path / "d.json")]) == 1
    err = capsys.readouterr().err
    print(err)
    assert "nope" in err and err.startswith("error: ")
    assert main(["verify", "--datalist", str(tmp_path / "missing.json"), "--num_classes", "14"]) == 1
    assert "datalist file not found: " in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()
