"""Mean-teacher EMA update as an ignite handler (MagicNet's teacher; docs/methods.md#magicnet).

The :class:`~scdl_monai.engines.trainer.SemiSupervisedTrainer` steps the optimizers *after*
``method.train_step`` returns, so the teacher cannot be updated inside the step: it must follow
the optimizer step, as ``update_ema_variables`` follows ``optimizer.step()`` in the reference
(``DeepMed-Lab-ECNU/MagicNet:code/train_main_btcv.py``). This handler calls
``method.update_teacher()`` at every ``ITERATION_COMPLETED``.

Attach it **before** any checkpoint saver that also runs at ``ITERATION_COMPLETED`` (ignite calls
handlers of one event in attachment order), so that a saved checkpoint holds the updated teacher
and an interrupted run resumes exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["EMATeacherUpdate"]


class EMATeacherUpdate:
    """Call ``method.update_teacher()`` after every training iteration.

    Args:
        method: an object with ``update_teacher()`` (e.g. :class:`~scdl_monai.methods.magicnet.MagicNet`,
            which reads the step index from its own ``iteration`` buffer).

    Raises:
        TypeError: ``method`` has no callable ``update_teacher``.

    Example (bundle config)::

        "train#ema_teacher_handler": {"_target_": "scdl_monai.handlers.ema.EMATeacherUpdate", "method": "@method"},
        "+train#handlers": ["%train#ema_teacher_handler"]
    """

    def __init__(self, method) -> None:
        if not callable(getattr(method, "update_teacher", None)):
            raise TypeError(f"EMATeacherUpdate: method must have update_teacher(), got {type(method).__name__}.")
        self.method = method

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.method.update_teacher()
