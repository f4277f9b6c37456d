"""Tests of per-case Dice / ASD / HD95 on tiny hand-checked masks."""

import math

import numpy as np
import pytest
import torch

from scdl_monai.evaluation.metrics import evaluate_case, resolve_class_names


def _cube(lo, hi, shape=(10, 10, 10), value=1, out=None):
    out = np.zeros(shape, dtype=np.int64) if out is None else out
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = value
    return out


GT = _cube((2, 2, 2), (5, 5, 5))  # 3x3x3 cube: 26 surface voxels (all but the centre)
SHIFTED = _cube((3, 2, 2), (6, 5, 5))  # same cube moved one voxel along axis 0
LONGER = _cube((2, 2, 2), (6, 5, 5))  # 4x3x3 box: 34 surface voxels


def test_identical_masks():
    r = evaluate_case(GT, GT, num_classes=2)[1]
    assert r == {"dice": pytest.approx(100.0), "asd": 0.0, "hd95": 0.0, "status": "present"}


def test_cubes_offset_by_one_voxel_hand_computed():
    # Overlap 18 of 27+27 voxels -> Dice = 36/54. Surface distances pred->GT: the far face (9 voxels)
    # is 1 away, and the pred surface voxel sitting at the GT centre is 1 away; 16 others are 0.
    # So 10/26 in both directions (symmetric layout) -> ASD 10/26; the 95th percentile is 1.
    r = evaluate_case(SHIFTED, GT, num_classes=2)[1]
    assert r["dice"] == pytest.approx(100 * 36 / 54, abs=1e-4)
    assert r["asd"] == pytest.approx(10 / 26, abs=1e-6)
    assert r["hd95"] == pytest.approx(1.0)


def test_anisotropic_spacing_gives_mm_and_voxel_units_differ():
    # Spacing 2 mm along the shift axis: the far face is 2 mm away; the centre voxel's nearest GT
    # surface voxel is 1 mm away in-plane -> (9*2 + 1)/26 mm; HD95 = 2 mm.
    mm = evaluate_case(SHIFTED, GT, num_classes=2, spacing=(2.0, 1.0, 1.0))[1]
    vox = evaluate_case(SHIFTED, GT, num_classes=2, spacing=None)[1]
    assert mm["asd"] == pytest.approx(19 / 26, abs=1e-6)
    assert mm["hd95"] == pytest.approx(2.0)
    assert vox["asd"] == pytest.approx(10 / 26, abs=1e-6)
    assert mm["dice"] == pytest.approx(vox["dice"])  # Dice has no unit


def test_project_asd_is_symmetric_reference_asd_is_directed_pred_to_gt():
    # pred = GT plus one extra slab. pred->GT: the 9 voxels of the extra face are 1 away out of 34
    # pred surface voxels; GT->pred: only the GT face centre (interior to pred) is 1 away, of 26.
    project = evaluate_case(LONGER, GT, num_classes=2)[1]
    reference = evaluate_case(LONGER, GT, num_classes=2, mode="reference")[1]
    assert project["asd"] == pytest.approx(10 / 60, abs=1e-6)  # MONAI pools both directions
    assert reference["asd"] == pytest.approx(9 / 34, abs=1e-6)  # medpy asd(pred, gt)
    assert reference["dice"] == pytest.approx(100 * 2 * 27 / (36 + 27), abs=1e-4)


def test_reference_mode_ignores_spacing_with_a_warning():
    with pytest.warns(UserWarning, match="voxels"):
        r = evaluate_case(SHIFTED, GT, num_classes=2, spacing=(2.0, 1.0, 1.0), mode="reference")[1]
    assert r["asd"] == pytest.approx(10 / 26, abs=1e-6)


def test_missed_organ_and_false_positive_get_dice_0_and_the_diagonal_cap():
    label = GT.copy()
    pred = np.zeros_like(GT)
    pred[0, 0, 0] = 2  # class 2 predicted but absent from GT; class 1 missed
    r = evaluate_case(pred, label, num_classes=3, spacing=(1.0, 1.0, 2.0))
    cap = math.sqrt(10**2 + 10**2 + 20**2)
    assert r[1] == {"dice": 0.0, "asd": pytest.approx(cap), "hd95": pytest.approx(cap), "status": "missed"}
    assert r[2] == {"dice": 0.0, "asd": pytest.approx(cap), "hd95": pytest.approx(cap), "status": "false_positive"}


def test_configurable_cap():
    r = evaluate_case(np.zeros_like(GT), GT, num_classes=2, distance_cap=99.0)[1]
    assert r["asd"] == 99.0 and r["hd95"] == 99.0


def test_both_empty_is_nan_in_project_mode_and_dice_1_in_reference_mode():
    empty = np.zeros_like(GT)
    p = evaluate_case(GT, GT, num_classes=3)[2]
    assert p["status"] == "both_empty" and all(math.isnan(p[k]) for k in ("dice", "asd", "hd95"))
    r = evaluate_case(empty, GT, num_classes=3, mode="reference")
    assert r[1] == {"dice": 0.0, "asd": 128.0, "hd95": 128.0, "status": "missed"}
    assert r[2] == {"dice": 1.0, "asd": 0.0, "hd95": 0.0, "status": "both_empty"}


