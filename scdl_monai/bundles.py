"""MONAI bundles of every method: the shipped layout and the maintainer tool that writes it.

A bundle ``bundles/<method>_<dataset>`` is plain, hand-editable MONAI bundle JSON
(docs/bundles.md)::

    configs/train.json            the baseline, complete (sections initialize / run / finalize)
    configs/evaluate.json         overlay after train.json: CheckpointLoader + metrics and predictions
    configs/inference.json        standalone inference, complete
    configs/multi_gpu_train.json  overlay after train.json: DDP, DistributedSampler, rank-0 handlers
    configs/scdl.json             SSL methods: the SCDL plug-in, one overlay for all of the above
    configs/<extra>.json          method overlays (e.g. DHC's Table 3 ablations, ``cps_native``)
    configs/metadata.json, configs/logging.conf, docs/README.md, docs/data_license.txt, LICENSE

Overlays are added to the ``--config_file`` list and compose without clobbering each other::

    python -m monai.bundle run --config_file "['configs/train.json','configs/scdl.json']"
    python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json','configs/scdl.json']"
    python -m monai.bundle run --config_file "['configs/inference.json','configs/scdl.json']"

The baseline defines the method once; ``scdl.json`` wraps it by reference (``network_a_def`` /
``network_b_def`` around ``@network_def``, ``scdl_method_def`` around ``@method_def``, ``optimizer``
around ``@optimizer_def``), and ``multi_gpu_train.json`` touches only the samplers, the device and
``train#trainer#method`` (DDP). Every ``_target_`` is a dotted path into ``scdl_monai``, MONAI or
torch, so a bundle folder runs from any directory with an installed ``scdl_monai``.

**Maintainer tool.** The shipped folders are generated from the bundle components, package data
of ``scdl_monai`` (``scdl_monai/resources/bundle_components``, :func:`components_dir`) — the single
source of truth of what is common to every bundle:

* ``train.json`` / ``inference.json`` — complete base configs (native protocol, docs/data.md);
* ``evaluate.json`` / ``multi_gpu_train.json`` — overlays applied on top of ``train.json``;
* ``datasets/<dataset>.json`` — classes and dataset folder (Synapse C=14, AMOS C=16);
* ``backbones/<backbone>.json`` — ``network_def`` (VNet default, MONAI UNet, SegResNet);
* ``protocols/<protocol>/{train,inference}.json`` — the "dhc" / "ga" preprocessing chains;
* ``methods/<method>/{train,inference}.json`` — the algorithm (``method_def``, optimizers,
  schedules, the inference network), ``README.md`` (its training configuration, copied into the
  bundle README) and optional extra overlays (e.g. DHC's Table 3 ablations) copied into the
  bundle's ``configs/``; a method listed in :data:`METHOD_BASES` is composed on top of its base
  method's files (GA-MagicNet = MagicNet + ``methods/ga_magicnet``);
* ``scdl/scdl.json`` (+ ``scdl/network_b.json`` for two-network methods) and ``README.md`` — the
  SCDL plug-in;
* ``logging.conf`` and ``LICENSE``.

A bundle's ``configs/train.json`` is ``train.json + datasets/D + backbones/B [+ protocols/P] +
methods/M/train.json`` merged with MONAI's own rule (``ConfigParser.load_config_files``: a later
file's key replaces, ``+key`` extends/updates, ``a#b`` keys reach into nested sections);
``inference.json`` likewise. Each method has a default preprocessing protocol
(:data:`METHOD_PROTOCOLS`, the one its reference used); ``write`` names a folder
``<method>_<dataset>`` with ``_<backbone>`` / ``_<protocol>`` appended only when they differ from
the defaults. A test keeps the shipped folders equal to the generator's output; users edit their
bundle copies directly and need neither the components nor this module at run time.

Command line::

    python -m scdl_monai.bundles write --method dhc --dataset synapse --out DIR [--backbone unet] [--protocol native]
    python -m scdl_monai.bundles write-all [--out bundles]    # maintainers: regenerate bundles/
    python -m scdl_monai.bundles check [--root bundles]        # shipped bundles == regenerated
"""

from __future__ import annotations

import copy
import filecmp
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import scdl_monai
from scdl_monai.data.datasets import get_dataset
from scdl_monai.data.utils import as_flag, atomic_write, run_fire

__all__ = [
    "METHODS",
    "DATASETS",
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "PROTOCOLS",
    "DEFAULT_PROTOCOL",
    "METHOD_PROTOCOLS",
    "METHOD_BASES",
    "SCDL_METHODS",
    "NO_SCDL",
    "SHIPPED",
    "UNSHIPPED_METHODS",
    "VARIANTS",
    "SCHEMA_URL",
    "components_dir",
    "schema_path",
    "default_protocol",
    "scdl_available",
    "bundle_name",
    "component_files",
    "extra_overlays",
    "compose_config",
    "export_network_id",
    "build_metadata",
    "write_bundle",
    "bake_overlay",
    "write_all",
    "compare_bundle_dirs",
    "latest_checkpoint",
    "resume_checkpoint",
    "main",
]

