"""Synthetic, class-imbalanced abdomen CT phantom with the 13 Synapse organs.

Why: the real datasets (Synapse, AMOS) cannot be redistributed, and the shipped TotalSegmentator
samples are a single patient. The phantom gives any number of labelled CT-like volumes with the
property the SCDL/DHC methods target: a long-tailed class distribution (liver : adrenal gland
≥ 500 : 1 voxels in every case, against ≈ 250 : 1 in the shipped real case) where a small model
trained on few labels under-segments the small organs.

What makes it hard (on purpose):

* tiny organs next to organs of almost the same HU: adrenal glands (≈ 32 HU) sit on the upper
  pole of the kidneys (≈ 35 HU) beside the IVC and liver; pancreas (≈ 45 HU) lies against the
  duodenum (≈ 35 HU, unlabelled) and the splenic vein; esophagus (≈ 40 HU) joins the stomach;
* thin tubular vessels (portal & splenic veins, esophagus) a few voxels across;
* unlabelled confusers: duodenum, bowel loops with gas, abdominal wall and paraspinal muscle
  (≈ 50 HU, like the organs);
* partial-volume blur (Gaussian, σ 0.6–0.9 voxel), Gaussian noise (σ 10–18 HU), low-frequency
  texture and per-case jitter of HU, shape, size and position.

Organ sizes are exact: each organ is the ``k`` voxels with the highest value of a smooth
ellipsoid- or tube-shaped random field among still-unassigned body voxels, with ``k`` drawn as
a fraction of the liver's count (relative sizes loosely follow adult organ volumes; the adrenals
are drawn at liver/550 … liver/850). Labels are Synapse ids and names
(:data:`scdl_monai.data.datasets.SYNAPSE`, docs/data.md#datasets).

HU values are typical portal-venous-phase CT values (liver 60, spleen 50, kidneys 35, aorta 150,
fat −95, air −1000), chosen for plausibility, not taken from a specific source.

Volumes are in RAS voxel order: axis 0 increases toward the patient's right (liver side), axis 1
toward anterior, axis 2 toward superior; the affine is ``diag(spacing)`` centred on the volume.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from scdl_monai.data.datasets import SYNAPSE
from scdl_monai.data.utils import atomic_write, look_up

__all__ = ["PHANTOM_SIZES", "generate_phantom", "phantom_case", "class_voxel_shares", "phantom_cli"]

#: Named sizes for the CLI (x, y, z voxels).
PHANTOM_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (32, 32, 32),
    "small": (64, 64, 48),
    "benchmark": (96, 96, 64),
}

_ID = {name: i for i, name in enumerate(SYNAPSE.class_names)}

#: Liver voxels as a fraction of the whole grid (jittered ×0.85–1.15 per case).
_LIVER_FRACTION = 0.085
#: Organ size relative to the liver (jittered ×0.8–1.25 per case); adrenals drawn separately.
_RELATIVE_SIZE = {
    "spleen": 0.16,
    "right kidney": 0.10,
    "left kidney": 0.10,
    "gallbladder": 0.025,
    "esophagus": 0.010,
    "stomach": 0.30,
    "aorta": 0.045,
    "inferior vena cava": 0.035,
    "portal & splenic veins": 0.018,
    "pancreas": 0.05,
}
#: liver : adrenal ratio range (each adrenal drawn independently); min 550 keeps every case ≥ 500:1.
_ADRENAL_RATIO = (550.0, 850.0)

#: Mean HU and per-case standard deviation of the mean.
_HU = {
    "liver": (60, 8),
    "spleen": (50, 8),
    "right kidney": (35, 6),
    "left kidney": (35, 6),
    "gallbladder": (10, 5),
    "esophagus": (40, 6),
    "stomach": (30, 8),
    "aorta": (150, 25),
    "inferior vena cava": (110, 20),
    "portal & splenic veins": (140, 20),
    "pancreas": (45, 6),
    "right adrenal gland": (32, 6),
    "left adrenal gland": (32, 6),
    "duodenum": (35, 6),
    "bowel": (25, 8),
    "fat": (-95, 8),
    "muscle": (50, 5),
    "bone": (400, 40),
}
_AIR_HU = -1000.0
_GAS_HU = -700.0

# Geometry in normalised coordinates u ∈ [-1, 1]^3 (x: +right, y: +anterior, z: +superior).
# ("blob", centre, radii) or ("tube", polyline points, radius)
_ORGANS: list[tuple[str, str, tuple, object]] = [
    ("aorta", "tube", ((-0.06, -0.24, 1.1), (-0.05, -0.22, -1.1)), 0.07),
    ("inferior vena cava", "tube", ((0.17, -0.22, 1.1), (0.14, -0.19, -1.1)), 0.07),
    ("esophagus", "tube", ((-0.03, -0.19, 1.1), (-0.07, -0.13, 0.78), (-0.18, 0.02, 0.6)), 0.05),
    (
        "portal & splenic veins",
        "tube",
        ((-0.48, -0.15, 0.30), (-0.22, -0.09, 0.22), (0.05, -0.04, 0.18), (0.25, 0.03, 0.26)),
        0.04,
    ),
    ("right adrenal gland", "blob", (0.27, -0.32, 0.24), (0.05, 0.035, 0.08)),
    ("left adrenal gland", "blob", (-0.27, -0.29, 0.30), (0.05, 0.035, 0.08)),
    ("right kidney", "blob", (0.38, -0.38, -0.12), (0.12, 0.14, 0.28)),
    ("left kidney", "blob", (-0.38, -0.36, -0.02), (0.12, 0.14, 0.28)),
    ("gallbladder", "blob", (0.30, 0.42, -0.05), (0.08, 0.10, 0.14)),
    (
        "pancreas",
        "tube",
        ((0.18, 0.02, 0.04), (0.0, 0.05, 0.10), (-0.25, -0.02, 0.18), (-0.45, -0.12, 0.26)),
        0.07,
    ),
    ("duodenum", "tube", ((-0.08, 0.22, 0.30), (0.22, 0.13, 0.12), (0.26, 0.05, -0.10), (0.0, 0.0, -0.22)), 0.06),
    ("spleen", "blob", (-0.58, -0.22, 0.35), (0.16, 0.20, 0.26)),
    ("stomach", "blob", (-0.30, 0.25, 0.45), (0.28, 0.22, 0.30)),
    ("liver", "blob", (0.42, 0.05, 0.30), (0.42, 0.48, 0.55)),
]
_DUODENUM_RELATIVE = 0.04


def _coords(shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Voxel-centre coordinates in [-1, 1] per axis, each of ``shape`` (float32)."""
    axes = [((2 * np.arange(n, dtype=np.float32) + 1) / n - 1) for n in shape]
    return tuple(np.meshgrid(*axes, indexing="ij"))


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], cells: int = 5) -> np.ndarray:
    """Unit-variance low-frequency noise: a coarse Gaussian grid interpolated to ``shape``."""
    coarse = rng.standard_normal((cells + 1,) * 3).astype(np.float32)
    factors = [n / (cells + 1) for n in shape]
    field = ndimage.zoom(coarse, factors, order=1, mode="nearest", grid_mode=True)
    field = field[: shape[0], : shape[1], : shape[2]]
    if field.shape != tuple(shape):  # zoom rounding; pad by edge values
        field = np.pad(field, [(0, n - m) for n, m in zip(shape, field.shape)], mode="edge")
    return (field - field.mean()) / (field.std() + 1e-6)


