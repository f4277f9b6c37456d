"""Compose bundle configs from overlays and write self-contained MONAI bundle directories.

The single source of truth is ``bundles/_components/`` (BUNDLES.md §1–2, ARCHITECTURE.md):

* ``train.json`` / ``inference.json`` — complete base configs (native protocol, PROTOCOL.md §3);
* ``evaluate.json`` / ``multi_gpu_train.json`` — overlays applied on top of ``train.json``;
* ``datasets/<dataset>.json`` — classes and dataset folder (Synapse C=14, AMOS C=16);
* ``methods/<method>/{train,inference}.json`` — the algorithm (``method_def``, optimizers,
  schedules, the inference network);
* ``backbones/<backbone>.json`` — ``network_def`` (VNet default, MONAI UNet, SegResNet);
* ``logging.conf`` and ``LICENSE``.

A bundle's ``configs/train.json`` is ``train.json + datasets/D + methods/M/train.json +
backbones/B`` merged with MONAI's own rule (``ConfigParser.load_config_files``: a later file's key
replaces, ``+key`` extends/updates, ``a#b`` keys reach into nested sections); ``inference.json``
likewise; ``evaluate.json`` and ``multi_gpu_train.json`` stay overlays (used as
``--config_file "['configs/train.json','configs/evaluate.json']"``). The component files are
themselves valid overlays, so the same result is obtained on the command line from the repository
root::

    python -m monai.bundle run --config_file "['bundles/_components/train.json',
        'bundles/_components/datasets/synapse.json', 'bundles/_components/methods/cps/train.json',
        'bundles/_components/backbones/vnet.json']" --meta_file bundles/cps_synapse/configs/metadata.json

A written bundle references only ``monai``/``torch`` and the installed ``scdl_monai`` package by
full dotted paths (no ``scripts`` folder, no PYTHONPATH), so it runs from any directory given
``--bundle_root``.

Command line::

    python -m scdl_monai.bundles write --method cps --dataset synapse --out DIR [--backbone unet] [--protocol dhc]
    python -m scdl_monai.bundles write-all [--out bundles]
    python -m scdl_monai.bundles check [--root bundles]     # committed bundles == regenerated
"""

from __future__ import annotations

import filecmp
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import scdl_monai
from scdl_monai.data.datasets import get_dataset

__all__ = [
    "METHODS",
    "DATASETS",
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "PROTOCOLS",
    "DEFAULT_PROTOCOL",
    "SHIPPED",
    "SCHEMA_URL",
    "components_dir",
    "schema_path",
    "bundle_name",
    "compose_config",
    "build_metadata",
    "write_bundle",
    "write_all",
    "compare_bundle_dirs",
    "latest_checkpoint",
    "main",
]

#: Methods with overlays under ``bundles/_components/methods/``.
METHODS: tuple[str, ...] = ("supervised", "cps")
#: Datasets with overlays under ``bundles/_components/datasets/``.
DATASETS: tuple[str, ...] = ("synapse", "amos")
#: Backbones with overlays under ``bundles/_components/backbones/``.
BACKBONES: tuple[str, ...] = ("vnet", "unet", "segresnet")
DEFAULT_BACKBONE = "vnet"
#: Preprocessing protocols (PROTOCOL.md §3): "native" is in the base configs, the others are
#: overlays under ``bundles/_components/protocols/<protocol>/``.
PROTOCOLS: tuple[str, ...] = ("native", "dhc", "ga")
DEFAULT_PROTOCOL = "native"
#: The bundles generated into ``bundles/`` and committed (issue 3).
SHIPPED: tuple[tuple[str, str], ...] = tuple((m, d) for m in METHODS for d in DATASETS)

#: ``schema`` field of metadata.json (the official URL; ``verify_metadata`` skips the download
#: when ``--filepath`` already holds a file, so point it at :func:`schema_path` offline).
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"

#: Versions the shipped bundles were generated and verified with (fixed, so regeneration is
#: reproducible on any machine); ``scdl_monai`` is the installed package's version.
MONAI_VERSION = "1.6.1"
PYTORCH_VERSION = "2.13.0"
NUMPY_VERSION = "2.4.6"
REQUIRED_PACKAGES = {"pytorch-ignite": "0.5.5", "nibabel": "5.4.2", "itk": "5.4.7", "tensorboard": "2.21.0"}

