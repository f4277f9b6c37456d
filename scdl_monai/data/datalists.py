"""Build MONAI datalist JSON files from a downloaded dataset and the shipped official splits.

A datalist holds four lists (docs/data.md#official-splits):

* ``training``: the labeled part of the official ``train`` list (image + label),
* ``unlabeled``: the rest of ``train`` (image only),
* ``validation``: the official ``eval`` list (image + label),
* ``test``: the official ``test`` list (image + label; Synapse test ids are labelled training
  cases, the AMOS test split is the ``imagesVa`` release).

Every entry also carries ``case_id``. The file is readable by :func:`monai.data.load_decathlon_datalist`
for each of the four keys. Release layouts (docs/data.md#datasets) are described in
:mod:`scdl_monai.data.datasets` and detected automatically under the dataset root.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scdl_monai.data.datasets import (
    NIFTI_SUFFIXES,
    DatasetSpec,
    ReleaseLayout,
    did_you_mean,
    get_dataset,
    read_split,
    split_dir,
)
from scdl_monai.data.utils import atomic_write

__all__ = [
    "DATALIST_KEYS",
    "MissingCasesError",
    "OfficialSplit",
    "resolve_labeled",
    "load_official_split",
    "detect_layout",
    "build_datalist",
    "write_datalist",
]

#: Keys of a datalist written by :func:`build_datalist`, in file order.
DATALIST_KEYS: tuple[str, ...] = ("training", "unlabeled", "validation", "test")

#: ``labeled`` values meaning "every train case is labeled" (fully supervised upper bound).
FULL_SUPERVISION = ("all", "100p")


class MissingCasesError(FileNotFoundError):
    """Files named by the split are absent under the dataset root; ``missing`` lists every one.

    Attributes:
        missing: the expected paths that were not found, in split order.
    """

    def __init__(self, root: Path, layout: str, missing: list[Path]):
        self.root = root
        self.layout = layout
        self.missing = list(missing)
        lines = "\n".join(f"  {p}" for p in self.missing)
        super().__init__(
            f"{len(self.missing)} file(s) named by the split are missing under root={str(root)!r} "
            f"(layout {layout!r}; '.nii.gz' and '.nii' accepted):\n{lines}"
        )


@dataclass(frozen=True)
class OfficialSplit:
    """Case ids of one official split at one labeled fraction.

    Attributes:
        name: split name (or folder path for a custom split).
        labeled_tag: tag of the labeled list (``"20p"``, ``"0.2"``, ``"all"``).
        labeled: ids of ``training``; unlabeled: ids of ``unlabeled``; validation: ``eval.txt``;
        test: ``test.txt``.
    """

    name: str
    labeled_tag: str
    labeled: list[str]
    unlabeled: list[str]
    validation: list[str]
    test: list[str]

    def ids(self, key: str) -> list[str]:
        """Ids of datalist key ``key`` (one of :data:`DATALIST_KEYS`)."""
        return {
            "training": self.labeled,
            "unlabeled": self.unlabeled,
            "validation": self.validation,
            "test": self.test,
        }[key]


def _fraction(tag: str) -> float | None:
    """``"20p"`` / ``"20%"`` -> 0.2, ``"0.2"`` -> 0.2, anything else -> None."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([p%]?)", tag)
    if match is None:
        return None
    value = float(match.group(1))
    return value / 100.0 if match.group(2) or value > 1 else value


def resolve_labeled(folder: str | Path, labeled: str | float) -> str:
    """Match a labeled fraction to a ``labeled_<tag>.txt`` file present in the split ``folder``.

    Exact tags win (``"20p"``, ``"0.2"``, also with a ``labeled_`` prefix); otherwise a unique tag
    of the same fraction is accepted, so ``0.2`` finds ``labeled_20p.txt`` and ``"20p"`` finds
    ``labeled_0.2.txt``. ``"all"`` / ``"100p"`` mean the whole ``train`` list is labeled.

    Returns:
        the tag (``"all"`` for full supervision).

    Raises:
        ValueError: when no file matches, with a did-you-mean over the tags present.
    """
    folder = Path(folder)
    tag = str(labeled).strip().lower().removeprefix("labeled_").removesuffix(".txt").replace("%", "p")
    if tag in FULL_SUPERVISION:
        return "all"
    present = sorted(
        (p.name[len("labeled_") : -len(".txt")] for p in folder.glob("labeled_*.txt")),
        key=lambda t: (_fraction(t) if _fraction(t) is not None else float("inf"), t),
    )
    if tag in present:
        return tag
    wanted = _fraction(tag)
    if wanted is not None:
        same = [t for t in present if _fraction(t) is not None and abs(_fraction(t) - wanted) < 1e-9]
        if len(same) == 1:
            return same[0]
    raise ValueError(
        f"labeled={labeled!r} has no labeled_<tag>.txt in split folder {str(folder)!r}; "
        + did_you_mean(tag, present + list(FULL_SUPERVISION))
    )


