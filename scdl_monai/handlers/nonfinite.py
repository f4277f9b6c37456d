"""Stop training with a clear error when a loss term becomes NaN or infinite.

ignite's ``TerminateOnNan`` checks the output *after* the optimizer step and ends the run
normally (``engine.terminate()``): the process exits with status 0, the weights are already
poisoned, and MONAI's ``CheckpointSaver`` then writes them as ``checkpoint_final.pt``. Here the
check runs at ``IterationEvents.LOSS_COMPLETED`` (before ``backward`` and the optimizer step, so
the weights in memory are still those of the last good iteration) and raises
:class:`NonFiniteLossError`, whose message names the epoch, the iteration and every non-finite
loss term; ``python -m monai.bundle run`` then exits with a non-zero status.
:class:`~scdl_monai.handlers.checkpoint.AtomicCheckpointSaver` writes no final checkpoint for this
error, so the newest checkpoint on disk stays the last good one (``--resume true`` picks it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from numbers import Number

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

__all__ = ["NonFiniteLossError", "StopOnNonFiniteLoss"]

#: ``engine.state.output`` entries that are data, not loss terms (:class:`~scdl_monai.engines.keys.SSLKeys`).
_NOT_LOSSES = ("image", "label", "pred")


class NonFiniteLossError(FloatingPointError):
    """A loss term was NaN or infinite; ``terms`` maps each such term to its value."""

    def __init__(self, message: str, terms: dict[str, float]):
        super().__init__(message)
        self.terms = terms


class StopOnNonFiniteLoss:
    """Raise :class:`NonFiniteLossError` as soon as a loss term of the trainer output is not finite.

    Every scalar entry of ``engine.state.output`` other than ``image``/``label``/``pred`` is a
    loss term (the :class:`~scdl_monai.engines.trainer.SemiSupervisedTrainer` contract); the check
    costs one device synchronisation per iteration (as logging the loss does).

    Args:
        ckpt_dir: folder of the run's checkpoints; when given, the message names the newest
            complete checkpoint there (the one ``--resume true`` would load).
        name: logger name (default: the engine's logger).

    Example (bundle, in ``train#handlers``)::

        {"_target_": "scdl_monai.handlers.nonfinite.StopOnNonFiniteLoss", "ckpt_dir": "@ckpt_dir"}
    """

    def __init__(self, ckpt_dir: str | None = None, name: str | None = None) -> None:
        self.ckpt_dir = ckpt_dir
        self.logger = logging.getLogger(name) if name is not None else None

    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        outputs: Sequence = output if isinstance(output, (list, tuple)) else [output]
        names, values = [], []
        for item in outputs[:1]:  # terms are batch-level: one decollated item holds them all
            if not isinstance(item, dict):
                continue
            for key, value in item.items():
                if key in _NOT_LOSSES:
                    continue
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    names.append(key)
                    values.append(value.detach().reshape(()).float())
                elif isinstance(value, Number) and not isinstance(value, bool):
                    names.append(key)
                    values.append(torch.tensor(float(value)))
        if not values:
            return
        stacked = torch.stack([v.to(values[0].device) for v in values])
        finite = torch.isfinite(stacked)
        if bool(finite.all()):
            return
        bad = {n: float(v) for n, v, ok in zip(names, stacked.tolist(), finite.tolist()) if not ok}
        terms = ", ".join(f"{n} = {v}" for n, v in bad.items())
        message = (
            f"training stopped: non-finite loss at epoch {engine.state.epoch}, iteration {engine.state.iteration} "
            f"({terms}); the weights were not updated by this iteration."
        )
        if self.ckpt_dir is not None:
            message += " " + _last_checkpoint_hint(self.ckpt_dir)
        if self.logger is not None:
            self.logger.error(message)
        raise NonFiniteLossError(message, bad)


def _last_checkpoint_hint(ckpt_dir: str) -> str:
    from scdl_monai.handlers.checkpoint import latest_checkpoint  # here: checkpoint imports this module

    try:
        return f"Last good checkpoint: {latest_checkpoint(ckpt_dir)} (lower learning_rate, then resume with --resume true)."
    except FileNotFoundError:
        return f"No checkpoint was written yet in {ckpt_dir}."
