"""Tests for scdl_monai.data.strong_aug (GenericSSL's StrongAug policy)."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from scipy.ndimage import gaussian_filter

from scdl_monai.data.strong_aug import STRONG_AUG_OPS, StrongAugd


def _sample(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(1, size, size, size, dtype=torch.long)
    label[:, 8:20, 10:24, 4:28] = 1
    label[:, 12:16, 12:16, 10:20] = 3
    image = 0.5 * label.float() + 0.1 * torch.rand(1, size, size, size, generator=g)
    return {"image": MetaTensor(image), "label": MetaTensor(label)}


def test_seeded_determinism_and_exactly_three_distinct_ops():
    data = _sample()
    a, b = StrongAugd(), StrongAugd()
    plans = set()
    for seed in range(8):
        a.set_random_state(seed)
        b.set_random_state(seed)
        out_a, out_b = a(data), b(data)
        assert a.last_plan == b.last_plan
        assert torch.equal(out_a["image"], out_b["image"]) and torch.equal(out_a["label"], out_b["label"])
        assert len(a.last_ops) == 3 and len(set(a.last_ops)) == 3 and set(a.last_ops) <= set(STRONG_AUG_OPS)
        plans.add(repr(a.last_plan))
    assert len(plans) == 8  # different seeds, different plans


def test_policy_frequencies_match_the_reference():
    aug = StrongAugd().set_random_state(123)
    chosen, applied, zoomed = Counter(), Counter(), 0
    n = 3000
    for _ in range(n):
        aug.randomize()
        for name, params in aug.last_plan:
            chosen[name] += 1
            applied[name] += params is not None
            if name == "zoom" and params is not None:
                assert 0.7 <= params["scale"] <= 1.0
                zoomed += params["scale"] < 1.0
            if name == "rotate" and params is not None:
                assert abs(params["angle"]) <= math.radians(15)
            if name in ("contrast", "gamma", "brightness") and params is not None:
                assert 0.7 <= next(iter(params.values())) <= 1.3
    for name in STRONG_AUG_OPS:
        assert chosen[name] / n == pytest.approx(0.5, abs=0.04)  # 3 of 6
        assert applied[name] / chosen[name] == pytest.approx(0.7, abs=0.04)
    assert zoomed / applied["zoom"] == pytest.approx(0.5, abs=0.05)  # zoom-in only half the time


def test_labels_keep_their_values_dtype_and_shape():
    data = _sample()
    aug = StrongAugd(prob=1.0)
    for seed in range(6):
        out = aug.set_random_state(seed)(data)
        assert out["label"].dtype == torch.int64 and out["label"].shape == data["label"].shape
        assert set(out["label"].unique().tolist()) <= {0, 1, 3}
        assert out["image"].dtype == torch.float32 and out["image"].shape == data["image"].shape


def test_spatial_ops_move_image_and_label_together():
    data = _sample()
    data["image"] = MetaTensor(data["label"].float())
    aug = StrongAugd(ops=("rotate", "zoom"), num_ops=2, prob=1.0, image_mode="nearest")
    moved = 0
    for seed in range(5):
        out = aug.set_random_state(seed)(data)
        assert torch.equal(out["image"], out["label"].float())
        moved += not torch.equal(out["label"], data["label"])
    assert moved > 0


def test_zoom_enlarges_and_rotation_is_in_plane():
    data = _sample()
    zoom = StrongAugd(ops=("zoom",), num_ops=1, prob=1.0, image_mode="nearest")
    for seed in range(20):
        out = zoom.set_random_state(seed)(data)
        if zoom.last_plan[0][1]["scale"] < 0.95:
            break
    assert (out["label"] > 0).sum() > (data["label"] > 0).sum()
    # a volume constant along z stays constant along z under the default in-plane rotation
    column = torch.zeros(1, 32, 32, 32)
    column[:, 10:22, 12:18, :] = 1.0
    rot = StrongAugd(keys="image", label_keys=(), ops=("rotate",), num_ops=1, prob=1.0)
    out = rot.set_random_state(1)({"image": column})["image"]
    assert not torch.allclose(out, column)
    assert torch.allclose(out[..., 5], out[..., 20], atol=1e-5)


def _only(op, seed=0, **kw):
    aug = StrongAugd(ops=(op,), num_ops=1, prob=1.0, **kw).set_random_state(seed)
    data = _sample()
    return data, aug(data), aug.last_plan[0][1]


def test_intensity_ops_follow_their_formulas_and_leave_labels_alone():
    data, out, p = _only("brightness")
    assert torch.allclose(out["image"], data["image"] * p["factor"], atol=1e-6)
    assert torch.equal(out["label"], data["label"])

    data, out, p = _only("contrast")
    img = data["image"].as_tensor()
    expected = ((img - img.mean()) * p["factor"] + img.mean()).clamp(img.min(), img.max())
    assert torch.allclose(out["image"], expected, atol=1e-5)

    data, out, p = _only("gamma")
    assert out["image"].mean().item() == pytest.approx(data["image"].mean().item(), abs=1e-5)
    assert out["image"].std().item() == pytest.approx(data["image"].std().item(), rel=1e-4)
    assert not torch.allclose(out["image"], data["image"])

    data, out, p = _only("blur")
    ref = gaussian_filter(data["image"][0].numpy(), p["sigma"], mode="reflect", truncate=4.0)
    np.testing.assert_allclose(out["image"][0].numpy(), ref, atol=1e-5)
    assert torch.equal(out["label"], data["label"])


def test_works_in_compose_without_label_and_with_numpy():
    pipe = Compose([StrongAugd(keys=("image", "label"), allow_missing_keys=True, prob=1.0)]).set_random_state(0)
    image = np.random.default_rng(0).random((1, 16, 16, 16), dtype=np.float32)
    out = pipe({"image": image})
    assert "label" not in out and tuple(out["image"].shape) == (1, 16, 16, 16)
    assert not np.allclose(np.asarray(out["image"]), image)  # MONAI returns a (Meta)Tensor for arrays


def test_errors():
    with pytest.raises(ValueError, match="label_keys"):
        StrongAugd(keys="image", label_keys="label")
    with pytest.raises(ValueError, match="ops"):
        StrongAugd(ops=("rotate", "sharpen"))
    with pytest.raises(ValueError, match="num_ops"):
        StrongAugd(num_ops=7)
    with pytest.raises(ValueError, match="prob"):
        StrongAugd(prob=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        StrongAugd(scale_range=(1.1, 1.3))
    with pytest.raises(ValueError, match="blur_sigma"):
        StrongAugd(blur_sigma=(1.3, 0.7))
