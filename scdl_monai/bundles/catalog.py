"""Names a bundle is made of: methods, datasets, backbones, protocols, the shipped set, and the components folder.

Every name a user passes (``--method``, ``--dataset``, ...) is checked here, with a "did you mean"
hint; :func:`bundle_name` turns a validated choice into the bundle's folder name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "METHODS", "UNSHIPPED_METHODS", "DATASETS", "BACKBONES", "DEFAULT_BACKBONE", "PROTOCOLS", "DEFAULT_PROTOCOL",
    "METHOD_PROTOCOLS", "METHOD_BASES", "SCDL_METHODS", "NO_SCDL", "SHIPPED", "VARIANTS",
    "components_dir", "schema_path", "default_protocol", "scdl_available", "bundle_name",
]  # fmt: skip


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

_FULL_CONFIGS = ("train", "inference")

_OVERLAY_CONFIGS = ("evaluate", "multi_gpu_train")

_KINDS = _FULL_CONFIGS + _OVERLAY_CONFIGS + ("scdl",)


def components_dir() -> Path:
    """The bundle components: package data ``scdl_monai/resources/bundle_components`` (any install).

    Set ``SCDL_MONAI_COMPONENTS`` to use another folder (e.g. a maintainer's edited copy).

    Raises:
        FileNotFoundError: when the folder has no ``train.json``.
    """
    env = os.environ.get("SCDL_MONAI_COMPONENTS")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "resources" / "bundle_components"
    if not (path / "train.json").is_file():
        raise FileNotFoundError(
            f"bundle components not found in {path} (expected train.json there); reinstall scdl_monai or set "
            "SCDL_MONAI_COMPONENTS to a bundle components folder."
        )
    return path


def schema_path() -> Path:
    """Path of the vendored metadata schema (our reconstruction of ``meta_schema_20240725.json``)."""
    return Path(__file__).resolve().parents[1] / "resources" / "meta_schema_20240725.json"


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
