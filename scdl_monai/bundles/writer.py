"""Bundle folders on disk: write one (atomically, file by file), write all shipped ones, bake an overlay, compare."""

from __future__ import annotations

import filecmp
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scdl_monai.bundles.catalog import (
    _FULL_CONFIGS,
    _OVERLAY_CONFIGS,
    DEFAULT_BACKBONE,
    SHIPPED,
    _normalise,
    bundle_name,
    components_dir,
    scdl_available,
)
from scdl_monai.bundles.compose import _load_json, _merge_overlays, compose_config, extra_overlays
from scdl_monai.bundles.metadata import build_metadata
from scdl_monai.bundles.readme import _data_license, _readme
from scdl_monai.data.utils import atomic_write

__all__ = ["write_bundle", "bake_overlay", "write_all", "compare_bundle_dirs"]


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
