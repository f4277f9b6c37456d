"""Tests for scdl_monai.data.utils (atomic writes, fire entry)."""

import stat

import nibabel as nib
import numpy as np
import pytest

from scdl_monai.data.utils import atomic_write, run_fire


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "sub" / "out.json"
    assert atomic_write(target, lambda tmp: tmp.write_text("new")) == target  # folder created
    assert target.read_text() == "new"

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, boom)
    assert target.read_text() == "new"  # the old file is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]  # no temporary left


def test_atomic_write_mode_prefix_and_suffix(tmp_path):
    seen = []
    target = tmp_path / "model.pt"
    atomic_write(target, lambda tmp: seen.append(tmp.name) or tmp.write_bytes(b"x"), mode=0o644,
                 prefix=".model.pt.partial-", suffix="")  # fmt: skip
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert seen[0].startswith(".model.pt.partial-") and not seen[0].endswith(".pt")
    atomic_write(tmp_path / "plain.txt", lambda tmp: tmp.write_text("x"))
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o600  # mkstemp's mode by default


def test_atomic_write_keeps_compressed_nifti_suffix(tmp_path):
    """nibabel picks the format from the name: the temporary file must end in ``.nii.gz`` too."""
    target = tmp_path / "label.nii.gz"
    image = nib.Nifti1Image(np.arange(8, dtype=np.uint8).reshape(2, 2, 2), np.eye(4))
    atomic_write(target, lambda tmp: nib.save(image, str(tmp)))
    assert target.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(target)).dataobj), np.arange(8).reshape(2, 2, 2))


def _fail(kind: str = "value") -> None:
    raise {"value": ValueError, "os": FileNotFoundError, "runtime": RuntimeError}[kind](f"bad {kind}")


def test_run_fire_exit_status_and_error_line(capsys):
    assert run_fire({"ok": lambda: None}, ["ok"], "prog") == 0
    assert run_fire({"fail": _fail}, ["fail"], "prog") == 1
    assert capsys.readouterr().err == "error: bad value\n"
    assert run_fire({"fail": _fail}, ["fail", "--kind", "os"], "prog", errors=(FileNotFoundError,)) == 1
    with pytest.raises(RuntimeError, match="bad runtime"):  # not a user error: traceback as usual
        run_fire({"fail": _fail}, ["fail", "--kind", "runtime"], "prog")
    with pytest.raises(ValueError, match="bad value"):
        run_fire({"fail": _fail}, ["fail"], "prog", reraise=True)
