"""Class histogram of ground-truth label volumes (voxel count per class).

DHC initialises its distribution-aware weighting (DistDW, docs/methods.md#distdw) from the class histogram
of **all voxels of all labeled training volumes**, computed once before training
(``xmed-lab/DHC:code/train_dhc.py``, ``DistDW.init_weights``: ``np.histogram`` of every labeled
volume of the split, summed). :func:`label_histogram` computes that histogram from the same
datalist the training loader reads, so nothing is hard-coded per dataset or split.

The reference counts the volumes *after* its preprocessing (the whole volume resized to the
protocol grid, no crop). Counts on another grid change every DistDW weight (the background count
is the reference of all of them), so pass the deterministic ``eval`` chain of the training
protocol as ``transform`` to count what the network sees, e.g.
``transform=protocol_transforms("dhc", "eval")``. Without ``transform`` the files are read as
stored (nibabel for NIfTI, ITK otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["label_histogram"]


def _entries(source: Any, section: str, label_key: str) -> list[Mapping[str, Any]]:
    """Normalise ``source`` into a list of datalist entries ``{label_key: path, ...}``."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix.lower() != ".json":
            return [{label_key: str(path)}]
        if not path.is_file():
            raise ValueError(f"label_histogram: datalist file {str(path)!r} does not exist.")
        from monai.data import load_decathlon_datalist

        try:
            return list(load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=section))
        except ValueError as err:
            raise ValueError(
                f"label_histogram: cannot read section {section!r} of datalist {str(path)!r}: {err}"
            ) from err
    if isinstance(source, Mapping):
        if section not in source:
            raise ValueError(
                f"label_histogram: the datalist has no section {section!r} (sections: {sorted(source)})."
            )
        return _entries(list(source[section]), section, label_key)
    if isinstance(source, Sequence):
        items = []
        for i, item in enumerate(source):
            if isinstance(item, (str, Path)):
                items.append({label_key: str(item)})
            elif isinstance(item, Mapping):
                if label_key not in item:
                    raise ValueError(f"label_histogram: datalist entry {i} has no key {label_key!r}: {dict(item)}.")
                items.append(item)
            else:
                raise TypeError(f"label_histogram: entry {i} must be a path or a dict, got {type(item).__name__}.")
        return items
    raise TypeError(
        "label_histogram: source must be a datalist JSON path, a datalist dict, or a list of label paths / "
        f"datalist entries, got {type(source).__name__}."
    )


def _read_labels(entry: Mapping[str, Any], label_key: str, transform: Callable | None) -> list[np.ndarray]:
    if transform is None:
        from scdl_monai.data.integrity import read_volume

        return [np.asarray(read_volume(entry[label_key])[0])]
    out = transform(dict(entry))
    outputs = out if isinstance(out, (list, tuple)) else [out]
    arrays = []
    for item in outputs:
        if not isinstance(item, Mapping) or label_key not in item:
            raise ValueError(f"label_histogram: transform output has no key {label_key!r} for {entry[label_key]!r}.")
        value = item[label_key]
        arrays.append(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value))
    return arrays


def label_histogram(
    source: str | Path | Mapping[str, Any] | Sequence[str | Path | Mapping[str, Any]],
    num_classes: int,
    transform: Callable | None = None,
    label_key: str = "label",
    section: str = "training",
) -> torch.Tensor:
    """Voxel count per class summed over every label volume of ``source``.

    Args:
        source: one of
            - a datalist JSON file (decathlon format, paths resolved by MONAI's
              ``load_decathlon_datalist``); the entries of ``section`` are used;
            - a loaded datalist dict (``{"training": [...], ...}``); ``source[section]`` is used;
            - a list of label file paths or of datalist entries (dicts with ``label_key``);
            - a single label file path (not ``.json``).
        num_classes: C, including background; every label value must lie in ``[0, C)``.
        transform: optional callable applied to each entry dict (e.g. the ``eval`` chain of the
            training protocol); it must return a dict (or a list of dicts) holding ``label_key``.
            None: read the file as stored.
        label_key: key of the label path in the entries and in the transform output.
        section: datalist section for JSON files / dicts (DHC: the labeled ``"training"`` cases).

    Returns:
        int64 tensor (C,) on the CPU: ``counts[k]`` = number of voxels of class ``k``.

    Raises:
        ValueError: ``num_classes`` < 1, no volumes, a missing datalist file/section/key, or a
            label value outside ``[0, C)`` (naming the file and the range found).
        TypeError: ``source`` or one of its entries has an unsupported type.

    Example:
        >>> counts = label_histogram("datalist.json", num_classes=14)  # doctest: +SKIP
        >>> DistDW(14).init_from_counts(counts)  # doctest: +SKIP
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"label_histogram: num_classes must be a positive int, got {num_classes!r}.")
    entries = _entries(source, section, label_key)
    if not entries:
        raise ValueError(f"label_histogram: no label volumes in {source!r} (section {section!r}).")
    counts = np.zeros(num_classes, dtype=np.int64)
    for entry in entries:
        for array in _read_labels(entry, label_key, transform):
            flat = (np.rint(array) if array.dtype.kind == "f" else array).astype(np.int64).ravel()
            if flat.size == 0:
                continue
            lo, hi = int(flat.min()), int(flat.max())
            if lo < 0 or hi >= num_classes:
                raise ValueError(
                    f"label_histogram: {entry[label_key]!r} has label values in [{lo}, {hi}], "
                    f"expected [0, num_classes={num_classes})."
                )
            counts += np.bincount(flat, minlength=num_classes)
    return torch.from_numpy(counts)
