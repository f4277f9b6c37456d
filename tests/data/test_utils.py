"""Tests for scdl_monai.data.utils (atomic writes, readable JSON, argument checks, name look-up,
one-line user errors under our CLIs and ``python -m monai.bundle run``, fire entry)."""

import json
import math
import os
import stat
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from scdl_monai.data.utils import (
    UnknownNameError,
    atomic_write,
    check_number,
    format_json,
    install_error_hook,
    look_up,
    run_fire,
    user_error_message,
)

from ..conftest import REPO_ROOT


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


def test_format_json_keeps_short_lists_on_one_line():
    config = {"patch_size": [96, 96, 64], "labels": [["L", "R"], ["P", "A"]], "net": {"a": 1}, "empty": {}, "t": [{"k": 1}]}
    text = format_json(config)
    assert json.loads(text) == config
    assert '    "patch_size": [96, 96, 64],\n    "labels": [["L", "R"], ["P", "A"]],\n    "net": {\n        "a": 1\n    },' in text
    assert '"empty": {},\n    "t": [\n        {\n            "k": 1\n        }\n    ]\n}' in text
    assert format_json(list(range(40)), width=20).count("\n") == 41  # too long for one line


def test_unknown_name_error_is_a_value_error_naming_argument_value_and_choices():
    with pytest.raises(ValueError) as err:
        look_up("resnet", ("vnet", "unet", "segresnet"), "name", "build_backbone")
    assert isinstance(err.value, UnknownNameError) and err.value.argument == "name" and err.value.value == "resnet"
    assert str(err.value) == "build_backbone: invalid `name`='resnet'. did you mean 'segresnet'? available: vnet, unet, segresnet"
    assert err.value.for_key("network_def#name") == (
        "network_def#name='resnet' is not valid: did you mean 'segresnet'? available: vnet, unet, segresnet")
    assert user_error_message(err.value) == str(err.value)  # raised outside a bundle: the library message
    assert user_error_message(ValueError("other")) is None


@pytest.mark.parametrize(
    "config,message",
    [
        # the component's id and the argument
        ({"net": {"_target_": "scdl_monai.networks.backbones.build_backbone", "name": "resnet"}},
         "net#name='resnet' is not valid: did you mean 'segresnet'? available: vnet, unet, segresnet"),
        # an argument that refers to a top-level key: that key, which is the one users edit
        ({"protocol": "dhcc", "net": {"_target_": "scdl_monai.data.transforms.protocol_transforms", "protocol": "@protocol", "stage": "train"}},
         "protocol='dhcc' is not valid: did you mean 'dhc'? available: dhc, ga, native"),
        # refused by the network the factory builds, for an argument of the component
        ({"net": {"_target_": "scdl_monai.networks.backbones.build_backbone", "name": "vnet", "norm": "batchh"}},
         "net#norm='batchh' is not valid: did you mean 'batch'? available: batch, instance, group, none"),
        # inside an expression: the library's message, which names the argument
        ({"imports": ["$from scdl_monai.data.transforms import protocol_transforms"], "net": "$protocol_transforms('dhcc', 'train')"},
         "invalid `protocol`='dhcc'. did you mean 'dhc'? available: dhc, ga, native"),
        # a mistyped _target_
        ({"net": {"_target_": "scdl_monai.networks.backbones.build_backbon", "name": "vnet"}},
         "net#_target_='scdl_monai.networks.backbones.build_backbon' cannot be found: did you mean "
         "'scdl_monai.networks.backbones.build_backbone'? available: scdl_monai.networks.backbones.build_backbone"),
    ],
)  # fmt: skip
def test_user_error_message_names_the_config_key_inside_monai_errors(config, message):
    with pytest.raises(Exception) as err:
        ConfigParser(config).get_parsed_content("net")
    assert user_error_message(err.value) == message
    assert run_fire({"go": lambda: ConfigParser(config).get_parsed_content("net")}, ["go"], "prog") == 1


def test_error_hook_prints_one_line_and_passes_other_errors_on(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: seen.append(exc[0]))
    monkeypatch.delenv("SCDL_MONAI_DEBUG", raising=False)
    install_error_hook()
    install_error_hook()  # once
    hook = sys.excepthook
    try:
        ConfigParser({"net": {"_target_": "scdl_monai.networks.backbones.build_backbone", "name": "resnet"}}).get_parsed_content("net")
    except RuntimeError as err:
        hook(type(err), err, err.__traceback__)
    assert capsys.readouterr().err == "error: net#name='resnet' is not valid: did you mean 'segresnet'? available: vnet, unet, segresnet\n"
    hook(KeyError, KeyError("x"), None)
    monkeypatch.setenv("SCDL_MONAI_DEBUG", "1")
    hook(UnknownNameError, UnknownNameError("a", "b", ("c",)), None)
    assert seen == [KeyError, UnknownNameError] and capsys.readouterr().err == ""


def _run(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_unknown_name_under_monai_bundle_run_gives_one_line(tmp_path):
    """The issue's example: a backbone typo on a training command line."""
    out = _run("-m", "monai.bundle", "run", "--config_file", REPO_ROOT / "bundles" / "dhc_synapse" / "configs" / "train.json",
               "--bundle_root", tmp_path, "--logging_file", "False", "--network_def#name", "resnet", cwd=tmp_path)  # fmt: skip
    message = "error: network_def#name='resnet' is not valid: did you mean 'segresnet'? available: vnet, unet, segresnet"
    assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout
    assert [line for line in out.stderr.splitlines() if line.startswith("error")] == [message]
    assert out.stderr.rstrip().endswith(message)
    assert not (tmp_path / "models").exists()


def test_unknown_name_under_the_inference_cli_gives_one_line(tmp_path):
    nib.save(nib.Nifti1Image(np.full((16, 16, 16), -500, np.int16), np.eye(4)), str(tmp_path / "ct.nii.gz"))
    (tmp_path / "weights.pt").write_bytes(b"")  # the name is refused while the network is built, before the weights are read
    out = _run("-m", "scdl_monai.cli.inference", "--input", tmp_path / "ct.nii.gz", "--bundle", REPO_ROOT / "bundles" / "cps_synapse",
               "--ckpt", tmp_path / "weights.pt", "--output", tmp_path / "o", "--override", "network_def#name=resnet",
               cwd=tmp_path)  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout
    assert out.stderr.strip().splitlines()[-1] == (
        "error: network_def#name='resnet' is not valid: did you mean 'segresnet'? available: vnet, unet, segresnet")
