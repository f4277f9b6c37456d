"""Dataset integrity check before training, in the spirit of nnU-Net's ``--verify_dataset_integrity``.

Every file of a datalist is opened once and every problem is collected, so one run lists all of
them instead of stopping at the first: one clear report naming each file and key. Checks per entry:

* each file exists, is not empty and can be read to the end (a truncated ``.nii.gz`` fails only
  when its data are decompressed, so arrays are read in full);
* image and label are 3-D single-channel volumes (a trailing axis of size 1, as NIfTI writes
  ``(X, Y, Z, 1)``, is accepted; 2-D or 4-D data are reported);
* the image has no NaN / Inf voxel;
* with ``ct=True``, the image intensities look like CT in Hounsfield units (some negative value —
  air is −1000 HU, fat about −100 HU — and a range of at least :data:`CT_MIN_RANGE` HU): an MR
  image, a CT stored without its rescale intercept (0…4095) or an already-normalised image would
  otherwise be windowed to a near-constant input without any error;
* the label is integer-valued with ids in ``[0, C)``;
* label and image share shape and affine (absolute tolerance in mm).
* an image listed twice (e.g. in ``training`` and ``test``) is reported as a leak.

NIfTI files are read with nibabel; the affine is the one nibabel reports (sform when its code is
set, else qform), so qform-only headers such as AMOS's (sform_code 0, qfac -1, docs/data.md#datasets) pass.
DICOM series folders and other formats are read with MONAI's :class:`~monai.data.ITKReader`
(affine converted to RAS, array in the same x, y, z order as nibabel's).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scdl_monai.data.datasets import get_dataset

__all__ = ["Problem", "DatasetIntegrityError", "load_nifti", "read_volume", "check_volume", "ct_range_problem", "check_datalist", "verify_datalist"]

#: Datalist keys whose entries must carry a label (the keys written by ``datalists.build_datalist``).
LABELED_KEYS: tuple[str, ...] = ("training", "validation")
#: Keys whose images must not also appear in a training key (train/test leak).
_TRAIN_KEYS = ("training", "unlabeled")
#: Smallest intensity range (max - min, HU) accepted as CT by the ``ct=True`` check: any CT with
#: air or fat and soft tissue spans several hundred HU (air -1000, fat -100, liver 60, bone > 300).
CT_MIN_RANGE = 200.0


@dataclass(frozen=True)
class Problem:
    """One problem found by the integrity check.

    Attributes:
        file: the file concerned (as written in the datalist, made absolute).
        key: where it is listed, e.g. ``"training[3].label"``.
        message: what is wrong.
    """

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.file}: {self.message}"


class DatasetIntegrityError(ValueError):
    """Raised with every problem found; ``problems`` holds the :class:`Problem` list."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"dataset integrity check found {len(self.problems)} problem(s):\n{lines}")


def load_nifti(path: str | Path):
    """Load a NIfTI file with nibabel; a ``.nii.gz`` is decompressed in full first.

    nibabel stops reading a gzip stream once it has the voxels it needs, so a file cut short
    after the data (its end-of-stream marker and checksum lost) or damaged inside the last block
    can load without an error; decompressing the whole stream checks the gzip CRC and length.

    Raises:
        any reader error (``EOFError``/``BadGzipFile`` for a truncated or damaged ``.gz``, ...).
    """
    import gzip

    import nibabel as nib

    path = Path(path)
    if not path.name.endswith(".gz"):
        return nib.load(str(path))
    raw = gzip.decompress(path.read_bytes())
    try:
        return nib.Nifti1Image.from_bytes(raw)
    except Exception:  # NIfTI-2 has another header
        return nib.Nifti2Image.from_bytes(raw)


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image fully and return ``(array, affine)``.

    NIfTI (``.nii``, ``.nii.gz``) through nibabel: integer data are returned unscaled when the
    header holds no scaling (no float64 copy of a CT volume). Folders (DICOM series) and other
    formats through :class:`monai.data.ITKReader`.

    Returns:
        array of shape (X, Y, Z[, ...]) and the (4, 4) voxel-to-world affine.

    Raises:
        any reader error (file missing, not a gzip file, truncated stream, ...).
    """
    path = Path(path)
    if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        img = load_nifti(path)
        slope, inter = img.header.get_slope_inter()
        unscaled = getattr(img.dataobj, "get_unscaled", None)
        if unscaled is not None and slope in (None, 1.0) and inter in (None, 0.0):
            array = np.asanyarray(unscaled())
        else:
            array = np.asanyarray(img.dataobj)
        return array, np.asarray(img.affine, dtype=np.float64)
    from monai.data import ITKReader

    reader = ITKReader()
    array, meta = reader.get_data(reader.read(str(path)))
    return np.asarray(array), np.asarray(meta["affine"], dtype=np.float64)


def _spatial_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing singleton axes beyond the third (NIfTI ``(X, Y, Z, 1)``)."""
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _read_checked(path: Path, key: str, problems: list[Problem]) -> tuple[np.ndarray, np.ndarray] | None:
    """Read ``path`` or record why it cannot be; also record non-3-D data. None when unusable."""
    if not path.exists():
        problems.append(Problem(str(path), key, "file not found"))
        return None
    if path.is_file() and path.stat().st_size == 0:
        problems.append(Problem(str(path), key, "empty file (0 bytes)"))
        return None
    try:
        array, affine = read_volume(path)
    except Exception as err:  # any reader failure is a finding about this file, not a crash
        problems.append(Problem(str(path), key, f"cannot be read ({type(err).__name__}: {err})"))
        return None
    shape = _spatial_shape(tuple(array.shape))
    if len(shape) != 3:
        problems.append(
            Problem(
                str(path),
                key,
                f"{len(shape)}-D data of shape {tuple(array.shape)}: expected a 3-D single-channel volume",
            )
        )
        return None
    return array.reshape(shape), affine