def _segment_distance(grid: tuple[np.ndarray, ...], points: np.ndarray) -> np.ndarray:
    """Euclidean distance (normalised units) from every voxel to a polyline ``points`` (P, 3)."""
    best = None
    for a, b in zip(points[:-1], points[1:]):
        ab = b - a
        t = sum((g - ai) * di for g, ai, di in zip(grid, a, ab)) / float(ab @ ab)
        np.clip(t, 0.0, 1.0, out=t)
        d2 = sum((g - (ai + t * di)) ** 2 for g, ai, di in zip(grid, a, ab))
        best = d2 if best is None else np.minimum(best, d2)
    return np.sqrt(best)


def _take_top(field: np.ndarray, free: np.ndarray, k: int) -> np.ndarray:
    """Mask of the ``k`` free voxels with the highest ``field`` value."""
    idx = np.flatnonzero(free)
    k = int(min(max(k, 0), idx.size))
    mask = np.zeros(field.size, dtype=bool)
    if k:
        top = np.argpartition(-field.ravel()[idx], k - 1)[:k]
        mask[idx[top]] = True
    return mask.reshape(field.shape)


def phantom_case(
    shape: Sequence[int] = (64, 64, 48), seed: int | Sequence[int] = 0, pose_jitter: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one phantom volume.

    Args:
        shape: (x, y, z) voxels, each >= 16.
        seed: seed (or seed sequence) of the ``numpy.random.Generator``.
        pose_jitter: case-to-case variability of pose and anatomy, in [0, 1]. At ``s`` > 0 the
            whole body is rotated about the superior axis by up to ±15·s degrees, scaled by
            1 ± 0.1·s, shifted by up to ±(0.08, 0.08, 0.15)·s of the half-extent (the imaged
            slab moves along the body), and every organ's centre jitters with
            ``(1 + 2s)`` times the default spread. 0 (default) reproduces the original phantom
            exactly (same draws); organ voxel counts, hence the imbalance, do not depend on it.

    Returns:
        ``(image, label)``: image ``int16`` HU of ``shape``; label ``uint8`` Synapse ids 0..13.

    Raises:
        ValueError: for a malformed ``shape``.
    """
    shape = _shape(shape)
    pose_jitter = float(pose_jitter)
    if not 0.0 <= pose_jitter <= 1.0:
        raise ValueError(f"pose_jitter must be in [0, 1], got {pose_jitter!r}.")
    rng = np.random.default_rng(seed)
    grid = _coords(shape)
    if pose_jitter > 0:  # anatomy coordinates of each voxel: undo shift, scale, rotation about z
        angle = np.deg2rad(15.0) * pose_jitter * rng.uniform(-1.0, 1.0)
        scale = 1.0 + 0.1 * pose_jitter * rng.uniform(-1.0, 1.0)
        shift = pose_jitter * np.array([0.08, 0.08, 0.15]) * rng.uniform(-1.0, 1.0, 3)
        gx, gy, gz = ((g - np.float32(d)) / np.float32(scale) for g, d in zip(grid, shift))
        c, s_ = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        grid = (c * gx + s_ * gy, -s_ * gx + c * gy, gz)
    spread = 1.0 + 2.0 * pose_jitter
    x, y, z = grid
    n_vox = int(np.prod(shape))

    # body wall: skin/subcutaneous fat, muscle ring, visceral cavity; spine and paraspinal muscle
    ax, ay = 0.92 * rng.uniform(0.95, 1.05), 0.72 * rng.uniform(0.95, 1.05)
    ell = (x / ax) ** 2 + (y / ay) ** 2
    body = ell <= 1.0
    cavity = ell <= 0.78
    muscle = body & ~cavity & (ell >= 0.70)
    bone = (x**2 + (y + 0.42) ** 2) <= 0.13**2
    para = (((x - 0.22) / 0.15) ** 2 + ((y + 0.58) / 0.11) ** 2 <= 1) | (
        ((x + 0.22) / 0.15) ** 2 + ((y + 0.58) / 0.11) ** 2 <= 1
    )
    muscle |= para & body
    free = cavity & ~bone & ~muscle

    label = np.zeros(shape, dtype=np.uint8)
    region: dict[str, np.ndarray] = {}
    liver_k = _LIVER_FRACTION * n_vox * rng.uniform(0.85, 1.15)
    for name, kind, geo, size in _ORGANS:
        if name in ("right adrenal gland", "left adrenal gland"):
            k = max(2, int(liver_k / rng.uniform(*_ADRENAL_RATIO)))  # floor keeps the ratio >= 550
        elif name == "liver":
            k = round(liver_k)
        elif name == "duodenum":
            k = round(liver_k * _DUODENUM_RELATIVE * rng.uniform(0.8, 1.25))
        else:
            k = max(2, round(liver_k * _RELATIVE_SIZE[name] * rng.uniform(0.8, 1.25)))
        if kind == "blob":
            centre = np.asarray(geo) + rng.normal(0.0, 0.03 * spread, 3)
            radii = np.asarray(size) * rng.uniform(0.85, 1.15, 3)
            field = 1.0 - sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
            field += 0.35 * _smooth_noise(rng, shape)
        else:
            points = np.asarray(geo, dtype=np.float32) + rng.normal(0.0, 0.025 * spread, (len(geo), 3)).astype(np.float32)
            field = -_segment_distance(grid, points) / float(size)
            field += 0.08 * _smooth_noise(rng, shape)
        mask = _take_top(field, free, k)
        free &= ~mask
        region[name] = mask
        if name in _ID:
            label[mask] = _ID[name]

    # bowel loops in the lower abdomen (unlabelled), painted on what is still free
    bowel = np.zeros(shape, dtype=bool)
    for _ in range(rng.integers(4, 8)):
        c = (rng.uniform(-0.5, 0.5), rng.uniform(-0.1, 0.4), rng.uniform(-0.95, -0.2))
        r = rng.uniform(0.08, 0.18, 3)
        bowel |= sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1.0
    bowel &= free
    gas = bowel & (_smooth_noise(rng, shape, cells=7) > 1.3)

    # intensities
    def hu(name: str) -> float:
        mean, sd = _HU[name]
        return float(rng.normal(mean, sd))

    image = np.full(shape, _AIR_HU, dtype=np.float32)
    image[body] = hu("fat")
    image[muscle] = hu("muscle")
    image[bone] = hu("bone")
    image[bone & ((x**2 + (y + 0.42) ** 2) >= 0.10**2)] += 300.0  # cortical rim
    image[bowel] = hu("bowel")
    image[gas] = _GAS_HU
    for name, mask in region.items():
        image[mask] = hu(name)
    stomach = region["stomach"]
    if stomach.any():  # gas cap in the anterior part of the stomach (still labelled stomach)
        cut = np.quantile(y[stomach], 0.9)
        image[stomach & (y >= cut)] = _GAS_HU
    image[body] += 6.0 * _smooth_noise(rng, shape)[body]  # low-frequency texture
    image = ndimage.gaussian_filter(image, sigma=rng.uniform(0.6, 0.9))  # partial-volume blur
    image += rng.normal(0.0, rng.uniform(10.0, 18.0), shape).astype(np.float32)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return image, label


def _shape(shape) -> tuple[int, int, int]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be 3 integers (x, y, z), got {shape!r}.") from None
    if len(out) != 3 or any(s < 16 for s in out) or any(int(s) != s for s in shape):
        raise ValueError(f"shape must be 3 integers >= 16 (x, y, z), got {shape!r}.")
    return out


def _affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS affine ``diag(spacing)`` with the volume centred on the world origin."""
    aff = np.diag([*map(float, spacing), 1.0])
    aff[:3, 3] = -0.5 * (np.asarray(shape) - 1) * np.asarray(spacing, dtype=float)
    return aff


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)), suffix=".nii.gz")