def test_missed_organ_never_improves_the_mean():
    # Two cases of one class: a poor prediction, then the same case with the organ missed.
    far = _cube((6, 6, 6), (9, 9, 9), out=_cube((2, 2, 2), (3, 3, 3)))  # far off + a sliver
    poor = evaluate_case(far, GT, num_classes=2)[1]
    missed = evaluate_case(np.zeros_like(GT), GT, num_classes=2)[1]
    good = evaluate_case(SHIFTED, GT, num_classes=2)[1]
    for k in ("asd", "hd95"):
        assert np.mean([good[k], missed[k]]) > np.mean([good[k], poor[k]])
    assert np.mean([good["dice"], missed["dice"]]) <= np.mean([good["dice"], poor["dice"]])


def test_accepts_torch_and_channel_first_and_hd95_off():
    r = evaluate_case(torch.from_numpy(SHIFTED)[None], torch.from_numpy(GT)[None], num_classes=2, include_hd95=False)
    assert r[1]["asd"] == pytest.approx(10 / 26, abs=1e-6) and math.isnan(r[1]["hd95"])


def test_2d_masks():
    a = np.zeros((6, 6), int)
    a[1:4, 1:4] = 1
    b = np.zeros((6, 6), int)
    b[2:5, 1:4] = 1
    r = evaluate_case(b, a, num_classes=2)[1]
    assert r["dice"] == pytest.approx(100 * 12 / 18, abs=1e-4)
    # 2D: 8 surface pixels of a 3x3 square; far edge (3) + the pixel at the GT centre (1) are 1 away.
    assert r["asd"] == pytest.approx(4 / 8, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pred": np.zeros((4, 4, 4), int), "label": np.zeros((4, 4, 5), int)}, "shape"),
        ({"num_classes": 1}, "num_classes"),
        ({"spacing": (1.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"mode": "medpy"}, "mode"),
        ({"pred": np.full((4, 4, 4), 5)}, r"label values \[5\]"),
        ({"pred": np.full((4, 4, 4), 0.5)}, "non-integer"),
    ],
)
def test_errors_name_the_argument(kwargs, match):
    args = {"pred": np.zeros((4, 4, 4), int), "label": np.zeros((4, 4, 4), int), "num_classes": 3}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate_case(**args)


def test_resolve_class_names():
    c, names = resolve_class_names(dataset="synapse")
    assert c == 14 and names[0] == "spleen" and names[-1] == "left adrenal gland"
    assert resolve_class_names(num_classes=3) == (3, ("class_1", "class_2"))
    assert resolve_class_names(class_names="[background,liver,spleen]") == (3, ("liver", "spleen"))
    with pytest.raises(ValueError, match="num_classes=5"):
        resolve_class_names(dataset="synapse", num_classes=5)
    with pytest.raises(ValueError):
        resolve_class_names()


def test_evaluate_folder_on_real_ct_two_labellers(samples_dir, tmp_path):
    """Two TotalSegmentator versions on the shipped real CT (3 mm): a silver-vs-silver sanity check."""
    from scdl_monai.evaluation.metrics import evaluate_folder

    derived = samples_dir / "case_a_abdomen_ct_3mm" / "derived"
    (tmp_path / "p").mkdir()
    (tmp_path / "l").mkdir()
    (tmp_path / "p" / "caseA.nii.gz").symlink_to(derived / "example_seg_v1fast_0effae9_synapse13.nii.gz")
    (tmp_path / "l" / "caseA.nii.gz").symlink_to(derived / "example_seg_fast_force_split_synapse13.nii.gz")
    res = evaluate_folder(tmp_path / "p", tmp_path / "l", dataset="synapse", out_dir=None)
    rows = {r["class_name"]: r for r in res.summary_rows}
    assert rows["esophagus"]["n_both_empty"] == 1 and rows["esophagus"]["dice_n"] == 0  # absent in both
    assert rows["Avg"]["dice_n"] == 12 and rows["liver"]["dice_mean"] > 90
    assert 0 < rows["liver"]["asd_mean"] < 3.0  # mm, at 3 mm voxels
    assert res.paths == {}


# --------------------------------------------------------------------------- reference grid and conventions
def _save_nifti(path, data, spacing=(1.0, 1.0, 1.0)):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.uint8), np.diag([*spacing, 1.0])), str(path))


def _grid_case(tmp_path, pred_on_grid=True):
    """Original label 8x8x4 with class 1 in [0:4, 0:4, 0:2]; the 4x4x2 grid keeps source indices
    0, 2 (x, y) and 0 (z) of it -> class 1 in [0:2, 0:2, 0:1] (4 voxels). The prediction is the
    2x2x2 block [0:2, 0:2, 0:2] (8 voxels) on the grid, or its 8x8x4 nearest-upsampled version."""
    label = np.zeros((8, 8, 4), np.uint8)
    label[0:4, 0:4, 0:2] = 1
    pred = np.zeros((4, 4, 2), np.uint8)
    pred[0:2, 0:2, 0:2] = 1
    if not pred_on_grid:
        pred = pred.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    _save_nifti(tmp_path / "labels" / "label0001.nii.gz", label, spacing=(1.0, 1.0, 2.0))
    _save_nifti(tmp_path / "preds" / "0001.nii.gz", pred, spacing=(2.0, 2.0, 4.0))
    return tmp_path / "preds", tmp_path / "labels"


