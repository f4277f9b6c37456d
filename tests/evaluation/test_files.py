"""Tests of pairing predictions with labels, NIfTI reading and atomic writes."""

import os

import nibabel as nib
import numpy as np
import pytest

from scdl_monai.evaluation.files import atomic_write, case_id_from_name, load_label_volume, pair_files


def _save(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine), str(path))
    return path


@pytest.mark.parametrize(
    "name, cid",
    [
        ("label0001.nii.gz", "0001"),
        ("img0001.nii.gz", "0001"),
        ("0001.nii.gz", "0001"),
        ("img0001_seg.nii.gz", "0001"),
        ("amos_0008.nii.gz", "amos_0008"),
        ("amos_0008_pred.nii", "amos_0008"),
        ("label.nii.gz", "label"),
    ],
)
def test_case_id_rule(name, cid):
    assert case_id_from_name(name) == cid


def test_pairing_synapse_release_names_with_monai_subfolders(tmp_path):
    vol = np.zeros((4, 4, 4), np.uint8)
    for cid in ("0001", "0002"):
        _save(tmp_path / "labels" / f"label{cid}.nii.gz", vol)
        _save(tmp_path / "preds" / f"img{cid}" / f"img{cid}_seg.nii.gz", vol)
    pairs = pair_files(tmp_path / "preds", tmp_path / "labels")
    assert [p[0] for p in pairs] == ["0001", "0002"]
    assert pairs[0][1].name == "img0001_seg.nii.gz" and pairs[0][2].name == "label0001.nii.gz"


def test_unmatched_files_are_all_listed(tmp_path):
    vol = np.zeros((4, 4, 4), np.uint8)
    _save(tmp_path / "labels" / "label0001.nii.gz", vol)
    _save(tmp_path / "labels" / "label0003.nii.gz", vol)
    _save(tmp_path / "preds" / "0001.nii.gz", vol)
    _save(tmp_path / "preds" / "0002.nii.gz", vol)
    with pytest.raises(ValueError, match="0002.nii.gz") as err:
        pair_files(tmp_path / "preds", tmp_path / "labels")
    assert "label0003.nii.gz" in str(err.value)
    # a subset via case ids is fine; non-strict skips labels without prediction but not the reverse
    assert [p[0] for p in pair_files(tmp_path / "preds", tmp_path / "labels", case_ids=["0001"])] == ["0001"]
    with pytest.raises(ValueError, match="no matching label"):
        pair_files(tmp_path / "preds", tmp_path / "labels", strict=False)
    with pytest.raises(ValueError, match=r"no prediction .*\['0003'\]"):
        pair_files(tmp_path / "preds", tmp_path / "labels", case_ids=["0001", "0003"])


def test_missing_folder_and_duplicate_ids(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        pair_files(tmp_path / "nope", tmp_path)
    vol = np.zeros((4, 4, 4), np.uint8)
    _save(tmp_path / "p" / "0001.nii.gz", vol)
    _save(tmp_path / "p" / "pred0001.nii.gz", vol)
    with pytest.raises(ValueError, match="same case id|case id '0001'"):
        pair_files(tmp_path / "p", tmp_path / "p")


def test_spacing_from_affine_and_qform_only_header(tmp_path):
    data = np.zeros((4, 5, 6), np.uint16)
    data[1, 2, 3] = 2
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])  # LPS-like flip, anisotropic
    img = nib.Nifti1Image(data, None)
    img.set_qform(affine, code=1)
    img.set_sform(np.eye(4), code=0)  # ITK-style: qform only
    nib.save(img, str(tmp_path / "x.nii.gz"))
    arr, spacing, axcodes = load_label_volume(tmp_path / "x.nii.gz")
    assert arr.shape == (4, 5, 6) and arr.dtype == np.int64 and arr[1, 2, 3] == 2
    assert spacing == pytest.approx((0.8, 0.8, 2.5))
    assert axcodes == ("L", "P", "S")


def test_non_integer_and_unreadable_files_are_named(tmp_path):
    _save(tmp_path / "f.nii.gz", np.full((3, 3, 3), 0.5, np.float32))
    with pytest.raises(ValueError, match="f.nii.gz holds non-integer"):
        load_label_volume(tmp_path / "f.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="cannot read NIfTI .*bad.nii.gz"):
        load_label_volume(tmp_path / "bad.nii.gz")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.csv"]
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.csv"]