#: Methods with overlays under ``methods/`` of the components.
METHODS: tuple[str, ...] = (
    "supervised", "cps", "dhc", "ga_cps", "magicnet", "ga_magicnet", "genericssl", "simis", "cld", "skcdf",
)  # fmt: skip
#: Methods with components but no committed bundle yet (none at present; a new method may start here
#: until its bundles are generated into ``bundles/``).
UNSHIPPED_METHODS: tuple[str, ...] = ()
#: Datasets with overlays under ``datasets/`` of the components.
DATASETS: tuple[str, ...] = ("synapse", "amos")
#: Backbones with overlays under ``backbones/`` of the components.
BACKBONES: tuple[str, ...] = ("vnet", "unet", "segresnet")
DEFAULT_BACKBONE = "vnet"
#: Preprocessing protocols (docs/data.md): "native" is in the base configs, the others are
#: overlays under ``protocols/<protocol>/`` of the components.
PROTOCOLS: tuple[str, ...] = ("native", "dhc", "ga")
#: The protocol of the base configs (no protocol overlay).
DEFAULT_PROTOCOL = "native"
#: Default protocol of each method: the preprocessing of its reference (docs/data.md): "dhc" for
#: DHC, GenericSSL and CPS (the DHC paper's CPS baseline, ``xmed-lab/DHC:code/train_cps.py``: random
#: crops of the DHC grid; the native, class-balanced CPS ships in the same bundle as the
#: ``configs/cps_native.json`` overlay), "ga" for GA-CPS and the MagicNet family (96³ patches on
#: the 160×160×80 grid; MagicNet's own pre-made volumes are not public). The supervised bundle is
#: the project's own baseline: "native" (clinical units, mm metrics).
METHOD_PROTOCOLS: dict[str, str] = {
    "supervised": "native",
    "cps": "dhc",
    "dhc": "dhc",
    "ga_cps": "ga",
    "magicnet": "ga",
    "ga_magicnet": "ga",
    "genericssl": "dhc",
    "simis": "dhc",
    "cld": "dhc",
    "skcdf": "dhc",
}
#: Methods composed on top of another method's overlays (``methods/<base>/<kind>.json`` first).
METHOD_BASES: dict[str, str] = {"ga_magicnet": "magicnet"}
#: Methods whose bundles ship ``configs/scdl.json``: every semi-supervised method whose networks SCDL
#: can wrap (the SCDL paper's Table 1 baselines DHC, GenericSSL, GA-CPS, GA-MagicNet, SimiS and CLD,
#: plus CPS and MagicNet); not SKCDF (:data:`NO_SCDL`).
SCDL_METHODS: tuple[str, ...] = ("cps", "dhc", "ga_cps", "magicnet", "ga_magicnet", "genericssl", "simis", "cld")
#: Semi-supervised methods without ``configs/scdl.json``, and why (the reason is the error message
#: of ``compose_config(..., scdl=True)`` and a paragraph of the bundle README).
NO_SCDL: dict[str, str] = {
    "skcdf": "SKCDF's training passes (pass 1: SKC cross-attention then decoder D_l; pass 2: SKC self-attention "
    "then D_u) run inside SKCDFNetwork and never call the encode/decode hooks an SCDL wrapper intercepts; "
    "only the inference path (D_u) has them, so SCDL would record no training tokens and inject an untrained prior",
}
#: The bundles generated into ``bundles/`` and committed: ``(method, dataset)``, every method on both datasets.
SHIPPED: tuple[tuple[str, str], ...] = tuple(
    (m, d) for m in METHODS if m not in UNSHIPPED_METHODS for d in DATASETS
)
#: Every configuration the shipped bundles run: ``(method, dataset, scdl)``, the baseline
#: (``configs/train.json``) and, for :data:`SCDL_METHODS`, the SCDL variant (``+ configs/scdl.json``).
VARIANTS: tuple[tuple[str, str, bool], ...] = tuple((m, d, False) for m, d in SHIPPED) + tuple(
    (m, d, True) for m, d in SHIPPED if m in SCDL_METHODS
)
#: Methods whose network is built on the project VNet's hooks (no backbone swap).
_VNET_ONLY = ("magicnet", "ga_magicnet", "genericssl", "skcdf")
#: Methods with a second network ``network_b_def`` (SCDL wraps it too: ``scdl/network_b.json``).
_TWO_NETWORKS = ("cps", "dhc", "ga_cps", "simis", "cld")

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
_KINDS = _FULL_CONFIGS + _OVERLAY_CONFIGS + ("scdl",)

_DHC_REF = (
    "Wang H., Li X. DHC: Dual-debiased Heterogeneous Co-training Framework for Class-imbalanced "
    "Semi-supervised Medical Image Segmentation. MICCAI 2023. https://arxiv.org/abs/2307.11470"
)
_GA_REF = (
    "Qi W., Wu J., Chan S.C. Gradient-Aware for Class-Imbalanced Semi-supervised Medical Image "
    "Segmentation. ECCV 2024, LNCS pp. 473-490. https://eccv.ecva.net/virtual/2024/poster/1540 "
    "(code: https://github.com/cicailalala/GALoss)"
)
_MAGICNET_REF = (
    "Chen D., Bai Y., Shen W., Li Q., Yu L., Wang Y. MagicNet: Semi-Supervised Multi-Organ Segmentation "
    "via Magic-Cube Partition and Recovery. CVPR 2023. https://arxiv.org/abs/2212.14310"
)
_CPS_REF = (
    "Chen X., Yuan Y., Zeng G., Wang J. Semi-Supervised Semantic Segmentation with Cross Pseudo "
    "Supervision. CVPR 2021. https://arxiv.org/abs/2106.01226"
)
_SIMIS_REF = (
    "Chen H., Fan Y., Wang Y., Wang J., Schiele B., Xie X., Savvides M., Raj B. An Embarrassingly Simple "
    "Baseline for Imbalanced Semi-Supervised Learning. arXiv 2022 (v1). https://arxiv.org/abs/2211.11086"
)
_CLD_REF = (
    "Lin Y., Yao H., Li Z., Zheng G., Li X. Calibrating Label Distribution for Class-Imbalanced "
    "Barely-Supervised Knee Segmentation. MICCAI 2022. https://arxiv.org/abs/2205.03644"
)
_VNET_REF = (
    "Milletari F., Navab N., Ahmadi S.-A. V-Net: Fully Convolutional Neural Networks for Volumetric "
    "Medical Image Segmentation. 3DV 2016. https://arxiv.org/abs/1606.04797"
)

#: Per method: title, one-sentence summary (metadata description), references, number of
#: networks in the inference network (2: ``network_b_data_format`` in the metadata).
_METHOD_TEXT: dict[str, dict[str, Any]] = {
    "supervised": {
        "title": "fully supervised",
        "summary": "one network trained on the labeled cases only (the labeled-only baseline; "
        "trained on all labels it is the papers' upper bound)",
        "references": [_VNET_REF],
        "networks": 1,
    },
    "cps": {
        "title": "cross pseudo supervision (CPS)",
        "summary": "two networks of the same architecture, initialised differently (A Kaiming, B Xavier), "
        "each supervised by the labels and by the other's hard pseudo-labels on labeled and unlabeled "
        "patches; the pseudo-label weight ramps up to 0.1 with a sigmoid schedule; inference averages "
        "the two networks' logits",
        "references": [_CPS_REF, _DHC_REF + " (CPS baseline configuration)"],
        "networks": 2,
    },
    "dhc": {
        "title": "dual-debiased heterogeneous co-training (DHC)",
        "summary": "cross pseudo supervision whose two networks are trained with different per-class loss "
        "weights recomputed every iteration: network A with difficulty-aware weights (DiffDW, from its "
        "per-class Dice progress), network B with distribution-aware weights (DistDW, from the class "
        "frequencies of its own pseudo-labels, initialised from the labeled ground truth); inference "
        "averages the two networks' logits",
        "references": [_DHC_REF, _CPS_REF],
        "networks": 2,
    },
    "ga_cps": {
        "title": "GA-CPS (cross pseudo supervision with gradient-aware losses)",
        "summary": "cross pseudo supervision of two VNets trained with the gradient-aware losses: GADice (a "
        "non-vanishing gradient for classes absent from the batch) and GACE (top-k% hardest voxels with "
        "per-class normalisation), per-iteration poly LR over 17,000 iterations; inference averages the "
        "two networks' logits",
        "references": [_GA_REF, _CPS_REF],
        "networks": 2,
    },
    "simis": {
        "title": "SimiS on cross pseudo supervision",
        "summary": "cross pseudo supervision whose two networks weight their losses per class with SimiS "
        "weights C(max P - P) of the class shares P of their own predictions, an EMA (0.99) updated every "
        "iteration and started near uniform from the labeled ground truth; inference averages the two "
        "networks' logits",
        "references": [_SIMIS_REF, _DHC_REF + " (SimiS on CPS, code/train_simis.py)", _CPS_REF],
        "networks": 2,
    },
    "cld": {
        "title": "CLD (calibrating label distribution) on cross pseudo supervision",
        "summary": "cross pseudo supervision with static class weights (max N / N)^(1/3) from the labeled "
        "ground truth and pseudo-label terms restricted to voxels sampled per predicted class, at rates that "
        "grow as the network's confidence in that class on labeled data falls; inference averages the two "
        "networks' logits",
        "references": [_CLD_REF, _DHC_REF + " (CLD on CPS, code/train_cld.py)", _CPS_REF],
        "networks": 2,
    },
    "magicnet": {
        "title": "MagicNet (magic-cube partition and recovery)",
        "summary": "mean-teacher training in which labeled and unlabeled patches are cut into 3x3x3 cubes, "
        "mixed across images and within images (with a cube-location head), decoded and put back, and the "
        "teacher's pseudo-labels are blended with cube-wise predictions for frequent classes; inference "
        "uses the student's VNet",
        "references": [_MAGICNET_REF],
        "networks": 1,
    },
    "ga_magicnet": {
        "title": "GA-MagicNet (MagicNet with gradient-aware losses)",
        "summary": "MagicNet with cross-entropy replaced by GACE and every Dice term by GADice, trained with "
        "the GA reference's literal schedule (poly LR over 70,000 iterations, stopped at 17,000); "
        "inference uses the student's VNet",
        "references": [_GA_REF, _MAGICNET_REF],
        "networks": 1,
    },
    "genericssl": {
        "title": "GenericSSL (aggregating and decoupling, A&D)",
        "summary": "a diffusion-based framework: one shared time-conditioned encoder and three decoders, a "
        "diffusion decoder and a difficulty-weighted decoder whose fused pseudo-labels (DDIM sampling, "
        "Gumbel-softmax, smoothing) teach a third decoder that also receives their parameter EMA; "
        "inference uses the third decoder",
        "references": [
            "Wang H., Li X. Towards Generic Semi-Supervised Framework for Volumetric Medical Image "
            "Segmentation. NeurIPS 2023. https://arxiv.org/abs/2310.11320",
        ],
        "networks": 1,
    },
    "skcdf": {
        "title": "SKCDF (semantic knowledge complementarity based decoupling framework)",
        "summary": "one shared VNet encoder whose bottleneck goes through local and global channel-wise "
        "cross-attention between the labeled and unlabeled halves of the batch, and two decoders: one learns "
        "from the labels, the other from pseudo-labels and from the first one's parameter EMA; each decoder "
        "has a balanced head trained on class-frequency Bernoulli masks; inference uses the second decoder",
        "references": [
            "Zhang Z., Yin G. et al. A Semantic Knowledge Complementarity based Decoupling Framework for "
            "Semi-supervised Class-imbalanced Medical Image Segmentation. CVPR 2025, pp. 25940-25949 "
            "(code: https://github.com/yinguanchun/SKCDF)",
        ],
        "networks": 1,
    },
}

