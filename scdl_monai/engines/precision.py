"""Precision and memory-format policy: fp32, bf16 autocast, fp16 + GradScaler, channels-last 3-D.

One object, chosen once in the bundle config, decides how a run computes; the trainer
(:class:`~scdl_monai.engines.trainer.SemiSupervisedTrainer`, ``precision=``) and the inferer
(:class:`~scdl_monai.engines.policy_inferer.PolicyInferer`) apply it, nothing else branches on it (docs/performance.md)::

    "precision": {"_target_": "scdl_monai.engines.precision.PrecisionPolicy", "precision": "bf16", "channels_last": true}

:meth:`PrecisionPolicy.resolve` turns the request into what the device can do and **logs the
reason of every fallback** (logger ``scdl_monai.engines.precision``, level WARNING):

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
* metrics and sliding-window stitching: :class:`~scdl_monai.engines.policy_inferer.PolicyInferer` casts every window's output to
  fp32 before MONAI accumulates overlapping windows; metrics see argmax labels.

Normalisation layers run in the autocast dtype on their (bf16) inputs; their running statistics
and all parameters stay fp32 (autocast never changes parameter dtypes).

On CPUs, bf16 relies on oneDNN: the capability probe and the guard against its bf16 ``conv3d``
weight-gradient defect live in :mod:`scdl_monai.engines.cpu_bf16`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from scdl_monai.data.utils import as_flag
from scdl_monai.engines.cpu_bf16 import BF16ConvGuard, cpu_bf16_conv_defect, cpu_bf16_support, mkldnn_fp16_supported

__all__ = ["PRECISIONS", "PrecisionPolicy", "as_policy", "float32_region"]

logger = logging.getLogger(__name__)


#: canonical precision names.
PRECISIONS = ("fp32", "bf16", "fp16")

_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "32": "fp32", "no": "fp32", "none": "fp32",
    "bf16": "bf16", "bfloat16": "bf16", "bf16-mixed": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "16": "fp16", "16-mixed": "fp16",
}  # fmt: skip

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

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


@contextlib.contextmanager
def float32_region(device_type: str = "cpu") -> Iterator[None]:
    """Disable autocast for ``device_type`` inside the block (cast the inputs with ``.float()``).

    For statistics that must stay fp32 under a bf16/fp16 policy, e.g. SCDL proxy updates:
    ``torch.autocast`` lowers ``matmul``/``einsum``/``linear`` even on fp32 inputs.
    """
    with torch.autocast(device_type, enabled=False):
        yield


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
                f"(mkldnn fp16 supported: {mkldnn_fp16_supported()}); use bf16 on CPU"
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
