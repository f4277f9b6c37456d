"""The small interface between the semi-supervised engine and an algorithm ("method").

A method is an ``nn.Module`` strategy object: it owns its networks, losses and every piece of
state that changes during training (buffers), so ``CheckpointSaver(save_dict={"method": method})``
captures the whole algorithm and ``.to(device)`` moves it. The engine
(:class:`~scdl_monai.engines.trainer.SemiSupervisedTrainer`) only calls :meth:`train_step` once
per iteration, back-propagates the returned loss and steps the optimizers; it never grows
method-specific branches (docs/methods_engine.md).

Multi-GPU: call :meth:`SemiSupervisedMethod.wrap_ddp` once, after ``.to(device)`` and after the
process group exists. The method then calls its networks through ``DistributedDataParallel``
wrappers while the registered sub-modules stay the plain networks, so ``state_dict`` keys are the
same with and without DDP (no ``module.`` prefix: the unwrapped networks are saved).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
from torch import nn

__all__ = [
    "MethodOutput", "SemiSupervisedMethod", "LogitMean", "LabelHistogramInit", "call_loss", "check_num_classes",
    "class_labels", "plain_tensor",
]  # fmt: skip


class MethodOutput(NamedTuple):
    """What one training step of a method returns.

    Attributes:
        loss: scalar tensor to back-propagate (the engine does the backward pass).
        pred: (B_l, C, *spatial) logits of the method's inference prediction on the labeled images,
            detached (used by training metrics / ``state.output["pred"]``).
        terms: named scalar loss terms for logging (detached), e.g. ``{"loss_sup": ..., "loss_cps": ...}``.
    """

    loss: torch.Tensor
    pred: torch.Tensor
    terms: dict[str, torch.Tensor]


def call_loss(
    loss: nn.Module,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
):
    """Call ``loss(logits, target)``, passing ``weight=`` / ``mask=`` only when one is given.

    This lets a method accept any MONAI/torch loss with the ``(input, target)`` signature as long
    as no per-call class weight or voxel mask is needed, and the project losses (which take
    ``weight``; :class:`~scdl_monai.losses.segmentation.MaskedCELoss` also ``mask``) otherwise.
    """
    extra = {key: value for key, value in (("weight", weight), ("mask", mask)) if value is not None}
    return loss(logits, target, **extra)


def check_num_classes(owner: str, num_classes: int) -> int:
    """``num_classes`` as an int >= 2 (background + organs), else a ValueError naming ``owner``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"{owner}: num_classes must be an int >= 2 (background + organs), got {num_classes!r}.")
    return num_classes


def plain_tensor(x: Any) -> Any:
    """A MONAI ``MetaTensor`` as a plain ``torch.Tensor`` (same storage, no metadata tracking in the
    training step); anything else (a plain tensor, ``None``) unchanged."""
    as_tensor = getattr(x, "as_tensor", None)
    return as_tensor() if callable(as_tensor) else x


def class_labels(label: torch.Tensor, num_classes: int, owner: str, name: str = "label_l") -> torch.Tensor:
    """``label`` detached as int64 (a float tensor holding integers is rounded), checked to lie in ``[0, C)``.

    One device sync (a single ``aminmax``).

    Raises:
        ValueError: a value outside ``[0, num_classes)`` (the message names ``owner`` and ``name``).
    """
    label = label.detach()
    label = label.round().long() if label.dtype.is_floating_point else label.long()
    lo, hi = torch.stack(torch.aminmax(label)).tolist() if label.numel() else (0, 0)
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{owner}: {name} values must lie in [0, num_classes={num_classes}), got [{lo}, {hi}].")
    return label