def _check_image_values(array: np.ndarray, path: Path, key: str, problems: list[Problem], ct: bool = False) -> None:
    if np.issubdtype(array.dtype, np.floating):
        n_nan = int(np.isnan(array).sum())
        n_inf = int(np.isinf(array).sum())
        if n_nan or n_inf:
            problems.append(Problem(str(path), key, f"image has {n_nan} NaN and {n_inf} Inf voxel(s)"))
            return
    if ct and array.size:
        message = ct_range_problem(float(array.min()), float(array.max()))
        if message:
            problems.append(Problem(str(path), key, message))


def check_volume(path: str | Path, key: str = "image", ct: bool = False) -> list[Problem]:
    """Problems of one image file or DICOM folder: missing, empty, unreadable, not 3-D, NaN/Inf voxels
    and (``ct``) intensities that are not CT Hounsfield units."""
    path = Path(path)
    problems: list[Problem] = []
    read = _read_checked(path, key, problems)
    if read is not None:
        _check_image_values(read[0], path, key, problems, ct=ct)
    return problems


def ct_range_problem(low: float, high: float) -> str | None:
    """Why intensities in ``[low, high]`` do not look like CT in Hounsfield units (None if they do)."""
    if low >= 0:
        return (
            f"intensities [{low:g}, {high:g}] have no negative value, so they are not CT in Hounsfield units "
            "(air is -1000 HU): an MR image, or a CT stored without its rescale intercept?"
        )
    if high - low < CT_MIN_RANGE:
        return (
            f"intensities [{low:g}, {high:g}] span less than {CT_MIN_RANGE:g}: not CT in Hounsfield units "
            "(already normalised?)"
        )
    return None


def _check_label_values(array: np.ndarray, num_classes: int, path: Path, key: str, problems: list[Problem]) -> None:
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        non_int = ~finite | (array != np.round(array))
        n_bad = int(non_int.sum())
        if n_bad:
            examples = np.unique(array[non_int])[:5].tolist()
            problems.append(
                Problem(str(path), key, f"label has {n_bad} non-integer voxel(s), e.g. {examples}")
            )
        values = array[~non_int]
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        values = array
    else:
        problems.append(Problem(str(path), key, f"label dtype {array.dtype} is not numeric"))
        return
    if values.size == 0:
        return
    if values.min() < 0 or values.max() >= num_classes:
        bad = np.unique(values[(values < 0) | (values >= num_classes)])
        shown = [int(v) for v in bad[:10]]
        problems.append(
            Problem(str(path), key, f"label ids {shown} outside [0, {num_classes}) (num_classes={num_classes})")
        )


