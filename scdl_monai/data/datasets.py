"""Dataset definitions: class names, label ids, release layouts and official splits.

Sources: docs/data.md (Synapse/BTCV release layout, AMOS 2022 layout, label ids, official
splits) — the AMOS ``dataset.json`` names contain typos ("arota", "postcava"), so names are
written out here instead of being read from that file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from scdl_monai.data.utils import UnknownNameError, did_you_mean


__all__ = [
    "ReleaseLayout",
    "DatasetSpec",
    "SYNAPSE",
    "AMOS",
    "DATASETS",
    "NIFTI_SUFFIXES",
    "get_dataset",
    "split_dir",
    "read_split",
    "did_you_mean",
]

#: File suffixes accepted for released volumes, in order of preference.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


@dataclass(frozen=True)
class ReleaseLayout:
    """Where one release layout of a dataset keeps its image/label files.

    Attributes:
        name: short name of the layout (reported by the datalist builder).
        folders: role -> ``(image_dir, label_dir)`` relative to the dataset root. Role ``"train"``
            holds the ids of the official ``train``/``eval`` lists, role ``"test"`` those of the
            ``test`` list. A case is looked up in its role's folder first, then in the others.
        image_name: file name of an image without suffix, formatted with ``case_id``.
        label_name: file name of a label without suffix, formatted with ``case_id``.
    """

    name: str
    folders: dict[str, tuple[str, str]]
    image_name: str = "{case_id}"
    label_name: str = "{case_id}"

    def search_order(self, role: str) -> list[tuple[str, str]]:
        """``(image_dir, label_dir)`` pairs to search for a case of ``role``, preferred first."""
        first = self.folders[role]
        return [first] + [pair for pair in dict.fromkeys(self.folders.values()) if pair != first]


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of a released dataset.

    Attributes:
        name: short name used in configs and CLIs (``"synapse"``, ``"amos"``).
        class_names: names of classes ``0..C-1`` (index 0 is background).
        splits: names of the official split folders shipped in ``scdl_monai/data/splits``.
        default_split: split used when none is given.
        labeled_fractions: split -> tags of its shipped ``labeled_<tag>.txt`` lists.
        layouts: release layouts accepted under a dataset root, detected in this order.
    """

    name: str
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    default_split: str
    labeled_fractions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    layouts: tuple[ReleaseLayout, ...] = ()

    @property
    def num_classes(self) -> int:
        """C, the number of classes including background."""
        return len(self.class_names)

    @property
    def organ_names(self) -> tuple[str, ...]:
        """Names of the foreground classes ``1..C-1``."""
        return self.class_names[1:]


_CLASSES_0_TO_9 = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior vena cava",
)

SYNAPSE = DatasetSpec(
    name="synapse",
    class_names=_CLASSES_0_TO_9
    + ("portal & splenic veins", "pancreas", "right adrenal gland", "left adrenal gland"),
    splits=("synapse_2023", "synapse_current"),
    default_split="synapse_2023",
    labeled_fractions={"synapse_2023": ("10p", "20p", "40p"), "synapse_current": ("0.2",)},
    # docs/data.md#datasets: the official release, the same tree with the root one or two levels down, and
    # the MSD-like layout read by the reference code. The ``test`` ids are labelled training cases.
    layouts=tuple(
        ReleaseLayout(name, {"train": pair, "test": pair}, "img{case_id}", "label{case_id}")
        for name, pair in (
            ("release", ("RawData/Training/img", "RawData/Training/label")),
            ("release (root = RawData)", ("Training/img", "Training/label")),
            ("release (root = RawData/Training)", ("img", "label")),
            ("msd", ("imagesTr", "labelsTr")),
        )
    ),
)

AMOS = DatasetSpec(
    name="amos",
    class_names=_CLASSES_0_TO_9
    + ("pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder", "prostate/uterus"),
    splits=("amos",),
    default_split="amos",
    labeled_fractions={"amos": ("2p", "5p", "10p")},
    # docs/data.md: train/eval ids come from imagesTr, the ``test`` split is the validation release.
    layouts=(ReleaseLayout("amos", {"train": ("imagesTr", "labelsTr"), "test": ("imagesVa", "labelsVa")}),),
)

DATASETS: dict[str, DatasetSpec] = {"synapse": SYNAPSE, "amos": AMOS}


def get_dataset(name: str) -> DatasetSpec:
    """Return the :class:`DatasetSpec` called ``name`` (case-insensitive).

    Raises:
        UnknownNameError: (a ValueError) for an unknown name, with a did-you-mean suggestion.
    """
    if isinstance(name, DatasetSpec):
        return name
    key = str(name).lower()
    if key not in DATASETS:
        raise UnknownNameError("dataset", name, DATASETS, message=f"unknown dataset {name!r}; " + did_you_mean(key, DATASETS))
    return DATASETS[key]


def split_dir(split: str) -> Path:
    """Folder of the shipped official split ``split`` (e.g. ``"synapse_2023"``).

    Raises:
        ValueError: when no such split is shipped.
    """
    root = Path(str(resources.files("scdl_monai.data").joinpath("splits")))
    available = sorted(p.name for p in root.iterdir() if p.is_dir())
    if split not in available:
        raise ValueError(f"no shipped split {split!r}; " + did_you_mean(str(split), available))
    return root / split


def read_split(path: str | Path) -> list[str]:
    """Read a split file: one case id per line; blank lines and ``#`` comments ignored.

    A file holding a single id still yields a one-element list.

    Raises:
        FileNotFoundError: naming the file when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    ids = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line)
    return ids
