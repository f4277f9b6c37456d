"""Checks before a run starts ("preflight"): configuration, data, checkpoints and output folders.

A mistake in a bundle override or a dataset otherwise surfaces minutes (or hours) into a run, as a
stack trace from deep inside MONAI, PyTorch or a reader, after files have been written. Every
function here checks one thing and returns the problems it finds as strings naming the config key
or the file; :func:`check_training` and :func:`check_inference` run them all and report every
problem at once in a :class:`PreflightError`. With ``on_error="exit"`` (what the bundles use) the
program ends instead with that message and exit status 1, and no stack trace, since for a
configuration or data mistake the message is the whole story.

A bundle runs :func:`check_training` as the first step of its ``run`` section (before any dataset is
cached, any network trained or any file written)::

    "preflight": {"_target_": "scdl_monai.engines.preflight.check_training", "datalist": "@datalist",
                  "num_classes": "@num_classes", "method": "@method", ...},
    "run": ["$@preflight", "$@checkpoint_saver.attach(@train#trainer)", "$@train#trainer.run()"]

Checks (each names the key or file):

* datalist: the file exists and holds the keys the run reads (``training``, ``validation``, and
  ``unlabeled`` for a semi-supervised method), none of them empty;
* data (``verify_data``): :func:`scdl_monai.data.integrity.check_datalist` on those keys (readable,
  3-D, image/label shape and affine, label ids in ``[0, C)``, integer labels, NaN/Inf, CT intensity
  range, the same case both labeled and unlabeled; validation cases that are also training cases
  are allowed, since model selection on training data can be a deliberate choice);
* classes: ``num_classes`` agrees with the dataset (``dataset_name``), ``class_names`` and the
  output channels of every network;
* shapes: ``patch_size`` is divisible by each network's down-sampling factor and not much larger
  than the training volumes after resampling to ``pixdim``;
* output: ``ckpt_dir`` and ``output_dir`` can be written;
* resume: ``resume_from`` is a checkpoint of this method and network (keys and tensor shapes).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "PreflightError",
    "shape_factor",
    "check_num_classes",
    "check_protocol",
    "check_divisible",
    "check_writable",
    "check_checkpoint",
    "shape_hyperparameters",
    "check_splits",
    "check_patch_vs_volumes",
    "check_dicom_series",
    "check_image",
    "check_training",
    "check_inference",
]

logger = logging.getLogger(__name__)

#: ``on_error`` values: raise :class:`PreflightError` (library use) or exit with status 1 (bundles, CLIs).
ON_ERROR = ("raise", "exit")


class PreflightError(ValueError):
    """Every problem found before a run; ``problems`` holds the messages."""

    def __init__(self, problems: Sequence[str], what: str = "run"):
        self.problems = list(problems)
        if len(self.problems) == 1:  # one line
            super().__init__(f"cannot start the {what}: {self.problems[0]}")
            return
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"cannot start the {what}: {len(self.problems)} problem(s) found before starting:\n{lines}")


def _report(problems: Sequence[str], what: str, on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
    if not problems:
        return
    error = PreflightError(problems, what)
    if on_error == "exit":
        # SystemExit passes through MONAI's config machinery unwrapped: the user sees the message only
        raise SystemExit(f"error: {error}")
    raise error


# ------------------------------------------------------------------------------------ networks
def _known_backbones(network: nn.Module) -> list[nn.Module]:
    """The segmentation backbones inside ``network`` (itself or wrapped), outermost first."""
    from monai.networks.nets import SegResNet, UNet

    return [m for m in network.modules() if callable(getattr(m, "shape_factor", None)) or isinstance(m, (UNet, SegResNet))]


def shape_factor(network: nn.Module) -> tuple[int, ...] | None:
    """Required divisor of each spatial input size of ``network``, or None when unknown.

    Uses the network's own ``shape_factor()`` (VNet, DiffVNet, MONAI SegResNetDS); MONAI ``UNet``:
    the product of its strides; MONAI ``SegResNet``: ``2 ** (len(blocks_down) - 1)``. A wrapper
    (MagicNet's student, the SCDL network) is searched for such a backbone.
    """
    from monai.networks.nets import SegResNet, UNet

    for module in _known_backbones(network):
        if callable(getattr(module, "shape_factor", None)):
            return tuple(int(f) for f in module.shape_factor())
        if isinstance(module, UNet):
            dims = module.dimensions
            factor = [1] * dims
            for stride in module.strides:
                s = (stride,) * dims if isinstance(stride, int) else tuple(stride)
                factor = [f * int(x) for f, x in zip(factor, s)]
            return tuple(factor)
        if isinstance(module, SegResNet):
            return (2 ** (len(module.blocks_down) - 1),) * module.spatial_dims
    return None


def _out_channels(network: nn.Module) -> int | None:
    """Output channels of the backbone inside ``network`` (its own ``out_channels``; None if unknown)."""
    for module in _known_backbones(network):
        value = getattr(module, "out_channels", None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _networks(method_or_network: nn.Module) -> dict[str, nn.Module]:
    networks = getattr(method_or_network, "networks", None)
    if callable(networks):
        found = networks()
        if isinstance(found, Mapping) and found:
            return dict(found)
    return {"network": method_or_network}


# ------------------------------------------------------------------------------------ single checks
def check_protocol(protocol: str | None) -> list[str]:
    """``protocol`` is one of :data:`scdl_monai.data.transforms.PROTOCOLS` (None: not given)."""
    from scdl_monai.data.transforms import PROTOCOLS
    from scdl_monai.data.utils import UnknownNameError, look_up

    if protocol is None:
        return []
    try:
        look_up(protocol, PROTOCOLS, "protocol")
    except (UnknownNameError, TypeError):
        return [UnknownNameError("protocol", protocol, PROTOCOLS).for_key("protocol")]
    return []


def check_num_classes(
    num_classes: int,
    dataset: str | None = None,
    class_names: Sequence[str] | None = None,
    networks: Mapping[str, nn.Module] | None = None,
) -> list[str]:
    """``num_classes`` (C, background included) against the dataset, the class names and the networks."""
    problems = []
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        return [f"num_classes must be an integer >= 2 (background included), got {num_classes!r}"]
    if dataset:
        from scdl_monai.data.datasets import get_dataset

        try:
            expected = get_dataset(dataset).num_classes
        except ValueError as err:
            problems.append(f"dataset_name: {err}")
        else:
            if expected != num_classes:
                problems.append(
                    f"num_classes={num_classes} but dataset_name={dataset!r} has {expected} classes (background included)"
                )
    if class_names is not None and len(class_names) != num_classes:
        problems.append(f"class_names has {len(class_names)} names but num_classes={num_classes}")
    wrong: dict[tuple[str, int], list[str]] = {}
    for name, net in (networks or {}).items():
        out = _out_channels(net)
        if out is not None and out != num_classes:
            wrong.setdefault((type(net).__name__, out), []).append(name)
    for (kind, out), names in wrong.items():
        problems.append(
            f"{_names(names)} ({kind}) {'has' if len(names) == 1 else 'have'} {out} output channels but "
            f"num_classes={num_classes} (network_def#out_channels)"
        )
    return problems


def _names(names: Sequence[str]) -> str:
    return ("network " if len(names) == 1 else "networks ") + ", ".join(f"'{n}'" for n in names)


def check_divisible(patch_size: Sequence[int], networks: Mapping[str, nn.Module], key: str = "patch_size") -> list[str]:
    """``patch_size`` divisible by each network's :func:`shape_factor`."""
    wrong: dict[tuple[tuple[int, ...], str], list[str]] = {}
    for name, net in networks.items():
        factor = shape_factor(net)
        if factor is not None and (len(factor) != len(patch_size) or any(int(p) % f for p, f in zip(patch_size, factor))):
            wrong.setdefault((factor, type(net).__name__), []).append(name)
    problems = []
    for (factor, kind), names in wrong.items():
        if len(factor) != len(patch_size):
            problems.append(f"{key}={list(patch_size)} has {len(patch_size)} dims, {_names(names)} ({kind}) expect {len(factor)}")
            continue
        fixed = [max(f, int(round(p / f)) * f) for p, f in zip(patch_size, factor)]
        problems.append(f"{key}={list(patch_size)} must be divisible by {list(factor)} for {_names(names)} ({kind}); e.g. {fixed}")
    return problems


def check_writable(path: str | os.PathLike, key: str) -> list[str]:
    """``path`` is (or can be created as) a folder this process can write; nothing is created."""
    folder = Path(path).expanduser().absolute()
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return [f"{key}={str(path)!r} cannot be created: {probe} is not a folder"]
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        return [f"{key}={str(path)!r} is not writable ({err.strerror or err} in {probe})"]
    return []


def _tensor_items(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_checkpoint(path: str | os.PathLike, modules: Mapping[str, nn.Module], key: str = "checkpoint") -> list[str]:
    """The checkpoint at ``path`` holds a state dict matching each ``modules[name]`` (keys and shapes).

    The file is read with ``torch.load(weights_only=True)`` (no code is unpickled). A checkpoint
    holding only one state dict (``models/model.pt``) matches a single module.
    """
    path = Path(path)
    if not path.is_file():
        return [f"{key}={str(path)!r}: file not found"]
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: the reader's reason is the finding
        code = [line.strip() for line in str(err).splitlines() if "Unsupported global:" in line]
        if code:
            reason = code[0].replace("WeightsUnpickler error:", "").split(". Please use")[0].strip()
            return [f"{key}={str(path)!r} holds Python objects besides tensors ({reason}): refused, since "
                    "unpickling them could run code"]  # fmt: skip
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if first.startswith("Weights only load failed"):
            first = "not a complete torch.save file"
        return [f"{key}={str(path)!r} cannot be read as a PyTorch checkpoint ({type(err).__name__}: {first})"]
    if not isinstance(ckpt, Mapping):
        return [f"{key}={str(path)!r} holds a {type(ckpt).__name__}, not a state dict"]
    problems = []
    for name, module in modules.items():
        if name in ckpt and isinstance(ckpt[name], Mapping):
            state = ckpt[name]
        elif len(modules) == 1 and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            state = ckpt
        else:
            problems.append(
                f"{key}={str(path)!r} has no '{name}' entry (it holds {sorted(map(str, ckpt))[:8]}): "
                "written by another method?"
            )
            continue
        have, want = _tensor_items(state), _tensor_items(module.state_dict())
        missing = [k for k in want if k not in have]
        unexpected = [k for k in have if k not in want]
        shapes = [f"{k}: checkpoint {have[k]} vs model {want[k]}" for k in want if k in have and have[k] != want[k]]
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
            if shapes:
                parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
            problems.append(
                f"{key}={str(path)!r} does not fit '{name}' ({type(module).__name__}): tensors "
                + ", ".join(parts)
                + "; it was trained with another architecture, backbone, n_filters or num_classes"
            )
    return problems


def shape_hyperparameters(
    checkpoint: Mapping[str, Sequence[int]], model: Mapping[str, Sequence[int]], current: Mapping[str, int]
) -> dict[str, int]:
    """Values of the width / class / input-channel keys under which ``model``'s tensors would take
    the ``checkpoint``'s shapes; a guess to verify by rebuilding the network.

    Read from the first convolution (the backbone's stem: output channels scale with
    ``n_filters``, input channels are ``network_def#in_channels``) and the last convolution that
    has ``num_classes`` channels (the segmentation head; either axis, for a transposed
    convolution). Only keys given in ``current`` (key -> the config's value) are guessed, and only
    where both sides hold the tensor with the same number of dimensions.

    Args:
        checkpoint: tensor name -> shape in the checkpoint.
        model: tensor name -> shape in the network the config builds.
        current: the config's values, e.g. ``{"n_filters": 32, "num_classes": 14}``.

    Returns:
        key -> value read from the shapes (possibly equal to the config's).

    Example:
        >>> shape_hyperparameters({"stem.weight": (4, 1, 3, 3, 3), "head.weight": (3, 4, 1, 1, 1)},
        ...                       {"stem.weight": (32, 1, 3, 3, 3), "head.weight": (14, 32, 1, 1, 1)},
        ...                       {"n_filters": 32, "num_classes": 14})
        {'n_filters': 4, 'num_classes': 3}
    """
    convs = [k for k in model if k in checkpoint and len(model[k]) >= 3 and len(checkpoint[k]) == len(model[k])]
    found: dict[str, int] = {}
    if not convs:
        return found
    stem_have, stem_want = checkpoint[convs[0]], model[convs[0]]
    width = current.get("n_filters")
    if width is not None and stem_want[0] and (stem_have[0] * width) % stem_want[0] == 0:
        found["n_filters"] = stem_have[0] * width // stem_want[0]
    channels = current.get("network_def#in_channels")
    if channels is not None and stem_want[1] and (stem_have[1] * channels) % stem_want[1] == 0:
        found["network_def#in_channels"] = stem_have[1] * channels // stem_want[1]
    classes = current.get("num_classes")
    if classes is not None:
        for key in reversed(convs):
            axes = [a for a in (0, 1) if model[key][a] == classes]
            if axes:
                found["num_classes"] = checkpoint[key][axes[0]]
                break
    return found


def _load_datalist(datalist: str | os.PathLike | Mapping) -> tuple[dict, Path, list[str]]:
    if isinstance(datalist, Mapping):
        return dict(datalist), Path.cwd(), []
    path = Path(datalist)
    if not path.is_file():
        return {}, path.parent, [f"datalist={str(path)!r}: file not found"]
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return {}, path.parent, [f"datalist={str(path)!r} is not valid JSON ({err})"]
    if not isinstance(content, Mapping):
        return {}, path.parent, [f"datalist={str(path)!r} must hold a JSON object, got {type(content).__name__}"]
    return dict(content), path.resolve().parent, []


def check_splits(datalist: str | os.PathLike | Mapping, required: Mapping[str, str]) -> list[str]:
    """Each datalist key in ``required`` (key -> what it is used for) exists and is a non-empty list."""
    content, _, problems = _load_datalist(datalist)
    if problems:
        return problems
    where = f"datalist={str(datalist)!r}" if not isinstance(datalist, Mapping) else "datalist"
    for key, use in required.items():
        if key not in content:
            problems.append(f"{where} has no {key!r} list ({use}); it has {sorted(content)}")
        elif not isinstance(content[key], list):
            problems.append(f"{where}: {key!r} must be a list of entries, got {type(content[key]).__name__}")
        elif not content[key]:
            problems.append(f"{where}: {key!r} is empty ({use})")
    return problems


def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine without reading the voxels (NIfTI), else from the full image."""
    if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)
    from scdl_monai.data.integrity import read_volume

    array, affine = read_volume(path)
    return tuple(array.shape), affine


def _resampled_ras_shape(shape: Sequence[int], affine: np.ndarray, pixdim: Sequence[float]) -> tuple[int, ...]:
    """Voxels along R, A, S after ``Orientationd(RAS)`` + ``Spacingd(pixdim)``."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    out = [0, 0, 0]
    for axis, (ras_axis, _) in enumerate(ornt[:3]):
        extent = shape[axis] * spacing[axis]
        out[int(ras_axis)] = max(1, int(math.floor(extent / float(pixdim[int(ras_axis)]) + 1e-6)))
    return tuple(out)


def check_patch_vs_volumes(
    datalist: str | os.PathLike | Mapping,
    patch_size: Sequence[int],
    pixdim: Sequence[float] | None,
    keys: Sequence[str] = ("training", "unlabeled"),
    max_pad_ratio: float = 3.0,
) -> list[str]:
    """Training crops of ``patch_size`` from volumes resampled to ``pixdim``: a patch more than
    ``max_pad_ratio`` times a volume along an axis is mostly padding (an error); a patch larger
    than a volume but within the ratio is padded (logged as a warning)."""
    content, base, problems = _load_datalist(datalist)
    if problems or pixdim is None or len(patch_size) != 3:
        return problems
    for key in keys:
        for i, entry in enumerate(content.get(key) or []):
            image = entry.get("image") if isinstance(entry, Mapping) else entry
            if not isinstance(image, (str, os.PathLike)):
                continue
            path = Path(image) if os.path.isabs(image) else base / image
            try:
                shape, affine = _header(path)
            except Exception:  # unreadable files are reported by the integrity check
                continue
            if len(shape) < 3:
                continue
            size = _resampled_ras_shape(shape[:3], affine, pixdim)
            ratio = max(p / s for p, s in zip(patch_size, size))
            if ratio > max_pad_ratio:
                problems.append(
                    f"patch_size={list(patch_size)} is larger than {key}[{i}] ({path}: {list(size)} voxels at "
                    f"pixdim={list(pixdim)}) by {ratio:.1f}x, more than max_pad_ratio={max_pad_ratio:g}: "
                    "lower patch_size (or pixdim)"
                )
            elif ratio > 1:
                logger.warning(f"{key}[{i}] ({path}) is smaller than patch_size={list(patch_size)} after resampling "
                               f"({list(size)}): it is padded")  # fmt: skip
    return problems


def check_dicom_series(folder: str | os.PathLike, key: str = "input") -> list[str]:
    """A DICOM folder holds exactly one series (MONAI's reader would silently take the first)."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)
    names.AddSeriesRestriction("0008|0021")  # the same grouping as monai.data.ITKReader
    names.SetDirectory(str(folder))
    uids = list(names.GetSeriesUIDs())
    if not uids:
        return [f"{key}={str(folder)!r} holds no DICOM series"]
    if len(uids) > 1:
        listing = "; ".join(f"{uid} ({len(names.GetFileNames(uid))} files)" for uid in uids)
        return [f"{key}={str(folder)!r} holds {len(uids)} DICOM series ({listing}): put each series in its own folder"]
    return []


def check_image(path: str | os.PathLike, key: str = "input", ct: bool = True) -> list[str]:
    """One input image: readable, 3-D, finite, and (``ct``) in CT Hounsfield units."""
    from scdl_monai.data.integrity import check_volume

    path = Path(path)
    if path.is_dir():
        problems = check_dicom_series(path, key)
        if problems:
            return problems
    return [f"{p.key}={p.file!r}: {p.message}" for p in check_volume(path, key, ct=ct)]


# ------------------------------------------------------------------------------------ entry points
def check_training(
    datalist: str | os.PathLike | Mapping,
    num_classes: int,
    method: nn.Module | None = None,
    dataset_name: str | None = None,
    class_names: Sequence[str] | None = None,
    patch_size: Sequence[int] | None = None,
    pixdim: Sequence[float] | None = None,
    ckpt_dir: str | None = None,
    output_dir: str | None = None,
    resume_from: str | None = None,
    verify_data: bool = True,
    ct: bool = True,
    max_pad_ratio: float = 3.0,
    num_workers: int = 1,
    on_error: str = "raise",
    protocol: str | None = None,
) -> None:
    """Check a training run before it starts; report every problem at once.

    Args:
        datalist: the datalist JSON (or its dict) the run reads.
        num_classes: C, background included.
        method: the :class:`~scdl_monai.methods.base.SemiSupervisedMethod` (its networks are checked;
            ``method.requires_unlabeled`` decides whether the ``unlabeled`` list is needed).
        dataset_name: ``synapse``/``amos``; ``num_classes`` must match it.
        class_names: one name per class.
        protocol: the bundle's preprocessing protocol label (``native``, ``dhc``, ``ga``), read by
            config expressions (``val_crop``, the ``pixdim`` check): an unknown one is refused.
        patch_size: training patch (and sliding-window ROI).
        pixdim: training voxel size (mm) the volumes are resampled to.
        ckpt_dir, output_dir: folders the run writes.
        resume_from: checkpoint to resume from (empty: none).
        verify_data: read every file of the used datalist keys fully (integrity check).
        ct: require CT intensities in Hounsfield units (with ``verify_data``).
        max_pad_ratio: largest accepted patch / volume size ratio along an axis.
        num_workers: threads reading files.
        on_error: ``"raise"`` a :class:`PreflightError`, or ``"exit"`` with status 1 and the message.

    Raises:
        PreflightError: listing the problems (``on_error="raise"``).
        SystemExit: with the same message (``on_error="exit"``).
    """
    problems: list[str] = []
    networks = _networks(method) if method is not None else {}
    needs_unlabeled = bool(getattr(method, "requires_unlabeled", True)) if method is not None else False
    required = {"training": "labeled training cases", "validation": "validation cases"}
    if needs_unlabeled:
        required["unlabeled"] = f"unlabeled cases, needed by {type(method).__name__}"
    split_problems = check_splits(datalist, required)
    problems += split_problems
    problems += check_num_classes(num_classes, dataset_name, class_names, networks)
    problems += check_protocol(protocol)
    if patch_size is not None:
        problems += check_divisible(patch_size, networks)
    for key, folder in (("ckpt_dir", ckpt_dir), ("output_dir", output_dir)):
        if folder:
            problems += check_writable(folder, key)
    if resume_from and method is not None:
        problems += check_checkpoint(resume_from, {"method": method}, key="resume_from")
    if not split_problems:
        keys = [k for k in required if k in ("training", "unlabeled", "validation")]
        if verify_data and not problems:  # reading every file is the slow part: only for an otherwise valid run
            from scdl_monai.data.integrity import check_datalist

            # the training keys together (a case both labeled and unlabeled is a mistake); validation
            # on its own: validating on training cases is a choice (e.g. the demo), not an error
            for group in ([k for k in keys if k != "validation"], ["validation"]):
                found = check_datalist(datalist, num_classes=num_classes, keys=group, num_workers=num_workers, ct=ct)
                problems += [f"{p.key}: {p.file}: {p.message}" for p in found]
        if patch_size is not None:
            problems += check_patch_vs_volumes(datalist, patch_size, pixdim, keys=[k for k in keys if k != "validation"],
                                               max_pad_ratio=max_pad_ratio)  # fmt: skip
    _report(problems, "training", on_error)


def check_inference(
    inputs: Sequence[str | os.PathLike],
    network: nn.Module,
    ckpt: str | os.PathLike,
    outputs: Sequence[str | os.PathLike],
    patch_size: Sequence[int] | None = None,
    ct: bool = True,
    on_error: str = "raise",
    ckpt_hint: Callable[[], str | None] | None = None,
) -> None:
    """Check an inference run: every input image (:func:`check_image`), the checkpoint against the
    network, ``patch_size`` against the network and the output folders.

    ``ckpt_hint`` is called when the checkpoint does not fit; a message it returns (e.g. the
    config values that would fit, from :func:`shape_hyperparameters`) replaces the generic one.

    Raises:
        PreflightError / SystemExit: as in :func:`check_training`.
    """
    problems: list[str] = []
    for path in inputs:
        problems += check_image(path, key="input", ct=ct)
    ckpt_problems = check_checkpoint(ckpt, {"model": network}, key="ckpt")
    hint = ckpt_hint() if ckpt_problems and ckpt_hint is not None else None
    problems += [hint] if hint else ckpt_problems
    if patch_size is not None:
        problems += check_divisible(patch_size, {"network": network})
    for folder in dict.fromkeys(str(Path(o).parent if Path(o).suffix else Path(o)) for o in outputs):
        problems += check_writable(folder, "output")
    _report(problems, "inference", on_error)