def _split_folder(spec: DatasetSpec, split: str | Path | None) -> tuple[str, Path]:
    """Name and folder of ``split``: a shipped split of ``spec`` or a folder with the same files."""
    if split is None:
        split = spec.default_split
    if str(split) in spec.splits:
        return str(split), split_dir(str(split))
    if Path(split).is_dir():
        return str(split), Path(split)
    raise ValueError(
        f"split={str(split)!r} is neither a split of dataset {spec.name!r} nor a folder; "
        + did_you_mean(str(split), list(spec.splits))
    )


def load_official_split(
    dataset: str | DatasetSpec, labeled: str | float, split: str | Path | None = None
) -> OfficialSplit:
    """Read the ids of ``split`` (default: the dataset's) at labeled fraction ``labeled``.

    ``unlabeled`` comes from ``unlabeled_<tag>.txt`` when shipped, else ``train`` minus ``labeled``.

    Raises:
        ValueError: unknown dataset/split/fraction (did-you-mean), or lists that contradict each
            other (labeled ids outside ``train``, labeled and unlabeled overlapping), naming the file.
        FileNotFoundError: a required split file is missing, naming it.
    """
    spec = get_dataset(dataset)
    name, folder = _split_folder(spec, split)
    tag = resolve_labeled(folder, labeled)
    train = read_split(folder / "train.txt")
    if tag == "all":
        lab, unlab = list(train), []
    else:
        lab = read_split(folder / f"labeled_{tag}.txt")
        outside = [i for i in lab if i not in set(train)]
        if outside:
            raise ValueError(f"{folder / f'labeled_{tag}.txt'}: ids not in train.txt: {outside}")
        unlab_file = folder / f"unlabeled_{tag}.txt"
        unlab = read_split(unlab_file) if unlab_file.is_file() else [i for i in train if i not in set(lab)]
        both = sorted(set(lab) & set(unlab))
        if both:
            raise ValueError(f"{unlab_file}: ids also in labeled_{tag}.txt: {both}")
    return OfficialSplit(
        name=name,
        labeled_tag=tag,
        labeled=lab,
        unlabeled=unlab,
        validation=read_split(folder / "eval.txt"),
        test=read_split(folder / "test.txt"),
    )


def detect_layout(dataset: str | DatasetSpec, root: str | Path) -> ReleaseLayout:
    """The first release layout of ``dataset`` whose ``train`` image folder exists under ``root``.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or no known layout is found (lists the
            folders that were looked for).
    """
    spec = get_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root={str(root)!r} is not a folder (dataset {spec.name!r})")
    for layout in spec.layouts:
        if (root / layout.folders["train"][0]).is_dir():
            return layout
    looked = ", ".join(f"{lay.folders['train'][0]}/" for lay in spec.layouts)
    raise FileNotFoundError(f"no {spec.name!r} release layout under root={str(root)!r}: looked for {looked}")


def _index_folder(folder: Path) -> dict[str, Path]:
    """File name without NIfTI suffix -> path, preferring ``.nii.gz`` when both exist."""
    index: dict[str, Path] = {}
    if not folder.is_dir():
        return index
    for suffix in reversed(NIFTI_SUFFIXES):  # later (preferred) suffixes overwrite earlier ones
        for path in folder.glob(f"*{suffix}"):
            stem = path.name[: -len(suffix)]
            if stem in index:
                warnings.warn(f"both {index[stem].name} and {path.name} exist in {folder}; using {path.name}")
            index[stem] = path
    return index