def generate_phantom(
    out_dir: str | Path,
    num_cases: int = 10,
    shape: Sequence[int] = (64, 64, 48),
    spacing: Sequence[float] = (1.5, 1.5, 2.0),
    seed: int = 0,
    labeled_fraction: float = 0.2,
    num_validation: int | None = None,
    num_test: int | None = None,
    relative: bool = False,
    pose_jitter: float = 0.0,
) -> Path:
    """Write ``num_cases`` phantom image/label NIfTI pairs and a datalist JSON.

    Case ``i`` depends only on ``(seed, i)``, so adding cases never changes earlier ones. The
    split is a fixed permutation drawn from ``seed``: ``num_test`` test cases, ``num_validation``
    validation cases, and of the rest ``max(1, round(labeled_fraction * rest))`` labelled
    (``training``) and the others ``unlabeled`` (image only).

    Layout: ``out_dir/images/phantom_XXX.nii.gz`` (int16 HU), ``out_dir/labels/phantom_XXX.nii.gz``
    (uint8 Synapse ids), ``out_dir/datalist.json`` with keys ``training``, ``unlabeled``,
    ``validation``, ``test`` (entries hold ``image``, ``label`` except in ``unlabeled``, and
    ``case_id``) plus ``labels`` (id -> name) and ``phantom`` (generation settings).

    Args:
        out_dir: output folder (created).
        num_cases: number of volumes.
        shape: (x, y, z) voxels per volume (each >= 16).
        spacing: voxel size in mm (x, y, z), written to the affine.
        seed: generator seed.
        labeled_fraction: fraction of the non-held-out cases that keep labels, in (0, 1].
        num_validation: default ``max(1, round(0.1 * num_cases))``.
        num_test: default ``max(1, round(0.2 * num_cases))``.
        relative: write paths relative to the JSON's folder (resolved by MONAI's
            ``load_decathlon_datalist``) instead of absolute ones.
        pose_jitter: case-to-case pose and anatomy variability in [0, 1] (:func:`phantom_case`);
            0 keeps the original phantom.

    Returns:
        path of the datalist JSON.

    Raises:
        ValueError: bad sizes, fractions or counts (naming the argument and value).
    """
    shape = _shape(shape)
    try:
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing!r}.") from None
    if len(spacing) != 3 or any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing!r}.")
    if int(num_cases) != num_cases or num_cases < 1:
        raise ValueError(f"num_cases must be a positive integer, got {num_cases!r}.")
    if not 0.0 < float(labeled_fraction) <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction!r}.")
    num_cases = int(num_cases)
    n_val = max(1, round(0.1 * num_cases)) if num_validation is None else int(num_validation)
    n_test = max(1, round(0.2 * num_cases)) if num_test is None else int(num_test)
    if n_val < 0 or n_test < 0 or n_val + n_test >= num_cases:
        raise ValueError(
            f"num_validation={n_val} + num_test={n_test} must leave at least one training case "
            f"out of num_cases={num_cases}."
        )

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    affine = _affine(shape, spacing)
    entries = []
    for i in range(num_cases):
        case_id = f"phantom_{i:03d}"
        image, label = phantom_case(shape, seed=(int(seed), i), pose_jitter=pose_jitter)
        img_path, lab_path = out / "images" / f"{case_id}.nii.gz", out / "labels" / f"{case_id}.nii.gz"
        _save_nifti(image, affine, img_path)
        _save_nifti(label, affine, lab_path)
        if relative:
            img_path, lab_path = img_path.relative_to(out), lab_path.relative_to(out)
        else:
            img_path, lab_path = img_path.resolve(), lab_path.resolve()
        entries.append({"image": str(img_path), "label": str(lab_path), "case_id": case_id})

    order = np.random.default_rng([int(seed), 2**31 - 1]).permutation(num_cases).tolist()
    test, val, pool = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    n_lab = max(1, round(float(labeled_fraction) * len(pool)))
    labeled, unlabeled = pool[:n_lab], pool[n_lab:]
    datalist = {
        "training": [entries[i] for i in sorted(labeled)],
        "unlabeled": [{"image": entries[i]["image"], "case_id": entries[i]["case_id"]} for i in sorted(unlabeled)],
        "validation": [entries[i] for i in sorted(val)],
        "test": [entries[i] for i in sorted(test)],
        "labels": {str(i): name for i, name in enumerate(SYNAPSE.class_names)},
        "phantom": {
            "num_cases": num_cases,
            "shape": list(shape),
            "spacing": list(spacing),
            "seed": int(seed),
            "labeled_fraction": float(labeled_fraction),
            **({"pose_jitter": float(pose_jitter)} if pose_jitter else {}),
        },
    }
    path = out / "datalist.json"

    def _write(tmp: Path) -> None:
        with tmp.open("w") as fh:
            json.dump(datalist, fh, indent=2)

    return atomic_write(path, _write)


