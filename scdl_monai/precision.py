"""Precision and memory-format policy: fp32, bf16 autocast, fp16 + GradScaler, channels-last 3-D.

One object, chosen once in the bundle config, decides how a run computes; the trainer
(:class:`~scdl_monai.engines.trainer.SemiSupervisedTrainer`, ``precision=``) and the inferer
(:class:`PolicyInferer`) apply it, nothing else branches on it (docs/performance.md)::

    "precision": {"_target_": "scdl_monai.precision.PrecisionPolicy", "precision": "bf16", "channels_last": true}

:meth:`PrecisionPolicy.resolve` turns the request into what the device can do and **logs the
reason of every fallback** (logger ``scdl_monai.precision``, level WARNING):

========================  ====================================================================
request                   effective policy
========================  ====================================================================
fp16 on CPU               fp32: float16 training needs loss scaling, which this policy (like
                          MONAI's trainers) enables only on CUDA, and oneDNN has no native
                          float16 kernels on most CPUs (``torch.ops.mkldnn._is_mkldnn_fp16_supported``)
bf16 on CPU without it    fp32 (oneDNN not available, or the CPU has no bf16 instructions, or the
                          tiny autocast probe convolution fails)
bf16 on CUDA without it   fp32 (``torch.cuda.is_bf16_supported()`` is False, pre-Ampere GPUs)
bf16/fp16, no CUDA        fp32 (a "cuda" device was named but ``torch.cuda.is_available()`` is False)
channels_last, 1-D nets   disabled (only 4-D ``channels_last`` / 5-D ``channels_last_3d`` exist)
========================  ====================================================================

**CPU bf16 convolution guard (measured, torch 2.13 / oneDNN 3.12, AMD EPYC with AVX512-BF16).**
oneDNN's bf16 ``conv3d`` *weight-gradient* kernel reads uninitialised memory when the input's
extent along the **first** spatial axis is smaller than the kernel but larger than 1 (seen for
D = 2 with 3³ kernels and D = 2, 3, 4 with 5³ kernels, any H/W, batch 2, 1 to 512 channels, both
the default and the ``channels_last_3d`` layout; D ≥ kernel with H or W = 2 was exact in all
156 measured cases). The weight gradient is then garbage: NaN when the recycled memory held
NaN, otherwise finite values up to 1e36 times too large, so a NaN check alone would not catch
it. Forward outputs, input gradients, fp32, 1³ and stride-2 convolutions and transposed
convolutions are exact. The VNet hits it at its 2×4×4 bottleneck for 32×64×64 patches (the
reference DHC run without the guard ended with non-finite gradients) and at 2³ for 16³ test
patches (12 of 20 seeded tiny VNet runs got NaN losses within 3 iterations). The guard
(:class:`BF16ConvGuard`, on by default for CPU bf16 training) computes the weight gradient of
exactly those convolutions with a large-enough spatial axis swapped to the front (still bf16;
exact gradients; forward and input gradient unchanged) or, when every axis is too small, runs
them in fp32. :func:`cpu_bf16_conv_defect` reproduces the defect in a few
milliseconds; ``resolve`` records its result in :attr:`PrecisionPolicy.notes`; the cost of the
guard is measured by ``benchmarks/fastpath.py`` (configuration ``fast_noguard``).

**Where float32 is kept, and why** (autocast only lowers matmul/convolution-like ops; these
parts do their own casting):

* losses (:mod:`scdl_monai.losses.segmentation`, :mod:`scdl_monai.losses.ga`) call
  ``logits.float()``; softmax, CE and the soft-Dice sums over ~10⁵-10⁶ voxels run in fp32
  (bf16 has 8 significant bits: a sum of 10⁶ terms would lose every small organ's contribution);
* class-weighting trackers (:mod:`scdl_monai.weighting`) count argmax labels into fp32 buffers and
  update EMAs in fp32 (an EMA with momentum 0.99 cannot move in bf16: 0.01·Δ is below bf16's
  resolution for weights near 1);
* SCDL class statistics: :meth:`scdl_monai.networks.class_distribution.SCDL.forward` runs everything after the
  projector MLP (normalisation, cosines to the proxies, the softmax assignments at τ = 0.2, the
  priors) with autocast disabled on fp32 inputs (a bf16 cosine has ~3 significant digits, then
  amplified 5x by 1/τ); the SCDL losses cast to fp32 as well. Note that ``.float()`` inputs alone
  do **not** protect a ``matmul``/``einsum`` inside autocast (it is cast back to bf16), hence the
  explicit region (:meth:`PrecisionPolicy.float32` / :func:`float32_region` for new code);
* metrics and sliding-window stitching: :class:`PolicyInferer` casts every window's output to
  fp32 before MONAI accumulates overlapping windows; metrics see argmax labels.

Normalisation layers run in the autocast dtype on their (bf16) inputs; their running statistics
and all parameters stay fp32 (autocast never changes parameter dtypes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer
from torch import nn
from torch.overrides import TorchFunctionMode

from scdl_monai.data.utils import as_flag

__all__ = [
    "PRECISIONS",
    "PrecisionPolicy",
    "BF16ConvGuard",
    "PolicyInferer",
    "FUSIONS",
    "exact_overlap",
    "as_policy",
    "cpu_bf16_support",
    "cpu_bf16_conv_defect",
    "float32_region",
]

logger = logging.getLogger(__name__)

#: canonical precision names.
PRECISIONS = ("fp32", "bf16", "fp16")
_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "32": "fp32", "no": "fp32", "none": "fp32",
    "bf16": "bf16", "bfloat16": "bf16", "bf16-mixed": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "16": "fp16", "16-mixed": "fp16",
}  # fmt: skip
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: How :class:`PolicyInferer` fuses overlapping windows: ``"probabilities"`` (softmax over the
#: channels of every window, then MONAI averages the probabilities) or ``"logits"`` (MONAI's
#: default: the raw network outputs are averaged).
FUSIONS = ("probabilities", "logits")
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _canonical_precision(value: Any) -> str:
    if isinstance(value, torch.dtype):
        if value not in _DTYPE_NAMES:
            raise ValueError(f"precision must be one of {PRECISIONS} or float32/bfloat16/float16, got {value}.")
        return _DTYPE_NAMES[value]
    key = str(value).lower().replace("torch.", "").strip()
    if key not in _ALIASES:
        raise ValueError(f"precision must be one of {PRECISIONS} (or an alias such as 'bfloat16'), got {value!r}.")
    return _ALIASES[key]


def _device_type(device: Any) -> str:
    if device is None:
        return "cpu"
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device or its name (e.g. 'cpu', 'cuda:0'), got {device!r}.") from err


# ---------------------------------------------------------------------------------- capability probes
def cpu_bf16_support() -> tuple[bool, str]:
    """Whether bf16 autocast is worth using on this CPU; ``(ok, reason)``.

    Checks, in order: oneDNN (MKLDNN) compiled in and enabled (``torch.backends.mkldnn``), oneDNN's
    own bf16 capability test (``torch.ops.mkldnn._is_mkldnn_bf16_supported``: AVX512-BF16, AMX or
    AVX-512 core), then a tiny probe: a 4³ convolution under ``torch.autocast("cpu", bfloat16)``
    must return a finite bfloat16 tensor close to the fp32 result. The capability test and the
    probe are cached per process; the ``enabled`` switch is read at every call.
    """
    if not torch.backends.mkldnn.is_available():
        return False, "torch was built without oneDNN (torch.backends.mkldnn.is_available() is False)"
    if not torch.backends.mkldnn.enabled:
        return False, (
            "oneDNN is disabled (torch.backends.mkldnn.enabled is False); bf16 would use slow reference kernels"
        )
    return _cpu_bf16_probe()


@functools.lru_cache(maxsize=None)
def _cpu_bf16_probe() -> tuple[bool, str]:
    probe_supported = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        supported = bool(probe_supported()) if probe_supported is not None else True
    except (RuntimeError, AttributeError):
        supported = True  # private API missing: rely on the probe below
    if not supported:
        capability = torch.backends.cpu.get_cpu_capability()
        return False, f"oneDNN reports no bf16 support on this CPU (capability {capability})"
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 2, 4, 4, 4, generator=g)
        w = torch.randn(3, 2, 3, 3, 3, generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.nn.functional.conv3d(x, w, padding=1)
        ref = torch.nn.functional.conv3d(x, w, padding=1)
        ok = y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all()) and bool(
            ((y.float() - ref).abs().max() <= 0.05 * ref.abs().max()).item()
        )
    except RuntimeError as err:  # e.g. an autocast/oneDNN build problem
        return False, f"the bf16 autocast probe convolution failed: {err}"
    if not ok:
        return False, "the bf16 autocast probe convolution returned a wrong or non-bf16 result"
    return True, f"oneDNN bf16 available (CPU capability {torch.backends.cpu.get_cpu_capability()})"


def cpu_bf16_conv_defect(trials: int = 3) -> bool:
    """Reproduce the oneDNN bf16 conv3d weight-gradient defect (module docstring); True if seen.

    Runs a 16→16-channel 3³ convolution on a (2, 16, 2, 4, 4) input under CPU bf16 autocast after
    filling freshly freed allocator memory with NaN, and compares the weight gradient with the
    fp32 one. The defect reads uninitialised memory, so a clean result is evidence, not proof, of
    a fixed build: the guard's default does not depend on this probe. Cached per process; works
    inside ``torch.no_grad()`` (an evaluator may resolve a policy there).
    """
    if not cpu_bf16_support()[0]:
        return False
    with torch.enable_grad():
        return _cpu_bf16_conv_defect(trials)


@functools.lru_cache(maxsize=None)
def _cpu_bf16_conv_defect(trials: int) -> bool:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 2, 4, 4, generator=g).bfloat16().float()
    w0 = (0.1 * torch.randn(16, 16, 3, 3, 3, generator=g)).bfloat16().float()
    grad_out = torch.randn(2, 16, 2, 4, 4, generator=g).bfloat16()
    w_ref = w0.clone().requires_grad_(True)
    torch.nn.functional.conv3d(x, w_ref, padding=1).backward(grad_out.float())
    scale = w_ref.grad.abs().max()
    for _ in range(trials):
        for numel in (1 << 10, 1 << 12, 1 << 14, 1 << 16):
            # recycle small blocks holding NaN: the defective kernel picks them up
            junk = torch.full((numel,), float("nan"))
            del junk
            junk = torch.full((numel,), float("nan"), dtype=torch.bfloat16)
            del junk
        w = w0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.nn.functional.conv3d(x, w, padding=1)
        y.backward(grad_out)
        err = (w.grad - w_ref.grad).abs().max()
        if not bool(torch.isfinite(err)) or bool(err > 0.1 * scale):
            return True
    return False


# ---------------------------------------------------------------------------------- the guard
_GUARDED_CONVS = {torch.conv3d, torch.nn.functional.conv3d}
_CONV_PARAMS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _triple(value: Any) -> tuple[int, int, int] | None:
    if isinstance(value, int):
        return (value, value, value)
    if isinstance(value, str):
        return None
    value = tuple(value)
    return value if len(value) == 3 else (value[0],) * 3  # type: ignore[return-value]


def _bind_conv(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    bound = {**_CONV_DEFAULTS, **dict(zip(_CONV_PARAMS, args)), **kwargs}
    return bound


def _affected(bound: Mapping[str, Any]) -> bool:
    """True for a CPU bf16-autocast conv3d with weight gradient whose first spatial axis is smaller than the kernel."""
    x, weight = bound.get("input"), bound.get("weight")
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return False
    if x.device.type != "cpu" or x.ndim != 5 or weight.ndim != 5:
        return False
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return False  # the forward kernel is exact; only the weight gradient is defective
    if not (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16):
        return False
    dilation = _triple(bound["dilation"]) or (1, 1, 1)
    return x.shape[2] < dilation[0] * (weight.shape[2] - 1) + 1


def _leading_axis_swap(bound: Mapping[str, Any]) -> int | None:
    """A spatial axis (1 or 2) to swap with the first one so that it is no smaller than its kernel."""
    x, weight = bound["input"], bound["weight"]
    dilation, stride, padding = _triple(bound["dilation"]), _triple(bound["stride"]), _triple(bound["padding"])
    if dilation is None or stride is None or padding is None:  # string padding: no swap
        return None
    for axis in (1, 2):
        if x.shape[2 + axis] >= dilation[axis] * (weight.shape[2 + axis] - 1) + 1:
            return axis
    return None


def _swap(seq: tuple[int, int, int], axis: int) -> tuple[int, int, int]:
    out = list(seq)
    out[0], out[axis] = out[axis], out[0]
    return tuple(out)  # type: ignore[return-value]


class _SwappedWeightGradConv3d(torch.autograd.Function):
    """bf16 ``conv3d`` whose weight gradient is computed with spatial ``axis`` swapped to the front.

    Forward and input/bias gradients are oneDNN's unchanged bf16 kernels (exact, module
    docstring). Only the weight gradient, the defective kernel, runs on the input and the output
    gradient with ``axis`` swapped with the first spatial axis (swapped stride, padding and
    dilation; both laid out channels-last, small bottleneck tensors), and is swapped back. The
    weight itself is never permuted or copied: the weight-gradient kernel reads only its shape,
    so an uninitialised channels-last tensor of the swapped shape stands in for it.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, axis):  # noqa: D102
        ctx.save_for_backward(x, weight)
        ctx.conf = (bias is not None, stride, padding, dilation, groups, axis)
        with torch.autocast("cpu", enabled=False):
            return torch.nn.functional.conv3d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):  # noqa: D102
        x, weight = ctx.saved_tensors
        has_bias, stride, padding, dilation, groups, axis = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        bias_sizes = [weight.shape[0]] if has_bias else None
        grad_x = grad_w = grad_b = None
        if need_x or need_b:
            grad_x, _, grad_b = torch.ops.aten.convolution_backward(
                grad_y, x, weight, bias_sizes, stride, padding, dilation, False, [0, 0, 0], groups,
                [need_x, False, need_b],
            )  # fmt: skip
        if need_w:
            fmt = torch.channels_last_3d
            shape = list(weight.shape)
            shape[2], shape[2 + axis] = shape[2 + axis], shape[2]
            _, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_y.transpose(2, 2 + axis).contiguous(memory_format=fmt),
                x.transpose(2, 2 + axis).contiguous(memory_format=fmt),
                torch.empty(shape, dtype=weight.dtype, device=weight.device, memory_format=fmt),
                None, _swap(stride, axis), _swap(padding, axis), _swap(dilation, axis), False, [0, 0, 0], groups,
                [False, True, False],
            )  # fmt: skip
            grad_w = grad_w.transpose(2, 2 + axis)
        return grad_x, grad_w, grad_b, None, None, None, None, None