_FULL_CONFIGS = ("train", "inference")
_OVERLAY_CONFIGS = ("evaluate", "multi_gpu_train")

_METHOD_TEXT = {
    "supervised": {
        "title": "fully supervised",
        "summary": "one network trained on the labeled cases only (the labeled-only baseline; "
        "trained on all labels it is the papers' upper bound)",
        "references": [
            "Milletari F., Navab N., Ahmadi S.-A. V-Net: Fully Convolutional Neural Networks for Volumetric "
            "Medical Image Segmentation. 3DV 2016. https://arxiv.org/abs/1606.04797",
        ],
    },
    "cps": {
        "title": "cross pseudo supervision (CPS)",
        "summary": "two networks of the same architecture, initialised differently (A Kaiming, B Xavier), "
        "each supervised by the labels and by the other's hard pseudo-labels on labeled and unlabeled "
        "patches; the pseudo-label weight ramps up to 0.1 with a sigmoid schedule; inference averages "
        "the two networks' logits",
        "references": [
            "Chen X., Yuan Y., Zeng G., Wang J. Semi-Supervised Semantic Segmentation with Cross Pseudo "
            "Supervision. CVPR 2021. https://arxiv.org/abs/2106.01226",
            "Wang H., Li X. Towards Generic Semi-Supervised Framework for Volumetric Medical Image "
            "Segmentation (DHC: Dual-debiased Heterogeneous Co-training). MICCAI 2023. "
            "https://arxiv.org/abs/2307.11470",
        ],
    },
}

_DATASET_TEXT = {
    "synapse": {
        "title": "Synapse multi-organ CT (BTCV, MICCAI 2015 Multi-Atlas Abdomen Labeling Challenge)",
        "source": "Synapse project syn3193805 (https://www.synapse.org/#!Synapse:syn3193805), registration "
        "and acceptance of its data use terms required",
        "layout": "RawData/Training/img/img0001.nii.gz, RawData/Training/label/label0001.nii.gz",
        "labeled": "20p",
        "epochs": "300 epochs (20%/40% labels; 200 for 10%)",
    },
    "amos": {
        "title": "AMOS 2022 abdominal multi-organ CT/MRI (Ji et al., NeurIPS 2022 Datasets and Benchmarks)",
        "source": "AMOS 2022 challenge release (https://amos22.grand-challenge.org/), under the terms "
        "published by its organisers",
        "layout": "imagesTr/amos_0001.nii.gz, labelsTr/amos_0001.nii.gz, imagesVa/, labelsVa/",
        "labeled": "5p",
        "epochs": "200 epochs (2%/5%/10% labels)",
    },
}


# --------------------------------------------------------------------------------------------
# locations
# --------------------------------------------------------------------------------------------


def components_dir() -> Path:
    """``bundles/_components`` of the repository this package is installed from (editable install).

    Set ``SCDL_MONAI_COMPONENTS`` to use another folder.

    Raises:
        FileNotFoundError: when the folder does not exist (e.g. a non-editable install).
    """
    env = os.environ.get("SCDL_MONAI_COMPONENTS")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "bundles" / "_components"
    if not (path / "train.json").is_file():
        raise FileNotFoundError(
            f"bundle components not found in {path} (expected train.json there); run from a repository "
            "checkout (pip install -e .) or set SCDL_MONAI_COMPONENTS to the bundles/_components folder."
        )
    return path


def schema_path() -> Path:
    """Path of the vendored metadata schema (our reconstruction of ``meta_schema_20240725.json``)."""
    return Path(__file__).resolve().parent / "resources" / "meta_schema_20240725.json"