def class_voxel_shares(
    labels: np.ndarray | str | Path | Iterable[np.ndarray | str | Path],
    class_names: Sequence[str] = SYNAPSE.class_names,
) -> dict:
    """Voxel counts per class summed over label volumes, with foreground shares and ratios.

    Args:
        labels: one label array / NIfTI path, or an iterable of them (integer ids).
        class_names: names of ids ``0..C-1`` (default Synapse).

    Returns:
        dict with ``per_class`` (name -> ``{"label", "voxels", "percent_foreground",
        "ratio_to_smallest"}`` for the organs ``1..C-1``), ``foreground_voxels``,
        ``background_voxels``, ``largest`` / ``smallest`` (names, among present organs),
        ``largest_to_smallest`` (float; ``inf`` when an organ is missing) and ``missing`` (names
        of organs with no voxel).

    Raises:
        ValueError: an id >= ``len(class_names)`` or a negative id (naming the volume).
    """
    if isinstance(labels, (str, Path, np.ndarray)):
        labels = [labels]
    num_classes = len(class_names)
    counts = np.zeros(num_classes, dtype=np.int64)
    for item in labels:
        if isinstance(item, (str, Path)):
            import nibabel as nib

            arr = np.asanyarray(nib.load(str(item)).dataobj)
        else:
            arr = np.asarray(item)
        arr = arr.astype(np.int64, copy=False).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            where = item if isinstance(item, (str, Path)) else "array"
            raise ValueError(f"{where}: label ids must be in 0..{num_classes - 1}, got {arr.min()}..{arr.max()}.")
        counts += np.bincount(arr, minlength=num_classes)
    organs = counts[1:]
    fg = int(organs.sum())
    present = organs > 0
    smallest_n = int(organs[present].min()) if present.any() else 0
    per_class = {
        name: {
            "label": i,
            "voxels": int(counts[i]),
            "percent_foreground": 100.0 * counts[i] / fg if fg else 0.0,
            "ratio_to_smallest": counts[i] / smallest_n if smallest_n else 0.0,
        }
        for i, name in enumerate(class_names)
        if i > 0
    }
    missing = [class_names[i + 1] for i in np.flatnonzero(~present)]
    largest = class_names[1 + int(organs.argmax())] if fg else None
    smallest = class_names[1 + int(np.where(present, organs, np.iinfo(np.int64).max).argmin())] if fg else None
    ratio = float("inf") if missing or not fg else float(organs.max() / smallest_n)
    return {
        "per_class": per_class,
        "foreground_voxels": fg,
        "background_voxels": int(counts[0]),
        "largest": largest,
        "smallest": smallest,
        "largest_to_smallest": ratio,
        "missing": missing,
    }


