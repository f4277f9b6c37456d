"""Maintainer tool of the shipped bundles: write one bundle, regenerate all, check them against the components.

Command line::

    python -m scdl_monai.cli.bundle_tool write --method dhc --dataset synapse --out DIR [--backbone unet] [--protocol native]
    python -m scdl_monai.cli.bundle_tool write-all [--out bundles]    # maintainers: regenerate bundles/
    python -m scdl_monai.cli.bundle_tool check [--root bundles]        # shipped bundles == regenerated

The bundles themselves are described in :mod:`scdl_monai.bundles`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from scdl_monai.bundles.catalog import DEFAULT_BACKBONE, SHIPPED, bundle_name
from scdl_monai.bundles.writer import compare_bundle_dirs, write_all, write_bundle
from scdl_monai.data.utils import run_fire

__all__ = ["main"]


def _repository_bundles() -> Path:
    """``bundles/`` of the repository checkout this package runs from (maintainers' write-all/check)."""
    path = Path(__file__).resolve().parents[2] / "bundles"
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
        raise ValueError("bundles differ from their components (run: python -m scdl_monai.cli.bundle_tool write-all):\n  " + "\n  ".join(problems))
    print(f"{len(SHIPPED)} bundles in {base} match their components")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m scdl_monai.cli.bundle_tool``; returns the exit status."""
    commands = {"write": _cli_write, "write-all": _cli_write_all, "check": _cli_check}
    return run_fire(commands, argv, "scdl_monai.cli.bundle_tool")


if __name__ == "__main__":
    sys.exit(main())