def _option(value: str, options: Sequence[str], arg: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in options:
        from scdl_monai.data.datasets import did_you_mean

        hint = did_you_mean(str(value), list(options)) if isinstance(value, str) else ""
        raise ValueError(f"{arg} must be one of {list(options)}, got {value!r}.{(' ' + hint) if hint else ''}")
    return value.strip().lower()


def bundle_name(method: str, dataset: str, backbone: str = DEFAULT_BACKBONE, protocol: str = DEFAULT_PROTOCOL) -> str:
    """Folder name of a bundle: ``<method>_<dataset>`` (+ ``_<backbone>`` unless VNet, + ``_<protocol>`` unless native)."""
    method, dataset = _option(method, METHODS, "method"), _option(dataset, DATASETS, "dataset")
    backbone, protocol = _option(backbone, BACKBONES, "backbone"), _option(protocol, PROTOCOLS, "protocol")
    return (
        f"{method}_{dataset}"
        + ("" if backbone == DEFAULT_BACKBONE else f"_{backbone}")
        + ("" if protocol == DEFAULT_PROTOCOL else f"_{protocol}")
    )


# --------------------------------------------------------------------------------------------
# composition
# --------------------------------------------------------------------------------------------


def _load_json(path: Path) -> dict:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a bundle config must be a JSON object, got {type(data).__name__}.")
    return data


def component_files(
    kind: str,
    method: str,
    dataset: str,
    backbone: str = DEFAULT_BACKBONE,
    root: str | Path | None = None,
    protocol: str = DEFAULT_PROTOCOL,
) -> list[Path]:
    """The component files merged (in order) into the bundle config ``kind``.

    Order: base, dataset, backbone, protocol (unless native), method.

    Args:
        kind: ``"train"``, ``"inference"``, ``"evaluate"`` or ``"multi_gpu_train"``.
        method, dataset, backbone, protocol: see :data:`METHODS`, :data:`DATASETS`,
            :data:`BACKBONES`, :data:`PROTOCOLS`.
        root: components folder (default :func:`components_dir`).
    """
    kind = _option(kind, _FULL_CONFIGS + _OVERLAY_CONFIGS, "kind")
    method, dataset = _option(method, METHODS, "method"), _option(dataset, DATASETS, "dataset")
    backbone, protocol = _option(backbone, BACKBONES, "backbone"), _option(protocol, PROTOCOLS, "protocol")
    root = Path(root) if root is not None else components_dir()
    files = [root / f"{kind}.json"]
    if kind in _FULL_CONFIGS:
        files += [root / "datasets" / f"{dataset}.json", root / "backbones" / f"{backbone}.json"]
        if protocol != DEFAULT_PROTOCOL:
            files.append(root / "protocols" / protocol / f"{kind}.json")
    method_file = root / "methods" / method / f"{kind}.json"
    if method_file.is_file():
        files.append(method_file)
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"bundle component missing: {f}")
    return files


def _merge_overlays(files: Sequence[Path]) -> dict:
    """Merge overlay files key by key at the top level (``a#b`` ids are kept as ids).

    A later ``key`` replaces an earlier ``key``/``+key``; a later ``+key`` extends an earlier
    ``+key`` (list) or updates it (dict).
    """
    out: dict[str, Any] = {}
    for path in files:
        for key, value in _load_json(path).items():
            if key.startswith("+") and key in out:
                if isinstance(out[key], list) and isinstance(value, list):
                    out[key] = out[key] + value
                elif isinstance(out[key], dict) and isinstance(value, dict):
                    out[key] = {**out[key], **value}
                else:
                    raise ValueError(f"{path}: cannot merge {key!r} of type {type(value).__name__} into {type(out[key]).__name__}.")
            else:
                out.pop("+" + key, None)
                out[key] = value
    return out


def compose_config(
    kind: str,
    method: str,
    dataset: str,
    backbone: str = DEFAULT_BACKBONE,
    root: str | Path | None = None,
    protocol: str = DEFAULT_PROTOCOL,
) -> dict:
    """One bundle config as a dict, composed from the components (see the module docstring).

    ``train`` / ``inference`` are complete configs merged with MONAI's
    ``ConfigParser.load_config_files`` semantics; ``evaluate`` / ``multi_gpu_train`` are overlays.

    Raises:
        ValueError: unknown kind/method/dataset/backbone (naming the argument), invalid JSON.
        FileNotFoundError: a component file is missing.
    """
    from monai.bundle import ConfigParser

    files = component_files(kind, method, dataset, backbone, root, protocol)
    if kind in _FULL_CONFIGS:
        for f in files:
            _load_json(f)  # clear error naming the file before MONAI's generic one
        return ConfigParser.load_config_files([str(f) for f in files])
    return _merge_overlays(files)


