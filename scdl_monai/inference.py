"""Segment any CT with a bundle: NIfTI file or DICOM folder in, label-map NIfTI out.

The prediction is written in the input's **original** voxel grid and orientation: the bundle's
``configs/inference.json`` loads the image (MONAI ``LoadImaged``; ``ITKReader`` for DICOM
folders), reorients it to RAS, resamples it to the training spacing, runs a sliding window,
and ``Invertd`` undoes the resampling and reorientation on the class probabilities before the
argmax; ``SaveImaged`` writes the label map with the input's affine. This module only drives that
config (so command line, Python and ``python -m monai.bundle run --config_file configs/inference.json``
run the same transforms) and adds input detection, validation and atomic output.

Command line::

    python -m scdl_monai.inference --input ct.nii.gz --bundle bundles/cps_synapse --output ct_seg.nii.gz
    python -m scdl_monai.inference --input /path/dicom_series/ --bundle DIR --output out_dir/ \\
        --device cuda:0 --sw_output_device cpu

Why: orientation and inversion at inference are a recurring complaint of bundle users
(``Project-MONAI/model-zoo#766`` and ``#181``), so the round trip is tested on LPS NIfTI and DICOM inputs
(``tests/test_inference.py``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scdl_monai.data.utils import atomic_write, run_fire

__all__ = ["NIFTI_SUFFIXES", "detect_reader", "predict", "main"]

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
        overrides: more config overrides (id -> value), e.g. ``{"sw_batch_size": 4}``.
        expect_ct: refuse inputs whose intensities are not CT Hounsfield units (an MR image, a
            normalised volume); ``False`` skips that check.

    Returns:
        the written label maps, one per input, in input order. Each has the input's spatial shape
        and affine (``uint8`` class ids).

    Before anything is computed or written, :func:`scdl_monai.preflight.check_inference` checks
    every input (readable, 3-D, finite, CT intensities, one DICOM series per folder), the weights
    against the bundle's network (keys and shapes), ``patch_size`` against the network and the
    output folders, and reports all problems at once.

    Raises:
        FileNotFoundError: missing input, bundle config or weights.
        ValueError: a file name as ``output`` for several inputs;
            :class:`~scdl_monai.preflight.PreflightError` for the problems above.
    """
    from monai.bundle import ConfigWorkflow

    from scdl_monai.preflight import check_inference

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
            check_inference(
                inputs, workflow.parser.get_parsed_content("network"), weights, targets,
                patch_size=workflow.parser.get_parsed_content("patch_size"), ct=expect_ct,
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
    """
    items: Any = input
    if isinstance(input, (list, tuple)):
        items = [str(i) for i in input]
    elif isinstance(input, str) and input.startswith("[") and input.endswith("]"):
        items = [s.strip().strip("'\"") for s in input[1:-1].split(",") if s.strip()]
    flags = {"progress": _flag(progress, "progress"), "expect_ct": _flag(expect_ct, "expect_ct")}
    for path in predict(items, bundle, output, device, sw_device, sw_output_device, ckpt=ckpt, **flags):
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


def main(argv: list[str] | None = None) -> int:
    """``python -m scdl_monai.inference``; returns the exit status (1 and one message on user errors)."""
    return run_fire(_cli, argv, "scdl_monai.inference")


if __name__ == "__main__":
    sys.exit(main())