def test_reference_mode_scores_on_the_reference_grid_by_hand(tmp_path):
    from scdl_monai.evaluation.metrics import evaluate_folder

    preds, labels = _grid_case(tmp_path)
    result = evaluate_folder(preds, labels, num_classes=2, mode="reference", grid="[4,4,2]", plot=False)
    row = result.case_rows[0]
    # 4 GT voxels inside 8 predicted: Dice = 2*4 / (4 + 8); every voxel of both is surface; directed
    # pred -> GT: the z=0 layer is on the GT (0), the z=1 layer 1 voxel away -> ASD (4*0 + 4*1)/8
    assert row["dice"] == pytest.approx(100 * 8 / 12, abs=1e-4)
    assert row["asd"] == pytest.approx(0.5, abs=1e-6)
    assert row["distance_unit"] == "voxel"


def test_reference_grid_needs_grid_predictions_except_for_ga(tmp_path):
    from scdl_monai.evaluation.metrics import evaluate_folder

    preds, labels = _grid_case(tmp_path, pred_on_grid=False)
    with pytest.raises(ValueError, match="not the evaluation grid"):
        evaluate_folder(preds, labels, num_classes=2, mode="reference", grid=(4, 4, 2), plot=False)
    # GALoss resizes the prediction to the grid too: the same hand-computed numbers
    row = evaluate_folder(preds, labels, num_classes=2, mode="reference", reference="ga", grid=(4, 4, 2), plot=False)
    assert row.case_rows[0]["dice"] == pytest.approx(100 * 8 / 12, abs=1e-4)
    assert row.case_rows[0]["asd"] == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="for mode='reference'"):
        evaluate_folder(preds, labels, num_classes=2, grid=(4, 4, 2), plot=False)


def test_project_mode_scores_the_original_grid_in_mm_by_hand():
    # the same geometry on the original grid, spacing (1, 1, 2) mm: GT [0:2, 0:2, 0:1], pred [0:2, 0:2, 0:2]
    gt = _cube((0, 0, 0), (2, 2, 1), shape=(4, 4, 2))
    pred = _cube((0, 0, 0), (2, 2, 2), shape=(4, 4, 2))
    r = evaluate_case(pred, gt, num_classes=2, spacing=(1.0, 1.0, 2.0))[1]
    assert r["dice"] == pytest.approx(100 * 8 / 12, abs=1e-4)
    # symmetric: pred -> GT 4 x 0 + 4 x 2 mm, GT -> pred 4 x 0 -> 8 / 12 mm; HD95 = 2 mm
    assert r["asd"] == pytest.approx(8 / 12, abs=1e-6)
    assert r["hd95"] == pytest.approx(2.0)


def test_reference_conventions_for_empty_classes_and_empty_predictions():
    gt = np.zeros((6, 6, 6), np.int64)
    gt[1:3, 1:3, 1:3] = 1  # class 1 present in GT; class 2 absent from both
    missed = np.zeros_like(gt)
    dhc = evaluate_case(missed, gt, num_classes=3, mode="reference", reference="dhc")
    ga = evaluate_case(missed, gt, num_classes=3, mode="reference", reference="ga")
    magic = evaluate_case(missed, gt, num_classes=3, mode="reference", reference="magicnet")
    # DHC scores each class on its own: missed 0 / 128, both empty 1 / 0
    assert (dhc[1]["dice"], dhc[1]["asd"], dhc[2]["dice"], dhc[2]["asd"]) == (0.0, 128.0, 1.0, 0.0)
    # GALoss / MagicNet: no foreground predicted -> the whole case is zeros
    assert [(ga[c]["dice"], ga[c]["asd"], ga[c]["hd95"]) for c in (1, 2)] == [(0.0, 0.0, 0.0)] * 2
    assert [(magic[c]["dice"], magic[c]["asd"]) for c in (1, 2)] == [(0.0, 0.0)] * 2
    # with some foreground predicted, GALoss gives 128 to the miss and 100 % to the both-empty class
    fp = np.zeros_like(gt)
    fp[4:6, 4:6, 4:6] = 2  # class 2 predicted where the GT has nothing
    ga2 = evaluate_case(fp, gt, num_classes=4, mode="reference", reference="ga")
    assert (ga2[1]["dice"], ga2[1]["asd"]) == (0.0, 128.0)  # missed
    assert (ga2[2]["dice"], ga2[2]["asd"]) == (0.0, 128.0)  # false positive
    assert (ga2[3]["dice"], ga2[3]["asd"]) == (100.0, 0.0)  # both empty
    magic2 = evaluate_case(fp, gt, num_classes=4, mode="reference", reference="magicnet")
    assert [(magic2[c]["dice"], magic2[c]["asd"]) for c in (1, 2, 3)] == [(0.0, 0.0)] * 3
