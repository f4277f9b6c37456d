"""Label-map conversion and the preprocessing protocols as MONAI transform chains.

Two concepts live here because both are "what a volume looks like before it reaches a network":

* **Label maps** between TotalSegmentator (v2 ``total``, ``total_mr``, v1 ``total_v1``), Synapse-13
  and AMOS-15 ids (:func:`label_map`, :func:`label_map_transform`, :func:`labelmap_cli`). The table
  is the one in ``data/totalsegmentator-samples/README.md`` ("Label-id mapping used for
  ``derived/``"); every source id that is not an organ of the target becomes 0 (background).
* **Preprocessing protocols** of docs/data.md (:func:`protocol_transforms`): ``"dhc"``
  (DHC paper era / GenericSSL), ``"ga"`` (GA-CPS, GA-MagicNet, SCDL) and ``"native"`` (this
  project's clinical-units protocol, default for demo and inference bundles).

Axis order: MONAI/nibabel arrays are ``(C, x, y, z)`` while the reference code (SimpleITK
``GetArrayFromImage``) holds ``(z, y, x)``. Every size quoted from the reference is therefore
reversed here: DHC's resize ``(80, 160, 160)`` zyx is ``(160, 160, 80)`` xyz and its crop
``64×128×128`` zyx is ``(128, 128, 64)`` xyz.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapLabelValue,
    MapLabelValued,
    MapTransform,
    Orientationd,
    Randomizable,
    RandCropByLabelClassesd,
    ClassesToIndicesd,
    DeleteItemsd,
    RandFlipd,
    RandSpatialCropd,
    RandSpatialCropSamplesd,
    Resized,
    SpatialCrop,
    BorderPad,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from monai.utils import MAX_SEED

from scdl_monai.data.utils import atomic_write, look_up

__all__ = [
    "LABEL_SCHEMES",
    "TARGET_SCHEMES",
    "PROTOCOLS",
    "STAGES",
    "PROTOCOL_DEFAULTS",
    "label_map",
    "label_map_transform",
    "labelmap_cli",
    "protocol_transforms",
    "ReferenceRandomCropd",
]

# --------------------------------------------------------------------------------------------
# Label maps
# --------------------------------------------------------------------------------------------

#: Highest id of each label scheme. Synapse 0–13 and AMOS 0–15: docs/data.md. TotalSegmentator
#: v2 ``total`` has 117 classes, ``total_mr`` (the 50-class map of the shipped sample) 50 and v1
#: ``total`` 104 (samples README, "label(s)" column).
LABEL_SCHEMES: dict[str, int] = {
    "synapse": 13,
    "amos": 15,
    "total": 117,
    "total_mr": 50,
    "total_v1": 104,
}

#: Schemes a label map may convert *to*.
TARGET_SCHEMES: tuple[str, ...] = ("synapse", "amos")

# organ -> (synapse, amos, total, total_mr, total_v1); None = the scheme has no such class.
# Source: data/totalsegmentator-samples/README.md, "Label-id mapping used for derived/".
_ORGAN_IDS: dict[str, tuple[int | None, ...]] = {
    "spleen": (1, 1, 1, 1, 1),
    "right kidney": (2, 2, 2, 2, 2),
    "left kidney": (3, 3, 3, 3, 3),
    "gallbladder": (4, 4, 4, 4, 4),
    "esophagus": (5, 5, 15, 12, 42),
    "liver": (6, 6, 5, 5, 5),
    "stomach": (7, 7, 6, 6, 6),
    "aorta": (8, 8, 52, 23, 7),
    "inferior vena cava": (9, 9, 63, 24, 8),
    "portal & splenic veins": (10, None, 64, 25, 9),
    "pancreas": (11, 10, 7, 7, 10),
    "right adrenal gland": (12, 11, 8, 8, 11),
    "left adrenal gland": (13, 12, 9, 9, 12),
    "duodenum": (None, 13, 19, 14, 56),
    "bladder": (None, 14, 21, 16, 104),
    "prostate/uterus": (None, 15, 22, 17, None),
}
_SCHEME_COLUMN = {name: i for i, name in enumerate(("synapse", "amos", "total", "total_mr", "total_v1"))}


def label_map(source: str, target: str) -> dict[int, int]:
    """Full id table ``source id -> target id`` for every id of the source scheme.

    Organs shared by both schemes keep their identity (e.g. AMOS 10 pancreas -> Synapse 11);
    every other source id (lungs, bones, AMOS duodenum/bladder/prostate, ...) maps to 0.

    Args:
        source: ``"total"`` (TotalSegmentator v2), ``"total_mr"``, ``"total_v1"``, ``"synapse"``
            or ``"amos"``.
        target: ``"synapse"`` or ``"amos"``.

    Returns:
        dict with keys ``0..LABEL_SCHEMES[source]`` (all of them) and values in
        ``0..LABEL_SCHEMES[target]``.

    Raises:
        ValueError: unknown scheme name (with a did-you-mean suggestion).

    Example:
        >>> label_map("amos", "synapse")[10], label_map("amos", "synapse")[13]
        (11, 0)
    """
    src = look_up(source, tuple(LABEL_SCHEMES), "source", type_error=TypeError)
    tgt = look_up(target, TARGET_SCHEMES, "target", type_error=TypeError)
    table = dict.fromkeys(range(LABEL_SCHEMES[src] + 1), 0)
    s_col, t_col = _SCHEME_COLUMN[src], _SCHEME_COLUMN[tgt]
    for ids in _ORGAN_IDS.values():
        if ids[s_col] is not None and ids[t_col] is not None:
            table[ids[s_col]] = ids[t_col]
    return table


def label_map_transform(
    source: str, target: str, keys: Sequence[str] | str = ("label",), dtype=np.uint8, allow_missing_keys: bool = False
) -> MapTransform:
    """A MONAI ``MapLabelValued`` that converts ``keys`` from ``source`` to ``target`` label ids.

    The full table of :func:`label_map` is passed, so ids without a target organ become 0. As in
    ``MapLabelValue``, a value above the source scheme's highest id (not a valid label of that
    scheme) passes through unchanged; :func:`labelmap_cli` rejects such files.

    Args:
        source: source scheme (see :func:`label_map`).
        target: ``"synapse"`` or ``"amos"``.
        keys: dictionary keys holding label arrays (any shape, e.g. ``(1, x, y, z)``).
        dtype: output dtype (``np.uint8`` default: all target ids are < 16).
        allow_missing_keys: passed to ``MapLabelValued``.

    Raises:
        ValueError: unknown scheme name.

    Example:
        >>> t = label_map_transform("total", "synapse")
        >>> t({"label": np.array([[[5, 52, 10]]])})["label"].tolist()
        [[[6, 8, 0]]]
    """
    table = label_map(source, target)
    orig = list(table)
    return MapLabelValued(
        keys=keys,
        orig_labels=orig,
        target_labels=[table[k] for k in orig],
        dtype=dtype,
        allow_missing_keys=allow_missing_keys,
    )


def _atomic_save_nifti(img, output: Path) -> None:
    """Write ``img`` to ``output`` through a temporary file in the same folder (no half-written file)."""
    import nibabel as nib

    suffix = ".nii.gz" if output.name.endswith(".gz") else ".nii"
    atomic_write(output, lambda tmp: nib.save(img, str(tmp)), suffix=suffix)


def labelmap_cli(input: str, output: str, source: str = "total", target: str = "synapse") -> str:  # noqa: A002
    """Remap one NIfTI label file from ``source`` to ``target`` ids, keeping affine and header.

    The output is ``uint8`` and written atomically (temporary file + ``os.replace``).

    Args:
        input: source label NIfTI (``.nii`` / ``.nii.gz``).
        output: destination NIfTI path.
        source: source scheme (``total``, ``total_mr``, ``total_v1``, ``synapse``, ``amos``).
        target: ``synapse`` or ``amos``.

    Returns:
        the output path (as text).

    Raises:
        FileNotFoundError: ``input`` does not exist.
        ValueError: unknown scheme, non-integer labels, or ids outside the source scheme's range
            (usually the wrong ``source``).
    """
    import nibabel as nib

    in_path, out_path = Path(input), Path(output)
    if not in_path.is_file():
        raise FileNotFoundError(f"labelmap: input file not found: {in_path}")
    table = label_map(source, target)
    img = nib.load(str(in_path))
    data = np.asanyarray(img.dataobj)
    if data.dtype.kind == "f":
        if not np.all(np.mod(data, 1) == 0):
            raise ValueError(f"labelmap: {in_path} holds non-integer values; it is not a label map.")
        data = data.astype(np.int64)
    present = np.unique(data)
    unknown = [int(v) for v in present if int(v) not in table]
    if unknown:
        raise ValueError(
            f"labelmap: {in_path} holds ids {unknown[:10]} outside source={source!r} "
            f"(ids 0..{max(table)}); is the source scheme right?"
        )
    mapped = MapLabelValue(list(table), [table[k] for k in table], dtype=np.uint8)(data)
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    out = type(img)(np.asarray(mapped, dtype=np.uint8), img.affine, header=header)
    out.header.set_slope_inter(1.0, 0.0)
    _atomic_save_nifti(out, out_path)
    return str(out_path)


# --------------------------------------------------------------------------------------------
# Preprocessing protocols (docs/data.md#preprocessing-protocols)
# --------------------------------------------------------------------------------------------

PROTOCOLS: tuple[str, ...] = ("dhc", "ga", "native")
STAGES: tuple[str, ...] = ("train", "eval", "infer")

#: Per-protocol defaults, all in MONAI (x, y, z) order.
#:
#: * ``dhc``: HU clip [−75, 275] then per-volume min–max to [0, 1]; resize the whole volume to
#:   (160, 160, 80) (reference (80, 160, 160) z,y,x); random crop (128, 128, 64) (reference
#:   64×128×128 z,y,x). Source: DHC paper-era code (``xmed-lab/DHC@a6f72d37:code/data/``), GenericSSL.
#: * ``ga``: HU window [−125, 275] mapped by (x+125)/400 (clipped to [0, 1]); resize grid
#:   160×160×80 (where GA test predictions and labels are evaluated); patch 96³. Source:
#:   ``cicailalala/GALoss@65642f50`` (GA-CPS / GA-MagicNet; SCDL follows GA).
#: * ``native``: RAS, spacing (1.5, 1.5, 2.0) mm, window [−125, 275] -> [0, 1] (the GA window, so
#:   intensities match the SCDL numbers), patch (96, 96, 64) (divisible by 16 for the V-Net).
#:   This project's own protocol (docs/data.md#preprocessing-protocols).
PROTOCOL_DEFAULTS: dict[str, dict] = {
    "dhc": {"window": (-75.0, 275.0), "resize": (160, 160, 80), "patch_size": (128, 128, 64)},
    "ga": {"window": (-125.0, 275.0), "resize": (160, 160, 80), "patch_size": (96, 96, 96)},
    "native": {"window": (-125.0, 275.0), "spacing": (1.5, 1.5, 2.0), "patch_size": (96, 96, 64)},
}

#: RAS labels passed explicitly to ``Orientationd`` (MONAI 1.6 warns when they are left implicit).
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _triple(value, name: str, kind: type) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        out = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 positive numbers (x, y, z), got {value!r}.") from None
    not_integral = kind is int and any(v != float(w) for v, w in zip(out, value))
    if len(out) != 3 or any(v <= 0 for v in out) or not_integral:
        raise ValueError(f"{name} must be 3 positive {kind.__name__}s (x, y, z), got {value!r}.")
    return out


def protocol_transforms(
    protocol: str,
    stage: str,
    keys: Sequence[str] | str = ("image", "label"),
    num_classes: int | None = None,
    patch_size: Sequence[int] | int | None = None,
    spacing: Sequence[float] | float | None = None,
    window: Sequence[float] | None = None,
    resize: Sequence[int] | None = None,
    ratios: Sequence[float] | None = None,
    num_samples: int = 1,
    flip_prob: float = 0.0,
    reader: str | None = None,
    seed: int | None = None,
) -> Compose:
    """The preprocessing chain of a protocol (docs/data.md#preprocessing-protocols) as a MONAI ``Compose``.

    Every chain starts with ``LoadImaged`` + ``EnsureChannelFirstd`` (items are dicts of file
    paths, as in a decathlon datalist) and yields ``MetaTensor`` s of shape ``(1, x, y, z)``:
    image ``float32``, label ``int64``. Train chains end with a random crop of ``patch_size``;
    eval chains keep the whole (resized / resampled) volume for sliding-window inference; infer
    chains process ``keys[0]`` only and keep the metadata and applied operations so that
    ``Invertd`` maps a prediction back to the original grid.

    * ``"dhc"``: resize to ``resize`` (default (160, 160, 80) xyz; trilinear image, nearest label),
      then clip HU to [−75, 275] and min–max to [0, 1] per volume (whole volume, before any crop;
      applied to AMOS MRI too, as in the reference), random crop ``patch_size`` (default
      (128, 128, 64) xyz) with :class:`ReferenceRandomCropd`. No reorientation, no resampling. No flips by default: the paper-era
      DHC code applied flips that had no effect, so the published numbers were obtained without
      them (DHC HEAD later fixed flips; pass ``flip_prob`` > 0 and say so in the bundle).
    * ``"ga"``: resize to the 160×160×80 grid, then window [−125, 275] -> (x+125)/400 clipped to
      [0, 1], random crop 96³ with :class:`ReferenceRandomCropd`: the z extent (80) is padded with
      zeros (the window's minimum) by 11 on each side and the crop offset is random (0–5), so the
      volume sits at a random depth in the patch, as in the reference. Approximation: GA used MagicNet's non-public pre-made
      volumes; here every dataset (Synapse too) is resampled to the grid GA evaluates on.
    * ``"native"``: ``Orientationd`` RAS (labels explicit), ``Spacingd`` to ``spacing`` (default
      (1.5, 1.5, 2.0) mm; bilinear image, nearest label), window [−125, 275] -> [0, 1],
      ``SpatialPadd`` to ``patch_size`` (so volumes smaller than the patch work), then
      class-balanced crops with ``RandCropByLabelClassesd`` (``num_classes`` required). With
      ``ratios=None`` every class, background included, is the crop centre equally often
      (MONAI's default); on a tiny class this gave ~29 % of crops containing it against 4 % for
      1:1 positive/negative sampling. Classes absent from a volume get ratio 0
      (MONAI behaviour; its per-item warning is switched off).

    Give ``keys=("image",)`` for an unlabeled stream: the train chain then crops with
    ``RandSpatialCropd`` (no label to balance on).

    Resize before intensity: both references resize the volume in HU once, offline, and clip /
    normalise the resized array when loading it; clipping first would differ wherever trilinear
    interpolation mixes voxels on both sides of a window bound.

    Randomness: every random transform is a MONAI ``Randomizable``. The returned ``Compose`` is
    seeded with ``seed``; when ``seed`` is None it is drawn from NumPy's global generator, so
    ``monai.utils.set_determinism(s)`` before building the chain makes it reproducible.
    ``monai.data.DataLoader`` additionally re-seeds the chain (per worker) from torch's generator.

    Args:
        protocol: ``"dhc"``, ``"ga"`` or ``"native"``.
        stage: ``"train"``, ``"eval"`` or ``"infer"``.
        keys: ``(image_key,)`` or ``(image_key, label_key)``.
        num_classes: C including background; required for ``native`` training with labels.
        patch_size: crop size (x, y, z); default from :data:`PROTOCOL_DEFAULTS`.
        spacing: target spacing in mm (x, y, z) for ``native``.
        window: (a_min, a_max) HU window overriding the protocol's.
        resize: whole-volume grid (x, y, z) for ``dhc``/``ga``.
        ratios: per-class crop-centre ratios for ``native`` (length ``num_classes``).
        num_samples: crops per volume in training.
        flip_prob: probability of a flip along each spatial axis in training (default 0).
        reader: ``LoadImaged`` reader (e.g. ``"ITKReader"``); None lets MONAI choose.
        seed: random state for the chain's random transforms.

    Returns:
        a ``monai.transforms.Compose``.

    Raises:
        ValueError: unknown protocol/stage (with did-you-mean), malformed sizes, missing
            ``num_classes`` for native training, ``ratios`` of the wrong length.

    Example:
        >>> t = protocol_transforms("dhc", "train")  # doctest: +SKIP
        >>> t({"image": "img0001.nii.gz", "label": "label0001.nii.gz"})["image"].shape  # doctest: +SKIP
        torch.Size([1, 128, 128, 64])
    """
    protocol = look_up(protocol, PROTOCOLS, "protocol", type_error=TypeError)
    stage = look_up(stage, STAGES, "stage", type_error=TypeError)
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    if not 1 <= len(keys) <= 2 or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(f"keys must be (image_key,) or (image_key, label_key), got {keys!r}.")
    if stage == "infer":
        keys = keys[:1]
    image_key = keys[0]
    label_key = keys[1] if len(keys) == 2 else None
    defaults = PROTOCOL_DEFAULTS[protocol]
    patch = _triple(patch_size if patch_size is not None else defaults["patch_size"], "patch_size", int)
    a_min, a_max = _window(window if window is not None else defaults["window"])
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
    if not 0.0 <= float(flip_prob) <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob!r}.")
    balanced = protocol == "native" and stage == "train" and label_key is not None
    if balanced:
        if num_classes is None or int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(
                f"num_classes (C incl. background, >= 2) is required for native training crops, got {num_classes!r}."
            )
        if ratios is not None and len(ratios) != num_classes:
            raise ValueError(f"ratios must have num_classes={num_classes} entries, got {len(ratios)}: {ratios!r}.")

    modes = ("trilinear", "nearest")[: len(keys)]
    chain: list = [LoadImaged(keys, reader=reader, image_only=True), EnsureChannelFirstd(keys)]
    if protocol == "native":
        pixdim = _triple(spacing if spacing is not None else defaults["spacing"], "spacing", float)
        chain += [
            Orientationd(keys, axcodes="RAS", labels=_RAS_LABELS),
            Spacingd(keys, pixdim=pixdim, mode=("bilinear", "nearest")[: len(keys)], dtype=np.float32),
            ScaleIntensityRanged(image_key, a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True),
        ]
    elif protocol == "dhc":
        # the reference resizes the HU volume once (xmed-lab/DHC:code/data/preprocess.py) and clips
        # + min-max normalises the resized array when loading it (code/data/data_loaders.py)
        grid = _triple(resize if resize is not None else defaults["resize"], "resize", int)
        chain += [
            Resized(keys, spatial_size=grid, mode=modes),
            # clip only (identity map on [a_min, a_max]), then per-volume min-max
            ScaleIntensityRanged(image_key, a_min=a_min, a_max=a_max, b_min=a_min, b_max=a_max, clip=True),
            ScaleIntensityd(image_key, minv=0.0, maxv=1.0),
        ]
    else:  # ga: resized volumes, windowed when loaded (cicailalala/GALoss:dataloaders/dataset.py AMOS)
        grid = _triple(resize if resize is not None else defaults["resize"], "resize", int)
        chain += [
            Resized(keys, spatial_size=grid, mode=modes),
            ScaleIntensityRanged(image_key, a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True),
        ]

    if stage == "train" and protocol != "native" and num_samples == 1:
        chain.append(ReferenceRandomCropd(keys, roi_size=patch))
    elif stage == "train":
        chain.append(SpatialPadd(keys, spatial_size=patch))
        if balanced:
            # the class -> voxel indices are computed once (cached by a CacheDataset, the chain's
            # first random transform comes after them) instead of on every crop; same draws
            indices_key = f"{label_key}_cls_indices"
            chain.append(ClassesToIndicesd(label_key, num_classes=int(num_classes)))
            chain.append(
                RandCropByLabelClassesd(
                    keys,
                    label_key=label_key,
                    spatial_size=patch,
                    ratios=None if ratios is None else [float(r) for r in ratios],
                    num_classes=int(num_classes),
                    num_samples=int(num_samples),
                    warn=False,
                    indices_key=indices_key,
                )
            )
            chain.append(DeleteItemsd(indices_key))
        elif num_samples > 1:
            chain.append(RandSpatialCropSamplesd(keys, roi_size=patch, num_samples=int(num_samples), random_size=False))
        else:
            chain.append(RandSpatialCropd(keys, roi_size=patch, random_size=False))
        if flip_prob > 0:
            chain += [RandFlipd(keys, prob=float(flip_prob), spatial_axis=axis) for axis in range(3)]

    chain.append(EnsureTyped(image_key, dtype=torch.float32))
    if label_key is not None:
        chain.append(EnsureTyped(label_key, dtype=torch.int64))
    compose = Compose(chain)
    compose.set_random_state(seed=int(np.random.randint(MAX_SEED)) if seed is None else int(seed))
    return compose


def _window(window) -> tuple[float, float]:
    try:
        a_min, a_max = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be (a_min, a_max) in HU, got {window!r}.") from None
    if not a_min < a_max:
        raise ValueError(f"window must satisfy a_min < a_max, got {window!r}.")
    return a_min, a_max


class ReferenceRandomCropd(Randomizable, MapTransform):
    """The random crop of the DHC and GA reference loaders, as a seeded MONAI transform.

    ``xmed-lab/DHC:code/data/transforms.py`` ``RandomCrop`` and
    ``cicailalala/GALoss:dataloaders/dataset.py`` ``RandomCrop`` (same rule):

    1. if any spatial size ``s`` is ``<=`` the crop size ``r`` along its axis, every axis is padded
       with zeros by ``max((r - s) // 2 + margin, 0)`` on both sides (``margin`` = 3);
    2. the crop start along each axis is drawn uniformly from ``0 .. s' - r - 1`` of the padded
       size ``s'`` (NumPy's ``randint(0, s' - r)``, upper bound excluded).

    So a GA volume of depth 80 and a 96³ patch is padded to 102 and sits at a random depth
    (offset 0–5) in the patch, where a plain ``SpatialPadd`` + ``RandSpatialCropd`` pads to 96 and
    fixes it; and the last position along an axis is never drawn, as in the reference (MONAI's
    random crops include it). The draw uses this transform's own ``R`` (seeded by
    ``Compose.set_random_state`` / ``set_determinism``, re-seeded per worker by MONAI's
    ``DataLoader`` and saved in checkpoints by
    :class:`~scdl_monai.engines.random_state.RandomStates`), so seeds and resume stay exact.

    Args:
        keys: keys of the arrays cropped together (``(C, *spatial)`` each, same spatial shape).
        roi_size: crop size per spatial axis.
        margin: extra padding per side when padding applies (3 in both references).
        allow_missing_keys: skip absent keys.

    Raises:
        ValueError: ``roi_size`` not positive, ``margin`` negative, or arrays of different shapes.
    """

    def __init__(self, keys, roi_size: Sequence[int] | int, margin: int = 3, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        roi = (roi_size,) * 3 if isinstance(roi_size, int) else tuple(roi_size)
        if not roi or any(isinstance(r, bool) or int(r) != r or r < 1 for r in roi):
            raise ValueError(f"ReferenceRandomCropd: roi_size must be positive integers, got {roi_size!r}.")
        if isinstance(margin, bool) or int(margin) != margin or margin < 0:
            raise ValueError(f"ReferenceRandomCropd: margin must be a non-negative integer, got {margin!r}.")
        self.roi_size = tuple(int(r) for r in roi)
        self.margin = int(margin)
        self._pad: tuple[int, ...] = ()
        self._start: tuple[int, ...] = ()

    def padding(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Zeros added on each side of every axis for an input of ``spatial_shape`` (rule 1)."""
        shape = tuple(int(s) for s in spatial_shape)
        if len(shape) != len(self.roi_size):
            raise ValueError(f"ReferenceRandomCropd: roi_size {self.roi_size} does not match spatial shape {shape}.")
        if not any(s <= r for s, r in zip(shape, self.roi_size)):
            return (0,) * len(shape)
        return tuple(max((r - s) // 2 + self.margin, 0) for s, r in zip(shape, self.roi_size))

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        self._pad = self.padding(spatial_shape)
        padded = [int(s) + 2 * p for s, p in zip(spatial_shape, self._pad)]
        self._start = tuple(int(self.R.randint(0, s - r)) if s > r else 0 for s, r in zip(padded, self.roi_size))

    def __call__(self, data):
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        shape = tuple(d[keys[0]].shape[1:])
        if any(tuple(d[k].shape[1:]) != shape for k in keys):
            raise ValueError(f"ReferenceRandomCropd: {keys} must share one spatial shape, got {[tuple(d[k].shape[1:]) for k in keys]}.")
        self.randomize(shape)
        pad = BorderPad(spatial_border=[p for p in self._pad for _ in (0, 1)], mode="constant") if any(self._pad) else None
        crop = SpatialCrop(roi_start=self._start, roi_end=[s + r for s, r in zip(self._start, self.roi_size)])
        for key in keys:
            img = d[key] if pad is None else pad(d[key])
            d[key] = crop(img)
        return d
