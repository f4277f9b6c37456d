"""Integrity check: each kind of problem on its own, a clean set, and many problems at once."""

import json

import nibabel as nib
import numpy as np
import pytest

from scdl_monai.data.integrity import DatasetIntegrityError, Problem, check_datalist, verify_datalist

SHAPE = (8, 8, 8)
C = 4


def _save(path, array, affine=None, qform_only=False):
    img = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine)
    if qform_only:  # like real AMOS headers: sform_code 0, qfac -1
        img.set_qform(img.affine, code=1)
        img.set_sform(None, code=0)
    nib.save(img, str(path))
    return str(path)


def _case(tmp_path, name, image=None, label=None, image_affine=None, label_affine=None, **kw):
    rng = np.random.default_rng(0)
    image = rng.normal(size=SHAPE).astype(np.float32) if image is None else image
    label = rng.integers(0, C, size=SHAPE).astype(np.uint8) if label is None else label
    return {
        "image": _save(tmp_path / f"img_{name}.nii.gz", image, image_affine, **kw),
        "label": _save(tmp_path / f"lab_{name}.nii.gz", label, label_affine, **kw),
        "case_id": name,
    }


def _only_problem(problems):
    assert len(problems) == 1, problems
    assert isinstance(problems[0], Problem)
    return problems[0]


def test_clean_dataset_passes(tmp_path):
    las = np.diag([-1.5, 1.5, 2.0, 1.0])
    las[:3, 3] = [100.0, -50.0, 20.0]
    datalist = {
        "training": [_case(tmp_path, "a"), _case(tmp_path, "b", image=np.zeros(SHAPE, np.int16))],
        "unlabeled": [{"image": _case(tmp_path, "u")["image"], "case_id": "u"}],
        "validation": [_case(tmp_path, "q", image_affine=las, label_affine=las, qform_only=True)],
        "test": [_case(tmp_path, "t", label=np.full(SHAPE, C - 1, np.float32))],
    }
    assert nib.load(datalist["validation"][0]["image"]).header["sform_code"] == 0
    assert check_datalist(datalist, num_classes=C) == []
    assert verify_datalist(datalist, num_classes=C) == 5


def test_shape_mismatch(tmp_path):
    case = _case(tmp_path, "a", label=np.zeros((8, 8, 7), np.uint8))
    p = _only_problem(check_datalist({"training": [case]}, num_classes=C))
    assert p.key == "training[0].label" and p.file == case["label"]
    assert "shape (8, 8, 7) differs from image shape (8, 8, 8)" in p.message


def test_affine_mismatch_beyond_tolerance(tmp_path):
    shifted = np.eye(4)
    shifted[0, 3] = 0.01
    case = _case(tmp_path, "a", label_affine=shifted)
    p = _only_problem(check_datalist({"training": [case]}, num_classes=C))
    assert p.key == "training[0].label" and "affine differs" in p.message and "0.01" in p.message
    assert check_datalist({"training": [case]}, num_classes=C, affine_atol=0.02) == []


def test_label_id_out_of_range(tmp_path):
    label = np.zeros(SHAPE, np.int16)
    label[0, 0, :2] = [C, C + 3]
    label[1, 1, 1] = -1
    case = _case(tmp_path, "a", label=label)
    p = _only_problem(check_datalist({"training": [case]}, num_classes=C))
    assert p.file == case["label"] and f"label ids [-1, {C}, {C + 3}] outside [0, {C})" in p.message


def test_non_integer_labels(tmp_path):
    label = np.zeros(SHAPE, np.float32)
    label[0, 0, 0] = 0.5
    label[0, 0, 1] = 2.25
    case = _case(tmp_path, "a", label=label)
    p = _only_problem(check_datalist({"validation": [case]}, num_classes=C))
    assert p.key == "validation[0].label" and "2 non-integer voxel(s), e.g. [0.5, 2.25]" in p.message


def test_nan_and_inf_voxels(tmp_path):
    image = np.zeros(SHAPE, np.float32)
    image[0, 0, :3] = np.nan
    image[1, 1, 1] = np.inf
    case = _case(tmp_path, "a", image=image)
    p = _only_problem(check_datalist({"training": [case]}, num_classes=C))
    assert p.key == "training[0].image" and "3 NaN and 1 Inf voxel(s)" in p.message


def test_4d_and_2d_images(tmp_path):
    four = _case(tmp_path, "a", image=np.zeros((*SHAPE, 2), np.float32))
    two = {"image": _save(tmp_path / "two.nii.gz", np.zeros((8, 8), np.float32))}
    trailing_one = {"image": _save(tmp_path / "t1.nii.gz", np.zeros((*SHAPE, 1), np.float32))}
    problems = check_datalist({"training": [four], "unlabeled": [two, trailing_one]}, num_classes=C)
    assert [(p.key, p.message.split(":")[0]) for p in problems] == [
        ("training[0].image", "4-D data of shape (8, 8, 8, 2)"),
        ("unlabeled[0].image", "2-D data of shape (8, 8)"),
    ]


