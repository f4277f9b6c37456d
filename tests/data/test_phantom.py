"""Tests for scdl_monai.data.phantom: the class-imbalanced synthetic abdomen."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from scdl_monai.data.datasets import SYNAPSE
from scdl_monai.data.phantom import class_voxel_shares, generate_phantom, phantom_case, phantom_cli

TINY = (32, 32, 32)


def test_same_seed_same_volume_and_different_seed_differs():
    a_img, a_lab = phantom_case(TINY, seed=3)
    b_img, b_lab = phantom_case(TINY, seed=3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    c_img, c_lab = phantom_case(TINY, seed=4)
    assert not np.array_equal(a_lab, c_lab) and not np.array_equal(a_img, c_img)
    assert a_img.dtype == np.int16 and a_lab.dtype == np.uint8 and a_img.shape == TINY


@pytest.mark.parametrize("shape", [TINY, (48, 48, 32)])
def test_every_case_has_all_organs_and_500_to_1_imbalance(shape):
    for seed in range(4):
        _, label = phantom_case(shape, seed=seed)
        counts = np.bincount(label.ravel(), minlength=14)
        assert label.max() <= 13
        assert (counts[1:] > 0).all(), f"seed {seed}: missing organ ids {np.flatnonzero(counts[1:] == 0) + 1}"
        organs = counts[1:]
        assert organs.argmax() + 1 == 6  # liver is the largest
        assert organs.argmin() + 1 in (12, 13)  # an adrenal gland is the smallest
        assert organs.max() / organs.min() >= 500


def test_intensities_are_ct_like_and_small_organs_are_hard():
    image, label = phantom_case((48, 48, 32), seed=0)
    assert image[0, 0, :].max() < -900  # air outside the body
    mean = {i: float(image[label == i].mean()) for i in range(1, 14)}
    for organ in (1, 2, 3, 6, 11, 12, 13):  # soft tissue
        assert -20 < mean[organ] < 110, (SYNAPSE.class_names[organ], mean[organ])
    assert mean[8] > mean[6] + 40  # contrast-filled aorta brighter than liver
    assert image.max() > 300  # bone
    # adrenal glands are as bright as the kidneys they touch: less than 2 noise std apart
    kidney = image[(label == 2) | (label == 3)].astype(float)
    adrenal = image[(label == 12) | (label == 13)].astype(float)
    assert abs(adrenal.mean() - kidney.mean()) < 2 * kidney.std()


def test_generate_phantom_files_split_and_datalist(tmp_path):
    path = generate_phantom(tmp_path / "ph", num_cases=10, shape=TINY, spacing=(1.5, 1.5, 2.0), seed=0)
    datalist = json.loads(path.read_text())
    sizes = {k: len(datalist[k]) for k in ("training", "unlabeled", "validation", "test")}
    # test max(1, 0.2*10)=2, validation max(1, 0.1*10)=1, labeled round(0.2*7)=1, unlabeled 6
    assert sizes == {"training": 1, "unlabeled": 6, "validation": 1, "test": 2}
    ids = [e["case_id"] for k in sizes for e in datalist[k]]
    assert sorted(ids) == [f"phantom_{i:03d}" for i in range(10)]
    assert all("label" not in e for e in datalist["unlabeled"])
    assert all({"image", "label", "case_id"} <= set(e) for k in ("training", "validation", "test") for e in datalist[k])
    entry = datalist["training"][0]
    img, lab = nib.load(entry["image"]), nib.load(entry["label"])
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    assert img.shape == TINY and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(img.header.get_zooms(), (1.5, 1.5, 2.0))
    np.testing.assert_allclose(img.affine, lab.affine)
    # case content depends only on (seed, index)
    _, expected = phantom_case(TINY, seed=(0, int(entry["case_id"][-3:])))
    assert np.array_equal(np.asanyarray(lab.dataobj), expected)
    # MONAI reads the custom keys
    assert len(load_decathlon_datalist(str(path), data_list_key="unlabeled")) == 6


def test_generate_phantom_is_reproducible_and_relative_paths_resolve(tmp_path):
    a = json.loads(generate_phantom(tmp_path / "a", num_cases=5, shape=TINY, seed=2, relative=True).read_text())
    b = json.loads(generate_phantom(tmp_path / "b", num_cases=5, shape=TINY, seed=2, relative=True).read_text())
    assert a["training"] == b["training"] and a["test"] == b["test"]
    assert not a["training"][0]["image"].startswith("/")
    for k in ("images", "labels"):
        for f in (tmp_path / "a" / k).iterdir():
            assert f.read_bytes() == (tmp_path / "b" / k / f.name).read_bytes()
    resolved = load_decathlon_datalist(str(tmp_path / "a" / "datalist.json"), data_list_key="training")
    assert all(e["image"].startswith(str(tmp_path / "a")) for e in resolved)


def test_class_voxel_shares_hand_computed():
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    label.flat[:600] = 6  # liver
    label.flat[600:602] = 12  # right adrenal
    label.flat[602:606] = 1  # spleen
    shares = class_voxel_shares([label, label])  # counts add up over volumes
    assert shares["per_class"]["liver"]["voxels"] == 1200
    assert shares["per_class"]["liver"]["percent_foreground"] == pytest.approx(100 * 600 / 606)
    assert shares["per_class"]["spleen"]["ratio_to_smallest"] == pytest.approx(2.0)
    assert shares["largest"] == "liver" and shares["smallest"] == "right adrenal gland"
    assert shares["background_voxels"] == 2 * 394 and shares["foreground_voxels"] == 2 * 606
    assert shares["largest_to_smallest"] == float("inf")  # 10 organs missing
    assert len(shares["missing"]) == 10
    with pytest.raises(ValueError, match="0..13"):
        class_voxel_shares(np.full((2, 2, 2), 14))


def test_phantom_cli_prints_table_and_ratio(tmp_path, capsys):
    phantom_cli(str(tmp_path / "cli"), num_cases=5, size="tiny", seed=1)
    out = capsys.readouterr().out
    assert "liver" in out and "left adrenal gland" in out
    match = re.search(r"largest:smallest organ ratio = ([0-9.]+):1", out)
    assert match and float(match.group(1)) >= 500
    with pytest.raises(ValueError, match="did you mean 'small'"):
        phantom_cli(str(tmp_path / "cli2"), size="smal")


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        phantom_case((32, 32), seed=0)
    with pytest.raises(ValueError, match="labeled_fraction"):
        generate_phantom(tmp_path, num_cases=5, shape=TINY, labeled_fraction=0)
    with pytest.raises(ValueError, match="num_validation=3"):
        generate_phantom(tmp_path, num_cases=5, shape=TINY, num_validation=3, num_test=2)
    assert not (tmp_path / "datalist.json").exists()


def test_pose_jitter_moves_anatomy_keeps_counts_and_zero_is_the_original():
    shape = (32, 32, 32)
    image0, label0 = phantom_case(shape, seed=(0, 2))
    image_z, label_z = phantom_case(shape, seed=(0, 2), pose_jitter=0.0)
    assert np.array_equal(image0, image_z) and np.array_equal(label0, label_z)

    def liver_centres(jitter):
        return np.array([np.argwhere(phantom_case(shape, seed=(0, i), pose_jitter=jitter)[1] == 6).mean(0)
                         for i in range(5)])  # fmt: skip

    assert liver_centres(1.0).std(0).sum() > 2 * liver_centres(0.0).std(0).sum()
    _, label = phantom_case(shape, seed=(0, 2), pose_jitter=1.0)
    counts = np.bincount(label.ravel(), minlength=14)
    assert (counts[1:] > 0).all() and counts[6] / counts[1:].min() >= 500
    with pytest.raises(ValueError, match="pose_jitter"):
        phantom_case(shape, seed=0, pose_jitter=1.5)


def test_generate_phantom_records_pose_jitter(tmp_path):
    path = generate_phantom(tmp_path, num_cases=3, shape=(16, 16, 16), num_validation=1, num_test=1, pose_jitter=0.5)
    assert json.loads(path.read_text())["phantom"]["pose_jitter"] == 0.5