class BF16ConvGuard(TorchFunctionMode):
    """Torch-function mode that keeps CPU bf16 ``conv3d`` weight gradients exact (module docstring).

    Inside the mode, a ``conv3d`` on CPU under bf16 autocast whose weight needs a gradient and
    whose input is smaller than the (dilated) kernel along the **first** spatial axis (the
    measured trigger; small second/third axes were exact in every measured case) is rewritten:

    * if another spatial axis is at least as large as its kernel, the convolution and its input
      gradient run in bf16 unchanged and only the weight gradient is computed with that axis
      swapped with the first one in the input, the output gradient, stride, padding and
      dilation, then swapped back (convolution commutes with a consistent axis permutation).
      The weight is not permuted or copied (:class:`_SwappedWeightGradConv3d`): same speed as
      the unguarded call, exact gradient;
    * otherwise (e.g. a 2×2×2 input with a 3³ kernel) it runs with autocast disabled on fp32
      copies of its tensor arguments (fp32 output; the next autocast op casts as usual).

    Every other call passes through unchanged. Entered by :meth:`PrecisionPolicy.autocast`.

    Attributes:
        swapped_calls: calls run in bf16 with the first axis swapped.
        fp32_calls: calls run in fp32.
    """

    def __init__(self) -> None:
        super().__init__()
        self.swapped_calls = 0
        self.fp32_calls = 0

    @property
    def guarded_calls(self) -> int:
        """All calls that were rewritten (swapped or fp32)."""
        return self.swapped_calls + self.fp32_calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _GUARDED_CONVS:
            return func(*args, **kwargs)
        bound = _bind_conv(args, kwargs)
        if not _affected(bound):
            return func(*args, **kwargs)
        axis = _leading_axis_swap(bound)
        if axis is not None:
            self.swapped_calls += 1
            # autocast's casts (to bfloat16, every floating tensor argument), then the bf16 call
            x, w, b = (
                v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for v in (bound["input"], bound["weight"], bound["bias"])
            )
            return _SwappedWeightGradConv3d.apply(
                x, w, b, _triple(bound["stride"]), _triple(bound["padding"]), _triple(bound["dilation"]),
                bound["groups"], axis,
            )  # fmt: skip
        self.fp32_calls += 1
        with torch.autocast("cpu", enabled=False):
            floats = {
                k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in bound.items()
            }
            return func(**floats)


