"""Segment any CT with a bundle: NIfTI file or DICOM folder in, label-map NIfTI out.

The prediction is written in the input's **original** voxel grid and orientation: the bundle's
``configs/inference.json`` loads the image (MONAI ``LoadImaged``; ``ITKReader`` for DICOM
folders), reorients it to RAS, resamples it to the training spacing, runs a sliding window,
and ``Invertd`` undoes the resampling and reorientation on the class probabilities before the
argmax; ``SaveImaged`` writes the label map with the input's affine. This module only drives that
config (so command line, Python and ``python -m monai.bundle run --config_file configs/inference.json``
run the same transforms) and adds input detection, validation and atomic output.

Command line::

    python -m scdl_monai.cli.inference --input ct.nii.gz --bundle bundles/cps_synapse --output ct_seg.nii.gz
    python -m scdl_monai.cli.inference --input /path/dicom_series/ --bundle DIR --output out_dir/ \\
        --device cuda:0 --sw_output_device cpu
    python -m scdl_monai.cli.inference --input ct.nii.gz --bundle DIR --output seg.nii.gz \\
        --override n_filters=4 --override "patch_size=[64,64,32]"

``--override KEY=VALUE`` (repeatable) sets a key of ``configs/inference.json`` (nested ids with
``#``); VALUE is read as JSON (``4``, ``[64,64,32]``, ``true``), else taken as a string. A bundle
trained by this package already holds its training values (the training run writes them into
``configs/inference.json``), so overrides are for bundles edited or trained elsewhere. When the
weights do not fit the network the config builds, the error names the keys that differ and the
values that fit, read from the checkpoint's tensor shapes (``n_filters``, ``num_classes``,
``network_def#in_channels``) and, when the tensor names differ, by trying the other backbones
(``network_def#name``).

Why: orientation and inversion at inference are a recurring complaint of bundle users
(``Project-MONAI/model-zoo#766`` and ``#181``), so the round trip is tested on LPS NIfTI and DICOM inputs
(``tests/test_inference.py``).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scdl_monai.data.utils import atomic_write, did_you_mean, run_fire

__all__ = ["NIFTI_SUFFIXES", "detect_reader", "parse_overrides", "predict", "main"]

#: Config keys whose fitting value :func:`_fitting_overrides` reads from the checkpoint's shapes.
SHAPE_KEYS = ("n_filters", "num_classes", "network_def#in_channels")

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def detect_reader(path: str | Path) -> str | None:
    """The MONAI reader for an input: ``"ITKReader"`` for a folder (DICOM series) or a non-NIfTI
    file (``.mha``, ``.nrrd``, ``.dcm``...), ``None`` (MONAI's default, nibabel) for NIfTI.

    Raises:
        FileNotFoundError: the path does not exist, or a folder holds no file.
    """
    p = Path(path)
    if p.is_dir():
        if not any(f.is_file() for f in p.iterdir()):
            raise FileNotFoundError(f"input folder {p} is empty (expected a DICOM series).")
        return "ITKReader"
    if not p.is_file():
        raise FileNotFoundError(f"input not found: {p}")
    return None if p.name.lower().endswith(NIFTI_SUFFIXES) else "ITKReader"


def _bundle_files(bundle: str | Path, ckpt: str | Path | None) -> tuple[Path, Path, Path]:
    root = Path(bundle)
    config = root / "configs" / "inference.json"
    if not config.is_file():
        raise FileNotFoundError(f"bundle {root}: configs/inference.json not found (is --bundle a bundle folder?).")
    weights = Path(ckpt) if ckpt is not None else root / "models" / "model.pt"
    if not weights.is_file():
        raise FileNotFoundError(
            f"bundle {root}: weights {weights} not found; train the bundle first (it writes models/model.pt) "
            "or pass ckpt=PATH."
        )
    return root, config, weights


def parse_overrides(items: str | Sequence[str] | None) -> dict[str, Any]:
    """``["n_filters=4", "patch_size=[64,64,32]", "network_def#name=unet"]`` -> config overrides.

    VALUE is parsed as JSON (numbers, lists, ``true``/``false``/``null``, quoted strings), else
    kept as a string.

    Raises:
        ValueError: an item without ``=`` or with an empty key.
    """
    if items is None:
        return {}
    out: dict[str, Any] = {}
    for item in [items] if isinstance(items, str) else list(items):
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--override {item!r}: expected KEY=VALUE, e.g. --override n_filters=4")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _check_override_keys(overrides: Mapping[str, Any], config: Path) -> None:
    """Every override names a key of the config (a typo would otherwise add an unused key)."""
    from monai.bundle import ConfigParser
    from monai.bundle.utils import ID_SEP_KEY

    parser = ConfigParser(ConfigParser.load_config_files(str(config)))
    for key in overrides:
        parent = key.replace("#", ID_SEP_KEY).rpartition(ID_SEP_KEY)[0]
        if key in parser or (parent and parent in parser):
            continue
        close = did_you_mean(key, [str(k) for k in parser.get()]).split("available:")[0].strip()
        raise ValueError(f"override {key!r}: {config} has no such key" + (f"; {close}" if close else ""))


def _shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes of a bare state dict (``models/model.pt``), or None for anything else."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: check_checkpoint reports why
        return None
    if isinstance(state, Mapping) and len(state) == 1 and isinstance(next(iter(state.values())), Mapping):
        state = next(iter(state.values()))  # {"model": state_dict}
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    return {str(k): tuple(v.shape) for k, v in state.items()}


def _network_shapes(raw_config: dict, overrides: Mapping[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes of the network the config builds with ``overrides`` (on the CPU); None if it fails."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(copy.deepcopy(raw_config))
    parser.update({**overrides, "device": "$torch.device('cpu')"})
    try:
        return {k: tuple(v.shape) for k, v in parser.get_parsed_content("network").state_dict().items()}
    except Exception:  # these values do not build a network: not a candidate
        return None


def _fitting_overrides(raw_config: dict, network: Any, weights: Path) -> str | None:
    """A one-line problem naming the config values under which the bundle's network fits ``weights``.

    ``n_filters``, ``num_classes`` and ``network_def#in_channels`` are read from the tensor shapes
    (:func:`scdl_monai.engines.preflight.shape_hyperparameters`); when the tensor names differ, the other
    backbones of ``network_def#name`` are tried as well. A suggestion is made only when the network
    rebuilt with it has exactly the checkpoint's tensors. None when nothing fits.
    """
    from monai.bundle import ConfigParser

    from scdl_monai.networks.backbones import BACKBONES
    from scdl_monai.engines.preflight import shape_hyperparameters

    have = _shapes(weights)
    if have is None:
        return None
    parser = ConfigParser(copy.deepcopy(raw_config))
    current = {key: parser.get_parsed_content(key) for key in (*SHAPE_KEYS, "network_def#name") if key in parser}
    sizes = {k: v for k, v in current.items() if k in SHAPE_KEYS and isinstance(v, int) and not isinstance(v, bool)}

    def fit(extra: dict[str, Any], shapes: dict[str, tuple[int, ...]] | None) -> dict[str, Any] | None:
        if shapes is None:
            return None
        found = {k: v for k, v in shape_hyperparameters(have, shapes, sizes).items() if v != sizes.get(k)}
        candidate = {**extra, **found}
        if candidate and (shapes if not found else _network_shapes(raw_config, candidate)) == have:
            return candidate
        return None

    fitting = fit({}, {k: tuple(v.shape) for k, v in network.state_dict().items()})
    name = current.get("network_def#name")
    for other in BACKBONES if fitting is None and isinstance(name, str) else ():
        if other != name.lower():
            fitting = fit({"network_def#name": other}, _network_shapes(raw_config, {"network_def#name": other}))
            if fitting is not None:
                break
    if fitting is None:
        return None
    trained = ", ".join(f"{k}={v}" for k, v in fitting.items())
    config = ", ".join(f"{k}={current.get(k)}" for k in fitting)
    flags = " ".join(f"--override {k}={v}" for k, v in fitting.items())
    return f"ckpt={str(weights)!r} was trained with {trained} but the config has {config}: pass {flags}"


def _output_file(output: Path, source: Path, many: bool) -> Path:
    if output.name.lower().endswith(NIFTI_SUFFIXES):
        if many:
            raise ValueError(f"output={output} is a file name but {source.parent} holds several inputs; give a folder.")
        return output
    name = source.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = source.stem if source.is_file() else source.name
    return output / f"{name}_seg.nii.gz"


def predict(
    input: str | Path | Sequence[str | Path],  # noqa: A002 - the CLI flag is --input
    bundle: str | Path,
    output: str | Path,
    device: str | None = None,
    sw_device: str | None = None,
    sw_output_device: str | None = None,
    progress: bool = True,
    ckpt: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    expect_ct: bool = True,
) -> list[Path]:
    """Segment CT volumes with a bundle and write one label-map NIfTI per input.

    Args:
        input: a NIfTI file, a DICOM folder (one series), any ITK-readable file, or a list of these.
        bundle: bundle folder (``configs/inference.json``, ``models/model.pt``).
        output: ``*.nii.gz`` / ``*.nii`` file (one input) or a folder (``<name>_seg.nii.gz`` per input).
        device: device of the network, e.g. ``"cpu"``, ``"cuda:0"`` (default: the config's, CUDA if available).
        sw_device: device the sliding-window patches run on (default: ``device``).
        sw_output_device: device the stitched output is kept on; ``"cpu"`` saves GPU memory on big volumes.
        progress: show the sliding-window progress bar.
        ckpt: weights to load instead of ``<bundle>/models/model.pt``.
        overrides: more config overrides (id -> value), e.g. ``{"sw_batch_size": 4}``; each id must
            exist in ``configs/inference.json`` (or its parent, for a nested id).
        expect_ct: refuse inputs whose intensities are not CT Hounsfield units (an MR image, a
            normalised volume); ``False`` skips that check.

    Returns:
        the written label maps, one per input, in input order. Each has the input's spatial shape
        and affine (``uint8`` class ids).

    Before anything is computed or written, :func:`scdl_monai.engines.preflight.check_inference` checks
    every input (readable, 3-D, finite, CT intensities, one DICOM series per folder), the weights
    against the bundle's network (keys and shapes; when other ``n_filters`` / ``num_classes`` /
    ``network_def#in_channels`` values would fit, it names them), ``patch_size`` against the network
    and the output folders, and reports all problems at once.

    Raises:
        FileNotFoundError: missing input, bundle config or weights.
        ValueError: a file name as ``output`` for several inputs; an override key the config lacks;
            :class:`~scdl_monai.engines.preflight.PreflightError` for the problems above.
    """
    from monai.bundle import ConfigWorkflow

    from scdl_monai.engines.preflight import check_inference

    inputs = [Path(p) for p in ([input] if isinstance(input, (str, os.PathLike)) else list(input))]
    if not inputs:
        raise ValueError("input is empty: give a NIfTI file, a DICOM folder or a list of them.")
    readers = [detect_reader(p) for p in inputs]
    root, config, weights = _bundle_files(bundle, ckpt)
    out = Path(output)
    targets = [_output_file(out, p, len(inputs) > 1) for p in inputs]
    written: list[Path] = []
    for index, (source, reader, target) in enumerate(zip(inputs, readers, targets)):
        params: dict[str, Any] = {
            "bundle_root": str(root.resolve()),
            "ckpt_path": str(weights.resolve()),
            "input_files": [str(source.resolve())],
            "image_reader": reader,
            "progress": bool(progress),
            "num_workers": 0,
        }
        if device is not None:
            params["device"] = str(device)
        if sw_device is not None:
            params["sw_device"] = str(sw_device)
        if sw_output_device is not None:
            params["sw_output_device"] = str(sw_output_device)
        params.update(dict(overrides or {}))
        meta = root / "configs" / "metadata.json"
        workflow = ConfigWorkflow(
            config_file=str(config),
            meta_file=str(meta) if meta.is_file() else None,
            logging_file=False,
            workflow_type="inference",
            **params,
        )
        if index == 0:  # the network is the same for every input: check everything once
            _check_override_keys(overrides or {}, config)
            raw = copy.deepcopy(workflow.parser.get())  # before parsing expands the macros
            network = workflow.parser.get_parsed_content("network")
            check_inference(
                inputs, network, weights, targets, patch_size=workflow.parser.get_parsed_content("patch_size"),
                ct=expect_ct, ckpt_hint=lambda: _fitting_overrides(raw, network, weights),
            )  # fmt: skip
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".predict.", dir=target.parent) as tmp:
            workflow.parser["output_dir"] = tmp
            workflow.initialize()
            workflow.run()
            workflow.finalize()
            produced = sorted(Path(tmp).rglob("*.nii*"))
            if len(produced) != 1:
                raise RuntimeError(f"inference of {source} produced {len(produced)} files in {tmp}, expected 1.")
            if produced[0].name.endswith(".gz") == target.name.endswith(".gz"):
                os.replace(produced[0], target)
            else:
                _convert(produced[0], target)
        written.append(target)
    return written


def _convert(src: Path, dst: Path) -> None:
    """Re-save ``src`` as ``dst`` when only the compression differs (``.nii`` vs ``.nii.gz``)."""
    import nibabel as nib

    import numpy as np

    img = nib.load(str(src))
    atomic_write(dst, lambda tmp: nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header), str(tmp)))


def _cli(
    input: str,  # noqa: A002
    bundle: str,
    output: str,
    device: str | None = None,
    sw_device: str | None = None,
    sw_output_device: str | None = None,
    progress: bool = True,
    ckpt: str | None = None,
    expect_ct: bool = True,
    override: Any = None,
) -> None:
    """Segment a CT (NIfTI file or DICOM folder) with a bundle; writes a label-map NIfTI.

    Args:
        input: NIfTI file, DICOM series folder, or "[a.nii.gz,b.nii.gz]".
        bundle: bundle folder (configs/inference.json, models/model.pt).
        output: output .nii.gz file (one input) or folder.
        device: network device (cpu, cuda:0); default CUDA when available.
        sw_device: sliding-window patch device.
        sw_output_device: device holding the stitched volume (cpu saves GPU memory).
        progress: sliding-window progress bar.
        ckpt: weights instead of BUNDLE/models/model.pt.
        expect_ct: refuse inputs that are not CT in Hounsfield units (false: skip this check).
        override: KEY=VALUE setting a key of configs/inference.json, VALUE read as JSON else a string; repeatable.
    """
    items: Any = input
    if isinstance(input, (list, tuple)):
        items = [str(i) for i in input]
    elif isinstance(input, str) and input.startswith("[") and input.endswith("]"):
        items = [s.strip().strip("'\"") for s in input[1:-1].split(",") if s.strip()]
    flags = {"progress": _flag(progress, "progress"), "expect_ct": _flag(expect_ct, "expect_ct")}
    overrides = parse_overrides(override)
    for path in predict(items, bundle, output, device, sw_device, sw_output_device, ckpt=ckpt, overrides=overrides, **flags):
        print(f"wrote {path}")


def _flag(value: Any, name: str) -> bool:
    """A boolean command-line flag: fire passes ``false``/``no``/``0`` through as strings."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"--{name} must be true or false, got {value!r}.")
    return bool(value)


def _gather_overrides(argv: list[str]) -> list[str]:
    """Every ``--override X`` / ``--override=X`` of ``argv`` as one ``--override <JSON list>`` (fire
    keeps only the last of a repeated flag)."""
    rest: list[str] = []
    items: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--override":
            items.append(next(args, ""))
        elif arg.startswith("--override="):
            items.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return rest + (["--override", json.dumps(items)] if items else [])


def main(argv: list[str] | None = None) -> int:
    """``python -m scdl_monai.cli.inference``; returns the exit status (1 and one message on user errors)."""
    return run_fire(_cli, _gather_overrides(list(sys.argv[1:] if argv is None else argv)), "scdl_monai.cli.inference")


if __name__ == "__main__":
    sys.exit(main())
