"""Tests for scdl_monai.data.utils (atomic writes, argument checks, option look-up, fire entry)."""

import math
import stat

import nibabel as nib
import numpy as np
import pytest

from scdl_monai.data.utils import atomic_write, check_number, look_up, run_fire


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


def test_check_number_accepts_and_returns():
    assert check_number(3, "n", integer=True, minimum=1) == 3
    assert check_number(0, "n", integer=True) == 0
    value = check_number(2, "w")
    assert value == 2.0 and isinstance(value, float)
    assert check_number(0.5, "t", strict=True) == 0.5
    assert check_number(4, "dim", integer=True, minimum=4) == 4


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (0, {"owner": "VNet", "integer": True, "minimum": 1}, "VNet: `x` must be a positive int, got 0."),
        (True, {"integer": True, "minimum": 1}, "`x` must be a positive int, got True."),
        (2.0, {"integer": True, "minimum": 1}, "`x` must be a positive int, got 2.0."),
        (-1, {"owner": "MagicNet", "integer": True}, "MagicNet: `x` must be a non-negative int, got -1."),
        (3, {"integer": True, "minimum": 4}, "`x` must be an int >= 4, got 3."),
        (-0.1, {"owner": "SCDLMethod"}, "SCDLMethod: `x` must be a non-negative number, got -0.1."),
        (0.0, {"owner": "SCDL", "strict": True}, "SCDL: `x` must be a positive number, got 0.0."),
        (math.nan, {}, "`x` must be a non-negative number, got nan."),
        ("1", {}, "`x` must be a non-negative number, got '1'."),
    ],
)
def test_check_number_refuses(value, kwargs, message):
    with pytest.raises(ValueError) as err:
        check_number(value, "x", **kwargs)
    assert str(err.value) == message


def test_look_up_matches_case_insensitively():
    assert look_up("Batch", ("batch", "instance"), "norm", "VNet") == "batch"
    assert look_up(" Small ", {"small": (32, 32, 32)}, "size") == (32, 32, 32)  # stripped; a mapping's value


def test_look_up_errors_name_the_argument():
    with pytest.raises(ValueError) as err:
        look_up("instnce", ("batch", "instance"), "norm", "VNet")
    assert str(err.value).startswith("VNet: invalid `norm`='instnce'. ")
    assert "did you mean 'instance'?" in str(err.value)
    with pytest.raises(ValueError, match=r"^`norm` must be one of \('batch', 'instance'\), got 3\.$"):
        look_up(3, ("batch", "instance"), "norm")
    with pytest.raises(TypeError, match="source"):
        look_up(None, ("total",), "source", type_error=TypeError)


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