def _check_entry(
    section: str, index: int, entry: Any, base_dir: Path, num_classes: int, affine_atol: float, ct: bool = False
) -> list[Problem]:
    """All problems of one datalist entry."""
    where = f"{section}[{index}]"
    problems: list[Problem] = []
    if isinstance(entry, (str, os.PathLike)):
        entry = {"image": entry}
    if not isinstance(entry, Mapping) or "image" not in entry:
        return [Problem("", where, f"entry must be a dict with an 'image' key, got {entry!r}")]
    if section in LABELED_KEYS and "label" not in entry:
        problems.append(Problem(str(entry["image"]), f"{where}.label", f"entries of {section!r} need a 'label'"))
    loaded = {}
    for field in ("image", "label"):
        if field not in entry:
            continue
        value = entry[field]
        if not isinstance(value, (str, os.PathLike)):
            problems.append(
                Problem(str(value), f"{where}.{field}", "expected one file path (a list means multi-channel data)")
            )
            continue
        path = Path(value)
        if not path.is_absolute():
            path = base_dir / path
        path = Path(os.path.normpath(path))
        read = _read_checked(path, f"{where}.{field}", problems)
        if read is None:
            continue
        array, affine = read
        if field == "image":
            _check_image_values(array, path, f"{where}.image", problems, ct=ct)
        else:
            _check_label_values(array, num_classes, path, f"{where}.label", problems)
        loaded[field] = (path, array.shape, affine)
    if "image" in loaded and "label" in loaded:
        (ipath, ishape, iaff), (lpath, lshape, laff) = loaded["image"], loaded["label"]
        if ishape != lshape:
            problems.append(Problem(str(lpath), f"{where}.label", f"shape {lshape} differs from image shape {ishape}"))
        elif not np.allclose(iaff, laff, rtol=0.0, atol=affine_atol):
            diff = float(np.abs(iaff - laff).max())
            problems.append(
                Problem(
                    str(lpath),
                    f"{where}.label",
                    f"affine differs from the image's by up to {diff:.4g} (tolerance {affine_atol}); "
                    f"image affine {np.round(iaff, 4).tolist()}, label affine {np.round(laff, 4).tolist()}",
                )
            )
    return problems


def _as_sections(
    datalist: str | Path | Mapping[str, Any] | Sequence[Any], base_dir: str | Path | None
) -> tuple[dict[str, list[Any]], Path, Mapping[str, Any]]:
    """``(key -> entries, base folder, metadata)`` from a JSON path, a datalist dict or a list."""
    meta: Mapping[str, Any] = {}
    if isinstance(datalist, (str, os.PathLike)):
        path = Path(datalist)
        if not path.is_file():
            raise FileNotFoundError(f"datalist file not found: {str(path)!r}")
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"datalist {str(path)!r} is not valid JSON: {err}") from None
        if not isinstance(content, Mapping):
            raise ValueError(f"datalist {str(path)!r} must hold a JSON object, got {type(content).__name__}")
        default_base = path.resolve().parent
        datalist = content
    else:
        default_base = Path.cwd()
    if isinstance(datalist, Mapping):
        sections = {k: list(v) for k, v in datalist.items() if isinstance(v, list)}
        meta = {k: v for k, v in datalist.items() if not isinstance(v, list)}
        if not sections:
            raise ValueError(f"datalist has no list of entries (keys: {sorted(datalist)})")
    elif isinstance(datalist, Iterable):
        sections = {"items": list(datalist)}
    else:
        raise TypeError(f"datalist must be a JSON path, a dict or a list of dicts, got {type(datalist).__name__}")
    return sections, Path(base_dir) if base_dir is not None else default_base, meta


def _num_classes(num_classes: int | None, dataset: str | None, meta: Mapping[str, Any]) -> int:
    from_dataset = get_dataset(dataset).num_classes if dataset is not None else None
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if from_dataset is not None and from_dataset != num_classes:
            raise ValueError(f"num_classes={num_classes} contradicts dataset={dataset!r} (C={from_dataset})")
        return int(num_classes)
    if from_dataset is not None:
        return from_dataset
    if isinstance(meta.get("labels"), Mapping) and len(meta["labels"]) >= 2:
        return len(meta["labels"])
    raise ValueError("give num_classes or dataset (the datalist has no 'labels' table to infer C from)")


def check_datalist(
    datalist: str | Path | Mapping[str, Any] | Sequence[Any],
    num_classes: int | None = None,
    dataset: str | None = None,
    base_dir: str | Path | None = None,
    keys: Sequence[str] | None = None,
    affine_atol: float = 1e-3,
    num_workers: int = 1,
    progress: bool = False,
    ct: bool = False,
) -> list[Problem]:
    """Check every image/label of a datalist and return all problems found (empty when clean).

    Args:
        datalist: a datalist JSON file, its loaded dict (every list-valued key is checked), or a
            list of entries (``{"image": ..., "label": ...}`` dicts or image paths).
        num_classes: C; label ids must lie in ``[0, C)``.
        dataset: dataset name giving C instead (``"synapse"`` 14, ``"amos"`` 16). Without either,
            C is the size of the datalist's ``labels`` table.
        base_dir: folder that relative paths are resolved against (default: the JSON's folder, as
            :func:`monai.data.load_decathlon_datalist` does; the working folder for in-memory input).
        keys: only check these datalist keys (default: all).
        affine_atol: absolute tolerance (mm) when comparing image and label affines.
        num_workers: files read in parallel threads (decompression releases the GIL).
        progress: show a progress bar on stderr.
        ct: also check that images look like CT in Hounsfield units (:func:`ct_range_problem`).

    Returns:
        the list of :class:`Problem`, in datalist order.

    Raises:
        ValueError / TypeError / FileNotFoundError: for an unusable datalist or class count
        (problems with the data files themselves are returned, never raised).
    """
    return _run_checks(datalist, num_classes, dataset, base_dir, keys, affine_atol, num_workers, progress, ct)[0]