def _locate(
    root: Path, layout: ReleaseLayout, role: str, case_id: str, with_label: bool, cache: dict[Path, dict[str, Path]]
) -> tuple[dict[str, str], list[Path]]:
    """Entry for ``case_id`` and the list of its missing files (expected in the role's folder)."""
    names = {"image": layout.image_name.format(case_id=case_id), "label": layout.label_name.format(case_id=case_id)}
    fields = ("image", "label") if with_label else ("image",)
    for image_dir, label_dir in layout.search_order(role):
        dirs = {"image": root / image_dir, "label": root / label_dir}
        for d in dirs.values():
            if d not in cache:
                cache[d] = _index_folder(d)
        if names["image"] in cache[dirs["image"]]:  # the folder pair holding the image holds the label
            entry, missing = {}, []
            for f in fields:
                found = cache[dirs[f]].get(names[f])
                if found is None:
                    missing.append(dirs[f] / f"{names[f]}{NIFTI_SUFFIXES[0]}")
                else:
                    entry[f] = os.path.abspath(found)
            return entry, missing
    image_dir, label_dir = layout.folders[role]  # image found nowhere: report against the role's folders
    expected = {"image": root / image_dir, "label": root / label_dir}
    return {}, [
        expected[f] / f"{names[f]}{NIFTI_SUFFIXES[0]}" for f in fields if names[f] not in cache[expected[f]]
    ]


def build_datalist(
    dataset: str | DatasetSpec,
    root: str | Path,
    labeled: str | float,
    split: str | Path | None = None,
    out: str | Path | None = None,
    relative: bool = False,
) -> dict[str, Any]:
    """Datalist of ``dataset`` under ``root`` for an official split and labeled fraction.

    Args:
        dataset: ``"synapse"`` or ``"amos"``.
        root: the folder the release was extracted into (layout detected, docs/data.md#datasets).
        labeled: labeled fraction tag of the split (``"20p"``, ``"0.2"``, ``"5p"``, ``0.2``; ``"all"``
            for every train case labeled); validated against the ``labeled_*.txt`` files present.
        split: official split name (default: the dataset's, e.g. ``"synapse_2023"``) or a folder
            holding ``train.txt``, ``eval.txt``, ``test.txt``, ``labeled_<tag>.txt``.
        out: when given, the JSON is written there atomically.
        relative: write paths relative to the folder of ``out`` (needs ``out``).

    Returns:
        the datalist with absolute paths: keys :data:`DATALIST_KEYS` plus metadata
        (``name``, ``split``, ``labeled``, ``layout``, ``labels``).

    Raises:
        MissingCasesError: one error listing every missing image/label file.
        ValueError: unknown dataset/split/labeled fraction, or ``relative`` without ``out``.
        FileNotFoundError: ``root`` is not a folder or holds no known layout.

    Example:
        >>> build_datalist("synapse", "/data/Synapse", labeled="20p", out="synapse_20p.json")  # doctest: +SKIP
    """
    if relative and out is None:
        raise ValueError("relative=True needs out= (paths are relative to the output file's folder)")
    spec = get_dataset(dataset)
    ids = load_official_split(spec, labeled, split)
    root = Path(os.path.abspath(Path(root).expanduser()))
    layout = detect_layout(spec, root)
    cache: dict[Path, dict[str, Path]] = {}
    datalist: dict[str, Any] = {
        "name": spec.name,
        "split": ids.name,
        "labeled": ids.labeled_tag,
        "layout": layout.name,
        "labels": {str(i): n for i, n in enumerate(spec.class_names)},
    }
    missing: list[Path] = []
    for key in DATALIST_KEYS:
        role = "test" if key == "test" else "train"
        entries = []
        for case_id in ids.ids(key):
            entry, miss = _locate(root, layout, role, case_id, key != "unlabeled", cache)
            missing.extend(miss)
            entries.append({**entry, "case_id": case_id})
        datalist[key] = entries
    if missing:
        raise MissingCasesError(root, layout.name, missing)
    if out is not None:
        write_datalist(datalist, out, relative=relative)
    return datalist


def write_datalist(datalist: Mapping[str, Any], out: str | Path, relative: bool = False) -> Path:
    """Write ``datalist`` to ``out`` as JSON via a temporary file and :func:`os.replace`.

    Args:
        datalist: mapping of keys to lists of entries (``image``/``label`` paths) and metadata.
        out: output file; its folder is created when missing.
        relative: rewrite ``image``/``label`` paths relative to ``out``'s folder, which
            :func:`monai.data.load_decathlon_datalist` resolves against that folder.

    Returns:
        the path written.
    """
    out = Path(os.path.abspath(Path(out).expanduser()))
    if out.is_dir():
        raise ValueError(f"out={str(out)!r} is a folder; give a file name such as datalist.json")
    payload: dict[str, Any] = {}
    for key, value in datalist.items():
        if relative and isinstance(value, list):
            value = [
                {
                    k: (os.path.relpath(os.path.abspath(v), out.parent) if k in ("image", "label") else v)
                    for k, v in entry.items()
                }
                for entry in value
            ]
        payload[key] = value

    def _write(tmp: Path) -> None:
        with tmp.open("w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")

    return atomic_write(out, _write)
