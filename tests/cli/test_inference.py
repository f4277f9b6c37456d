"""scdl_monai.cli.inference: NIfTI (non-RAS) and DICOM inputs -> label maps in the input's own grid."""

import json
import os
import shutil

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scdl_monai.bundles import write_bundle
from scdl_monai.cli.inference import detect_reader, main, parse_overrides, predict

SMALL = {"n_filters": 4, "patch_size": [32, 32, 32]}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A native-protocol CPS bundle (RAS reorientation, resampling) with random (untrained) weights
    for a tiny VNet pair in models/model.pt."""
    root = write_bundle("cps", "synapse", tmp_path_factory.mktemp("bundle") / "cps_synapse", protocol="native")
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update(SMALL)
    torch.manual_seed(0)
    net = parser.get_parsed_content("inference_network_def")
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def _ct(shape, seed=0):
    rng = np.random.default_rng(seed)
    vol = rng.normal(40, 60, shape)
    vol[shape[0] // 3 : shape[0] // 2, 4:14, :] = 250.0  # a bright structure so predictions are not constant
    return vol.astype(np.int16)


def write_dicom_series(volume_zyx, spacing_xyz, origin, out_dir, series_uid="1.2.826.0.1.3680043.2.1125.2", prefix="slice"):
    """One DICOM file per slice (ITK/GDCM), positions origin + i * dz along z."""
    os.makedirs(out_dir, exist_ok=True)
    for i in range(volume_zyx.shape[0]):
        sl = itk.image_from_array(np.ascontiguousarray(volume_zyx[i : i + 1]))
        sl.SetSpacing([float(s) for s in spacing_xyz])
        sl.SetOrigin([float(origin[0]), float(origin[1]), float(origin[2] + i * spacing_xyz[2])])
        io = itk.GDCMImageIO.New()
        io.KeepOriginalUIDOn()
        meta = sl.GetMetaDataDictionary()
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.3.{i + 1}",
            "0020|0013": str(i + 1),
        }.items():
            meta[tag] = value
        io.SetMetaDataDictionary(meta)
        writer = itk.ImageFileWriter[type(sl)].New(Input=sl, ImageIO=io, FileName=os.path.join(out_dir, f"{prefix}{i:03d}.dcm"))
        writer.UseInputMetaDataDictionaryOff()
        writer.Update()


def test_lps_nifti_keeps_shape_affine_and_matches_the_ras_prediction(bundle, tmp_path):
    vol = _ct((28, 24, 12))
    ras = np.diag([1.5, 1.2, 2.5, 1.0])
    ras[:3, 3] = (-20.0, -14.0, 30.0)
    nib.save(nib.Nifti1Image(vol, ras), str(tmp_path / "ras.nii.gz"))
    # the same physical volume stored LPS: flip x and y, move the origin to the opposite corner
    lps = ras.copy()
    lps[:2, :2] *= -1
    lps[:2, 3] = ras[:2, :2] @ (np.array(vol.shape[:2]) - 1) + ras[:2, 3]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol[::-1, ::-1]), lps), str(tmp_path / "lps.nii.gz"))
    assert nib.aff2axcodes(lps) == ("L", "P", "S")

    out_ras, out_lps = predict(
        [tmp_path / "ras.nii.gz", tmp_path / "lps.nii.gz"], bundle, tmp_path / "out", device="cpu", progress=False, overrides=SMALL
    )
    assert out_lps.name == "lps_seg.nii.gz"
    p_ras, p_lps = nib.load(str(out_ras)), nib.load(str(out_lps))
    assert p_lps.shape == vol.shape and np.allclose(p_lps.affine, lps)
    assert p_lps.get_data_dtype() == np.uint8
    a, b = np.asanyarray(p_ras.dataobj), np.asanyarray(p_lps.dataobj)
    assert len(np.unique(a)) > 1  # not a constant map, so the next check can fail
    # inversion is exact: the LPS prediction is the RAS prediction stored LPS
    np.testing.assert_array_equal(b, a[::-1, ::-1])


def test_dicom_folder(bundle, tmp_path):
    vol_xyz = _ct((24, 20, 12))
    write_dicom_series(np.ascontiguousarray(vol_xyz.transpose(2, 1, 0)), (1.5, 1.2, 2.5), (-10.0, 5.0, 30.0), tmp_path / "series")
    assert detect_reader(tmp_path / "series") == "ITKReader"
    from monai.transforms import LoadImage

    ref = LoadImage(reader="ITKReader", image_only=True)(str(tmp_path / "series"))
    (out,) = predict(tmp_path / "series", bundle, tmp_path / "pred.nii.gz", device="cpu", sw_output_device="cpu", progress=False, overrides=SMALL)
    pred = nib.load(str(out))
    assert pred.shape == tuple(ref.shape) == (24, 20, 12)
    np.testing.assert_allclose(pred.affine, ref.affine.numpy(), atol=1e-4)
    # DICOM is LPS: x and y run right->left and anterior->posterior in RAS world coordinates
    assert nib.aff2axcodes(pred.affine) == ("L", "P", "S")


def test_errors_and_cli(bundle, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="input not found"):
        predict(tmp_path / "missing.nii.gz", bundle, tmp_path / "o")
    nib.save(nib.Nifti1Image(_ct((20, 20, 8)), np.eye(4)), str(tmp_path / "a.nii.gz"))
    with pytest.raises(FileNotFoundError, match="model.pt"):
        predict(tmp_path / "a.nii.gz", bundle, tmp_path / "o", ckpt=tmp_path / "none.pt")
    with pytest.raises(ValueError, match="folder"):
        predict([tmp_path / "a.nii.gz", tmp_path / "a.nii.gz"], bundle, tmp_path / "o.nii.gz")
    assert main(["--input", str(tmp_path / "missing.nii.gz"), "--bundle", str(bundle), "--output", str(tmp_path / "o")]) == 1
    assert "input not found" in capsys.readouterr().err


def test_parse_overrides_reads_json_else_strings():
    assert parse_overrides(["n_filters=4", "patch_size=[64,64,32]", "network_def#name=unet", "amp=false", "x= a=b"]) == {
        "n_filters": 4, "patch_size": [64, 64, 32], "network_def#name": "unet", "amp": False, "x": " a=b"}  # fmt: skip
    assert parse_overrides("sw_overlap=0.5") == {"sw_overlap": 0.5} and parse_overrides(None) == {}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_overrides(["n_filters"])


def test_mismatch_names_the_fitting_values_and_overrides_fix_it(tmp_path, capsys):
    """Weights of a 4-filter, 3-class VNet pair (then of a UNet pair); the config on disk says a VNet, 32 filters, 14 classes."""
    root = write_bundle("cps", "synapse", tmp_path / "cps", protocol="native")
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({**SMALL, "num_classes": 3})
    torch.save(parser.get_parsed_content("inference_network_def").state_dict(), root / "models" / "model.pt")
    nib.save(nib.Nifti1Image(_ct((20, 20, 8)), np.eye(4)), str(tmp_path / "a.nii.gz"))
    args = ["--input", str(tmp_path / "a.nii.gz"), "--bundle", str(root), "--output", str(tmp_path / "o.nii.gz"), "--progress", "false"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: cannot start the inference: ckpt='{root / 'models' / 'model.pt'}' was trained with n_filters=4, "
                   "num_classes=3 but the config has n_filters=32, num_classes=14: pass --override n_filters=4 --override num_classes=3")  # fmt: skip
    # another backbone: the tensor names differ, the other backbones are tried
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({**SMALL, "network_def#name": "unet"})
    torch.save(parser.get_parsed_content("inference_network_def").state_dict(), root / "models" / "model.pt")
    assert main(args) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "was trained with network_def#name=unet, n_filters=4 but the config has network_def#name=vnet, n_filters=32: "
        "pass --override network_def#name=unet --override n_filters=4")  # fmt: skip
    assert main([*args, "--override", "n_filtres=4"]) == 1
    assert capsys.readouterr().err.strip().endswith("has no such key; did you mean 'n_filters'?")
    assert main([*args, "--override", "n_filters=4", "--override=network_def#name=unet", "--override", "patch_size=[32,32,32]"]) == 0
    assert nib.load(str(tmp_path / "o.nii.gz")).shape == (20, 20, 8)


def test_a_short_run_with_overrides_leaves_a_bundle_that_plain_inference_runs(samples_dir, tmp_path):
    """Train shorter than ``val_interval`` with command-line style overrides, then segment a real CT
    with the plain CLI and the plain ``monai.bundle run``: no override of any hyper-parameter."""
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import run

    from scdl_monai.data.phantom import generate_phantom

    datalist = generate_phantom(tmp_path / "data", num_cases=5, shape=(32, 32, 32), seed=1, labeled_fraction=0.5,
                                num_validation=1, num_test=0)  # fmt: skip
    bundle = write_bundle("cps", "synapse", tmp_path / "bundle", protocol="native")
    trained = {"n_filters": 4, "patch_size": [16, 16, 16], "pixdim": [4.0, 4.0, 4.0], "sw_overlap": [0.25, 0.25, 0.25]}
    runtime = {"num_workers": 0, "cache_rate": 0.0, "batch_size": 1, "unlabeled_batch_size": 1, "amp": False,
               "device": "cpu", "val_interval": 5, "train#trainer#max_epochs": 1, "train#trainer#epoch_length": 1}  # fmt: skip
    train = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), logging_file=False, workflow_type="train",
                           bundle_root=str(bundle), datalist=str(datalist), **trained, **runtime)  # fmt: skip
    train.initialize()
    train.run()
    train.finalize()
    assert train.parser.get_parsed_content("validate#evaluator").state.iteration == 0  # no validation ran
    assert (bundle / "models" / "model.pt").is_file()  # the final weights
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert {k: inference[k] for k in trained} == trained
    evaluate = json.loads((bundle / "configs" / "evaluate.json").read_text())
    assert {k: evaluate[k] for k in trained} == trained and "device" not in evaluate

    ct = tmp_path / "ct" / "case.nii.gz"
    ct.parent.mkdir()
    shutil.copyfile(samples_dir / "case_a_top30_slices" / "example_ct_sm.nii.gz", ct)
    assert main(["--input", str(ct), "--bundle", str(bundle), "--output", str(tmp_path / "seg.nii.gz"), "--progress", "false"]) == 0
    run(config_file=str(bundle / "configs" / "inference.json"), logging_file=False, bundle_root=str(bundle),
        dataset_dir=str(ct.parent), output_dir=str(tmp_path / "monai"))  # fmt: skip
    source, cli, plain = (nib.load(str(p)) for p in (ct, tmp_path / "seg.nii.gz", tmp_path / "monai" / "case_seg.nii.gz"))
    assert cli.shape == source.shape and np.allclose(cli.affine, source.affine)
    np.testing.assert_array_equal(np.asanyarray(cli.dataobj), np.asanyarray(plain.dataobj))



@pytest.mark.parametrize("old, new", [("scdl_monai.inference", "scdl_monai.cli.inference"), ("scdl_monai.bundles", "scdl_monai.cli.bundle_tool")])
def test_the_old_commands_of_the_previous_layout_still_run(tmp_path, monkeypatch, capsys, old, new):
    """``python -m scdl_monai.inference`` (README of the previous layout) runs the moved command, with a notice."""
    import importlib
    import runpy
    import warnings

    args = ["--input", str(tmp_path / "missing.nii.gz"), "--bundle", str(tmp_path), "--output", str(tmp_path / "o")]
    if old == "scdl_monai.bundles":
        args = ["write", "--method", "nope", "--dataset", "synapse", "--out", str(tmp_path / "b")]
    monkeypatch.setattr("sys.argv", [old, *args])
    with pytest.raises(SystemExit) as exit_old, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        runpy.run_module(old, run_name="__main__")
    notice, *rest = capsys.readouterr().err.splitlines()
    monkeypatch.setattr("sys.argv", [new, *args])
    status_new = importlib.import_module(new).main()
    assert (exit_old.value.code, status_new) == (1, 1)
    assert notice == f"note: `python -m {old}` is deprecated since scdl_monai 0.2.0; use `python -m {new}`."
    assert rest == capsys.readouterr().err.splitlines() and rest and rest[-1].startswith("error:")