def _tensor_format(num_channels: int, fmt: str, channel_def: Mapping[str, str], value_range: list, modality: str) -> dict:
    return {
        "type": "image",
        "format": fmt,
        "modality": modality,
        "num_channels": num_channels,
        # VNet / UNet need sizes divisible by 16 (4 stride-2 levels); SegResNet by 8
        "spatial_shape": ["16*n", "16*n", "16*n"],
        "dtype": "float32",
        "value_range": value_range,
        "is_patch_data": True,
        "channel_def": dict(channel_def),
    }


_PROTOCOL_TEXT = {
    "native": "Native preprocessing protocol (RAS, 1.5x1.5x2 mm, HU window [-125, 275] -> [0, 1], class-balanced patches)",
    "dhc": "DHC preprocessing protocol (HU clip [-75, 275], per-volume min-max, whole volume resized to 160x160x80, random 128x128x64 crops)",
    "ga": "GA preprocessing protocol (HU window [-125, 275] -> [0, 1], whole volume resized to 160x160x80, random 96^3 crops)",
}


def build_metadata(method: str, dataset: str, backbone: str = DEFAULT_BACKBONE, protocol: str = DEFAULT_PROTOCOL) -> dict:
    """``configs/metadata.json`` of a bundle (valid against :func:`schema_path`).

    ``network_data_format`` describes the inference network (for CPS the logit mean of A and B,
    which has the I/O of one backbone); CPS adds ``network_b_data_format`` for network B.
    """
    method, dataset = _option(method, METHODS, "method"), _option(dataset, DATASETS, "dataset")
    backbone, protocol = _option(backbone, BACKBONES, "backbone"), _option(protocol, PROTOCOLS, "protocol")
    spec = get_dataset(dataset)
    mt, dt = _METHOD_TEXT[method], _DATASET_TEXT[dataset]
    classes = {str(i): name for i, name in enumerate(spec.class_names)}
    io = {
        "inputs": {"image": _tensor_format(1, "hounsfield", {"0": "image"}, [0, 1], "CT")},
        "outputs": {"pred": _tensor_format(spec.num_classes, "labels", classes, [], "CT")},
    }
    version = "0.1.0"
    meta: dict[str, Any] = {
        "schema": SCHEMA_URL,
        "version": version,
        "changelog": {version: f"{mt['title']} on {dataset}, composed from bundles/_components by scdl_monai"},
        "monai_version": MONAI_VERSION,
        "pytorch_version": PYTORCH_VERSION,
        "numpy_version": NUMPY_VERSION,
        "required_packages_version": {"scdl_monai": scdl_monai.__version__, **REQUIRED_PACKAGES},
        "name": f"{bundle_name(method, dataset, backbone, protocol)} ({backbone}, {protocol} protocol)",
        "task": f"Semi-supervised multi-organ segmentation of abdominal CT ({spec.num_classes - 1} organs, {dataset})",
        "description": (
            f"{mt['title'][0].upper() + mt['title'][1:]} with a {backbone} backbone: {mt['summary']}. {_PROTOCOL_TEXT[protocol]}; "
            "sliding-window inference; predictions are inverted to the input's original grid and orientation."
        ),
        "authors": "scdl_monai contributors",
        "copyright": "Copyright (c) scdl_monai contributors",
        "data_source": dt["source"],
        "data_type": "nibabel",
        "image_classes": "single channel CT in Hounsfield units, windowed to [-125, 275] and scaled to [0, 1]",
        "label_classes": "single channel integer map: " + ", ".join(f"{i} {n}" for i, n in classes.items()),
        "pred_classes": f"{spec.num_classes} channels of logits (before softmax), channel k = class k",
        "intended_use": "Research only; not for clinical or diagnostic use. No trained weights are shipped.",
        "references": list(mt["references"]),
        "network_data_format": io,
    }
    if method == "cps":
        meta["network_b_data_format"] = json.loads(json.dumps(io))
    return meta


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _dumps(obj: Any, indent: int = 0, width: int = 100) -> str:
    """JSON with 4-space indent where lists/dicts of scalars that fit ``width`` stay on one line."""
    pad, inner = " " * indent, " " * (indent + 4)
    flat = json.dumps(obj, ensure_ascii=False)
    scalars = isinstance(obj, (list, dict)) and all(
        not isinstance(v, (list, dict)) or (isinstance(v, list) and all(not isinstance(w, (list, dict)) for w in v))
        for v in (obj.values() if isinstance(obj, dict) else obj)
    )
    if not isinstance(obj, (list, dict)) or (isinstance(obj, list) and scalars and len(flat) + indent <= width):
        return flat
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_dumps(v, indent + 4, width)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if not obj:
        return "[]"
    return "[\n" + ",\n".join(inner + _dumps(v, indent + 4, width) for v in obj) + "\n" + pad + "]"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_PREPROCESSING_TEXT = {
    "native": """### Preprocessing ("native" protocol, visible in `configs/train.json`)

`LoadImaged` -> `EnsureChannelFirstd` -> `Orientationd` RAS -> `Spacingd` 1.5x1.5x2 mm (`pixdim`;
bilinear image, nearest label) -> `ScaleIntensityRanged` [-125, 275] HU -> [0, 1] (`a_min`, `a_max`)
-> `SpatialPadd` to the patch -> `RandCropByLabelClassesd` (class-balanced patch centres, `crop_ratios`)
for labeled patches, `RandSpatialCropd` for unlabeled ones. Validation/evaluation/inference use the
whole resampled volume with a sliding window of the training patch (uniform weights, overlap 0.5).
""",
    "dhc": """### Preprocessing ("dhc" protocol, visible in `configs/train.json`)

DHC paper-era protocol (PROTOCOL.md §3): `LoadImaged` -> `EnsureChannelFirstd` -> HU clip [-75, 275]
-> per-volume min-max to [0, 1] -> `Resized` the whole volume to 160x160x80 (x, y, z; `resize_grid`;
trilinear image, nearest label) -> random 128x128x64 crops (`patch_size`). No reorientation, no
resampling, no flips (the paper-era code's flips had no effect). Inference inverts the resize.
""",
    "ga": """### Preprocessing ("ga" protocol, visible in `configs/train.json`)

GA protocol (PROTOCOL.md §3): `LoadImaged` -> `EnsureChannelFirstd` -> window [-125, 275] -> [0, 1]
-> `Resized` the whole volume to the 160x160x80 grid GA evaluates on (`resize_grid`) -> z padded to 96
-> random 96^3 crops (`patch_size`). Approximation: GA trained on MagicNet's non-public pre-made
volumes. Inference inverts the resize.
""",
}


