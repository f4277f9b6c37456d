"""Tests for scdl_monai.data.histogram.label_histogram (DistDW initialisation, docs/methods.md#distdw)."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized

from scdl_monai.data.histogram import label_histogram


def write(path, array, dtype=np.uint8):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), np.eye(4)), str(path))
    return str(path)


@pytest.fixture
def volumes(tmp_path):
    a = np.zeros((4, 4, 4))
    a[0] = 1  # 16 voxels of class 1
    a[1, 0, 0] = 2  # 1 voxel of class 2
    b = np.full((2, 2, 2), 1)
    b[0, 0, 0] = 0
    return [write(tmp_path / "a.nii.gz", a), write(tmp_path / "b.nii.gz", b)], [64 - 17 + 1, 16 + 7, 1]


def test_counts_from_paths_entries_and_datalists(tmp_path, volumes):
    paths, expected = volumes
    assert label_histogram(paths, 3).tolist() == expected
    assert label_histogram(paths, 3).dtype == torch.int64
    assert label_histogram(paths[0], 3).tolist() == [47, 16, 1]
    entries = [{"image": "x", "label": p} for p in paths]
    assert label_histogram({"training": entries, "validation": entries[:1]}, 3).tolist() == expected
    assert label_histogram({"validation": entries[:1]}, 3, section="validation").tolist() == [47, 16, 1]
    assert label_histogram(paths, 5).tolist() == expected + [0, 0]  # absent classes count 0
    datalist = tmp_path / "dl.json"
    datalist.write_text(json.dumps({"training": [{"label": "a.nii.gz"}, {"label": "b.nii.gz"}]}))
    assert label_histogram(datalist, 3).tolist() == expected  # relative paths resolved by MONAI


def test_float_labels_are_counted_as_integers(tmp_path):
    path = write(tmp_path / "f.nii.gz", np.array([[[0.0, 1.0], [2.0, 2.0]]]), dtype=np.float32)
    assert label_histogram([path], 3).tolist() == [1, 1, 2]


def test_transform_is_applied_before_counting(volumes):
    paths, _ = volumes
    # nearest resize of the 2^3 volume to 4^3: every voxel is replicated 8 times
    chain = Compose([LoadImaged("label"), EnsureChannelFirstd("label"), Resized("label", (4, 4, 4), mode="nearest")])
    assert label_histogram([paths[1]], 3, transform=chain).tolist() == [8, 56, 0]


def test_errors_name_the_file_or_key(tmp_path, volumes):
    paths, _ = volumes
    with pytest.raises(ValueError, match=r"a\.nii\.gz.*\[0, 2\].*num_classes=2"):
        label_histogram(paths, 2)
    with pytest.raises(ValueError, match="no section 'training'"):
        label_histogram({"test": []}, 3)
    with pytest.raises(ValueError, match="entry 0 has no key 'label'"):
        label_histogram([{"image": "x"}], 3)
    with pytest.raises(ValueError, match="no label volumes"):
        label_histogram([], 3)
    with pytest.raises(ValueError, match="num_classes"):
        label_histogram(paths, 0)
    with pytest.raises(ValueError, match="does not exist"):
        label_histogram(tmp_path / "missing.json", 3)
    with pytest.raises(TypeError, match="entry 0"):
        label_histogram([3], 3)
    with pytest.raises(TypeError, match="source"):
        label_histogram(3, 3)
    with pytest.raises(ValueError, match="no key 'label'"):
        label_histogram(paths, 3, transform=lambda d: {"image": d["label"]})
