"""GenericSSL's "StrongAug" policy as one MONAI dictionary transform: 3 of 6 random ops per sample.

Source: docs/methods.md#training-step ("StrongAug") and the reference
``xmed-lab/GenericSSL@e73bde94:code/data/StrongAug.py`` (``get_StrongAug(patch_size, 3, 0.7)``,
``RandomSelect``, ``RotationTransform``, ``ScaleTransform``) with its batchgenerators 0.21 pieces
(``GaussianBlurTransform``, ``BrightnessMultiplicativeTransform``, ``ContrastAugmentationTransform``,
``GammaTransform``). Per sample, ``num_ops = 3`` of the six ops are drawn without replacement in a
random order and each is applied with probability ``prob = 0.7``:

=============  ============================================================  ===================================
op             parameters (reference sampling)                               built from
=============  ============================================================  ===================================
``rotate``     angle ``U(−15°, 15°)`` in the axial plane (about the last     ``monai.transforms.Affine``
               spatial axis of MONAI's ``(x, y, z)`` arrays = the reference's  (``rotate_params``), zero padding
               first axis of its ``(z, y, x)`` arrays)
``zoom``       isotropic coordinate scale ``s``: with p 0.5 ``U(0.7, 1)``,    ``Affine`` (``scale_params = s``:
               else exactly 1 (no-op); ``s < 1`` zooms **in** by ``1/s``      sampling grid scaled about the
               about the centre (``augment_scale``)                          centre, as ``scale_coords``)
``blur``       isotropic Gaussian, ``σ ~ U(0.7, 1.3)``, truncated at 4σ,      MONAI ``gaussian_1d`` (sampled,
               mirror ("symmetric", scipy ``reflect``) border                 normalised) + ``separable_filtering``
``brightness`` ``x·f``, ``f ~ U(0.7, 1.3)``                                  ``ScaleIntensity(factor=f−1)``
``contrast``   ``(x − mean)·f + mean`` clipped to the original range;         ``ScaleIntensityFixedMean(factor=f−1,
               ``f``: with p 0.5 ``U(0.7, 1)`` else ``U(1, 1.3)``             preserve_range=True)``
``gamma``      ``((x−min)/range)^γ·range + min``, mean/std restored;          ``AdjustContrast(gamma,
               ``γ``: with p 0.5 ``U(0.7, 1)`` else ``U(1, 1.3)``             retain_stats=True)``
=============  ============================================================  ===================================

Spatial ops transform the image (cubic spline, the reference's ``order_data=3``, by default) and
the label keys (``"nearest"``; the reference interpolates each label's mask linearly and
thresholds, which gives the same labels up to boundary voxels) with the same parameters; the
intensity ops touch image keys only. Channels share one parameter draw (the reference draws per
channel; the images here are single-channel CT).

Not part of this transform: the reference's preceding ``RandomCrop`` (use the protocol's crop,
:func:`scdl_monai.data.transforms.protocol_transforms`) and its label clean-up (``-1 -> 0``).

Randomness: a MONAI ``Randomizable`` — seed it with ``set_random_state`` (``Compose`` and MONAI's
data loaders do this). The plan of the last call is kept in :attr:`StrongAugd.last_plan` /
:attr:`StrongAugd.last_ops` (for tests and logging).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.networks.layers import separable_filtering
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import (
    AdjustContrast,
    Affine,
    MapTransform,
    Randomizable,
    ScaleIntensity,
    ScaleIntensityFixedMean,
)
from monai.utils import convert_to_dst_type, convert_to_tensor, ensure_tuple, look_up_option

__all__ = ["StrongAugd", "STRONG_AUG_OPS"]

#: The six candidate ops, in the reference's list order.
STRONG_AUG_OPS: tuple[str, ...] = ("rotate", "zoom", "blur", "brightness", "contrast", "gamma")
_SPATIAL_OPS = ("rotate", "zoom")


def _range(name: str, value, *, around_one: bool = False) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"StrongAugd: `{name}` must be a (low, high) pair of floats, got {value!r}.") from None
    if not (0.0 < lo <= hi) or (around_one and not lo <= 1.0 <= hi):
        need = "0 < low <= 1 <= high" if around_one else "0 < low <= high"
        raise ValueError(f"StrongAugd: `{name}` needs {need}, got {value!r}.")
    return lo, hi


def _symmetric_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad every spatial dim of ``(B, C, *spatial)`` by ``pad`` with scipy's ``reflect`` rule (d c b a | a b c d)."""
    for dim in range(2, x.ndim):
        n = x.shape[dim]
        idx = torch.arange(-pad, n + pad, device=x.device) % (2 * n)
        idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)
        x = x.index_select(dim, idx)
    return x


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Isotropic Gaussian of ``(C, *spatial)``; kernel as scipy ``gaussian_filter`` (truncate 4, mirror border)."""
    kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=4.0, approx="sampled", normalize=True)
    r = (kernel.numel() - 1) // 2
    x = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
    out = separable_filtering(_symmetric_pad(x[None], r), kernel, mode="zeros")[0]
    crop = (slice(None),) + (slice(r, -r if r else None),) * (x.ndim - 1)
    return convert_to_dst_type(out[crop], dst=img)[0]


class StrongAugd(Randomizable, MapTransform):
    """GenericSSL StrongAug: per call, ``num_ops`` of the ops, each applied with probability ``prob``.

    Args:
        keys: keys to transform (images and labels), e.g. ``("image", "label")``. Arrays are
            channel-first ``(C, *spatial)`` tensors or NumPy arrays.
        label_keys: the subset of ``keys`` holding label maps: spatial ops use ``label_mode`` on them
            and intensity ops skip them (dtype is preserved).
        num_ops: ops drawn per sample without replacement (reference 3).
        prob: probability that a drawn op is applied (reference 0.7).
        ops: candidate op names, a subset of :data:`STRONG_AUG_OPS` (default: all six).
        rotate_range: maximum absolute rotation angle in radians (reference 15°).
        rotate_axis: spatial axis the rotation is about (default 2 = ``z`` for MONAI ``(x, y, z)``
            arrays, i.e. in-plane); ignored for 2-D inputs.
        scale_range: coordinate-scale range of ``zoom`` (reference ``(0.7, 1.0)``, needs
            ``low <= 1 <= high``; the upper half ``U(1, high)`` is drawn with p 0.5).
        blur_sigma: range of the Gaussian σ in voxels (reference ``(0.7, 1.3)``).
        brightness_range: multiplier range (reference ``(0.7, 1.3)``).
        contrast_range: contrast-factor range (reference ``(0.7, 1.3)``, ``low <= 1 <= high``).
        gamma_range: γ range (reference ``(0.7, 1.3)``, ``low <= 1 <= high``).
        image_mode: interpolation of spatial ops on image keys: ``"bilinear"``, ``"nearest"`` or a
            spline order 0–5 (reference 3).
        label_mode: interpolation on label keys (``"nearest"``).
        allow_missing_keys: skip keys that are absent (e.g. no label on unlabeled samples).

    Raises:
        ValueError: invalid ranges, probabilities, op names, ``num_ops`` or label keys.

    Example:
        >>> aug = StrongAugd(("image", "label"), label_keys="label")
        >>> _ = aug.set_random_state(seed=0)
        >>> out = aug({"image": torch.rand(1, 32, 32, 32), "label": torch.zeros(1, 32, 32, 32, dtype=torch.long)})
        >>> len(aug.last_ops)
        3
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        label_keys: KeysCollection = ("label",),
        num_ops: int = 3,
        prob: float = 0.7,
        ops: Sequence[str] = STRONG_AUG_OPS,
        rotate_range: float = math.radians(15.0),
        rotate_axis: int = 2,
        scale_range: Sequence[float] = (0.7, 1.0),
        blur_sigma: Sequence[float] = (0.7, 1.3),
        brightness_range: Sequence[float] = (0.7, 1.3),
        contrast_range: Sequence[float] = (0.7, 1.3),
        gamma_range: Sequence[float] = (0.7, 1.3),
        image_mode: str | int = 3,
        label_mode: str | int = "nearest",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.label_keys = ensure_tuple(label_keys) if label_keys is not None else ()
        unknown = [k for k in self.label_keys if k not in self.keys]
        if unknown:
            raise ValueError(f"StrongAugd: `label_keys` {unknown} are not in `keys` {self.keys}.")
        if isinstance(ops, str) or not isinstance(ops, Sequence) or len(ops) == 0:
            raise ValueError(
                f"StrongAugd: `ops` must be a non-empty sequence of names from {STRONG_AUG_OPS}, got {ops!r}."
            )
        try:
            self.ops = tuple(look_up_option(o, STRONG_AUG_OPS) for o in ops)
        except ValueError as err:
            msg = f"StrongAugd: `ops` {tuple(ops)!r} must be names from {STRONG_AUG_OPS}. {err}"
            raise ValueError(msg.strip()) from None
        if len(set(self.ops)) != len(self.ops):
            raise ValueError(f"StrongAugd: `ops` contains duplicates: {ops!r}.")
        if isinstance(num_ops, bool) or not isinstance(num_ops, int) or not 0 <= num_ops <= len(self.ops):
            raise ValueError(f"StrongAugd: `num_ops` must be an int in [0, {len(self.ops)}], got {num_ops!r}.")
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"StrongAugd: `prob` must be a float in [0, 1], got {prob!r}.")
        if not isinstance(rotate_range, (int, float)) or not 0.0 <= float(rotate_range) <= math.pi:
            raise ValueError(f"StrongAugd: `rotate_range` must be an angle in [0, pi] radians, got {rotate_range!r}.")
        if isinstance(rotate_axis, bool) or not isinstance(rotate_axis, int) or rotate_axis not in (0, 1, 2):
            raise ValueError(f"StrongAugd: `rotate_axis` must be 0, 1 or 2, got {rotate_axis!r}.")
        self.num_ops = num_ops
        self.prob = float(prob)
        self.rotate_range = float(rotate_range)
        self.rotate_axis = rotate_axis
        self.scale_range = _range("scale_range", scale_range, around_one=True)
        self.blur_sigma = _range("blur_sigma", blur_sigma)
        self.brightness_range = _range("brightness_range", brightness_range)
        self.contrast_range = _range("contrast_range", contrast_range, around_one=True)
        self.gamma_range = _range("gamma_range", gamma_range, around_one=True)
        self.image_mode = image_mode
        self.label_mode = label_mode
        #: ``((op, params or None), ...)`` of the last call, in application order; ``None`` = not applied.
        self.last_plan: tuple[tuple[str, dict[str, float] | None], ...] = ()

    @property
    def last_ops(self) -> tuple[str, ...]:
        """Names of the ops drawn for the last sample (applied or not), in application order."""
        return tuple(name for name, _ in self.last_plan)

    # ------------------------------------------------------------------ sampling
    def _around_one(self, lo: float, hi: float) -> float:
        """batchgenerators' rule: with p 0.5 ``U(lo, 1)`` (if ``lo < 1``), else ``U(max(lo, 1), hi)``."""
        if self.R.random_sample() < 0.5 and lo < 1.0:
            return float(self.R.uniform(lo, 1.0))
        return float(self.R.uniform(max(lo, 1.0), hi))

    def _sample(self, name: str) -> dict[str, float]:
        if name == "rotate":
            return {"angle": float(self.R.uniform(-self.rotate_range, self.rotate_range))}
        if name == "zoom":
            return {"scale": self._around_one(*self.scale_range)}
        if name == "blur":
            return {"sigma": float(self.R.uniform(*self.blur_sigma))}
        if name == "brightness":
            return {"factor": float(self.R.uniform(*self.brightness_range))}
        if name == "contrast":
            return {"factor": self._around_one(*self.contrast_range)}
        return {"gamma": self._around_one(*self.gamma_range)}

    def randomize(self, data: Any = None) -> None:
        """Draw the ops (without replacement, random order), their apply flags and parameters."""
        chosen = self.R.choice(len(self.ops), size=self.num_ops, replace=False)
        plan = []
        for i in chosen:
            name = self.ops[int(i)]
            applied = self.R.random_sample() < self.prob
            plan.append((name, self._sample(name) if applied else None))
        self.last_plan = tuple(plan)

    # ------------------------------------------------------------------ application
    def _spatial(self, img, name: str, params: dict[str, float], mode):
        spatial_dims = img.ndim - 1
        if name == "rotate":
            if spatial_dims == 2:
                rotate = params["angle"]
            else:
                rotate = [0.0] * spatial_dims
                rotate[self.rotate_axis] = params["angle"]
            affine = Affine(rotate_params=rotate, mode=mode, padding_mode="zeros", image_only=True)
        else:
            if params["scale"] == 1.0:  # the reference's "no zoom" branch: identity
                return img
            scale = [params["scale"]] * spatial_dims
            affine = Affine(scale_params=scale, mode=mode, padding_mode="zeros", image_only=True)
        out = affine(img)
        return convert_to_dst_type(out, dst=img, dtype=img.dtype)[0]

    @staticmethod
    def _intensity(img, name: str, params: dict[str, float]):
        if name == "blur":
            return _gaussian_blur(img, params["sigma"])
        if name == "brightness":
            return ScaleIntensity(minv=None, maxv=None, factor=params["factor"] - 1.0, dtype=None)(img)
        if name == "contrast":
            return ScaleIntensityFixedMean(
                factor=params["factor"] - 1.0, preserve_range=True, fixed_mean=True, channel_wise=True, dtype=None
            )(img)
        gamma = AdjustContrast(gamma=params["gamma"], retain_stats=True)
        channels = [gamma(img[c : c + 1]) for c in range(img.shape[0])]  # per channel, as the reference
        out = torch.cat([convert_to_tensor(c, track_meta=False) for c in channels])
        return convert_to_dst_type(out, dst=img)[0]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(d)
        for name, params in self.last_plan:
            if params is None:
                continue
            for key in self.key_iterator(d):
                is_label = key in self.label_keys
                if name in _SPATIAL_OPS:
                    d[key] = self._spatial(d[key], name, params, self.label_mode if is_label else self.image_mode)
                elif not is_label:
                    d[key] = self._intensity(d[key], name, params)
        return d