_SCDL_TEXT = {
    "title": "SCDL",
    "summary": "with the SCDL plug-in: each student network carries learnable Gaussian class proxies "
    "aligned bidirectionally with its token embeddings (CDBA) and guided by semantic anchors from the "
    "labeled data (SAC); priors derived from the proxies are injected into every decoder stage, "
    "also at inference",
    "reference": "Su Y., Zhong Y., Zhu K., Zhang Z., Zhang Z., Wang Y., Zhang Y., Liu J. Semantic Class "
    "Distribution Learning for Debiasing Semi-Supervised Medical Image Segmentation. "
    "https://arxiv.org/abs/2603.05202",
}

_DATASET_TEXT = {
    "synapse": {
        "title": "Synapse multi-organ CT (BTCV, MICCAI 2015 Multi-Atlas Abdomen Labeling Challenge)",
        "source": "Synapse project syn3193805 (https://www.synapse.org/#!Synapse:syn3193805), registration "
        "and acceptance of its data use terms required",
        "layout": "RawData/Training/img/img0001.nii.gz, RawData/Training/label/label0001.nii.gz",
        "labeled": "20p",
    },
    "amos": {
        "title": "AMOS 2022 abdominal multi-organ CT/MRI (Ji et al., NeurIPS 2022 Datasets and Benchmarks)",
        "source": "AMOS 2022 challenge release (https://amos22.grand-challenge.org/), under the terms "
        "published by its organisers",
        "layout": "imagesTr/amos_0001.nii.gz, labelsTr/amos_0001.nii.gz, imagesVa/, labelsVa/",
        "labeled": "5p",
    },
}


# --------------------------------------------------------------------------------------------
# locations
# --------------------------------------------------------------------------------------------



