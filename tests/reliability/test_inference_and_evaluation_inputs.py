"""Bad inputs through ``python -m scdl_monai.cli.inference`` and ``python -m scdl_monai.evaluation``.

Inference checks every input, the weights and the output folder before computing anything
(:func:`scdl_monai.engines.preflight.check_inference`) and lists all problems at once; the rows call the
command's ``main`` in-process, one runs as a real subprocess. Evaluation rows not covered by
``tests/evaluation/test_cli.py`` (shape and orientation mismatches, unpaired files, label ids out
of range are there) are added here.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scdl_monai.bundles import write_bundle
from scdl_monai.cli.inference import main as inference_main
from scdl_monai.evaluation import cli as evaluation_cli
from scdl_monai.networks.vnet import VNet

from ..cli.test_inference import write_dicom_series
from .conftest import ct_volume, run_cli, save


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A CPS bundle with random weights of a tiny VNet pair in models/model.pt."""
    root = write_bundle("cps", "synapse", tmp_path_factory.mktemp("bundle") / "cps_synapse")
    config = root / "configs" / "inference.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "n_filters": 4, "patch_size": [32, 32, 32]}))
    parser = ConfigParser()
    parser.read_config(str(config))
    torch.save(parser.get_parsed_content("inference_network_def").state_dict(), root / "models" / "model.pt")
    return root


def _infer(capsys, *args):
    status = inference_main(list(map(str, args)))
    err = capsys.readouterr().err
    print(err)  # copied into docs/reliability.md
    return status, err


def test_bad_inputs_and_output_are_listed_before_anything_runs(bundle, bad_files, tmp_path, capsys):
    volume = ct_volume().astype(np.int16).transpose(2, 1, 0)
    write_dicom_series(volume, (1.5, 1.5, 2.0), (0, 0, 0), tmp_path / "dicom", series_uid="1.2.3.4.1", prefix="a")
    write_dicom_series(volume, (1.5, 1.5, 2.0), (0, 0, 0), tmp_path / "dicom", series_uid="1.2.3.4.2", prefix="b")
    inputs = [tmp_path / "dicom", bad_files["corrupt"], bad_files["4d"], bad_files["nan"], bad_files["mr"]]
    (tmp_path / "blocker").write_text("")
    status, err = _infer(capsys, "--input", "[" + ",".join(map(str, inputs)) + "]", "--bundle", bundle,
                         "--output", tmp_path / "blocker" / "out", "--progress", "false")  # fmt: skip
    assert status == 1 and err.startswith("error: cannot start the inference: 6 problem(s) found before starting:")
    dicom = f"input='{tmp_path / 'dicom'}' holds 2 DICOM series (1.2.3.4.1"  # ITK appends series details to the UID
    assert dicom in err and "(32 files)): put each series in its own folder" in err
    assert f"input='{bad_files['corrupt']}': cannot be read (EOFError" in err
    assert f"input='{bad_files['4d']}': 4-D data of shape (32, 32, 32, 2)" in err
    assert f"input='{bad_files['nan']}': image has 1 NaN and 1 Inf voxel(s)" in err
    assert f"input='{bad_files['mr']}': intensities [0, 300] have no negative value" in err
    assert f"output='{tmp_path / 'blocker' / 'out'}' cannot be created: {tmp_path / 'blocker'} is not a folder" in err
    # an MR image is accepted when the user says so
    status, err = _infer(capsys, "--input", bad_files["mr"], "--bundle", bundle, "--output", tmp_path / "mr_seg.nii.gz",
                         "--progress", "false", "--expect_ct", "false")  # fmt: skip
    assert status == 0, err
    assert nib.load(str(tmp_path / "mr_seg.nii.gz")).shape == (32, 32, 32)


def test_checkpoint_of_another_architecture_in_a_real_process(bundle, bad_files, tmp_path):
    torch.save(VNet(3, 1, 3, n_filters=4).state_dict(), tmp_path / "three_classes.pt")
    out = run_cli("-m", "scdl_monai.cli.inference", "--input", bad_files["image"], "--bundle", bundle,
                  "--output", tmp_path / "out", "--ckpt", tmp_path / "three_classes.pt", "--progress", "false")  # fmt: skip
    print(out.stderr)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"ckpt='{tmp_path / 'three_classes.pt'}' does not fit 'model' (LogitMean): tensors" in out.stderr
    assert not (tmp_path / "out").exists()


def test_evaluation_bad_inputs(tmp_path):
    label = np.zeros((12, 12, 8), np.uint8)
    label[2:6, 2:6, 2:5] = 1
    (tmp_path / "labels").mkdir()
    (tmp_path / "preds").mkdir()
    save(tmp_path / "labels" / "label0001.nii.gz", label, np.uint8)
    save(tmp_path / "preds" / "0001.nii.gz", label * 0.5, np.float32)
    with pytest.raises(SystemExit, match=r"error: .*0001.nii.gz holds non-integer values; expected a label map of class indices."):
        evaluation_cli.evaluate(tmp_path / "preds", tmp_path / "labels", tmp_path / "o", num_classes=2)
    raw = (tmp_path / "labels" / "label0001.nii.gz").read_bytes()
    (tmp_path / "preds" / "0001.nii.gz").write_bytes(raw[:-8])  # the gzip trailer is lost
    with pytest.raises(SystemExit, match=r"error: cannot read NIfTI .*0001.nii.gz: Compressed file ended"):
        evaluation_cli.evaluate(tmp_path / "preds", tmp_path / "labels", tmp_path / "o", num_classes=2)
    (tmp_path / "blocker").write_text("")
    with pytest.raises(SystemExit, match=r"error: out_dir='.*blocker/o' cannot be created: .*blocker is not a folder"):
        evaluation_cli.evaluate(tmp_path / "preds", tmp_path / "labels", tmp_path / "blocker" / "o", num_classes=2)
    with pytest.raises(SystemExit, match="unknown dataset 'synaps'; did you mean 'synapse'?"):
        evaluation_cli.evaluate(tmp_path / "preds", tmp_path / "labels", tmp_path / "o", dataset="synaps")
    assert not (tmp_path / "o").exists()
