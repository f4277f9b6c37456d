"""Tests for scdl_monai.data.transforms: label maps and the preprocessing protocol chains."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Invertd
from monai.utils import set_determinism

from scdl_monai.data.transforms import (
    LABEL_SCHEMES,
    label_map,
    label_map_transform,
    labelmap_cli,
    protocol_transforms,
)

# ----------------------------------------------------------------------------- label maps


def test_amos_to_synapse_spot_checks():
    table = label_map("amos", "synapse")
    assert sorted(table) == list(range(16))
    assert [table[i] for i in range(10)] == list(range(10))  # 0-9 identical
    assert (table[10], table[11], table[12]) == (11, 12, 13)  # pancreas, adrenals
    assert (table[13], table[14], table[15]) == (0, 0, 0)  # duodenum, bladder, prostate/uterus


def test_synapse_to_amos_spot_checks():
    table = label_map("synapse", "amos")
    assert sorted(table) == list(range(14))
    assert table[10] == 0  # portal & splenic veins have no AMOS class
    assert (table[11], table[12], table[13]) == (10, 11, 12)
    assert table[6] == 6 and table[9] == 9


def test_totalsegmentator_tables_cover_every_source_id():
    for source in ("total", "total_mr", "total_v1"):
        table = label_map(source, "synapse")
        assert sorted(table) == list(range(LABEL_SCHEMES[source] + 1))
        assert sorted(v for v in table.values() if v) == list(range(1, 14))  # each organ once
    total = label_map("total", "synapse")
    assert (total[5], total[52], total[63], total[64], total[15]) == (6, 8, 9, 10, 5)
    assert total[10] == 0  # a lung lobe is background
    assert label_map("total_v1", "amos")[104] == 14  # v1 urinary bladder
    assert label_map("total_mr", "amos")[17] == 15


def test_unknown_scheme_names_suggest():
    with pytest.raises(ValueError, match="did you mean 'total'"):
        label_map("totl", "synapse")
    with pytest.raises(ValueError, match="target"):
        label_map("synapse", "total")  # TotalSegmentator is never a target


def test_transform_maps_unknown_ids_to_background():
    t = label_map_transform("total", "synapse", keys="seg")
    out = t({"seg": np.array([[[0, 5, 52, 10, 117, 64]]], dtype=np.uint8)})["seg"]
    assert out.dtype == np.uint8
    assert out.tolist() == [[[0, 6, 8, 0, 0, 10]]]


@pytest.mark.parametrize(
    "folder, stem, source, target",
    [
        ("case_a_top30_slices", "example_seg", "total", "synapse13"),
        ("case_a_top30_slices", "example_seg", "total", "amos15"),
        ("case_a_abdomen_ct_3mm", "example_seg_v1fast_0effae9", "total_v1", "synapse13"),
        ("mr_abdomen_3mm", "example_seg_mr", "total_mr", "amos15"),
    ],
)
def test_remap_equals_shipped_derived(samples_dir, folder, stem, source, target):
    seg = np.asanyarray(nib.load(samples_dir / folder / f"{stem}.nii.gz").dataobj)
    expected = np.asanyarray(nib.load(samples_dir / folder / "derived" / f"{stem}_{target}.nii.gz").dataobj)
    out = label_map_transform(source, target.rstrip("0123456789"))({"label": seg})["label"]
    assert out.shape == expected.shape
    assert np.array_equal(out, expected)
    assert len(np.unique(expected)) > 10  # a real check, not an all-background file


def test_labelmap_cli_writes_remapped_file_keeping_geometry(samples_dir, tmp_path):
    src = samples_dir / "case_a_top30_slices" / "example_seg.nii.gz"
    ref = nib.load(samples_dir / "case_a_top30_slices" / "derived" / "example_seg_synapse13.nii.gz")
    out = tmp_path / "sub" / "seg_synapse.nii.gz"
    assert labelmap_cli(str(src), str(out), "total", "synapse") == str(out)
    written = nib.load(out)
    assert written.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(written.dataobj), np.asanyarray(ref.dataobj))
    np.testing.assert_allclose(written.affine, nib.load(src).affine)
    assert written.header.get_zooms() == nib.load(src).header.get_zooms()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left


def test_labelmap_cli_rejects_wrong_source_and_missing_file(samples_dir, tmp_path):
    src = samples_dir / "case_a_top30_slices" / "example_seg.nii.gz"  # TS v2: ids up to 117
    out = tmp_path / "x.nii.gz"
    with pytest.raises(ValueError, match="outside source='total_mr'"):
        labelmap_cli(str(src), str(out), "total_mr", "synapse")
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        labelmap_cli(str(tmp_path / "nope.nii.gz"), str(out))
    assert not out.exists()


# ----------------------------------------------------------------------------- protocols


def test_native_eval_on_real_ct_sample(samples_dir):
    case = samples_dir / "case_a_abdomen_ct_3mm"
    item = {
        "image": str(case / "example_ct.nii.gz"),
        "label": str(case / "derived" / "example_seg_fast_force_split_synapse13.nii.gz"),
    }
    out = protocol_transforms("native", "eval", num_classes=14)(item)
    image, label = out["image"], out["label"]
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    np.testing.assert_allclose(np.abs(np.diag(image.affine.numpy())[:3]), (1.5, 1.5, 2.0), atol=1e-5)
    np.testing.assert_allclose(image.pixdim.numpy(), (1.5, 1.5, 2.0), atol=1e-5)
    # 122x101x112 voxels at 3 mm -> twice as many in-plane, 1.5x in z (Spacingd rounds the extent)
    assert image.shape == label.shape
    assert image.shape[0] == 1 and abs(image.shape[1] - 244) <= 1 and abs(image.shape[3] - 168) <= 1
    assert image.dtype == torch.float32 and label.dtype == torch.int64
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    present = set(torch.unique(label).tolist())
    assert present <= set(range(14))
    assert len(present - {0}) >= 8  # several organs survive nearest resampling
    assert {6, 1, 2, 3} <= present  # liver, spleen, kidneys


def _write_synthetic(tmp_path, shape=(40, 36, 20), affine=None):
    """HU volume: background -1000, a 75 HU block, a 1000 HU 'bone' voxel; labels 1 and 2 blocks."""
    img = np.full(shape, -1000, dtype=np.int16)
    img[8:32, 8:28, 4:16] = 75
    img[0, 0, 0] = 1000
    lab = np.zeros(shape, dtype=np.uint8)
    lab[8:32, 8:28, 4:16] = 1
    lab[18:21, 16:19, 9:11] = 2  # small class
    affine = np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine
    paths = {"image": tmp_path / "img.nii.gz", "label": tmp_path / "lab.nii.gz"}
    nib.save(nib.Nifti1Image(img, affine), paths["image"])
    nib.save(nib.Nifti1Image(lab, affine), paths["label"])
    return {k: str(v) for k, v in paths.items()}


def test_dhc_chain_shapes_and_intensity(tmp_path):
    item = _write_synthetic(tmp_path)
    ev = protocol_transforms("dhc", "eval")(dict(item))
    assert ev["image"].shape == (1, 160, 160, 80) and ev["label"].shape == (1, 160, 160, 80)
    # clip to [-75, 275] then min-max: -1000 -> 0, 1000 -> 1, 75 HU -> (75 + 75) / 350
    assert float(ev["image"].min()) == pytest.approx(0.0) and float(ev["image"].max()) <= 1.0
    assert float(ev["image"][0, 80, 80, 40]) == pytest.approx(150 / 350, abs=1e-5)
    assert set(torch.unique(ev["label"]).tolist()) == {0, 1, 2}  # nearest keeps ids
    tr = protocol_transforms("dhc", "train", seed=0)(dict(item))
    assert tr["image"].shape == (1, 128, 128, 64) and tr["label"].shape == (1, 128, 128, 64)


def test_ga_chain_shapes_and_intensity(tmp_path):
    item = _write_synthetic(tmp_path)
    ev = protocol_transforms("ga", "eval")(dict(item))
    assert ev["image"].shape == (1, 160, 160, 80)
    assert float(ev["image"][0, 80, 80, 40]) == pytest.approx((75 + 125) / 400, abs=1e-5)
    assert float(ev["image"].min()) == 0.0 and float(ev["image"].max()) <= 1.0
    tr = protocol_transforms("ga", "train", seed=0)(dict(item))
    assert tr["image"].shape == (1, 96, 96, 96)  # z padded 80 -> 96
    assert tr["label"].shape == (1, 96, 96, 96)


def test_native_train_pads_small_volume_and_balances_classes(tmp_path):
    item = _write_synthetic(tmp_path)
    # only the tiny class 2 (3x3x2 voxels before resampling) may be a crop centre
    chain = protocol_transforms(
        "native", "train", num_classes=3, patch_size=(16, 16, 16), ratios=(0, 0, 1), num_samples=3, seed=1
    )
    crops = chain(dict(item))
    assert len(crops) == 3
    for crop in crops:
        assert crop["image"].shape == (1, 16, 16, 16)
        assert 2 in torch.unique(crop["label"]).tolist()
    # patch larger than the resampled volume: padded, not an error
    big = protocol_transforms("native", "train", num_classes=3, patch_size=(64, 64, 64), seed=0)(dict(item))
    assert big[0]["image"].shape == (1, 64, 64, 64)


def test_native_class_indices_are_cached_and_dropped(tmp_path):
    """The class -> voxel indices come before the first random transform (a CacheDataset keeps
    them), the crop draws exactly what an uncached crop draws, and no index array reaches collate."""
    from monai.data import CacheDataset
    from monai.transforms import Randomizable

    item = _write_synthetic(tmp_path)
    chain = protocol_transforms("native", "train", num_classes=3, patch_size=(16, 16, 16), seed=4)
    names = [type(t).__name__ for t in chain.transforms]
    first_random = next(i for i, t in enumerate(chain.transforms) if isinstance(t, Randomizable))
    assert names.index("ClassesToIndicesd") < first_random
    cached = CacheDataset([dict(item)], transform=chain, cache_rate=1.0, progress=False)
    assert "label_cls_indices" in cached._cache[0]
    uncached = protocol_transforms("native", "train", num_classes=3, patch_size=(16, 16, 16), seed=4)
    uncached.transforms = tuple(t for t in uncached.transforms if type(t).__name__ not in ("ClassesToIndicesd", "DeleteItemsd"))
    uncached.transforms[names.index("RandCropByLabelClassesd") - 1].indices_key = None
    for _ in range(3):
        got, want = cached[0][0], uncached(dict(item))[0]
        assert set(got) == {"image", "label"}
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["label"], want["label"])


def test_train_chains_are_deterministic_under_seed(tmp_path):
    item = _write_synthetic(tmp_path)
    for protocol in ("dhc", "ga", "native"):
        kw = {"num_classes": 3, "patch_size": (16, 16, 16)} if protocol == "native" else {"patch_size": (32, 32, 16)}
        a = protocol_transforms(protocol, "train", seed=7, **kw)
        b = protocol_transforms(protocol, "train", seed=7, **kw)
        for _ in range(2):
            oa, ob = a(dict(item)), b(dict(item))
            oa, ob = (oa[0], ob[0]) if isinstance(oa, list) else (oa, ob)
            assert torch.equal(oa["image"], ob["image"]) and torch.equal(oa["label"], ob["label"])


def test_set_determinism_makes_unseeded_chain_reproducible(tmp_path):
    item = _write_synthetic(tmp_path)
    outs = []
    try:
        for _ in range(2):
            set_determinism(seed=11)
            chain = protocol_transforms("dhc", "train", patch_size=(40, 40, 20))
            outs.append([chain(dict(item))["image"] for _ in range(3)])
    finally:
        set_determinism(seed=None)
    assert all(torch.equal(x, y) for x, y in zip(*outs))
    assert not all(torch.equal(outs[0][0], z) for z in outs[0][1:])  # the crops do move


def test_unlabeled_stream_and_infer_inversion(tmp_path):
    lps = np.diag([-2.0, -2.0, 3.0, 1.0])
    item = _write_synthetic(tmp_path, affine=lps)
    crop = protocol_transforms("native", "train", keys=("image",), patch_size=(16, 16, 16), seed=0)(
        {"image": item["image"]}
    )
    assert crop["image"].shape == (1, 16, 16, 16) and "label" not in crop
    chain = protocol_transforms("native", "infer")
    data = chain({"image": item["image"]})
    assert nib.aff2axcodes(data["image"].affine.numpy()) == ("R", "A", "S")
    data["pred"] = data["image"].clone()
    inv = Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=True)(data)
    assert tuple(inv["pred"].shape[1:]) == (40, 36, 20)
    np.testing.assert_allclose(inv["pred"].affine.numpy(), lps, atol=1e-5)


def test_protocol_argument_errors():
    with pytest.raises(ValueError, match="did you mean 'dhc'"):
        protocol_transforms("dch", "train")
    with pytest.raises(ValueError, match="stage"):
        protocol_transforms("ga", "test")
    with pytest.raises(ValueError, match="num_classes"):
        protocol_transforms("native", "train")
    with pytest.raises(ValueError, match="ratios must have num_classes=3"):
        protocol_transforms("native", "train", num_classes=3, ratios=(1, 1))
    with pytest.raises(ValueError, match="patch_size"):
        protocol_transforms("ga", "train", patch_size=(96, 96))
    with pytest.raises(ValueError, match="window"):
        protocol_transforms("ga", "eval", window=(275, -125))


# ----------------------------------------------------------------------------- reference random crop


def _crop_offsets(seed, shape=(40, 40, 20), roi=(24, 24, 24), draws=1):
    from scdl_monai.data.transforms import ReferenceRandomCropd

    t = ReferenceRandomCropd(["image", "label"], roi_size=roi)
    t.set_random_state(seed)
    image = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(1, *shape) + 1  # no zeros inside
    out = []
    for _ in range(draws):
        o = t({"image": image, "label": image.clone()})
        assert o["image"].shape == (1, *roi) and torch.equal(o["image"], o["label"])
        out.append(t._start)
    return t, out


def test_reference_random_crop_pads_like_the_reference_and_offsets_at_random():
    # depth 20 <= 24: every axis padded by max((r - s) // 2 + 3, 0) -> (0, 0, 5); depth 20 + 10 = 30
    t, starts = _crop_offsets(0, draws=200)
    assert t.padding((40, 40, 20)) == (0, 0, 5)
    z = {s[2] for s in starts}
    assert z == set(range(30 - 24))  # offsets 0..5: the upper bound is excluded, as np.random.randint
    assert {s[0] for s in starts} <= set(range(40 - 24)) and max(s[0] for s in starts) == 15
    # GA grid: 160x160x80 with 96^3 patches -> z padded by 11 per side (80 -> 102), x/y unpadded
    from scdl_monai.data.transforms import ReferenceRandomCropd

    assert ReferenceRandomCropd("image", (96, 96, 96)).padding((160, 160, 80)) == (0, 0, 11)
    assert ReferenceRandomCropd("image", (128, 128, 64)).padding((160, 160, 80)) == (0, 0, 0)


def test_reference_random_crop_is_seeded():
    _, a = _crop_offsets(3, draws=20)
    _, b = _crop_offsets(3, draws=20)
    _, c = _crop_offsets(4, draws=20)
    assert a == b
    assert a != c


def test_reference_random_crop_places_the_volume_at_a_random_depth():
    from scdl_monai.data.transforms import ReferenceRandomCropd

    t = ReferenceRandomCropd("image", roi_size=(8, 8, 24))
    depths = set()
    for seed in range(30):
        t.set_random_state(seed)
        out = t({"image": torch.ones(1, 8, 8, 20)})["image"]
        filled = torch.nonzero(out[0].sum((0, 1))).flatten()
        depths.add(int(filled[0]))  # first non-padded slice inside the patch
    assert len(depths) > 1  # a fixed SpatialPadd would always give 2


def test_ga_and_dhc_chains_resize_before_clipping():
    for protocol in ("dhc", "ga"):
        names = [type(t).__name__ for t in protocol_transforms(protocol, "train").transforms]
        assert names.index("Resized") < names.index("ScaleIntensityRanged"), protocol
        assert "ReferenceRandomCropd" in names and "SpatialPadd" not in names, protocol


def test_resize_before_clip_differs_from_clip_before_resize():
    """The order matters where trilinear interpolation mixes voxels across a window bound."""
    from monai.transforms import Resize, ScaleIntensityRange

    x = torch.tensor([[-1000.0, 500.0] * 4] * 8).reshape(1, 8, 8, 1).repeat(1, 1, 1, 2)
    clip = ScaleIntensityRange(a_min=-125, a_max=275, b_min=0, b_max=1, clip=True)
    resize = Resize((5, 5, 2), mode="trilinear")
    assert not torch.allclose(clip(resize(x)), resize(clip(x)))
