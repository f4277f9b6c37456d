"""File handling for evaluation: pairing predictions with labels, reading NIfTI, atomic writes.

Pairing rule (documented in :func:`case_id_from_name`): the case id of a file is its name without
the NIfTI extension, without one leading ``label``/``labels``/``img``/``image``/``pred``/
``prediction``/``seg`` tag (optionally followed by ``_`` or ``-``) and without one trailing
``_seg``/``_pred``/``_prediction``/``_label`` tag. So ``label0001.nii.gz`` (Synapse release),
``0001.nii.gz`` (DHC prediction), ``img0001_seg.nii.gz`` (MONAI ``SaveImage``) all give ``0001``,
and ``amos_0001.nii.gz`` stays ``amos_0001``. Two files with the same id in one folder are an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from scdl_monai.data.utils import atomic_write

__all__ = [
    "NIFTI_SUFFIXES",
    "case_id_from_name",
    "find_nifti",
    "pair_files",
    "read_case_ids",
    "load_label_volume",
    "atomic_write",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_PREFIX = re.compile(r"^(labels|label|image|img|prediction|pred|seg)[_-]?(?=.)", re.IGNORECASE)
_SUFFIX = re.compile(r"(?<=.)_(seg|pred|prediction|label)$", re.IGNORECASE)


def case_id_from_name(name: str | Path) -> str:
    """Case id of a NIfTI file name (see the module docstring for the rule)."""
    name = Path(name).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = _PREFIX.sub("", name, count=1)
    return _SUFFIX.sub("", name, count=1)


def find_nifti(folder: str | Path, recursive: bool) -> dict[str, Path]:
    """Map case id -> NIfTI file in ``folder``.

    Raises:
        FileNotFoundError: when the folder does not exist or holds no NIfTI file.
        ValueError: when two files map to the same case id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    files = sorted(p for p in pattern if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no .nii/.nii.gz files in {folder}")
    by_id: dict[str, Path] = {}
    for path in files:
        cid = case_id_from_name(path)
        if cid in by_id:
            raise ValueError(f"two files in {folder} have case id {cid!r}: {by_id[cid]} and {path}")
        by_id[cid] = path
    return by_id


def read_case_ids(case_ids: str | Path | Sequence[str]) -> list[str]:
    """Case ids from a list, a ``"[a,b]"`` string, or a split file (one id per line).

    Raises:
        FileNotFoundError: for a path that does not exist.
    """
    if isinstance(case_ids, (list, tuple)):
        return [str(c) for c in case_ids]
    text = str(case_ids)
    if text.startswith("[") and text.endswith("]"):
        return [c.strip().strip("'\"") for c in text[1:-1].split(",") if c.strip()]
    from scdl_monai.data.datasets import read_split

    return read_split(text)


def pair_files(
    pred_dir: str | Path,
    label_dir: str | Path,
    case_ids: Sequence[str] | None = None,
    strict: bool = True,
) -> list[tuple[str, Path, Path]]:
    """Pair predictions (searched recursively) with labels (top level of ``label_dir``) by case id.

    Args:
        pred_dir: prediction folder.
        label_dir: label folder.
        case_ids: when given, exactly these cases are evaluated and each needs both files.
        strict: without ``case_ids``, also error on labels that have no prediction (else they
            are skipped). A prediction without a label is always an error.

    Returns:
        ``[(case_id, pred_path, label_path), ...]`` sorted by case id.

    Raises:
        ValueError: listing every unmatched file / id.
    """
    preds = find_nifti(pred_dir, recursive=True)
    labels = find_nifti(label_dir, recursive=False)
    problems = []
    if case_ids is not None:
        wanted = [str(c) for c in case_ids]
        no_pred = [c for c in wanted if c not in preds]
        no_label = [c for c in wanted if c not in labels]
        if no_pred:
            problems.append(f"case ids with no prediction in {pred_dir}: {no_pred}")
        if no_label:
            problems.append(f"case ids with no label in {label_dir}: {no_label}")
        ids = wanted
    else:
        no_label = sorted(str(p) for c, p in preds.items() if c not in labels)
        if no_label:
            problems.append(f"predictions with no matching label in {label_dir}: {no_label}")
        no_pred = sorted(str(p) for c, p in labels.items() if c not in preds)
        if no_pred and strict:
            problems.append(
                f"labels with no matching prediction in {pred_dir}: {no_pred} "
                "(pass case_ids / a split file, or strict=False, to evaluate a subset)"
            )
        ids = sorted(c for c in preds if c in labels)
    if problems:
        raise ValueError(
            "cannot pair predictions with labels (file names are matched by case id, "
            "see scdl_monai.evaluation.files.case_id_from_name): " + "; ".join(problems)
        )
    if not ids:
        raise ValueError(f"no case to evaluate in {pred_dir} / {label_dir}.")
    return [(c, preds[c], labels[c]) for c in sorted(ids)]


def load_label_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, ...], tuple[str, ...]]:
    """Read an integer label map from NIfTI with nibabel.

    The spacing is the column norms of the affine (sform when set, else qform, so ITK-written
    qform-only AMOS headers work), for the spatial axes.

    Returns:
        ``(labels (H, W[, D]) int64, spacing per axis, orientation codes e.g. ("L","A","S"))``.

    Raises:
        ValueError: naming the file when it cannot be read, is not 2D/3D, or holds non-integer values.
    """
    from scdl_monai.data.integrity import load_nifti

    path = Path(path)
    try:
        img = load_nifti(path)  # a truncated .nii.gz can otherwise load with missing voxels
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises several types for corrupt files
        raise ValueError(f"cannot read NIfTI {path}: {err}") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise ValueError(f"{path} must hold a 2D/3D label map, got shape {data.shape}.")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise ValueError(f"{path} holds non-integer values; expected a label map of class indices.")
    elif data.dtype.kind not in "iub":
        raise ValueError(f"{path} has dtype {data.dtype}; expected an integer label map.")
    affine = np.asarray(img.affine, dtype=float)
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, : data.ndim] ** 2).sum(axis=0)))
    axcodes = tuple(nib.aff2axcodes(affine))
    return data.astype(np.int64), spacing, axcodes