def _readme(method: str, dataset: str, backbone: str, name: str, meta: dict, protocol: str = DEFAULT_PROTOCOL) -> str:
    spec = get_dataset(dataset)
    mt, dt = _METHOD_TEXT[method], _DATASET_TEXT[dataset]
    export_id = "inference_network_def"
    classes = "\n".join(f"| {i} | {n} |" for i, n in enumerate(spec.class_names))
    semi = method != "supervised"
    unlabeled_line = (
        "- `unlabeled`: image-only entries, the unlabeled stream (cycled; an epoch has as many iterations as "
        "the unlabeled loader has batches, as in the reference code).\n"
        if semi
        else "- `unlabeled`: ignored by this method.\n"
    )
    refs = "\n".join(f"- {r}" for r in meta["references"])
    preprocessing = _PREPROCESSING_TEXT[protocol]
    patch = {"native": "96x96x64", "dhc": "128x128x64", "ga": "96x96x96"}[protocol]
    flags = "".join(f" --{k} {v}" for k, v in (("backbone", backbone), ("protocol", protocol)) if v != {"backbone": DEFAULT_BACKBONE, "protocol": DEFAULT_PROTOCOL}[k])
    return f"""# {name}: {mt['title']} on {dataset} ({backbone})

## Model Overview

{meta['description']}

This bundle was generated by `python -m scdl_monai.bundles write --method {method} --dataset {dataset}{flags}`
from `bundles/_components/` of the scdl_monai repository (do not edit it by hand: edit the
components and regenerate). All code it runs lives in the installed `scdl_monai` package and is
referenced by full dotted paths, so the bundle runs from any directory; it needs no `scripts/`
folder and no `PYTHONPATH`.

**Security:** bundle configs execute code (`$` expressions and `_target_` imports, MONAI prints a
warning). Only run bundles from sources you trust, exactly as you would only run trusted scripts.

No trained weights are shipped: `models/` is empty until you train.

## Data

{dt['title']}. Source: {dt['source']}. The data is **not** included and may not be redistributed
with this bundle; see `docs/data_license.txt`.

Expected release layout (auto-detected): `{dt['layout']}`. Build the datalist JSON from the
official split shipped with scdl_monai, then point the bundle at it:

```bash
python -m scdl_monai.data datalist --dataset {dataset} --root /path/to/{dataset} --labeled {dt['labeled']} \\
    --out /path/to/{dataset}/datalist.json
python -m scdl_monai.data verify --datalist /path/to/{dataset}/datalist.json --dataset {dataset}
```

Datalist keys used by the configs:
- `training`: labeled image/label pairs (the labeled stream).
{unlabeled_line}- `validation`: model selection during training (best mean foreground Dice -> `models/model.pt`).
- `test`: `configs/evaluate.json` (`evaluate_split`).

Classes:

| id | class |
|---|---|
{classes}

{preprocessing}
## Training configuration

SGD (Nesterov, momentum 0.9, weight decay 3e-5, lr 0.03) per network, polynomial decay (power 0.9)
stepped after every epoch with the reference code's one-epoch lag, {dt['epochs']}, validation every
`val_interval` = 10 epochs, patch {patch} (`patch_size`), batch 2 labeled{' + 2 unlabeled' if semi else ''}.
Loss: cross-entropy + soft Dice (DHC "reference" forms){'; CPS term = cross-entropy with the other network’s argmax, weight 0.1 x sigmoid ramp-up over all epochs' if semi else ''}.
Every loss term is logged by `StatsHandler` and TensorBoard (`eval/`).

## MONAI Bundle Commands

Run from the bundle folder, or from anywhere with absolute paths and `--bundle_root /path/to/{name}`.
Install first: `pip install scdl_monai` (or `bash scripts/bootstrap.sh` in the repository).

Train:

```bash
python -m monai.bundle run --config_file configs/train.json --dataset_dir /path/to/{dataset}
```

Override parameters (any config id), e.g. fewer epochs, another backbone, a smaller network:

```bash
python -m monai.bundle run --config_file configs/train.json --dataset_dir /path/to/{dataset} \\
    --train#trainer#max_epochs 100 --network_def#name unet --n_filters 8
```

Resume from the newest full-state checkpoint in `models/` (method with its buffers, every optimizer
and LR scheduler, AMP scaler, trainer epoch/iteration and unlabeled-stream position):

```bash
python -m monai.bundle run --config_file configs/train.json --dataset_dir /path/to/{dataset} --resume true
```

Multi-GPU training (DDP; backend gloo without CUDA):

```bash
torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run \\
    --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir /path/to/{dataset}
```

Experiment tracking with MLflow (needs `pip install mlflow`):

```bash
python -m monai.bundle run --config_file configs/train.json --dataset_dir /path/to/{dataset} --tracking mlflow
```

Evaluate `models/model.pt` on the `test` split: Dice per class on the protocol grid
(`eval/metrics.csv`, `eval/val_mean_dice_raw.csv`) and predictions in the original image space
(`eval/predictions/`), then the project metrics (Dice/ASD/HD95 in mm, empty-class policy):

```bash
python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" --dataset_dir /path/to/{dataset}
python -m scdl_monai.evaluation evaluate --pred_dir eval/predictions --label_dir /path/to/labels \\
    --strict False --out_dir eval/metrics --dataset {dataset}
```

Inference on any CT (NIfTI file or DICOM folder) -> label map NIfTI in the input's original space
and orientation:

```bash
python -m scdl_monai.inference --bundle . --input /path/to/ct.nii.gz --output /path/to/ct_seg.nii.gz
python -m monai.bundle run --config_file configs/inference.json --input_files "['/path/to/ct.nii.gz']" \\
    --output_dir /path/to/out --sw_output_device cpu
```

Export TorchScript and check the network against the metadata:

```bash
python -m monai.bundle ckpt_export {export_id} --filepath models/model.ts --ckpt_file models/model.pt \\
    --meta_file configs/metadata.json --config_file configs/inference.json \\
    --use_trace True --input_shape "[1, 1, 96, 96, 64]"

python -m monai.bundle verify_net_in_out {export_id} --meta_file configs/metadata.json \\
    --config_file configs/inference.json --n 2 --device cpu
python -m monai.bundle verify_metadata --meta_file configs/metadata.json \\
    --filepath "$(python -c 'import scdl_monai.bundles as b; print(b.schema_path())')"
```

`verify_metadata` uses scdl_monai's vendored reconstruction of the 20240725 metadata schema (the
official file is a download that is not available offline).

## References

{refs}

## License

Code and configs: Apache License 2.0 (`LICENSE`). Data: see `docs/data_license.txt`.
"""


