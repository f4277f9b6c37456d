"""CPU bf16 through oneDNN: the capability probe, and a guard against oneDNN's bf16 conv3d defect.

:func:`cpu_bf16_support` says whether bf16 autocast is worth using on this CPU; the precision
policy (:class:`~scdl_monai.engines.precision.PrecisionPolicy`) falls back to fp32 when it is not
and switches :class:`BF16ConvGuard` on for CPU bf16 training.

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
milliseconds; ``PrecisionPolicy.resolve`` records its result in ``PrecisionPolicy.notes``; the cost of the
guard is measured by ``benchmarks/fastpath.py`` (configuration ``fast_noguard``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["cpu_bf16_support", "cpu_bf16_conv_defect", "mkldnn_fp16_supported", "BF16ConvGuard"]


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


def mkldnn_fp16_supported() -> bool:
    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_fp16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except (RuntimeError, AttributeError):
        return False
