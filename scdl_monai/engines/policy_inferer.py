"""Sliding-window inference under a precision policy, with probability or logit fusion of the windows.

:class:`PolicyInferer` is MONAI's ``SlidingWindowInferer`` running each window batch under a
:class:`~scdl_monai.engines.precision.PrecisionPolicy` (autocast, channels-last) and stitching in
fp32; :func:`exact_overlap` snaps overlaps so MONAI's integer scan interval is the intended stride.
"""

from __future__ import annotations

import dataclasses

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from scdl_monai.engines.precision import PrecisionPolicy, _device_type

__all__ = ["FUSIONS", "PolicyInferer", "exact_overlap"]


#: How :class:`PolicyInferer` fuses overlapping windows: ``"probabilities"`` (softmax over the
#: channels of every window, then MONAI averages the probabilities) or ``"logits"`` (MONAI's
#: default: the raw network outputs are averaged).
FUSIONS = ("probabilities", "logits")


def _to_float32(y: Any) -> Any:
    if isinstance(y, torch.Tensor):
        return y.float()
    if isinstance(y, Mapping):
        return {k: _to_float32(v) for k, v in y.items()}
    if isinstance(y, (tuple, list)):
        return type(y)(_to_float32(v) for v in y)
    return y


class PolicyInferer(SlidingWindowInferer):
    """MONAI's ``SlidingWindowInferer`` that runs each window batch under a :class:`PrecisionPolicy`.

    Per window batch: inputs laid out channels-last (policy), network called under the policy's
    autocast inside ``torch.no_grad()`` (one region per volume), outputs cast to fp32 **before**
    MONAI stitches the overlapping windows (so the accumulation and the importance-map weighting
    run in fp32). With ``fusion="probabilities"`` each window's output is turned into class
    probabilities (softmax over dim 1, in fp32) before stitching, so the volume is the average of
    per-window probabilities, as the reference test scripts compute it (``score_map += softmax(net(patch))``,
    ``score_map / cnt`` in ``xmed-lab/DHC:code/utils/__init__.py`` ``test_single_case``); an
    ensemble's rule (e.g. :class:`~scdl_monai.methods.base.LogitMean`, the mean of two networks'
    logits) runs inside the window, before that softmax. ``fusion="logits"`` averages the raw
    outputs (MONAI's behaviour).
    Overlaps are snapped so that MONAI's scan interval ``int(roi * (1 - overlap))`` equals the
    intended stride when ``roi * (1 - overlap)`` is an integer up to float rounding (``5/6`` of a
    96 window is stride 16, where plain float arithmetic gives 15); :func:`exact_overlap`.
    Everything else — windows, overlap, blending, padding, ``sw_device``/``device`` stitching,
    ``cpu_thresh``, buffered stitching — is MONAI's own code.

    Speed levers (see ``benchmarks/fastpath.py``): ``precision="bf16"`` (CPU with AVX512-BF16/AMX
    or an Ampere+ GPU) or "fp16" (GPU), ``channels_last=True``, ``sw_batch_size`` > 1 (fewer,
    larger oneDNN calls); ``device="cpu"`` with ``sw_device="cuda"`` stitches a large volume in
    host memory while the network runs on the GPU.

    Args:
        roi_size: window size, as MONAI.
        precision: a :class:`PrecisionPolicy`, a precision name or a dict of its arguments; it is
            resolved against the device the network runs on (``sw_device`` or the input's device)
            at the first call, with the usual logged fallbacks.
        sw_batch_size, overlap, mode, sigma_scale, padding_mode, cval, sw_device, device,
        progress, cache_roi_weight_map, cpu_thresh, buffer_steps, buffer_dim, with_coord:
            as ``monai.inferers.SlidingWindowInferer``.
        prepare_network: apply ``policy.prepare_module`` to the network at each call (a no-op
            after the first; channels-last weights avoid a re-layout per window).
        fusion: ``"logits"`` (default, MONAI's averaging of the raw outputs) or
            ``"probabilities"`` (softmax per window, then averaging); :data:`FUSIONS`. The bundles
            set it from the config key ``sw_fusion``.

    Attributes:
        requested_overlap: the overlap as given; :attr:`overlap` is the snapped value MONAI uses.
        scan_interval: the stride of the windows per spatial axis, ``int(roi * (1 - overlap))``.

    Example:
        >>> from scdl_monai.networks.vnet import VNet
        >>> inferer = PolicyInferer((16, 16, 16), precision="bf16", channels_last=True, sw_batch_size=2)
        >>> net = VNet(out_channels=3, n_filters=4).eval()
        >>> inferer(torch.randn(1, 1, 24, 24, 24), net).shape
        torch.Size([1, 3, 24, 24, 24])
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        precision: PrecisionPolicy | str | Mapping[str, Any] | None = "fp32",
        channels_last: bool | None = None,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.25,
        mode: str = "constant",
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: str = "constant",
        cval: float = 0.0,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        cache_roi_weight_map: bool = False,
        cpu_thresh: int | None = None,
        buffer_steps: int | None = None,
        buffer_dim: int = -1,
        with_coord: bool = False,
        prepare_network: bool = True,
        fusion: str = "logits",
    ) -> None:
        if fusion not in FUSIONS:
            raise ValueError(
                f"PolicyInferer: fusion (config key sw_fusion) must be one of {FUSIONS}, got {fusion!r}."
            )
        requested_overlap = overlap
        overlap = exact_overlap(roi_size, overlap)
        if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
            raise ValueError(f"PolicyInferer: sw_batch_size must be a positive integer, got {sw_batch_size!r}.")
        super().__init__(
            roi_size,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode=mode,
            sigma_scale=sigma_scale,
            padding_mode=padding_mode,
            cval=cval,
            sw_device=sw_device,
            device=device,
            progress=progress,
            cache_roi_weight_map=cache_roi_weight_map,
            cpu_thresh=cpu_thresh,
            buffer_steps=buffer_steps,
            buffer_dim=buffer_dim,
            with_coord=with_coord,
        )
        if precision is None or isinstance(precision, (str, torch.dtype)):
            precision = PrecisionPolicy(precision or "fp32")
        elif isinstance(precision, Mapping):
            precision = PrecisionPolicy(**precision)
        if not isinstance(precision, PrecisionPolicy):
            raise TypeError(
                "PolicyInferer: precision must be a PrecisionPolicy, a precision name or a dict, "
                f"got {type(precision).__name__}."
            )
        if channels_last is not None:
            precision = dataclasses.replace(precision, channels_last=bool(channels_last))
        self.policy = precision
        self.prepare_network = bool(prepare_network)
        self.fusion = fusion
        self.requested_overlap = requested_overlap
        self._resolved: dict[str, PrecisionPolicy] = {}

    @property
    def scan_interval(self) -> tuple[int, ...]:
        """Window stride per spatial axis (MONAI: ``int(roi * (1 - overlap))``, at least 1)."""
        roi = (self.roi_size,) if isinstance(self.roi_size, int) else tuple(self.roi_size)
        overlaps = self.overlap if isinstance(self.overlap, Sequence) else [self.overlap] * len(roi)
        return tuple(max(int(r * (1 - o)), 1) for r, o in zip(roi, overlaps))

    def policy_for(self, device: Any) -> PrecisionPolicy:
        """The effective policy for the device that runs the network (resolved once per device type)."""
        device_type = _device_type(device)
        if device_type not in self._resolved:
            self._resolved[device_type] = self.policy.resolve(device)
        return self._resolved[device_type]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Sliding-window inference of ``network`` on ``inputs`` (B, C, *spatial) under the policy.

        Returns:
            what MONAI returns (fp32 tensors) on ``device``: averaged logits (B, C_out, *spatial),
            or averaged class probabilities with ``fusion="probabilities"``.
        """
        policy = self.policy_for(self.sw_device if self.sw_device is not None else inputs.device)
        if self.prepare_network and isinstance(network, nn.Module):
            policy.prepare_module(network)

        probabilities = self.fusion == "probabilities"

        def run_window(window: torch.Tensor, *a: Any, **kw: Any) -> Any:
            out = _to_float32(network(policy.prepare_input(window), *a, **kw))
            if probabilities:
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        "PolicyInferer: fusion='probabilities' needs a network that returns one tensor of "
                        f"logits, got {type(out).__name__}; use sw_fusion='logits' or an inference network."
                    )
                out = torch.softmax(out, dim=1)
            return out

        # One autocast region for the whole volume: autocast then casts each weight once per
        # volume instead of once per window batch (measured ~7% of the bf16 time); MONAI's
        # stitching is element-wise on the fp32 window outputs, which autocast leaves in fp32.
        with torch.no_grad(), policy.autocast():
            return super().__call__(inputs, run_window, *args, **kwargs)