def _data_license(dataset: str) -> str:
    dt = _DATASET_TEXT[dataset]
    return f"""Third-party data used with this bundle
======================================

{dt['title']}
Source: {dt['source']}.

This bundle contains NO images, labels or weights trained on them. The dataset is distributed
only by its owners under their own terms; obtain it from the source above and follow those terms
(registration, permitted use, citation). Do not redistribute the data, or derived copies of it,
with this bundle or elsewhere unless those terms allow it. Check the current terms at the source
before use: they are the owners', not ours, and may change.

If you train this bundle and share the resulting weights, check whether the dataset's terms permit
sharing models trained on it.
"""


def write_bundle(
    method: str,
    dataset: str,
    out: str | Path,
    backbone: str = DEFAULT_BACKBONE,
    root: str | Path | None = None,
    protocol: str = DEFAULT_PROTOCOL,
) -> Path:
    """Write a self-contained bundle directory.

    Layout: ``configs/{train,evaluate,inference,multi_gpu_train,metadata}.json``,
    ``configs/logging.conf``, ``docs/README.md``, ``docs/data_license.txt``, ``LICENSE``,
    ``models/.gitkeep``. Every file is written atomically (temporary file + ``os.replace``);
    other files already in ``out`` (e.g. trained ``models/*.pt``) are left alone.

    Args:
        method: ``"supervised"`` or ``"cps"``.
        dataset: ``"synapse"`` or ``"amos"``.
        out: the bundle folder (created).
        backbone: ``"vnet"`` (default), ``"unet"`` or ``"segresnet"``.
        root: components folder (default :func:`components_dir`).
        protocol: preprocessing protocol, ``"native"`` (default), ``"dhc"`` or ``"ga"``.

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: unknown method/dataset/backbone; FileNotFoundError: missing components.
    """
    name = bundle_name(method, dataset, backbone, protocol)
    method, dataset = method.strip().lower(), dataset.strip().lower()
    backbone, protocol = backbone.strip().lower(), protocol.strip().lower()
    root = Path(root) if root is not None else components_dir()
    out = Path(out)
    texts: dict[str, str] = {}
    for kind in _FULL_CONFIGS + _OVERLAY_CONFIGS:
        texts[f"configs/{kind}.json"] = _dumps(compose_config(kind, method, dataset, backbone, root, protocol)) + "\n"
    meta = build_metadata(method, dataset, backbone, protocol)
    texts["configs/metadata.json"] = _dumps(meta) + "\n"
    texts["configs/logging.conf"] = (root / "logging.conf").read_text()
    texts["LICENSE"] = (root / "LICENSE").read_text()
    texts["docs/README.md"] = _readme(method, dataset, backbone, name, meta, protocol)
    texts["docs/data_license.txt"] = _data_license(dataset)
    texts["models/.gitkeep"] = ""
    for rel, text in texts.items():
        _atomic_write_text(out / rel, text)
    return out


