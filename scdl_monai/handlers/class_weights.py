"""Handlers around the class-weighting trackers (DistDW/DiffDW/SimiS) of DHC, GenericSSL and SimiS.

- :class:`ClassWeightLogger` writes every tracker's per-class weights to TensorBoard and the
  stats log every ``interval`` iterations (the reference logs them per epoch with
  ``writer.add_scalars('class_weights/A', ...)``, ``xmed-lab/DHC:code/train_dhc.py``).
- :class:`LabelHistogramInitHandler` (alias :class:`DistDWInitHandler`) initialises a method's
  class-balancing state (DHC's DistDW, SimiS's weights, CLD's static weights) from the
  ground-truth histogram of the labeled training volumes at ``STARTED``, unless the method's
  trackers already hold state (restored by ``CheckpointLoader``), whichever of the two handlers
  runs first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from monai.apps import get_logger
from monai.handlers import TensorBoardHandler
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from scdl_monai.weighting import CountWeights, DiffDW

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["ClassWeightLogger", "LabelHistogramInitHandler", "DistDWInitHandler", "find_trackers"]


def find_trackers(method: nn.Module) -> dict[str, nn.Module]:
    """Every class-weight tracker (``DistDW``, ``SimiSWeights``, ``DiffDW``: a ``weights`` buffer) of
    ``method`` by its module path (e.g. ``weighting_a``)."""
    return {name: m for name, m in method.named_modules() if isinstance(m, (CountWeights, DiffDW))}


class ClassWeightLogger(TensorBoardHandler):
    """Log the (C,) weights of every class-weighting tracker of a method every ``interval`` iterations.

    TensorBoard scalars ``{tag_prefix}/{tracker}/{class}`` at the global iteration (``tracker`` =
    module path, e.g. ``weighting_a``; ``class`` = ``class_names[k]`` or ``k``) and one stats-log
    line per tracker through ``monai.apps.get_logger(name)`` — by default the logger of MONAI's
    ``StatsHandler``, so the lines go wherever the bundle sends the training stats.

    Args:
        method: module holding tracker sub-modules (:func:`find_trackers`; e.g. :class:`~scdl_monai.methods.dhc.DHC`).
        interval: log at every ``interval``-th ``ITERATION_COMPLETED``.
        tag_prefix: TensorBoard tag prefix.
        class_names: optional names of the C classes used in tags and log lines.
        summary_writer: existing SummaryWriter; None creates one in ``log_dir`` (MONAI ``TensorBoardHandler``).
        log_dir: folder of the internal writer.
        name: logger name for the stats log; None disables the text log.

    Raises:
        ValueError: ``interval`` < 1, no tracker in ``method``, or ``class_names`` of the wrong length.
    """

    def __init__(
        self,
        method: nn.Module,
        interval: int = 50,
        tag_prefix: str = "class_weights",
        class_names: Sequence[str] | None = None,
        summary_writer: Any = None,
        log_dir: str = "./runs",
        name: str | None = "monai.handlers.StatsHandler",
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"ClassWeightLogger: interval must be a positive int, got {interval!r}.")
        self.trackers = find_trackers(method)
        if not self.trackers:
            raise ValueError(f"ClassWeightLogger: {type(method).__name__} has no class-weight tracker to log.")
        sizes = {t.num_classes for t in self.trackers.values()}
        if class_names is not None and {len(class_names)} != sizes:
            raise ValueError(
                f"ClassWeightLogger: class_names has {len(class_names)} names, trackers have {sorted(sizes)} classes."
            )
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        self.interval, self.tag_prefix = interval, tag_prefix
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.logger = None if name is None else get_logger(name)

    def attach(self, engine: Engine) -> None:
        event = Events.ITERATION_COMPLETED(every=self.interval)
        if not engine.has_event_handler(self, event):
            engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        step = engine.state.iteration
        for tracker_name, tracker in self.trackers.items():
            values = tracker.weights.detach().float().cpu().tolist()
            names = self.class_names or [str(k) for k in range(len(values))]
            for cls, value in zip(names, values):
                self._writer.add_scalar(f"{self.tag_prefix}/{tracker_name}/{cls}", value, step)
            if self.logger is not None:
                pairs = ", ".join(f"{cls}: {value:.4f}" for cls, value in zip(names, values))
                self.logger.info(f"Iteration {step} {type(tracker).__name__} {tracker_name} weights: {pairs}")
        self._writer.flush()


class LabelHistogramInitHandler:
    """At ``STARTED``: ``method.init_from_datalist(source, ...)`` unless ``method.trackers_started``.

    Does nothing either when ``method.needs_label_histogram`` is False (e.g. DHC's DiffDW-DiffDW
    ablation). The histogram's counts are kept in ``self.counts`` (None when skipped).

    Safe in any order with ``CheckpointLoader`` (also attached at ``STARTED``): if the loader ran
    first, the restored ``trackers_started`` buffer is True and nothing happens; if this handler
    runs first, the loader then overwrites the freshly initialised buffers with the saved ones.

    Args:
        method: a :class:`~scdl_monai.methods.base.LabelHistogramInit` method (DHC, SimiS, CLD):
            ``init_from_datalist`` and a boolean ``trackers_started`` buffer.
        source, transform, label_key, section: as :func:`~scdl_monai.data.histogram.label_histogram`
            (typically the datalist JSON and the training protocol's ``eval`` chain).

    Raises:
        TypeError: ``method`` lacks ``init_from_datalist`` or ``trackers_started``.
    """

    def __init__(
        self,
        method: Any,
        source: Any,
        transform: Callable | None = None,
        label_key: str = "label",
        section: str = "training",
    ) -> None:
        if not callable(getattr(method, "init_from_datalist", None)) or not hasattr(method, "trackers_started"):
            raise TypeError(
                f"{type(self).__name__}: method must initialise from a label histogram (DHC, SimiS, CLD), "
                f"got {type(method).__name__}."
            )
        self.method, self.source, self.transform = method, source, transform
        self.label_key, self.section = label_key, section
        self.counts = None

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if bool(self.method.trackers_started):
            return
        if not getattr(self.method, "needs_label_histogram", True):
            return  # e.g. DHC's DiffDW-DiffDW ablation: nothing to initialise, skip reading the volumes
        self.counts = self.method.init_from_datalist(self.source, self.transform, self.label_key, self.section)


#: The name the DHC bundles use (DistDW was the first state initialised this way).
DistDWInitHandler = LabelHistogramInitHandler