class LogitMean(nn.Module):
    """Inference ensemble: the mean of the **logits** of several networks (docs/methods.md#cps, CPS/DHC).

    ``forward(x) = (net_1(x) + ... + net_n(x)) / n`` with shape (B, C, *spatial); softmax/argmax
    belong to post-processing. Works with MONAI inferers (``SlidingWindowInferer``) and evaluators,
    and is TorchScript-scriptable when the wrapped networks are.

    Args:
        networks: the networks to average (at least one); they are referenced, not copied.

    Raises:
        ValueError: when ``networks`` is empty.
    """

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        networks = list(networks)
        if len(networks) == 0:
            raise ValueError("LogitMean: networks must contain at least one nn.Module, got an empty sequence.")
        self.networks = nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: Optional[torch.Tensor] = None
        for network in self.networks:
            y = network(x)
            total = y if total is None else total + y
        assert total is not None  # for TorchScript's Optional refinement; networks is never empty
        return total / len(self.networks)


class SemiSupervisedMethod(nn.Module):
    """Base class of all training algorithms driven by the semi-supervised engine.

    Subclasses set :attr:`network_names` (attribute names of the networks they own), implement
    :meth:`forward` and :meth:`inference_network`, and override :meth:`train_step` only when one
    training step needs more than a single call of :meth:`forward` (e.g. several passes).

    Buffers:
        unsup_weight: scalar weight of the unsupervised term, set each epoch/iteration by
            :class:`~scdl_monai.handlers.schedules.UnsupWeightSchedule` through
            :meth:`set_unsup_weight`; it is part of ``state_dict`` so resume restores it.
    """

    #: attribute names of the trainable networks, in a fixed order (used by networks()/wrap_ddp()).
    network_names: tuple[str, ...] = ()
    #: whether training needs the unlabeled stream (checked before a bundle starts, see
    #: :func:`scdl_monai.engines.preflight.check_training`); False for the labeled-only baseline.
    requires_unlabeled: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("unsup_weight", torch.zeros(()))
        self._ddp_wrappers: dict[str, nn.Module] = {}

    # ------------------------------------------------------------------ state
    def set_unsup_weight(self, value: float | torch.Tensor) -> None:
        """Set the weight of the unsupervised loss term (in place, keeps device/dtype)."""
        self.unsup_weight.fill_(float(value))

    # ------------------------------------------------------------------ networks
    def networks(self) -> dict[str, nn.Module]:
        """Named plain (never DDP-wrapped) networks, in :attr:`network_names` order."""
        return {name: getattr(self, name) for name in self.network_names}

    def net(self, name: str) -> nn.Module:
        """The network to *call* during training: its DDP wrapper when :meth:`wrap_ddp` was used."""
        if name not in self.network_names:
            raise KeyError(f"{type(self).__name__}: unknown network {name!r}, expected one of {self.network_names}.")
        return self._ddp_wrappers.get(name, getattr(self, name))

    def wrap_ddp(self, **ddp_kwargs: Any) -> SemiSupervisedMethod:
        """Wrap every network with ``torch.nn.parallel.DistributedDataParallel`` for training.

        Call after ``.to(device)`` and ``torch.distributed.init_process_group``; typical config
        (multi-GPU overlay): ``"train#trainer#method": "$@method.wrap_ddp(device_ids=[@device])"``
        (omit ``device_ids`` on CPU/gloo; ``method`` is already on its device). The registered sub-modules stay unwrapped, so
        checkpoints, :meth:`networks` and :meth:`inference_network` are unchanged.

        Args:
            ddp_kwargs: keyword arguments of ``DistributedDataParallel`` (e.g. ``device_ids``,
                ``find_unused_parameters``).

        Returns:
            self, so the call can be chained in a config expression.
        """
        from torch.nn.parallel import DistributedDataParallel

        self._ddp_wrappers = {
            name: DistributedDataParallel(module, **ddp_kwargs) for name, module in self.networks().items()
        }
        for wrapper in self._ddp_wrappers.values():
            wrapper.train(self.training)
        return self

    def _wrap_passes_ddp(self, passes: nn.Module, **ddp_kwargs: Any) -> SemiSupervisedMethod:
        """Wrap one module that runs all gradient-carrying passes of a step (its ``forward``) in DDP.

        For methods whose step calls several network paths (GenericSSL, SKCDF): DDP synchronises
        gradients only for computations run through its own ``forward``. The wrapper is the only
        entry of the DDP wrappers (key ``"passes"``); the plain networks stay registered.

        Returns:
            self (chainable in a config expression).
        """
        from torch.nn.parallel import DistributedDataParallel

        wrapper = DistributedDataParallel(passes, **ddp_kwargs)
        wrapper.train(self.training)
        self._ddp_wrappers = {"passes": wrapper}
        return self

    def train(self, mode: bool = True) -> SemiSupervisedMethod:
        super().train(mode)
        for wrapper in self._ddp_wrappers.values():
            wrapper.train(mode)
        return self

    def inference_network(self) -> nn.Module:
        """The network used for validation/inference: ``forward(x) -> logits (B, C, *spatial)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement inference_network().")

    # ------------------------------------------------------------------ training
    def forward(
        self, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None = None
    ) -> MethodOutput:
        """One training computation.

        Args:
            image_l: labeled images (B_l, C_in, *spatial).
            label_l: labels (B_l, 1, *spatial), integer classes.
            image_u: unlabeled images (B_u, C_in, *spatial) or None (no unlabeled stream).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward().")

    def train_step(
        self, engine: Any, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None
    ) -> MethodOutput:
        """Hook called by the engine once per iteration (inside autocast when AMP is on).

        The default calls :meth:`forward`; methods that need several passes per step, or the
        engine state (epoch/iteration), override this. The engine back-propagates ``loss``.
        """
        return self(image_l, label_l, image_u)

    @staticmethod
    def check_batches(image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None) -> None:
        """Validate the labeled/unlabeled batch shapes shared by all methods.

        Raises:
            ValueError: label not (B_l, 1, *spatial) of ``image_l``, or ``image_u`` with other
                channels/spatial size than ``image_l``.
        """
        if label_l.shape[0] != image_l.shape[0] or label_l.shape[1] != 1 or label_l.shape[2:] != image_l.shape[2:]:
            raise ValueError(
                f"label_l must have shape (B_l, 1, *spatial) matching image_l {tuple(image_l.shape)}, "
                f"got {tuple(label_l.shape)}."
            )
        if image_u is not None and image_u.shape[1:] != image_l.shape[1:]:
            raise ValueError(
                f"image_u must have the channels and spatial size of image_l {tuple(image_l.shape[1:])}, "
                f"got {tuple(image_u.shape[1:])}."
            )