def _run_checks(
    datalist: str | Path | Mapping[str, Any] | Sequence[Any],
    num_classes: int | None,
    dataset: str | None,
    base_dir: str | Path | None,
    keys: Sequence[str] | None,
    affine_atol: float,
    num_workers: int,
    progress: bool,
    ct: bool = False,
) -> tuple[list[Problem], int]:
    """``(problems, number of entries checked)``; see :func:`check_datalist`."""
    sections, base, meta = _as_sections(datalist, base_dir)
    if keys is not None:
        keys = [keys] if isinstance(keys, str) else list(keys)
        unknown = [k for k in keys if k not in sections]
        if unknown:
            raise ValueError(f"keys {unknown} not in the datalist (has {sorted(sections)})")
        sections = {k: sections[k] for k in keys}
    n_classes = _num_classes(num_classes, dataset, meta)
    if affine_atol < 0:
        raise ValueError(f"affine_atol must be >= 0, got {affine_atol}")
    jobs = [(section, i, entry) for section, entries in sections.items() for i, entry in enumerate(entries)]

    def run(job: tuple[str, int, Any]) -> list[Problem]:
        return _check_entry(*job, base_dir=base, num_classes=n_classes, affine_atol=affine_atol, ct=ct)

    with ThreadPoolExecutor(max_workers=max(1, int(num_workers))) as pool:
        results: Iterable[list[Problem]] = pool.map(run, jobs)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(jobs), desc="verify", unit="case")
        problems = [p for found in results for p in found]
    problems.extend(_duplicates(jobs, base))
    return problems, len(jobs)


def _duplicates(jobs: list[tuple[str, int, Any]], base: Path) -> list[Problem]:
    """An image, or a ``case_id``, listed twice; flagged as a leak when one listing is a training
    key and the other is not (a case id shared by two different files is the same patient)."""
    first: dict[str, str] = {}
    first_case: dict[str, tuple[str, str]] = {}
    problems = []
    for section, i, entry in jobs:
        image = entry.get("image") if isinstance(entry, Mapping) else entry
        if not isinstance(image, (str, os.PathLike)):
            continue
        path = os.path.normpath(image if os.path.isabs(image) else base / image)
        key = f"{section}[{i}].image"
        if path in first:
            problems.append(Problem(path, key, f"image also listed as {first[path]} ({_what(first[path], section)})"))
            continue
        first[path] = key
        case = entry.get("case_id") if isinstance(entry, Mapping) else None
        if case is None:
            continue
        if str(case) in first_case:
            other_key, other_path = first_case[str(case)]
            problems.append(
                Problem(path, f"{section}[{i}].case_id",
                        f"case id {str(case)!r} also listed as {other_key} ({other_path}) ({_what(other_key, section)})")
            )  # fmt: skip
        else:
            first_case[str(case)] = (f"{section}[{i}]", path)
    return problems


def _what(first_key: str, section: str) -> str:
    leak = (first_key.split("[")[0] in _TRAIN_KEYS) != (section in _TRAIN_KEYS)
    return "train/evaluation leak" if leak else "duplicate entry"


def verify_datalist(
    datalist: str | Path | Mapping[str, Any] | Sequence[Any],
    num_classes: int | None = None,
    dataset: str | None = None,
    base_dir: str | Path | None = None,
    keys: Sequence[str] | None = None,
    affine_atol: float = 1e-3,
    num_workers: int = 1,
    progress: bool = False,
    ct: bool = False,
) -> int:
    """Like :func:`check_datalist` (same arguments) but raise when anything is wrong.

    Returns:
        the number of entries checked.

    Raises:
        DatasetIntegrityError: listing every problem at once.
    """
    problems, n_entries = _run_checks(
        datalist, num_classes, dataset, base_dir, keys, affine_atol, num_workers, progress, ct
    )
    if problems:
        raise DatasetIntegrityError(problems)
    return n_entries