def phantom_cli(
    out_dir: str,
    num_cases: int = 10,
    size: str = "small",
    seed: int = 0,
    labeled_fraction: float = 0.2,
    pose_jitter: float = 0.0,
) -> None:
    """Generate a phantom data set and print its per-class voxel-share table.

    Args:
        out_dir: output folder.
        num_cases: number of volumes.
        size: ``tiny`` (32³), ``small`` (64×64×48) or ``benchmark`` (96×96×64); spacing is
            always 1.5×1.5×2.0 mm.
        seed: generator seed.
        labeled_fraction: fraction of training cases with labels.
        pose_jitter: case-to-case pose and anatomy variability in [0, 1] (0: the original phantom).

    Raises:
        ValueError: unknown ``size`` (with did-you-mean) or bad counts.
    """
    shape = look_up(size, PHANTOM_SIZES, "size")
    path = generate_phantom(
        out_dir, num_cases=num_cases, shape=shape, seed=seed, labeled_fraction=labeled_fraction, pose_jitter=pose_jitter
    )
    datalist = json.loads(path.read_text())
    case_ids = sorted(e["case_id"] for key in ("training", "unlabeled", "validation", "test") for e in datalist[key])
    label_paths = [path.parent / "labels" / f"{case_id}.nii.gz" for case_id in case_ids]
    shares = class_voxel_shares(label_paths)
    dims = "x".join(map(str, shape))
    print(f"phantom: {num_cases} cases of {dims} voxels at 1.5x1.5x2.0 mm, seed {seed} -> {path}")
    print(
        f"split: training (labeled) {len(datalist['training'])}, unlabeled {len(datalist['unlabeled'])}, "
        f"validation {len(datalist['validation'])}, test {len(datalist['test'])}"
    )
    print(f"{'id':>3}  {'class':<24}{'voxels':>10}{'% of fg':>10}{'x smallest':>12}")
    for name, row in sorted(shares["per_class"].items(), key=lambda kv: -kv[1]["voxels"]):
        print(
            f"{row['label']:>3}  {name:<24}{row['voxels']:>10d}{row['percent_foreground']:>10.2f}"
            f"{row['ratio_to_smallest']:>12.1f}"
        )
    if shares["missing"]:
        print(f"missing organs: {', '.join(shares['missing'])}")
    print(
        f"largest:smallest organ ratio = {shares['largest_to_smallest']:.1f}:1 "
        f"({shares['largest']} : {shares['smallest']})"
    )