def write_all(out: str | Path | None = None, root: str | Path | None = None) -> list[Path]:
    """Write every shipped bundle (:data:`SHIPPED`) under ``out`` (default: the repository's ``bundles/``)."""
    root = Path(root) if root is not None else components_dir()
    out = Path(out) if out is not None else root.parent
    return [write_bundle(m, d, out / bundle_name(m, d), root=root) for m, d in SHIPPED]


def compare_bundle_dirs(expected: str | Path, actual: str | Path) -> list[str]:
    """Differences between two bundle folders (text files only; ``*.pt``/``*.ts`` and ``eval/`` ignored).

    Returns:
        human-readable lines, empty when the folders hold the same files with the same content.
    """
    expected, actual = Path(expected), Path(actual)

    def files(base: Path) -> set[str]:
        if not base.is_dir():
            return set()
        return {
            p.relative_to(base).as_posix()
            for p in base.rglob("*")
            if p.is_file() and p.suffix not in (".pt", ".ts", ".onnx") and "eval" not in p.relative_to(base).parts
        }

    a, b = files(expected), files(actual)
    problems = [f"missing in {actual}: {f}" for f in sorted(a - b)] + [f"extra in {actual}: {f}" for f in sorted(b - a)]
    problems += [f"differs: {f}" for f in sorted(a & b) if not filecmp.cmp(expected / f, actual / f, shallow=False)]
    return problems


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "checkpoint") -> str:
    """Newest complete full-state checkpoint ``<ckpt_dir>/<prefix>*.pt`` (by modification time).

    Used by ``--resume true``. MONAI's ``CheckpointSaver`` does not write atomically, so a run
    killed while saving can leave a truncated file: files that are not complete zip archives (the
    ``torch.save`` format) are skipped with a warning.

    Raises:
        FileNotFoundError: when there is none (naming the folder).
    """
    import warnings
    import zipfile

    folder = Path(ckpt_dir)
    found = sorted(folder.glob(f"{prefix}*.pt"), key=lambda p: (p.stat().st_mtime_ns, p.name)) if folder.is_dir() else []
    for path in reversed(found):
        if zipfile.is_zipfile(path):
            return str(path)
        warnings.warn(f"resume: skipping incomplete checkpoint {path}", stacklevel=2)
    raise FileNotFoundError(f"resume: no checkpoint '{prefix}*.pt' in {folder.resolve()} (train first, or pass --resume_from PATH).")


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _cli_write(method: str, dataset: str, out: str, backbone: str = DEFAULT_BACKBONE, protocol: str = DEFAULT_PROTOCOL) -> None:
    """Write one self-contained bundle to OUT (method: supervised|cps; dataset: synapse|amos;
    backbone: vnet|unet|segresnet; protocol: native|dhc|ga)."""
    path = write_bundle(method, dataset, out, backbone=backbone, protocol=protocol)
    print(f"wrote bundle {bundle_name(method, dataset, backbone, protocol)} to {path}")


def _cli_write_all(out: str | None = None) -> None:
    """Regenerate every shipped bundle (default: the repository's bundles/)."""
    for path in write_all(out):
        print(f"wrote {path}")


def _cli_check(root: str | None = None) -> None:
    """Fail (exit 1) when a committed bundle differs from its regeneration from the components."""
    base = Path(root) if root is not None else components_dir().parent
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for m, d in SHIPPED:
            name = bundle_name(m, d)
            write_bundle(m, d, Path(tmp) / name)
            problems += [f"{name}: {p}" for p in compare_bundle_dirs(Path(tmp) / name, base / name)]
    if problems:
        raise ValueError("bundles differ from their components (run: python -m scdl_monai.bundles write-all):\n  " + "\n  ".join(problems))
    print(f"{len(SHIPPED)} bundles in {base} match their components")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m scdl_monai.bundles``; returns the exit status."""
    import fire

    try:
        fire.Fire({"write": _cli_write, "write-all": _cli_write_all, "check": _cli_check}, command=argv, name="scdl_monai.bundles")
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
