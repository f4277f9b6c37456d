"""``configs/metadata.json`` of a bundle (model-zoo schema 20240725, validated against :func:`~scdl_monai.bundles.catalog.schema_path`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import scdl_monai
from scdl_monai.bundles.catalog import DEFAULT_BACKBONE, _normalise, bundle_name, scdl_available
from scdl_monai.bundles.descriptions import _DATASET_TEXT, _IMAGE_TEXT, _METHOD_TEXT, _PROTOCOL_TEXT, _SCDL_TEXT
from scdl_monai.data.datasets import get_dataset

__all__ = ["SCHEMA_URL", "build_metadata"]


#: ``schema`` field of metadata.json (the official URL; ``verify_metadata`` skips the download
#: when ``--filepath`` already holds a file, so point it at :func:`schema_path` offline).
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"

#: Versions the shipped bundles were generated and verified with (fixed, so regeneration is
#: reproducible on any machine); ``scdl_monai`` is the installed package's version.
MONAI_VERSION = "1.6.1"

PYTORCH_VERSION = "2.13.0"

NUMPY_VERSION = "2.4.6"

REQUIRED_PACKAGES = {"pytorch-ignite": "0.5.5", "nibabel": "5.4.2", "itk": "5.4.7", "tensorboard": "2.21.0"}


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


def build_metadata(method: str, dataset: str, backbone: str = DEFAULT_BACKBONE, protocol: str | None = None) -> dict:
    """``configs/metadata.json`` of a bundle (valid against :func:`schema_path`).

    Describes both variants a bundle runs: the baseline and, where it ships ``configs/scdl.json``,
    the baseline with the SCDL plug-in (``variants``; the SCDL reference is listed). SCDL does not
    change the network I/O. ``network_data_format`` describes the inference network (for the
    two-network methods CPS, DHC, GA-CPS, SimiS and CLD the logit mean of A and B, which has the
    I/O of one backbone); those methods add ``network_b_data_format`` for network B.
    """
    method, dataset, backbone, protocol = _normalise(method, dataset, backbone, protocol)
    scdl = scdl_available(method, backbone)
    spec = get_dataset(dataset)
    mt, dt = _METHOD_TEXT[method], _DATASET_TEXT[dataset]
    title = mt["title"]
    classes = {str(i): name for i, name in enumerate(spec.class_names)}
    io = {
        "inputs": {"image": _tensor_format(1, "hounsfield", {"0": "image"}, [0, 1], "CT")},
        "outputs": {"pred": _tensor_format(spec.num_classes, "labels", classes, [], "CT")},
    }
    version = "0.2.0"
    description = f"{title[0].upper() + title[1:]} with a {backbone} backbone: {mt['summary']}"
    if scdl:
        description += f". Variant with configs/scdl.json (the last config file), {_SCDL_TEXT['summary']}"
    kind = "Semi-supervised multi-organ" if method != "supervised" else "Multi-organ"
    variants = {"baseline": {"description": title, "config_files": ["configs/train.json"]}}
    if scdl:
        variants["scdl"] = {"description": f"{title} + SCDL", "config_files": ["configs/train.json", "configs/scdl.json"]}
    meta: dict[str, Any] = {
        "schema": SCHEMA_URL,
        "version": version,
        "changelog": {
            version: "one bundle per method and dataset; SCDL as the configs/scdl.json overlay; handlers by id",
            "0.1.0": f"{title} on {dataset}, composed from bundle components by scdl_monai",
        },
        "monai_version": MONAI_VERSION,
        "pytorch_version": PYTORCH_VERSION,
        "numpy_version": NUMPY_VERSION,
        "required_packages_version": {"scdl_monai": scdl_monai.__version__, **REQUIRED_PACKAGES},
        "name": f"{bundle_name(method, dataset, backbone, protocol)} ({backbone}, {protocol} protocol)",
        "task": f"{kind} segmentation of abdominal CT ({spec.num_classes - 1} organs, {dataset})",
        "description": (
            f"{description}. {_PROTOCOL_TEXT[protocol]}; "
            "sliding-window inference; predictions are inverted to the input's original grid and orientation."
        ),
        "authors": "scdl_monai contributors",
        "copyright": "Copyright (c) scdl_monai contributors",
        "data_source": dt["source"],
        "data_type": "nibabel",
        "image_classes": _IMAGE_TEXT[protocol],
        "label_classes": "single channel integer map: " + ", ".join(f"{i} {n}" for i, n in classes.items()),
        "pred_classes": f"{spec.num_classes} channels of logits (before softmax), channel k = class k",
        "intended_use": "Research only; not for clinical or diagnostic use. No trained weights are shipped.",
        "references": list(mt["references"]) + ([_SCDL_TEXT["reference"]] if scdl else []),
        "variants": variants,
        "network_data_format": io,
    }
    if mt["networks"] == 2:
        meta["network_b_data_format"] = json.loads(json.dumps(io))
    return meta