def exact_overlap(roi_size: Sequence[int] | int, overlap: Sequence[float] | float) -> Sequence[float] | float:
    """Overlap(s) for which MONAI's scan interval ``int(roi * (1 - overlap))`` is the intended stride.

    MONAI truncates ``roi * (1 - overlap)``; a fraction such as ``5/6`` of a 96 window is stride
    16 in exact arithmetic but ``15.999999999999996`` in floats, which MONAI truncates to 15. Where
    ``roi * (1 - overlap)`` is within ``1e-6`` of an integer ``k`` the overlap is replaced by
    ``1 - (k + 0.5) / roi`` (interval exactly ``k``; 0 when ``k >= roi``); every other value is
    returned unchanged, so MONAI's own semantics hold. Window sizes that are not positive
    integers (MONAI's ``-1`` = whole axis) are left alone.

    Example:
        >>> exact_overlap([96, 96, 96], [2 / 3, 2 / 3, 5 / 6])[2] < 5 / 6
        True
    """
    if isinstance(overlap, (int, float)) and not isinstance(overlap, bool):
        if isinstance(roi_size, int):
            return _exact_overlap_axis(roi_size, float(overlap))
        snapped = [_exact_overlap_axis(r, float(overlap)) for r in roi_size]
        return overlap if all(o == float(overlap) for o in snapped) else snapped
    if isinstance(overlap, Sequence) and not isinstance(overlap, str):
        rois = [roi_size] * len(overlap) if isinstance(roi_size, int) else list(roi_size)
        if len(rois) != len(overlap):
            return overlap  # MONAI reports the length mismatch
        return [_exact_overlap_axis(r, float(o)) for r, o in zip(rois, overlap)]
    return overlap


def _exact_overlap_axis(roi: int, overlap: float) -> float:
    if isinstance(roi, bool) or not isinstance(roi, int) or roi <= 0 or not 0.0 <= overlap < 1.0:
        return overlap
    interval = roi * (1.0 - overlap)
    k = round(interval)
    if abs(interval - k) > 1e-6 * max(1.0, roi) or int(interval) == k:
        return overlap
    return max(1.0 - (k + 0.5) / roi, 0.0)