def components_dir() -> Path:
    """The bundle components: package data ``scdl_monai/resources/bundle_components`` (any install).

    Set ``SCDL_MONAI_COMPONENTS`` to use another folder (e.g. a maintainer's edited copy).

    Raises:
        FileNotFoundError: when the folder has no ``train.json``.
    """
    env = os.environ.get("SCDL_MONAI_COMPONENTS")
    path = Path(env) if env else Path(__file__).resolve().parent / "resources" / "bundle_components"
    if not (path / "train.json").is_file():
        raise FileNotFoundError(
            f"bundle components not found in {path} (expected train.json there); reinstall scdl_monai or set "
            "SCDL_MONAI_COMPONENTS to a bundle components folder."
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


def default_protocol(method: str) -> str:
    """The preprocessing protocol a method's bundle uses unless told otherwise (:data:`METHOD_PROTOCOLS`)."""
    return METHOD_PROTOCOLS[_option(method, METHODS, "method")]


def _normalise(method: str, dataset: str, backbone: str, protocol: str | None) -> tuple[str, str, str, str]:
    """Validated, lower-cased ``(method, dataset, backbone, protocol)``; ``protocol=None`` -> the method's default.

    Raises:
        ValueError: an unknown name (naming the argument), or a backbone the method cannot use.
    """
    method, dataset = _option(method, METHODS, "method"), _option(dataset, DATASETS, "dataset")
    backbone = _option(backbone, BACKBONES, "backbone")
    protocol = METHOD_PROTOCOLS[method] if protocol is None else _option(protocol, PROTOCOLS, "protocol")
    if backbone != DEFAULT_BACKBONE and method in _VNET_ONLY:
        raise ValueError(
            f"backbone must be {DEFAULT_BACKBONE!r} for method {method!r} (its network is built on the project "
            f"VNet's encode/decode hooks), got {backbone!r}."
        )
    return method, dataset, backbone, protocol


def scdl_available(method: str, backbone: str = DEFAULT_BACKBONE) -> bool:
    """Whether a bundle of ``method`` with ``backbone`` ships ``configs/scdl.json``.

    SCDL wraps the student networks of a semi-supervised method (:data:`SCDL_METHODS`) through
    the project VNet's encode/decode hooks, so only VNet bundles carry it; SKCDF has none
    (:data:`NO_SCDL` says why).
    """
    return _option(method, METHODS, "method") in SCDL_METHODS and _option(backbone, BACKBONES, "backbone") == DEFAULT_BACKBONE


def _check_scdl(method: str, backbone: str) -> None:
    if not scdl_available(method, backbone):
        if method in NO_SCDL:
            why = NO_SCDL[method]
        elif method in SCDL_METHODS:
            why = f"backbone {backbone!r} has no VNet encode/decode hooks to wrap"
        else:
            why = f"method {method!r} is not semi-supervised; SCDL plugs into {list(SCDL_METHODS)}"
        raise ValueError(f"scdl: no SCDL overlay for method {method!r} with backbone {backbone!r} ({why}).")


def bundle_name(method: str, dataset: str, backbone: str = DEFAULT_BACKBONE, protocol: str | None = None) -> str:
    """Folder name of a bundle: ``<method>_<dataset>``, + ``_<backbone>`` unless VNet, + ``_<protocol>``
    unless the method's default protocol (:data:`METHOD_PROTOCOLS`)."""
    method, dataset, backbone, protocol = _normalise(method, dataset, backbone, protocol)
    return (
        f"{method}_{dataset}"
        + ("" if backbone == DEFAULT_BACKBONE else f"_{backbone}")
        + ("" if protocol == METHOD_PROTOCOLS[method] else f"_{protocol}")
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


def _method_chain(method: str) -> list[str]:
    """``[base, method]`` for a method in :data:`METHOD_BASES`, else ``[method]``."""
    return ([METHOD_BASES[method]] if method in METHOD_BASES else []) + [method]


def _scdl_files(method: str, root: Path) -> list[Path]:
    """The SCDL plug-in's component files for ``method``: ``scdl/scdl.json`` (+ ``scdl/network_b.json``)."""
    return [root / "scdl" / "scdl.json"] + ([root / "scdl" / "network_b.json"] if method in _TWO_NETWORKS else [])


def component_files(
    kind: str,
    method: str,
    dataset: str,
    backbone: str = DEFAULT_BACKBONE,
    root: str | Path | None = None,
    protocol: str | None = None,
    scdl: bool = False,
) -> list[Path]:
    """The component files merged (in order) into the bundle config ``kind``.

    Order: base, dataset, backbone, protocol (unless native), base method (if any), method, then
    with ``scdl=True`` the SCDL overlay's files. Dataset, backbone and protocol overlays apply to
    the full configs (train, inference) only; ``evaluate`` / ``multi_gpu_train`` are the same with
    and without SCDL (the SCDL overlay is its own file, ``kind="scdl"``).

    Args:
        kind: ``"train"``, ``"inference"``, ``"evaluate"``, ``"multi_gpu_train"`` or ``"scdl"``.
        method, dataset, backbone, protocol: see :data:`METHODS`, :data:`DATASETS`,
            :data:`BACKBONES`, :data:`PROTOCOLS`; ``protocol=None`` is the method's default.
        root: components folder (default :func:`components_dir`).
        scdl: add the SCDL plug-in's files to a full config.

    Raises:
        ValueError: unknown names (see :func:`bundle_name`), SCDL for a method/backbone without it.
        FileNotFoundError: a component file is missing (naming it).
    """
    kind = _option(kind, _KINDS, "kind")
    method, dataset, backbone, protocol = _normalise(method, dataset, backbone, protocol)
    scdl = as_flag(scdl, "scdl")
    root = Path(root) if root is not None else components_dir()
    if kind == "scdl" or scdl:
        _check_scdl(method, backbone)
    if kind == "scdl":
        files = _scdl_files(method, root)
    else:
        files = [root / f"{kind}.json"]
        if kind in _FULL_CONFIGS:
            files += [root / "datasets" / f"{dataset}.json", root / "backbones" / f"{backbone}.json"]
            if protocol != DEFAULT_PROTOCOL:
                files.append(root / "protocols" / protocol / f"{kind}.json")
        method_files = [root / "methods" / m / f"{kind}.json" for m in _method_chain(method)]
        if kind in _FULL_CONFIGS:
            files += method_files  # a full config needs every method file (the method's `method_def` etc.)
            files += _scdl_files(method, root) if scdl else []
        else:
            files += [f for f in method_files if f.is_file()]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"bundle component missing: {f}")
    return files


def extra_overlays(method: str, root: str | Path | None = None) -> list[Path]:
    """Optional overlays a method ships next to its configs (e.g. DHC's Table 3 ablations).

    Every ``methods/<method>/*.json`` other than ``train``/``inference``/``evaluate``/
    ``multi_gpu_train``; :func:`write_bundle` copies them into the bundle's ``configs/``, to be
    added after ``configs/train.json`` on the command line.
    """
    method = _option(method, METHODS, "method")
    folder = (Path(root) if root is not None else components_dir()) / "methods" / method
    kinds = {f"{k}.json" for k in _FULL_CONFIGS + _OVERLAY_CONFIGS}
    return sorted(p for p in folder.glob("*.json") if p.name not in kinds)


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


def _apply_overlay(config: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict:
    """``config`` with ``overlay`` merged by MONAI's own rule (what ``--config_file "[config, overlay]"`` reads)."""
    from monai.bundle import ConfigParser
    from monai.bundle.utils import merge_kv

    parser = ConfigParser(config=copy.deepcopy(dict(config)))
    for key, value in copy.deepcopy(dict(overlay)).items():
        merge_kv(parser, key, value)
    return parser.get()


#: Reading order of a full config's top level (:func:`_tidy`): the ids each group starts with.
_NETWORK_IDS = ("network_def", "network_a_def", "network_b_def", "inference_network_def", "network", "network_b", "student")
_METHOD_IDS = ("diffusion", "loss", "method_def", "method", "inference_network")
_RUN_IDS = (
    "loss_terms", "train", "validate", "checkpoint_state", "checkpoint_saver", "early_stopping", "final_model_saver",
    "checkpoint_loader", "preflight", "preprocessing", "dataset", "dataloader", "inferer", "postprocessing",
    "stats_handler", "handlers", "evaluator",
)  # fmt: skip
_WORKFLOW_IDS = ("initialize", "run", "finalize")


def _group(key: str) -> int:
    if key == "imports":
        return 0
    if key in _NETWORK_IDS:
        return 2
    if key in _METHOD_IDS:
        return 3
    if key.startswith(("optimizer", "lr_scheduler")):
        return 4
    if key in _RUN_IDS:
        return 5
    return 6 if key in _WORKFLOW_IDS else 1  # 1: settings


def _section_order(section: Mapping[str, Any]) -> dict:
    """A ``train`` / ``validate`` section with its handler definitions just before ``handlers`` and the engine last."""
    listed = [h[len("%"):].rpartition("#")[2] for h in section.get("handlers", []) if isinstance(h, str) and h.startswith("%")]
    engine = [k for k in ("trainer", "evaluator") if k in section]
    first = [k for k in section if k not in listed and k != "handlers" and k not in engine]
    order = first + [k for k in listed if k in section] + (["handlers"] if "handlers" in section else []) + engine
    return {k: section[k] for k in order}


def _tidy(config: Mapping[str, Any]) -> dict:
    """A composed full config in reading order (MONAI appends overlay keys at the end).

    Top level: imports, settings, networks, method, optimizers and schedules, the engines and
    their parts, then initialize / run / finalize (stable within each group); ``train`` and
    ``validate`` keep their handler definitions next to the ``handlers`` list. Key order carries no
    meaning for MONAI (references are resolved by id), so the config is the same.
    """
    def rank(key: str) -> tuple[int, int]:
        group = _group(key)
        ids = {2: _NETWORK_IDS, 3: _METHOD_IDS}.get(group, ())
        return group, ids.index(key) if key in ids else 0

    keys = sorted(config, key=rank)
    return {k: _section_order(config[k]) if k in ("train", "validate") and isinstance(config[k], Mapping) else config[k] for k in keys}


def compose_config(
    kind: str,
    method: str,
    dataset: str,
    backbone: str = DEFAULT_BACKBONE,
    root: str | Path | None = None,
    protocol: str | None = None,
    scdl: bool = False,
) -> dict:
    """One bundle config as a dict, composed from the components (see the module docstring).

    ``train`` / ``inference`` are complete configs merged with MONAI's
    ``ConfigParser.load_config_files`` semantics; ``evaluate`` / ``multi_gpu_train`` / ``scdl``
    are overlays (the bundle's ``configs/<kind>.json``). ``protocol=None`` is the method's default
    (:data:`METHOD_PROTOCOLS`). ``scdl=True`` on a full config returns exactly what MONAI reads
    from the bundle's ``['configs/<kind>.json', 'configs/scdl.json']``; the overlays are the same
    with and without SCDL.

    Raises:
        ValueError: unknown kind/method/dataset/backbone/protocol (naming the argument), SCDL for a
            method or backbone without it, invalid JSON.
        FileNotFoundError: a component file is missing.
    """
    kind = _option(kind, _KINDS, "kind")
    scdl = as_flag(scdl, "scdl")
    if kind not in _FULL_CONFIGS:
        return _merge_overlays(component_files(kind, method, dataset, backbone, root, protocol, scdl=False))
    root = Path(root) if root is not None else components_dir()
    component_files(kind, method, dataset, backbone, root, protocol, scdl=scdl)  # validates names and files
    config = _prune(_compose_full(kind, method, dataset, backbone, root, protocol), method, dataset, backbone, root, protocol)
    if scdl:
        config = _apply_overlay(config, _merge_overlays(_scdl_files(method, root)))
    return config


def _compose_full(kind: str, method: str, dataset: str, backbone: str, root: Path, protocol: str | None) -> dict:
    """A full config (train / inference) merged from its component files, in reading order, unpruned."""
    from monai.bundle import ConfigParser

    files = component_files(kind, method, dataset, backbone, root, protocol)
    for f in files:
        _load_json(f)  # clear error naming the file before MONAI's generic one
    return _tidy(ConfigParser.load_config_files([str(f) for f in files]))


#: Top-level ids kept even when no config of the bundle refers to them: MONAI's bundle properties
#: (``ConfigWorkflow``, ``--tracking``) and the ids set by ``scdl_monai.inference``.
_KEEP_IDS = ("bundle_root", "device", "dataset_dir", "output_dir", "network_def", "network", "val_interval", "ckpt_path",
             "input_files", "image_reader", "progress", "num_workers", "sw_device", "sw_output_device")  # fmt: skip
_REFERENCE = re.compile(r"[@%]([A-Za-z_][A-Za-z0-9_]*)")


def _prune(config: dict, method: str, dataset: str, backbone: str, root: Path, protocol: str | None) -> dict:
    """``config`` without the settings no file of its bundle reads.

    A setting of the base configs that the method's or protocol's overlays made obsolete (e.g.
    ``crop_ratios`` where the protocol crops at random, ``max_epochs`` where a method counts
    iterations) would mislead a reader editing it; it goes when no ``@id`` / ``%id`` of the
    bundle's train, inference, evaluate, multi-GPU, SCDL or extra overlay configs refers to it.
    """
    kinds = _FULL_CONFIGS + _OVERLAY_CONFIGS + (("scdl",) if scdl_available(method, backbone) else ())
    texts = [json.dumps(_compose_full(k, method, dataset, backbone, root, protocol)) for k in _FULL_CONFIGS]
    texts += [f.read_text() for k in kinds if k not in _FULL_CONFIGS for f in component_files(k, method, dataset, backbone, root, protocol)]
    texts += [f.read_text() for f in extra_overlays(method, root)]
    read = {ref for text in texts for ref in _REFERENCE.findall(text)}
    return {k: v for k, v in config.items() if _group(k) != 1 or k in read or k in _KEEP_IDS}


def export_network_id(scdl: bool = False) -> str:
    """Config id (in ``inference.json``) of the network whose weights ``models/model.pt`` holds.

    ``inference_network_def`` with and without SCDL: ``configs/scdl.json`` wraps the backbones
    inside it (``network_a_def`` / ``network_b_def``), so the priors are part of the exported network.
    """
    as_flag(scdl, "scdl")
    return "inference_network_def"

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
    "dhc": "DHC preprocessing protocol (whole volume resized to 160x160x80, HU clip [-75, 275], per-volume min-max, random crops)",
    "ga": "GA preprocessing protocol (whole volume resized to 160x160x80, HU window [-125, 275] -> [0, 1], random crops)",
}
_IMAGE_TEXT = {
    "native": "single channel CT in Hounsfield units, reoriented to RAS, resampled to 1.5x1.5x2 mm, windowed to "
    "[-125, 275] and scaled to [0, 1]",
    "dhc": "single channel CT in Hounsfield units, resized to 160x160x80, clipped to [-75, 275], min-max scaled "
    "per volume to [0, 1]",
    "ga": "single channel CT in Hounsfield units, resized to 160x160x80, windowed to [-125, 275] and scaled to [0, 1]",
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


_PREPROCESSING_TEXT = {
    "native": """### Preprocessing ("native" protocol, visible in `configs/train.json`)

`LoadImaged` -> `EnsureChannelFirstd` -> `Orientationd` RAS -> `Spacingd` 1.5x1.5x2 mm (`pixdim`;
bilinear image, nearest label) -> `ScaleIntensityRanged` [-125, 275] HU -> [0, 1] (`a_min`, `a_max`)
-> `SpatialPadd` to the patch -> `ClassesToIndicesd` (cached per case) -> `RandCropByLabelClassesd`
(class-balanced patch centres, `crop_ratios`) for labeled patches, `RandSpatialCropd` for unlabeled ones. Validation/evaluation/inference use the
whole resampled volume with a sliding window of the training patch (uniform weights).
""",
    "dhc": """### Preprocessing ("dhc" protocol, visible in `configs/train.json`)

DHC paper-era protocol: `LoadImaged` -> `EnsureChannelFirstd` -> `Resized` the whole volume to
160x160x80 in HU (x, y, z; `resize_grid`; trilinear image, nearest label) -> HU clip [-75, 275] ->
per-volume min-max to [0, 1] (the reference resizes once offline, `xmed-lab/DHC:code/data/preprocess.py`,
and clips when loading, `code/data/data_loaders.py`) -> random {patch} crops (`patch_size`) with the
reference's pad/offset rule (`scdl_monai.data.transforms.ReferenceRandomCropd`). No reorientation,
no resampling, no flips (the paper-era code's flips had no effect). Validation during training
scores one centre crop per case (`val_crop`); evaluation and inference use the whole grid and
invert the resize.
""",
    "ga": """### Preprocessing ("ga" protocol, visible in `configs/train.json`)

GA protocol: `LoadImaged` -> `EnsureChannelFirstd` -> `Resized` the whole volume in HU to the
160x160x80 grid GA evaluates on (`resize_grid`) -> window [-125, 275] -> [0, 1] (the reference
clips the resized arrays when loading, `cicailalala/GALoss:dataloaders/dataset.py`) -> random {patch}
crops (`patch_size`) with the reference's pad/offset rule (`scdl_monai.data.transforms.ReferenceRandomCropd`:
the 80-deep volume is padded to 102 and lands at a random depth in the patch). Approximation: GA
trained on MagicNet's non-public pre-made volumes. Inference inverts the resize.
""",}


def _sliding_window_text(train: Mapping[str, Any]) -> str:
    """README paragraph on the sliding window: the composed ``sw_overlap`` / ``sw_fusion`` values."""
    overlap = train["sw_overlap"]
    if isinstance(overlap, str):
        shown = overlap.lstrip("$").strip("[]").replace(" / ", "/")
    else:
        shown = ", ".join(str(o) for o in (overlap if isinstance(overlap, (list, tuple)) else [overlap]))
    fusion = train["sw_fusion"]
    how = (
        "each window is turned into class probabilities (softmax) and the probabilities are averaged"
        if fusion == "probabilities"
        else "the windows' logits are averaged"
    )
    return (
        f"Sliding window (validation, evaluation, inference): window = `patch_size`, overlap "
        f"`sw_overlap` = ({shown}) per axis (x, y, z), uniform weights; {how} (`sw_fusion` = "
        f"`{fusion}`). These are the reference test script's values (scdl_monai `docs/fidelity.md`); "
        "`--sw_fusion logits` averages logits instead, `--sw_overlap 0.5` sets one overlap for all axes.\n"
    )




def _component_readmes(method: str, scdl: bool, root: Path) -> str:
    """The training-configuration sections of the method (its base method's first) and of SCDL."""
    paths = [root / "methods" / m / "README.md" for m in _method_chain(method)]
    if scdl:
        paths.append(root / "scdl" / "README.md")
    return "\n".join(p.read_text().strip() + "\n" for p in paths if p.is_file())


def _files(*names: str) -> str:
    """A ``--config_file`` argument: one file as is, several as MONAI's list syntax."""
    return names[0] if len(names) == 1 else '"[' + ",".join(f"'{n}'" for n in names) + ']"'


def _readme(
    method: str,
    dataset: str,
    backbone: str,
    name: str,
    meta: dict,
    protocol: str,
    train: Mapping[str, Any],
    root: Path,
    extras: Sequence[Path] = (),
) -> str:
    """The bundle's ``docs/README.md``; values quoted from the composed ``train`` config where they vary."""
    spec = get_dataset(dataset)
    mt, dt = _METHOD_TEXT[method], _DATASET_TEXT[dataset]
    scdl = scdl_available(method, backbone)
    title = mt["title"]
    export_id = export_network_id()
    classes = "\n".join(f"| {i} | {n} |" for i, n in enumerate(spec.class_names))
    semi = method != "supervised"
    unlabeled_line = (
        "- `unlabeled`: image-only entries, the unlabeled stream (cycled; an epoch has as many iterations as "
        "the unlabeled loader has batches, as in the reference code).\n"
        if semi
        else "- `unlabeled`: ignored by this method.\n"
    )
    refs = "\n".join(f"- {r}" for r in meta["references"])
    patch = list(train["patch_size"])
    patch_text = "x".join(str(p) for p in patch)
    preprocessing = _PREPROCESSING_TEXT[protocol].format(patch=patch_text)
    sliding = _sliding_window_text(train)
    defaults = {"backbone": DEFAULT_BACKBONE, "protocol": METHOD_PROTOCOLS[method]}
    given = {"backbone": backbone, "protocol": protocol}
    flags = "".join(f" --{k} {v}" for k, v in given.items() if v != defaults[k])
    length = "--max_iterations 1000" if "max_iterations" in train else "--max_epochs 100"
    swap = " --network_def#name unet" if method not in _VNET_ONLY else ""
    method_text = _component_readmes(method, scdl, root)
    data = f"--dataset_dir /path/to/{dataset}"
    t, t_s = _files("configs/train.json"), _files("configs/train.json", "configs/scdl.json")
    i, i_s = _files("configs/inference.json"), _files("configs/inference.json", "configs/scdl.json")
    ev, ev_s = _files("configs/train.json", "configs/evaluate.json"), _files("configs/train.json", "configs/evaluate.json", "configs/scdl.json")
    mg, mg_s = _files("configs/train.json", "configs/multi_gpu_train.json"), _files("configs/train.json", "configs/multi_gpu_train.json", "configs/scdl.json")
    extra_text = ""
    if extras:
        names = ", ".join(f"`configs/{p.name}`" for p in extras)
        extra_text = f"\nExtra overlays shipped with this method (see above): {names}.\n"

    def both(baseline: str, with_scdl: str) -> str:
        return baseline + (f"\n# with SCDL\n{with_scdl}" if scdl else "")

    if scdl:
        variants = f"""This bundle runs two variants:

| variant | config files |
|---|---|
| {title} | `configs/train.json` |
| {title} + SCDL | `configs/train.json` + `configs/scdl.json` |

`configs/scdl.json` is one overlay for training, evaluation, multi-GPU training and inference: add
it last to any `--config_file` list below. It wraps the baseline's networks, method and optimizer
by reference (`network_a_def`, `network_b_def`, `scdl_method_def`, `optimizer`) and changes
nothing else. Both variants write to `models/` and `eval/`: train each in its own copy of this
folder (or with its own `--bundle_root`), and evaluate or infer with the files it was trained with.
"""
    elif method in NO_SCDL:
        variants = f"This bundle has no `configs/scdl.json` (the SCDL plug-in): {NO_SCDL[method]}.\n"
    elif semi:
        variants = "`configs/scdl.json` (the SCDL plug-in) needs the VNet backbone: this bundle has none.\n"
    else:
        variants = "SCDL plugs into the semi-supervised bundles only: this bundle has no `configs/scdl.json`.\n"
    if method in ("magicnet", "ga_magicnet"):
        multi_gpu = (
            "Multi-GPU training is not supported for the MagicNet family (`configs/multi_gpu_train.json` is "
            "kept for uniformity and stops with that message).\n"
        )
    else:
        multi_gpu = f"""Multi-GPU training (DDP; backend gloo without CUDA):

```bash
{both(f"torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run --config_file {mg} {data}",
      f"torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run --config_file {mg_s} {data}")}
```
"""
    ct = "--input_files \"['/path/to/ct.nii.gz']\" --output_dir /path/to/out --sw_output_device cpu"
    infer = both(f"python -m monai.bundle run --config_file {i} {ct}", f"python -m monai.bundle run --config_file {i_s} {ct}")
    export_files = _files("configs/inference.json", "configs/scdl.json") if scdl else "configs/inference.json"
    torchscript = ""
    if scdl:
        torchscript = """
With `configs/scdl.json` the exported network holds the whole prior path (SCDL proxies, projector,
injection convolutions; eval mode: proxy means, no token noise).
"""
    return f"""# {name}: {title} on {dataset} ({backbone})

## Model Overview

{meta['description']}

{variants}
The configs are plain MONAI bundle JSON, meant to be read and edited: change any value in place or
override it on the command line (`--<id> <value>`, e.g. `--n_filters 16`). All code they run lives in
the installed `scdl_monai` package and is referenced by full dotted paths, so the bundle runs from
any directory; it needs no `scripts/` folder and no `PYTHONPATH`. (scdl_monai's maintainers generate
the shipped copy with `python -m scdl_monai.bundles write --method {method} --dataset {dataset}{flags} --out DIR`.)

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

## Training configuration

{preprocessing}
{sliding}
{method_text}{extra_text}
Every loss term is logged by `StatsHandler` and TensorBoard (`eval/`). Handlers have ids (e.g.
`train#lr_handler`, `train#validation_handler`, `validate#best_model_saver`); the lists
`train#handlers` / `validate#handlers` copy them (`%id`): configure or switch one off by its id,
e.g. `--train#tensorboard_handler#_disabled_ true`.

## MONAI Bundle Commands

Run from the bundle folder, or from anywhere with absolute paths and `--bundle_root /path/to/{name}`.
Install first: `pip install scdl_monai` (or `bash scripts/bootstrap.sh` in the repository).

Train:

```bash
{both(f"python -m monai.bundle run --config_file {t} {data}", f"python -m monai.bundle run --config_file {t_s} {data}")}
```

Override parameters (any config id), e.g. a shorter run{', another backbone' if swap else ''}, a smaller network:

```bash
python -m monai.bundle run --config_file {t} {data} \\
    {length}{swap} --n_filters 8
```

Precision and memory format are chosen in one place, the top-level keys `precision` and
`channels_last` (`scdl_monai.precision.PrecisionPolicy`), used by the trainer, by validation and
evaluation and by `configs/inference.json` (sliding-window inference through
`scdl_monai.precision.PolicyInferer`; overlapping windows are stitched in fp32): `fp32`, `bf16`
autocast (CPUs with AVX512-BF16/AMX, Ampere or newer GPUs) or `fp16` autocast with loss scaling
(CUDA), and `--channels_last true` for channels-last 3-D networks and inputs. Losses, class-weight
trackers, SCDL statistics and metrics stay in fp32. A mode the device cannot run falls back to
fp32 with the reason in the log. The default follows `amp` (true when CUDA is available): fp16 on
CUDA, fp32 on CPU; `--amp false` forces fp32 unless `--precision` is given. The GA-CPS and MagicNet
bundles set `amp` false: their reference runs are fp32. The fast path on a
bf16-capable CPU:

```bash
python -m monai.bundle run --config_file {t} {data} --precision bf16 --channels_last true
python -m monai.bundle run --config_file {i} --input_files "['/path/to/ct.nii.gz']" --precision bf16 --channels_last true
```

Resume from the newest full-state checkpoint in `models/` (method with its buffers, every optimizer
and LR scheduler, AMP scaler, trainer epoch/iteration and unlabeled-stream position):

```bash
python -m monai.bundle run --config_file {t} {data} --resume true
```

{multi_gpu}
Experiment tracking with MLflow (needs `pip install mlflow`):

```bash
python -m monai.bundle run --config_file {t} {data} --tracking mlflow
```

Evaluate `models/model.pt` on the `test` split: Dice per class on the protocol grid
(`eval/metrics.csv`, `eval/val_mean_dice_raw.csv`), predictions in the original image space
(`eval/predictions/`) and on the protocol grid (`eval/predictions_grid/`), then the project metrics
(Dice/ASD/HD95 in mm, empty-class policy; for a published table instead, score
`eval/predictions_grid` with `--mode reference --reference <dhc|genericssl|ga|magicnet> --grid "[160,160,80]"`,
see scdl_monai `docs/evaluation.md`):

```bash
{both(f"python -m monai.bundle run --config_file {ev} {data}", f"python -m monai.bundle run --config_file {ev_s} {data}")}
python -m scdl_monai.evaluation evaluate --pred_dir eval/predictions --label_dir /path/to/labels \\
    --strict False --out_dir eval/metrics --dataset {dataset}
```

Inference on any CT (NIfTI file or DICOM folder) -> label map NIfTI in the input's original space
and orientation:

```bash
python -m scdl_monai.inference --bundle . --input /path/to/ct.nii.gz --output /path/to/ct_seg.nii.gz
{infer}
```

Export TorchScript (by tracing) and check the network against the metadata:

```bash
python -m monai.bundle ckpt_export {export_id} --filepath models/model.ts --ckpt_file models/model.pt \\
    --meta_file configs/metadata.json --config_file {export_files} \\
    --use_trace True --input_shape "[1, 1, {', '.join(str(p) for p in patch)}]"

python -m monai.bundle verify_net_in_out {export_id} --meta_file configs/metadata.json \\
    --config_file {export_files} --n 2 --device cpu
python -m monai.bundle verify_metadata --meta_file configs/metadata.json \\
    --filepath "$(python -c 'import scdl_monai.bundles as b; print(b.schema_path())')"
```
{torchscript}
Inference can run on the TorchScript file instead of `models/model.pt` (the checkpoint loader is
then switched off by its id):

```bash
python -m monai.bundle run --config_file {i} --input_files "['/path/to/ct.nii.gz']" \\
    --network "\\$torch.jit.load('models/model.ts')" --checkpoint_loader#_disabled_ true
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
    protocol: str | None = None,
) -> Path:
    """Write a self-contained bundle directory.

    Layout: ``configs/{train,evaluate,inference,multi_gpu_train,metadata}.json``, ``configs/scdl.json``
    where SCDL plugs in (:func:`scdl_available`), the method's extra overlays
    (:func:`extra_overlays`) in ``configs/``, ``configs/logging.conf``, ``docs/README.md``,
    ``docs/data_license.txt``, ``LICENSE``, ``models/.gitkeep``. Every file is written atomically
    (temporary file + ``os.replace``); other files already in ``out`` (e.g. trained
    ``models/*.pt``) are left alone.

    Args:
        method: one of :data:`METHODS`.
        dataset: ``"synapse"`` or ``"amos"``.
        out: the bundle folder (created).
        backbone: ``"vnet"`` (default), ``"unet"`` or ``"segresnet"`` (VNet only for the
            MagicNet family, GenericSSL and SKCDF; other backbones get no ``scdl.json``).
        root: components folder (default :func:`components_dir`).
        protocol: preprocessing protocol, ``"native"``, ``"dhc"`` or ``"ga"``; ``None`` (default)
            is the method's own (:data:`METHOD_PROTOCOLS`).

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: unknown method/dataset/backbone/protocol; FileNotFoundError: missing components.
    """
    name = bundle_name(method, dataset, backbone, protocol)
    method, dataset, backbone, protocol = _normalise(method, dataset, backbone, protocol)
    root = Path(root) if root is not None else components_dir()
    out = Path(out)
    kinds = _FULL_CONFIGS + _OVERLAY_CONFIGS + (("scdl",) if scdl_available(method, backbone) else ())
    texts: dict[str, str] = {}
    configs: dict[str, dict] = {}
    for kind in kinds:
        configs[kind] = compose_config(kind, method, dataset, backbone, root, protocol)
        texts[f"configs/{kind}.json"] = _dumps(configs[kind]) + "\n"
    extras = extra_overlays(method, root)
    for path in extras:
        _load_json(path)  # a broken overlay fails here, naming the file
        texts[f"configs/{path.name}"] = path.read_text()
    meta = build_metadata(method, dataset, backbone, protocol)
    texts["configs/metadata.json"] = _dumps(meta) + "\n"
    texts["configs/logging.conf"] = (root / "logging.conf").read_text()
    texts["LICENSE"] = (root / "LICENSE").read_text()
    texts["docs/README.md"] = _readme(method, dataset, backbone, name, meta, protocol, configs["train"], root, extras)
    texts["docs/data_license.txt"] = _data_license(dataset)
    texts["models/.gitkeep"] = ""
    for rel, text in texts.items():
        atomic_write(out / rel, lambda tmp: tmp.write_text(text), mode=0o644)
    return out


def bake_overlay(bundle: str | Path, overlay: str = "scdl.json", kinds: Sequence[str] = ("train", "inference")) -> Path:
    """Merge ``configs/<overlay>`` into the bundle's ``configs/<kind>.json`` and remove the overlay file.

    A variant chosen for training becomes part of the bundle: after baking ``scdl.json``, the plain
    ``configs/train.json`` trains the SCDL variant and the plain ``configs/inference.json`` rebuilds
    the network that ``models/model.pt`` holds, so a trained bundle runs as it is (no overlay to
    remember). The merge is MONAI's multi-file rule (a later key replaces, ``+key`` extends or
    updates); ``evaluate.json`` and ``multi_gpu_train.json`` stay overlays on the baked ``train.json``.

    Raises:
        FileNotFoundError: the bundle has no ``configs/<overlay>``.
    """
    configs = Path(bundle) / "configs"
    extra = configs / overlay
    if not extra.is_file():
        raise FileNotFoundError(f"{extra}: no such overlay in bundle {bundle}")
    for kind in kinds:
        merged = _merge_overlays([configs / f"{kind}.json", extra])
        atomic_write(configs / f"{kind}.json", lambda tmp, m=merged: tmp.write_text(_dumps(m) + "\n"), mode=0o644)
    extra.unlink()
    return Path(bundle)


def write_all(out: str | Path, root: str | Path | None = None) -> list[Path]:
    """Write every shipped bundle (:data:`SHIPPED`) under ``out`` (e.g. the repository's ``bundles/``)."""
    out = Path(out)
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


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "checkpoint", missing: str = "raise") -> str:
    """Newest complete full-state checkpoint ``<ckpt_dir>/<prefix>*.pt`` (by modification time).

    Used by ``--resume true``. The bundles save through
    :class:`~scdl_monai.handlers.checkpoint.AtomicCheckpointSaver` (temporary file + rename), so a
    run killed while saving leaves no truncated ``*.pt``; checkpoints written by other tools (e.g.
    MONAI's plain ``CheckpointSaver``, which is not atomic) may be truncated: files that are not
    complete zip archives (the ``torch.save`` format) are skipped with a warning.

    Args:
        ckpt_dir: the checkpoint folder.
        prefix: file-name prefix of the full-state checkpoints.
        missing: when there is none: ``"raise"`` (default) a ``FileNotFoundError``, or
            ``"pattern"`` return the glob pattern ``<ckpt_dir>/<prefix>*.pt`` itself — what the
            bundles use, so that the start-up check (:func:`scdl_monai.preflight.check_training`,
            key ``resume_from``) reports "file not found" in its one message instead of a traceback
            from inside the config expression.

    Raises:
        FileNotFoundError: when there is none and ``missing="raise"`` (naming the folder).
        ValueError: unknown ``missing``.
    """
    import warnings

    if missing not in ("raise", "pattern"):
        raise ValueError(f"latest_checkpoint: missing must be 'raise' or 'pattern', got {missing!r}.")
    import zipfile

    folder = Path(ckpt_dir)
    found = sorted(folder.glob(f"{prefix}*.pt"), key=lambda p: (p.stat().st_mtime_ns, p.name)) if folder.is_dir() else []
    for path in reversed(found):
        if zipfile.is_zipfile(path):
            return str(path)
        warnings.warn(f"resume: skipping incomplete checkpoint {path}", stacklevel=2)
    if missing == "pattern":
        return str(folder.resolve() / f"{prefix}*.pt")
    raise FileNotFoundError(f"resume: no checkpoint '{prefix}*.pt' in {folder.resolve()} (train first, or pass --resume_from PATH).")


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------




def resume_checkpoint(ckpt_dir: str | Path, resume: bool | str = False, prefix: str = "checkpoint") -> str:
    """The bundles' ``resume_from``: ``""`` (start fresh) unless ``resume``, else the newest checkpoint.

    With ``resume`` and no checkpoint in ``ckpt_dir`` it returns the glob pattern
    ``<ckpt_dir>/<prefix>*.pt`` (:func:`latest_checkpoint` with ``missing="pattern"``), which the
    start-up check reports as "file not found" in its one message.

    Args:
        ckpt_dir: the checkpoint folder (``ckpt_dir`` of the bundle).
        resume: a bool, or its command-line spelling (``--resume true`` arrives as ``"true"``).
        prefix: file-name prefix of the full-state checkpoints.

    Raises:
        ValueError: ``resume`` is not a bool spelling.
    """
    if not as_flag(resume, "resume"):
        return ""
    return latest_checkpoint(ckpt_dir, prefix=prefix, missing="pattern")


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _repository_bundles() -> Path:
    """``bundles/`` of the repository checkout this package runs from (maintainers' write-all/check)."""
    path = Path(__file__).resolve().parents[1] / "bundles"
    if not path.is_dir():
        raise FileNotFoundError(f"no bundles/ folder at {path}: run from a repository checkout or pass --out/--root.")
    return path


def _cli_write(
    method: str,
    dataset: str,
    out: str,
    backbone: str = DEFAULT_BACKBONE,
    protocol: str | None = None,
) -> None:
    """Write one self-contained bundle to OUT (method: supervised|cps|dhc|ga_cps|magicnet|ga_magicnet|genericssl|simis|cld|skcdf;
    dataset: synapse|amos; backbone: vnet|unet|segresnet; protocol: native|dhc|ga, default the method's own).
    Semi-supervised VNet bundles include configs/scdl.json (not skcdf: its training passes bypass the hooks SCDL wraps)."""
    path = write_bundle(method, dataset, out, backbone=backbone, protocol=protocol)
    print(f"wrote bundle {bundle_name(method, dataset, backbone, protocol)} to {path}")


def _cli_write_all(out: str | None = None) -> None:
    """Maintainers: regenerate every shipped bundle (default: the repository's bundles/)."""
    for path in write_all(Path(out) if out is not None else _repository_bundles()):
        print(f"wrote {path}")


def _cli_check(root: str | None = None) -> None:
    """Fail (exit 1) when a shipped bundle differs from its regeneration from the components."""
    base = Path(root) if root is not None else _repository_bundles()
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for m, d in SHIPPED:
            name = bundle_name(m, d)
            write_bundle(m, d, Path(tmp) / name)
            problems += [f"{name}: {p}" for p in compare_bundle_dirs(Path(tmp) / name, base / name)]
        expected = {bundle_name(m, d) for m, d in SHIPPED}
        problems += [f"{p.name}: not a shipped bundle (remove it)" for p in sorted(base.iterdir()) if p.is_dir() and p.name not in expected]
    if problems:
        raise ValueError("bundles differ from their components (run: python -m scdl_monai.bundles write-all):\n  " + "\n  ".join(problems))
    print(f"{len(SHIPPED)} bundles in {base} match their components")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m scdl_monai.bundles``; returns the exit status."""
    commands = {"write": _cli_write, "write-all": _cli_write_all, "check": _cli_check}
    return run_fire(commands, argv, "scdl_monai.bundles")


if __name__ == "__main__":
    sys.exit(main())
