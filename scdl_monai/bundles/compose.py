"""Bundle configs composed from the components with MONAI's own merge rule (see :mod:`scdl_monai.bundles`)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scdl_monai.bundles.catalog import (
    _FULL_CONFIGS,
    _KINDS,
    _OVERLAY_CONFIGS,
    _TWO_NETWORKS,
    DEFAULT_BACKBONE,
    DEFAULT_PROTOCOL,
    METHOD_BASES,
    METHODS,
    _check_scdl,
    _normalise,
    _option,
    components_dir,
    scdl_available,
)
from scdl_monai.data.utils import as_flag

__all__ = ["component_files", "extra_overlays", "compose_config", "export_network_id"]


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
#: (``ConfigWorkflow``, ``--tracking``) and the ids set by ``scdl_monai.cli.inference``.
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