class LabelHistogramInit:
    """Mixin of methods whose class-balancing state starts from the labeled ground-truth histogram.

    DHC (DistDW), SimiS and CLD initialise class weights once, before training, from the class
    counts of every labeled training volume. A method using this mixin implements
    :meth:`init_from_counts` and registers a boolean buffer ``trackers_started`` (checkpointed, so
    a resumed run never re-initialises); :class:`~scdl_monai.handlers.class_weights.LabelHistogramInitHandler`
    calls :meth:`init_from_datalist` at ``STARTED`` unless that buffer is set or
    :attr:`needs_label_histogram` is False.
    """

    trackers_started: torch.Tensor
    num_classes: int

    @property
    def needs_label_histogram(self) -> bool:
        """Whether :meth:`init_from_counts` uses the counts (False skips reading the volumes)."""
        return True

    def init_from_counts(self, counts: torch.Tensor | Sequence[float]) -> None:
        """Initialise the class-balancing state from ground-truth class counts (C,); sets ``trackers_started``."""
        raise NotImplementedError(f"{type(self).__name__} must implement init_from_counts().")

    def init_from_datalist(
        self,
        source: str | Path | Mapping[str, Any] | Sequence[Any],
        transform: Callable | None = None,
        label_key: str = "label",
        section: str = "training",
    ) -> torch.Tensor:
        """:meth:`init_from_counts` with :func:`~scdl_monai.data.histogram.label_histogram` of ``source``.

        Arguments as :func:`~scdl_monai.data.histogram.label_histogram`. Returns the counts (C,).
        """
        from scdl_monai.data.histogram import label_histogram  # lazy: file reading is not needed otherwise

        counts = label_histogram(source, self.num_classes, transform=transform, label_key=label_key, section=section)
        self.init_from_counts(counts)
        return counts
