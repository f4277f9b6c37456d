"""End-to-end tests of ``python -m scdl_monai.evaluation`` on tiny NIfTI files."""

import csv
import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from scdl_monai.evaluation import cli

SPACING = (1.5, 1.5, 3.0)
SHAPE = (12, 12, 8)


def _save(path, data, spacing=SPACING):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))


def _label():
    y = np.zeros(SHAPE, np.uint8)
    y[2:6, 2:6, 2:5] = 1
    y[7:10, 7:10, 3:6] = 2
    return y


@pytest.fixture()
def folders(tmp_path):
    """3 cases (Synapse names): perfect, class 2 shifted by one voxel along z, class 2 missed."""
    for i, cid in enumerate(("0001", "0002", "0003")):
        y = _label()
        p = y.copy()
        if i == 1:
            p[p == 2] = 0
            p[7:10, 7:10, 4:7] = 2
        if i == 2:
            p[p == 2] = 0
        _save(tmp_path / "labels" / f"label{cid}.nii.gz", y)
        _save(tmp_path / "preds" / f"{cid}.nii.gz", p)
    return tmp_path


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "scdl_monai.evaluation", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_end_to_end_then_table(folders, tmp_path):
    out = tmp_path / "out"
    res = _run(
        "evaluate", "--pred_dir", folders / "preds", "--label_dir", folders / "labels", "--out_dir", out,
        "--class_names", "[liver,spleen]",
    )
    assert res.returncode == 0, res.stderr
    assert "| liver |" in res.stdout and "Avg Dice" in res.stdout
    for name in ("cases.csv", "summary.csv", "summary.md", "summary.png"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    cases = _read(out / "cases.csv")
    assert len(cases) == 6 and {r["distance_unit"] for r in cases} == {"mm"}
    missed = [r for r in cases if r["case_id"] == "0003" and r["class_index"] == "2"][0]
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, SPACING)))
    assert missed["status"] == "missed" and float(missed["asd"]) == pytest.approx(diag, rel=1e-5)
    shifted = [r for r in cases if r["case_id"] == "0002" and r["class_index"] == "2"][0]
    assert float(shifted["dice"]) == pytest.approx(100 * 2 / 3, abs=1e-3)  # 3 slices, 2 shared
    # 3x3x3 cube shifted one slice along z (3 mm): both directions 10 of 26 surface voxels are off;
    # 9 by 3 mm (the far face), 1 (the centre) by 1.5 mm in-plane.
    assert float(shifted["asd"]) == pytest.approx((9 * 3.0 + 1.5) / 26, abs=1e-5)
    summary = {r["class_index"]: r for r in _read(out / "summary.csv")}
    assert summary["1"]["dice_mean"] == "100.0" and summary["2"]["n_missed"] == "1"
    assert float(summary["2"]["dice_mean"]) == pytest.approx((100 + 200 / 3 + 0) / 3, abs=1e-3)

    # the same run in reference mode, then mean ± std over the two summaries
    ref = tmp_path / "ref"
    cli.evaluate(folders / "preds", folders / "labels", ref, num_classes=3, mode="reference")
    ref_cases = _read(ref / "cases.csv")
    assert {r["distance_unit"] for r in ref_cases} == {"voxel"}
    assert [float(r["asd"]) for r in ref_cases if r["status"] == "missed"] == [128.0]
    assert "REFERENCE MODE" in (ref / "summary.md").read_text()

    # in-process (the subprocess path is covered above): fire hands "[a,b]" over as a string
    cli.table(f"[{out / 'summary.csv'},{out / 'cases.csv'}]", tmp_path / "t")
    rows = {r["class_index"]: r for r in _read(tmp_path / "t" / "runs_summary.csv")}
    assert rows["avg"]["n_runs"] == "2" and float(rows["avg"]["dice_std"]) == 0.0
    assert (tmp_path / "t" / "runs_summary.png").is_file()
    assert "±" in (tmp_path / "t" / "runs_summary.md").read_text()