def test_missing_file(tmp_path):
    case = _case(tmp_path, "a")
    case["image"] = str(tmp_path / "nope.nii.gz")
    p = _only_problem(check_datalist({"training": [case]}, num_classes=C))
    assert (p.key, p.file, p.message) == ("training[0].image", case["image"], "file not found")


def test_corrupt_gzip(tmp_path):
    case = _case(tmp_path, "a")
    data = open(case["image"], "rb").read()
    with open(case["image"], "wb") as f:
        f.write(data[:-100])  # header intact, data stream truncated
    p = _only_problem(check_datalist({"training": [case]}, num_classes=C))
    assert p.file == case["image"] and p.message.startswith("cannot be read (EOFError")


def test_empty_file(tmp_path):
    case = _case(tmp_path, "a")
    open(case["label"], "wb").close()
    p = _only_problem(check_datalist({"training": [case]}, num_classes=C))
    assert (p.key, p.file, p.message) == ("training[0].label", case["label"], "empty file (0 bytes)")


def test_multi_problem_dataset_reports_all_at_once(tmp_path):
    good = _case(tmp_path, "good")
    nan_image = np.ones(SHAPE, np.float32)
    nan_image[2, 2, 2] = np.nan
    broken_label = tmp_path / "broken.nii.gz"
    broken_label.write_bytes(b"not a gzip stream at all")
    datalist = {
        "training": [
            good,
            _case(tmp_path, "nan", image=nan_image),
            {"image": good["image"], "label": str(broken_label)},
        ],
        "unlabeled": [{"image": str(tmp_path / "missing.nii.gz")}],
        "validation": [{"image": _case(tmp_path, "v")["image"]}],  # validation entry without label
        "test": [_case(tmp_path, "big", label=np.full(SHAPE, 9, np.uint8)), dict(good)],
    }
    path = tmp_path / "dl.json"
    path.write_text(json.dumps(datalist))
    with pytest.raises(DatasetIntegrityError) as info:
        verify_datalist(path, num_classes=C)
    keys = [p.key for p in info.value.problems]
    assert keys == [
        "training[1].image",
        "training[2].label",
        "unlabeled[0].image",
        "validation[0].label",
        "test[0].label",
        "training[2].image",  # the same image listed twice inside training
        "test[1].image",  # a training image in test: leak
    ]
    assert "train/evaluation leak" in info.value.problems[-1].message
    assert "duplicate entry" in info.value.problems[-2].message
    message = str(info.value)
    assert message.startswith("dataset integrity check found 7 problem(s)")
    assert str(broken_label) in message and str(tmp_path / "missing.nii.gz") in message


def test_relative_paths_resolved_against_json_folder_and_num_classes_sources(tmp_path):
    case = _case(tmp_path, "a", label=np.full(SHAPE, 13, np.uint8))
    datalist = {
        "labels": {str(i): f"class {i}" for i in range(14)},
        "training": [{"image": "img_a.nii.gz", "label": "lab_a.nii.gz"}],
    }
    path = tmp_path / "dl.json"
    path.write_text(json.dumps(datalist))
    assert check_datalist(path) == []  # C = 14 from the "labels" table
    assert check_datalist(path, dataset="synapse") == []
    assert check_datalist(path, dataset="amos", keys=["training"]) == []  # dataset wins over the table
    assert "outside [0, 13)" in _only_problem(check_datalist(path, num_classes=13)).message
    assert check_datalist([case], num_classes=14) == []  # a plain list of entries


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="give num_classes or dataset"):
        check_datalist([], num_classes=None)
    with pytest.raises(ValueError, match=r"num_classes=14 contradicts dataset='amos' \(C=16\)"):
        check_datalist([], num_classes=14, dataset="amos")
    with pytest.raises(FileNotFoundError, match="datalist file not found"):
        check_datalist(tmp_path / "none.json", num_classes=2)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        check_datalist(tmp_path / "bad.json", num_classes=2)
    with pytest.raises(ValueError, match=r"keys \['tset'\] not in the datalist"):
        check_datalist({"test": []}, num_classes=2, keys=["tset"])


def test_itk_reader_path_for_non_nifti(tmp_path):
    import itk

    image = itk.image_from_array(np.zeros((6, 7, 8), np.float32))  # itk arrays are z, y, x
    path = tmp_path / "img.nrrd"
    itk.imwrite(image, str(path))
    label = _save(tmp_path / "lab.nii.gz", np.zeros((8, 7, 6), np.uint8), np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert check_datalist([{"image": str(path), "label": label}], num_classes=2) == []
