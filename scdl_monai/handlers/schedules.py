"""Schedules of the reference SSL code: sigmoid ramp-up of the unsupervised weight, poly LR.

Timing in the reference code (``xmed-lab/DHC@990998d0:code/train_cps.py`` / ``train_dhc.py``;
docs/methods.md#shared-losses-and-schedules):
both the learning rate and the CPS weight are recomputed **after** each epoch from the index of
the epoch that just finished, so they lag one epoch: epoch i (0-based) trains with
``lr = poly(max(i-1, 0))`` and ``w = rampup(max(i-1, 0))`` — epochs 0 and 1 both use the
initial values. ``lag=1`` reproduces that; ``lag=0`` is the textbook schedule (epoch i uses i).
Per-iteration schedules (SSL4MIS/GA style, ``lr = 0.01·(1 − it/17000)^0.9``) have no lag: the
first iteration uses the base value and the value is updated after every iteration.

Poly LR is a plain torch scheduler stepped by MONAI's ``LrScheduleHandler``:
``LrScheduleHandler(poly_lr_scheduler(opt, total_steps=max_epochs, lag=1), epoch_level=True)``
(steps at EPOCH_COMPLETED) or ``LrScheduleHandler(poly_lr_scheduler(opt, 17000),
epoch_level=False)`` (steps at ITERATION_COMPLETED). With several optimizers (CPS) create one
scheduler + handler per optimizer and add every scheduler to the checkpoint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from monai.utils import IgniteInfo, min_version, optional_import
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, LRScheduler, PolynomialLR, SequentialLR

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["sigmoid_rampup", "poly_lr", "poly_lr_scheduler", "UnsupWeightSchedule"]


def sigmoid_rampup(epoch: float, ramp_epochs: float, w_max: float = 1.0) -> float:
    """Sigmoid-shaped ramp-up of Laine & Aila (arXiv:1610.02242), as in the DHC code.

    .. math::  w(e) = w_{max}\\,\\exp\\!\\big(-5\\,(1 - \\mathrm{clip}(e, 0, R)/R)^2\\big)

    ``w(0) = w_max·e^{-5} ≈ 0.0067·w_max``, ``w(e ≥ R) = w_max``; ``R = 0`` gives ``w_max``
    (no ramp), as the reference code does.

    Args:
        epoch: current step ``e`` (epoch or iteration index; may be fractional).
        ramp_epochs: ramp length ``R`` (>= 0), same unit as ``epoch``.
        w_max: final weight (DHC/CPS: 0.1).

    Raises:
        ValueError: when ``ramp_epochs`` is negative.
    """
    if ramp_epochs < 0:
        raise ValueError(f"sigmoid_rampup: ramp_epochs must be >= 0, got {ramp_epochs}.")
    if ramp_epochs == 0:
        return float(w_max)
    phase = 1.0 - min(max(float(epoch), 0.0), float(ramp_epochs)) / float(ramp_epochs)
    return float(w_max) * math.exp(-5.0 * phase * phase)


def poly_lr(step: int, total_steps: int, base_lr: float, power: float = 0.9, lag: int = 0) -> float:
    """Closed-form polynomial decay: ``base_lr · (1 − clip(step − lag, 0, T)/T)^power``.

    ``step`` is the 0-based epoch (or iteration) index whose learning rate is wanted; ``lag=1``
    gives the one-epoch lag of the DHC code (see the module docstring).

    Raises:
        ValueError: ``total_steps`` < 1 or ``lag`` < 0.
    """
    if total_steps < 1:
        raise ValueError(f"poly_lr: total_steps must be >= 1, got {total_steps}.")
    if lag < 0:
        raise ValueError(f"poly_lr: lag must be >= 0, got {lag}.")
    t = min(max(step - lag, 0), total_steps)
    return base_lr * (1.0 - t / total_steps) ** power


def poly_lr_scheduler(optimizer: Optimizer, total_steps: int, power: float = 0.9, lag: int = 0) -> LRScheduler:
    """Torch scheduler whose learning rates equal :func:`poly_lr` when stepped once per step.

    ``lag=0``: ``torch.optim.lr_scheduler.PolynomialLR(optimizer, total_steps, power)``.
    ``lag>0``: ``SequentialLR([ConstantLR(factor=1, total_iters=lag), PolynomialLR(...)],
    milestones=[lag])`` — the base LR is held for ``lag`` extra steps, then the same decay.
    Both are stock torch schedulers (``state_dict`` / resume as usual); step them with
    ``monai.handlers.LrScheduleHandler(scheduler, epoch_level=True|False)``.

    Args:
        optimizer: the optimizer whose ``lr`` is the base LR.
        total_steps: T, epochs (per-epoch stepping) or iterations (per-iteration stepping).
        power: exponent (0.9 in DHC, GA, SSL4MIS).
        lag: steps of delay (DHC per-epoch: 1).

    Raises:
        ValueError: ``total_steps`` < 1 or ``lag`` < 0.
    """
    if total_steps < 1:
        raise ValueError(f"poly_lr_scheduler: total_steps must be >= 1, got {total_steps}.")
    if lag < 0:
        raise ValueError(f"poly_lr_scheduler: lag must be >= 0, got {lag}.")
    poly = PolynomialLR(optimizer, total_iters=total_steps, power=power)
    if lag == 0:
        return poly
    hold = ConstantLR(optimizer, factor=1.0, total_iters=lag)
    return SequentialLR(optimizer, schedulers=[hold, poly], milestones=[lag])


class UnsupWeightSchedule:
    """Set ``method.set_unsup_weight(sigmoid_rampup(step - lag, ramp_epochs, w_max))`` as training runs.

    - ``epoch_level=True``: at every ``EPOCH_STARTED``, step = 0-based index of the starting epoch
      (``engine.state.epoch - 1``); default ``lag=1`` (DHC: epochs 0 and 1 use w(0), epoch i
      uses w(i-1); docs/methods.md#shared-losses-and-schedules).
    - ``epoch_level=False``: at every ``ITERATION_STARTED``, step = 0-based iteration index
      (``engine.state.iteration - 1``) and ``ramp_epochs`` is in iterations; default ``lag=0``.

    The value lives in the method's ``unsup_weight`` buffer, so it is checkpointed; on resume it
    is recomputed from the restored epoch/iteration anyway.

    Args:
        method: object with ``set_unsup_weight(float)`` (a ``SemiSupervisedMethod``).
        w_max: final weight (DHC/CPS 0.1).
        ramp_epochs: ramp length R (DHC: max_epochs), epochs or iterations (see above).
        epoch_level: update per epoch (True) or per iteration (False).
        lag: steps of delay; None → 1 for epoch level, 0 for iteration level.

    Raises:
        TypeError: ``method`` has no ``set_unsup_weight``.
        ValueError: negative ``ramp_epochs`` or ``lag``.
    """

    def __init__(
        self, method, w_max: float, ramp_epochs: float, epoch_level: bool = True, lag: int | None = None
    ) -> None:
        if not callable(getattr(method, "set_unsup_weight", None)):
            raise TypeError(f"UnsupWeightSchedule: method must have set_unsup_weight(), got {type(method).__name__}.")
        if ramp_epochs < 0:
            raise ValueError(f"UnsupWeightSchedule: ramp_epochs must be >= 0, got {ramp_epochs}.")
        lag = (1 if epoch_level else 0) if lag is None else int(lag)
        if lag < 0:
            raise ValueError(f"UnsupWeightSchedule: lag must be >= 0, got {lag}.")
        self.method = method
        self.w_max = float(w_max)
        self.ramp_epochs = ramp_epochs
        self.epoch_level = bool(epoch_level)
        self.lag = lag

    def value(self, step: int) -> float:
        """Weight used at 0-based step ``step`` (epoch or iteration index)."""
        return sigmoid_rampup(max(step - self.lag, 0), self.ramp_epochs, self.w_max)

    def attach(self, engine: Engine) -> None:
        event = Events.EPOCH_STARTED if self.epoch_level else Events.ITERATION_STARTED
        if not engine.has_event_handler(self, event):
            engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        step = engine.state.epoch - 1 if self.epoch_level else engine.state.iteration - 1
        self.method.set_unsup_weight(self.value(step))
