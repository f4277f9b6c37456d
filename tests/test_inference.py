"""scdl_monai.inference: NIfTI (non-RAS) and DICOM inputs -> label maps in the input's own grid."""

import os

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scdl_monai.bundles import write_bundle
from scdl_monai.inference import detect_reader, main, predict

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
