"""A trained bundle describes its own model: the training run's hyper-parameters go into the bundle's
inference and evaluation configs.

A run trained with command-line overrides (``--n_filters 4 --patch_size "[64,64,32]"``, or the
overrides the demo passes to :class:`monai.bundle.ConfigWorkflow`) writes ``models/model.pt`` for a
network the bundle's ``configs/inference.json`` does not describe: the plain
``python -m monai.bundle run --config_file configs/inference.json`` would then build a network of
another width (the weights do not load) or, worse, resample and crop the input differently (the
weights load and the output is wrong). :class:`TrainedConfigWriter` closes that gap: when the run
first writes ``models/model.pt`` (after the first validation, or at the end of a run without one),
it compares the values the run used for a list of config ids with what each target config would
read from its files, and writes the differing ones into that config's last file, atomically.

The list of ids is explicit in ``train.json`` (``trained_config_writer#values``; an overlay that
adds such a key extends it with ``"+trained_config_writer#values"``): each value is a MONAI
reference such as ``"@n_filters"``, which MONAI resolves after every override, so the handler sees
the effective values without parsing any command line. The ids are the hyper-parameters that
shape the network or the input (width, classes, patch, voxel size, intensity window, resize grid,
SCDL block, sliding-window overlap and fusion), never paths, devices or worker counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from scdl_monai.data.utils import atomic_write, format_json

__all__ = ["TrainedConfigWriter"]

logger = logging.getLogger(__name__)


class TrainedConfigWriter:
    """Write the values a training run used into the bundle configs that load its ``model.pt``.

    Args:
        values: config id -> the value this run used; in a bundle ``{"n_filters": "@n_filters", ...}``.
            Ids may be nested (``"network_def#norm"``).
        targets: one list of config files per workflow that loads the model, merged left to right as
            MONAI merges ``--config_file`` (e.g. ``[["configs/inference.json"],
            ["configs/train.json", "configs/evaluate.json"]]``); a value goes into the **last** file
            of a target whose merged config reads another value for that id. A target with a
            missing file is skipped (a run whose ``bundle_root`` is not a bundle folder), and so is
            an id the target does not have.
        validator: the evaluator whose key-metric saver writes ``model.pt``: the configs are
            written when it first completes. ``None``: only at the end of training.

    Example:
        In ``train.json`` (attached to the trainer in ``run``)::

            "trained_config_writer": {
                "_target_": "scdl_monai.handlers.trained_config.TrainedConfigWriter",
                "values": {"n_filters": "@n_filters", "patch_size": "@patch_size"},
                "targets": [["$@bundle_root + '/configs/inference.json'"]],
                "validator": "@validate#evaluator"}
    """

    def __init__(
        self, values: Mapping[str, Any], targets: Sequence[Sequence[str | Path]], validator: Engine | None = None
    ) -> None:
        if not isinstance(values, Mapping) or not all(isinstance(k, str) and k for k in values):
            raise TypeError(f"TrainedConfigWriter: `values` must map config ids to values, got {values!r}.")
        if isinstance(targets, (str, Path)) or not all(
            not isinstance(t, (str, Path)) and len(t) > 0 for t in targets
        ):
            raise TypeError(f"TrainedConfigWriter: `targets` must be a list of non-empty file lists, got {targets!r}.")
        self.values = {k.replace("::", "#"): v for k, v in values.items()}
        self.targets = [[Path(f) for f in files] for files in targets]
        self.validator = validator
        self.written: dict[Path, dict[str, Any]] | None = None

    def attach(self, engine: Engine) -> None:
        """Write after the validator's first run and at the end of ``engine`` (once)."""
        engine.add_event_handler(Events.COMPLETED, self)
        if self.validator is not None:
            self.validator.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if self.written is None:
            self.written = self.write()

    def write(self) -> dict[Path, dict[str, Any]]:
        """Update every target now; returns file -> {id: value} written."""
        values = {}
        for key, value in self.values.items():
            try:
                values[key] = json.loads(json.dumps(value))  # tuples -> lists; refuses tensors, devices...
            except (TypeError, ValueError):
                logger.warning(f"TrainedConfigWriter: {key}={value!r} is not a JSON value; not written.")
        written: dict[Path, dict[str, Any]] = {}
        for files in self.targets:
            missing = [f for f in files if not f.is_file()]
            if missing:
                logger.info(f"TrainedConfigWriter: {missing[0]} not found; the training values are not recorded there.")
                continue
            changed = _differing(files, values)
            if changed:
                _update_file(files[-1], changed)
                written.setdefault(files[-1], {}).update(changed)
                summary = ", ".join(f"{k}={json.dumps(v)}" for k, v in changed.items())
                logger.info(f"TrainedConfigWriter: wrote the values this run trained with into {files[-1]}: {summary}")
        return written


def _differing(files: Sequence[Path], values: Mapping[str, Any]) -> dict[str, Any]:
    """The ids of ``values`` whose value in the merged ``files`` differs (ids the files lack: skipped)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in files]))
    changed = {}
    for key, value in values.items():
        if key not in parser:
            continue
        current = parser[key]
        if isinstance(current, Mapping) and "_target_" in current:
            continue  # a component, not a value: never replaced
        if not _plain(current):
            try:
                current = parser.get_parsed_content(key)
            except Exception:  # an expression that needs the whole run: take the run's value
                current = None
        if current != value:
            changed[key] = value
    return changed


def _plain(value: Any) -> bool:
    """JSON data without MONAI syntax (``$`` expressions, ``@`` references, ``%`` macros)."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(_plain(v) for v in value.values())
    return True


def _update_file(path: Path, changed: Mapping[str, Any]) -> None:
    """Set ``changed`` in the JSON file ``path`` (nested where the file nests, else as ``a#b`` keys)."""
    content = json.loads(path.read_text())
    for key, value in changed.items():
        *parents, last = key.split("#")
        node = content
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if parents and isinstance(node, dict):
            node[last] = value
        else:
            content[key] = value
    text = format_json(content) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text), mode=path.stat().st_mode & 0o777)