@contextlib.contextmanager
def float32_region(device_type: str = "cpu") -> Iterator[None]:
    """Disable autocast for ``device_type`` inside the block (cast the inputs with ``.float()``).

    For statistics that must stay fp32 under a bf16/fp16 policy, e.g. SCDL proxy updates:
    ``torch.autocast`` lowers ``matmul``/``einsum``/``linear`` even on fp32 inputs.
    """
    with torch.autocast(device_type, enabled=False):
        yield


# ---------------------------------------------------------------------------------- the policy
def _memory_format(ndim: int) -> torch.memory_format | None:
    return {5: torch.channels_last_3d, 4: torch.channels_last}.get(ndim)


def _channels_last_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Strides of a (N, C, *spatial) tensor stored channels-last, as ``torch.empty(..., memory_format=...)`` gives."""
    n, c, *spatial = shape
    strides, step = [0] * len(shape), c
    for i in range(len(spatial) - 1, -1, -1):
        strides[2 + i] = step
        step *= spatial[i]
    strides[0], strides[1] = step, 1
    return tuple(strides)


def _to_channels_last(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """``t`` with channels-last strides, also where the layout is ambiguous (one channel).

    ``Tensor.contiguous(memory_format=...)`` leaves a one-channel tensor with its channels-first
    strides (it already counts as channels-last), and oneDNN then picks the channels-first
    layout for the whole first stage of a network fed a one-channel image (its output and the
    skip connection taken from it), which costs layout conversions in every later op that mixes
    it with channels-last tensors. Here the strides are set explicitly (one copy).
    """
    strides = _channels_last_strides(t.shape)
    if tuple(t.stride()) == strides:
        return t
    if t.shape[1] != 1:
        return t.contiguous(memory_format=fmt)
    out = torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device)
    return out.copy_(t)


@dataclasses.dataclass(frozen=True)
class PrecisionPolicy:
    """How a run computes: precision, memory format and the CPU bf16 guard, applied in one place.

    Create it from config with the *request*; call :meth:`resolve` with the device to get the
    *effective* policy (fallbacks logged, see the module docstring). The methods of an unresolved
    policy resolve it against ``device`` on first use (cached).

    Args:
        precision: "fp32" (default), "bf16" (autocast bfloat16; CUDA with bf16 support, CPU with
            oneDNN bf16) or "fp16" (autocast float16 + ``GradScaler``; CUDA only). Aliases
            "float32", "bfloat16", "float16", "half" and torch dtypes are accepted.
        channels_last: store 5-D parameters and inputs as ``torch.channels_last_3d`` (4-D as
            ``torch.channels_last``). Issue 10 measured, on an Intel Xeon with AMX, 4.66 s → 3.27 s
            per VNet step in fp32 and 1.44 s → 1.03 s in bf16; ``benchmarks/fastpath.py`` measures
            it on the machine at hand. A bool, or its command-line spelling ("true"/"false").
        device: default device for lazy resolution (``resolve(device)`` overrides it).
        conv_guard: rewrite defect-prone CPU bf16 conv3d calls (:class:`BF16ConvGuard`: axis swap,
            else fp32); ``None`` (default) = on exactly for CPU bf16. ``False`` only for measurements.
        spatial_dims: spatial dimensions of the network (1, 2, 3), or ``None`` (decided per
            tensor rank: 5-D → channels_last_3d, 4-D → channels_last, others unchanged).

    Attributes (set by :meth:`resolve`):
        device_type: "cpu", "cuda", ... (``None`` until resolved).
        requested: the precision asked for, before fallbacks.
        notes: human-readable reasons for every fallback and probe result.

    Raises:
        ValueError: unknown precision, non-bool ``channels_last``/``conv_guard``, bad
            ``spatial_dims`` or device (naming the argument and value).

    Example:
        >>> policy = PrecisionPolicy("fp16").resolve("cpu")  # logs why fp16 is not used on CPU
        >>> policy.precision, policy.requested
        ('fp32', 'fp16')
    """

    precision: str = "fp32"
    channels_last: bool = False
    device: Any = None
    conv_guard: bool | None = None
    spatial_dims: int | None = None
    device_type: str | None = None
    requested: str | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", _canonical_precision(self.precision))
        # a bool, or its command-line spelling (`--channels_last true` arrives as the string "true")
        object.__setattr__(self, "channels_last", as_flag(self.channels_last, "channels_last", "PrecisionPolicy"))
        if self.conv_guard is not None and not isinstance(self.conv_guard, bool):
            raise ValueError(f"PrecisionPolicy: conv_guard must be true, false or null, got {self.conv_guard!r}.")
        if self.spatial_dims is not None and self.spatial_dims not in (1, 2, 3):
            raise ValueError(f"PrecisionPolicy: spatial_dims must be 1, 2, 3 or null, got {self.spatial_dims!r}.")
        if self.device is not None:
            _device_type(self.device)
        if self.requested is None:
            object.__setattr__(self, "requested", self.precision)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_amp(cls, amp: bool, amp_dtype: torch.dtype | str | None = None, device: Any = None) -> PrecisionPolicy:
        """The policy equivalent to MONAI-style ``amp``/``amp_dtype`` trainer arguments.

        ``amp=False`` → fp32; ``amp=True`` → ``amp_dtype``, default float16 on CUDA (with a
        GradScaler) and bfloat16 elsewhere.
        """
        if not amp:
            return cls("fp32", device=device)
        if amp_dtype is None:
            return cls("fp16" if _device_type(device) == "cuda" else "bf16", device=device)
        return cls(amp_dtype, device=device)

    @property
    def resolved(self) -> bool:
        """Whether this is an effective policy (returned by :meth:`resolve`)."""
        return self.device_type is not None

    def resolve(self, device: Any = None) -> PrecisionPolicy:
        """The effective policy on ``device`` (default ``self.device``, else CPU).

        Every fallback is logged at WARNING level with its reason and kept in :attr:`notes`.
        Resolving an effective policy again re-checks the original request.

        Raises:
            ValueError: ``device`` is not a device.
        """
        device = self.device if device is None else device
        device_type = _device_type(device)
        requested = (self.requested or self.precision) if self.resolved else self.precision
        precision, channels_last, notes = requested, self.channels_last, []

        def fallback(reason: str) -> None:
            notes.append(reason)
            logger.warning("PrecisionPolicy fallback: %s", reason)

        if precision != "fp32" and device_type == "cuda" and not torch.cuda.is_available():
            fallback(f"{precision} requested on 'cuda' -> fp32: CUDA is not available in this torch build/machine")
            precision = "fp32"
        elif precision == "fp16" and device_type != "cuda":
            fallback(
                f"fp16 requested on {device_type!r} -> fp32: float16 training needs loss scaling, which this policy "
                "enables only on CUDA, and oneDNN has no native float16 kernels on this CPU "
                f"(mkldnn fp16 supported: {_mkldnn_fp16_supported()}); use bf16 on CPU"
            )
            precision = "fp32"
        elif precision == "bf16" and device_type == "cpu":
            ok, why = cpu_bf16_support()
            if not ok:
                fallback(f"bf16 requested on 'cpu' -> fp32: {why}")
                precision = "fp32"
        elif precision == "bf16" and device_type == "cuda":
            if not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
                fallback("bf16 requested on 'cuda' -> fp32: torch.cuda.is_bf16_supported() is False")
                precision = "fp32"
        if channels_last and self.spatial_dims == 1:
            fallback(
                "channels_last requested for a 1-D network -> disabled: there is no 3-D-tensor channels-last format"
            )
            channels_last = False

        conv_guard = self.conv_guard
        guard_applies = precision == "bf16" and device_type == "cpu"
        if guard_applies:
            defect = cpu_bf16_conv_defect()
            notes.append(
                "oneDNN bf16 conv3d weight-gradient defect "
                + (
                    "reproduced on this build"
                    if defect
                    else "not reproduced by the probe (guard kept: it reads uninitialised memory)"
                )
            )
            if conv_guard is False:
                logger.warning(
                    "PrecisionPolicy: conv_guard=False on CPU bf16: weight gradients of small convs may be wrong."
                )
        effective_guard = guard_applies if conv_guard is None else (bool(conv_guard) and guard_applies)
        return dataclasses.replace(
            self,
            precision=precision,
            channels_last=channels_last,
            device=device,
            conv_guard=effective_guard,
            device_type=device_type,
            requested=requested,
            notes=tuple(notes),
        )

    @functools.cached_property
    def _effective(self) -> PrecisionPolicy:
        return self if self.resolved else self.resolve()

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of autocast regions (float32 when autocast is off)."""
        return _DTYPES[self._effective.precision]

    @property
    def autocast_enabled(self) -> bool:
        """Whether :meth:`autocast` enables ``torch.autocast``."""
        return self._effective.precision != "fp32"

    @property
    def use_grad_scaler(self) -> bool:
        """Whether training needs a ``GradScaler`` (float16 on CUDA)."""
        eff = self._effective
        return eff.precision == "fp16" and eff.device_type == "cuda"

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A ``torch.amp.GradScaler`` for the device, enabled only when :attr:`use_grad_scaler`."""
        eff = self._effective
        return torch.amp.GradScaler(eff.device_type or "cpu", enabled=self.use_grad_scaler)

    def describe(self) -> dict[str, Any]:
        """Plain-dict summary (for logs and benchmark JSON)."""
        eff = self._effective
        return {
            "requested": eff.requested,
            "precision": eff.precision,
            "channels_last": eff.channels_last,
            "device_type": eff.device_type,
            "conv_guard": eff.conv_guard,
            "notes": list(eff.notes),
        }

    # ------------------------------------------------------------------ application
    def autocast(self, **autocast_kwargs: Any) -> contextlib.AbstractContextManager:
        """Context for the forward pass: ``torch.autocast`` with the policy dtype (+ the CPU bf16 guard).

        fp32 gives ``torch.autocast(device_type, enabled=False)`` (an outer autocast is switched
        off: fp32 means fp32). Losses inside the block still compute in fp32 (module docstring).
        The guard is entered only when gradients are enabled at entry: under ``torch.no_grad()``
        (inference) the bf16 kernels are exact and the guard would only add Python overhead.
        """
        eff = self._effective
        kwargs = {k: v for k, v in autocast_kwargs.items() if k not in ("dtype", "enabled", "device_type")}
        stack = contextlib.ExitStack()
        stack.enter_context(
            torch.autocast(
                eff.device_type or "cpu", dtype=_DTYPES[eff.precision], enabled=eff.precision != "fp32", **kwargs
            )
        )
        if eff.conv_guard and torch.is_grad_enabled():
            stack.enter_context(BF16ConvGuard())
        return stack

    def float32(self) -> contextlib.AbstractContextManager:
        """Context that keeps a region in fp32 under this policy (see :func:`float32_region`)."""
        return float32_region(self._effective.device_type or "cpu")

    def prepare_module(self, module: nn.Module) -> nn.Module:
        """Store the module's 5-D (4-D) parameters and buffers channels-last, in place; returns it.

        Parameter objects are kept (``p.data`` is re-laid out), so optimizers built earlier stay
        valid and ``state_dict`` values/keys are unchanged. No-op without ``channels_last``.
        """
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"PrecisionPolicy.prepare_module: module must be an nn.Module, got {type(module).__name__}."
            )
        if not self._effective.channels_last:
            return module
        with torch.no_grad():
            for param in module.parameters():
                fmt = _memory_format(param.ndim)
                if fmt is not None:
                    param.data = _to_channels_last(param.data, fmt)
            for sub in module.modules():
                for name, buf in list(sub._buffers.items()):
                    fmt = _memory_format(buf.ndim) if buf is not None else None
                    if fmt is not None:
                        sub._buffers[name] = _to_channels_last(buf, fmt)
        return module

    def prepare_input(self, x: Any) -> Any:
        """Lay a (B, C, *spatial) image batch out channels-last (5-D/4-D tensors only); others unchanged."""
        if not self._effective.channels_last or not isinstance(x, torch.Tensor):
            return x
        fmt = _memory_format(x.ndim)
        return x if fmt is None else _to_channels_last(x, fmt)


def as_policy(value: PrecisionPolicy | str | Mapping[str, Any] | None, device: Any = None) -> PrecisionPolicy:
    """Coerce config values to a resolved :class:`PrecisionPolicy` for ``device``.

    Accepts a policy, a precision name ("bf16"), a dict of constructor arguments, or ``None``
    (fp32).

    Raises:
        TypeError: any other type (naming it).
    """
    if value is None:
        value = PrecisionPolicy()
    elif isinstance(value, (str, torch.dtype)):
        value = PrecisionPolicy(value)
    elif isinstance(value, Mapping):
        value = PrecisionPolicy(**value)
    if not isinstance(value, PrecisionPolicy):
        raise TypeError(f"precision must be a PrecisionPolicy, a precision name or a dict, got {type(value).__name__}.")
    if device is None and value.resolved:
        return value
    return value.resolve(device)


def _mkldnn_fp16_supported() -> bool:
    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_fp16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except (RuntimeError, AttributeError):
        return False


# ---------------------------------------------------------------------------------- inference
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