def test_shape_mismatch_exits_nonzero_naming_the_file(folders, tmp_path):
    _save(folders / "preds" / "0002.nii.gz", np.zeros((12, 12, 9), np.uint8))
    res = _run("evaluate", "--pred_dir", folders / "preds", "--label_dir", folders / "labels",
               "--out_dir", tmp_path / "o", "--num_classes", "3")
    assert res.returncode != 0
    assert "0002.nii.gz" in res.stderr and "shape" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o" / "summary.csv").exists()


def test_in_process_user_errors_exit(folders, tmp_path):
    (folders / "labels" / "label0001.nii.gz").rename(folders / "labels" / "label0009.nii.gz")
    with pytest.raises(SystemExit, match="error: cannot pair .*0001.nii.gz.*label0009.nii.gz"):
        cli.evaluate(folders / "preds", folders / "labels", tmp_path / "o", dataset="synapse")
    with pytest.raises(SystemExit, match="num_classes=5"):
        cli.evaluate(folders / "preds", folders / "labels", tmp_path / "o", dataset="synapse", num_classes=5)
    with pytest.raises(SystemExit, match="CSV not found"):
        cli.table("[nope.csv]", tmp_path / "t")


def test_labels_outside_the_class_range_are_reported(folders, tmp_path):
    with pytest.raises(SystemExit, match=r"label0001.nii.gz.*\[2\]"):
        cli.evaluate(folders / "preds", folders / "labels", tmp_path / "o", num_classes=2)


def test_parse_list():
    assert cli.parse_list("[/a/b.csv,/c/d.csv]") == ["/a/b.csv", "/c/d.csv"]
    assert cli.parse_list(("x", "y")) == ["x", "y"]


def test_orientation_mismatch_is_an_error_naming_both_files(folders, tmp_path):
    y = _label()
    nib.save(nib.Nifti1Image(y, np.diag([-1.5, 1.5, 3.0, 1.0])), str(folders / "preds" / "0001.nii.gz"))
    with pytest.raises(SystemExit, match=r"orientation mismatch .*0001.nii.gz is LAS.*label0001.nii.gz is RAS"):
        cli.evaluate(folders / "preds", folders / "labels", tmp_path / "o", num_classes=3)
    cli.evaluate(folders / "preds", folders / "labels", tmp_path / "o", num_classes=3, check_affine=False)
    assert (tmp_path / "o" / "summary.csv").is_file()


def test_reference_grid_from_the_command_line(folders, tmp_path):
    """``--mode reference --reference ga --grid [6,6,4]``: labels and predictions (12x12x8) nearest-resized
    to the grid, flagged; the perfect case stays perfect on the grid. Bad options exit with one line."""
    out = tmp_path / "ref"
    res = _run("evaluate", "--pred_dir", folders / "preds", "--label_dir", folders / "labels", "--out_dir", out,
               "--num_classes", "3", "--mode", "reference", "--reference", "ga", "--grid", "[6,6,4]", "--plot", "False")
    assert res.returncode == 0, res.stderr
    rows = {(r["case_id"], r["class_index"]): r for r in _read(out / "cases.csv")}
    assert float(rows[("0001", "1")]["dice"]) == pytest.approx(100.0) and rows[("0001", "1")]["distance_unit"] == "voxel"
    assert float(rows[("0003", "2")]["asd"]) == 128.0  # class 2 missed: the GALoss penalty
    summary = (out / "summary.md").read_text()
    assert "reference=ga" in summary and "grid [6, 6, 4]" in summary and "ga conventions" in summary
    res = _run("evaluate", "--pred_dir", folders / "preds", "--label_dir", folders / "labels", "--out_dir", out,
               "--num_classes", "3", "--mode", "reference", "--grid", "[6,6,4]")
    assert res.returncode == 1 and "not the evaluation grid" in res.stderr and "Traceback" not in res.stderr
    res = _run("evaluate", "--pred_dir", folders / "preds", "--label_dir", folders / "labels", "--out_dir", out,
               "--num_classes", "3", "--mode", "reference", "--reference", "nnunet")
    assert res.returncode == 1 and "reference must be one of" in res.stderr and "Traceback" not in res.stderr
