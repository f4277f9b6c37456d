"""DHC: dual-debiased heterogeneous co-training (Wang & Li, MICCAI 2023; docs/methods.md#dhc).

DHC is CPS (:class:`~scdl_monai.methods.cps.CPS`, docs/methods.md#cps) whose two networks use
different class weightings, recomputed every iteration: network A the difficulty-aware DiffDW,
network B the distribution-aware DistDW (:mod:`scdl_monai.weighting`). The heterogeneity comes
only from the weightings; everything else is inherited from :class:`CPS` through its
``class_weights`` hook.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scdl_monai.data.utils import look_up
from scdl_monai.methods.base import LabelHistogramInit, MethodOutput, check_num_classes, plain_tensor
from scdl_monai.methods.cps import CPS
from scdl_monai.weighting import DiffDW, DistDW

__all__ = ["DHC", "WEIGHTINGS"]

#: names accepted for ``weighting_a`` / ``weighting_b``.
WEIGHTINGS = ("diffdw", "distdw")


class DHC(CPS, LabelHistogramInit):
    """CPS with a DiffDW-weighted network A and a DistDW-weighted network B.

    Per iteration, with x = cat(x_L, x_U), z_A = A(x), z_B = B(x) (one forward each):

    1. update the trackers from this iteration's **detached** argmaxes — DiffDW from
       ``argmax z_A[L]`` vs ``y_L`` (hard batch Dice), DistDW from the class counts of
       ``argmax z_B[U]`` (the network's own prediction on the unlabeled half);
    2. the losses use the **updated** weights of this iteration (the reference calls
       ``cal_weights`` / ``get_ema_weights`` before building the losses,
       ``xmed-lab/DHC:code/train_dhc.py``): for each network m with weights w_m,
       ``L_sup,m = CE(z_m[L], y_L; w_m) + Dice(z_m[L], y_L; w_m)`` (:class:`DiceCELoss`
       reference form: weighted CE over all classes, −mean_{k≥1} w_k·dc_k) and
       ``L_cps,m = CE(z_m, argmax z_other; w_m)`` over the whole batch;
    3. ``loss = ΣL_sup + λ(e)·ΣL_cps`` (λ = ``unsup_weight``, sigmoid ramp-up to 0.1).

    Inference: logits of A and B averaged (inherited :meth:`inference_network`).

    The trackers are sub-modules ``weighting_a`` / ``weighting_b``: their buffers are in the
    method's ``state_dict`` (checkpointed with ``{"method": dhc}``) and move with ``.to()``.
    Table 3 ablations of the paper are configuration only: ``weighting_a="distdw"`` gives
    DistDW-DistDW, ``weighting_b="diffdw"`` DiffDW-DiffDW (each network then updates its own
    tracker from its own argmax, as above).

    DistDW initialisation: the reference sets DistDW's weights from the ground-truth histogram of
    all labeled training volumes before training. Pass ``init_counts`` (e.g.
    ``label_histogram(datalist, C)``), call :meth:`init_from_counts` / :meth:`init_from_datalist`,
    or attach :class:`~scdl_monai.handlers.class_weights.LabelHistogramInitHandler` (runs at ``STARTED``,
    skipped on resume). The boolean buffer ``trackers_started`` records that the trackers hold
    state (initialised or updated); it is checkpointed, so a resumed run never re-initialises.
    Before any initialisation DistDW holds ones (neutral).

    Reference defaults for the surrounding config (``xmed-lab/DHC`` README/scripts,
    docs/methods.md#shared-losses-and-schedules): SGD lr 3e-2, nesterov, momentum 0.9, weight
    decay 3e-5, one optimizer per network; poly 0.9 stepped per epoch after the epoch
    (``poly_lr_scheduler(..., lag=1)``); CPS weight w_max = 0.1 with a per-epoch sigmoid ramp-up
    over all epochs (``UnsupWeightSchedule``); DistDW momentum 0.99, DiffDW τ = 50 (momentum
    0.98), α = 1/5; both networks Kaiming initialised (the reference re-initialises A and B with
    ``kaiming_normal_init_weight``, hence ``init_b="kaiming"`` here, where plain CPS uses Xavier
    for B).

    Multi-GPU: every rank updates its trackers from its own batch (no all-reduce), like running
    the single-GPU reference on each shard; ranks' tracker states may differ slightly and the
    checkpoint holds rank 0's.

    Args:
        network_a: network A, weighted by ``weighting_a``.
        network_b: network B, weighted by ``weighting_b``.
        num_classes: C including background (Synapse 14, AMOS 16).
        weighting_a: "diffdw" (default, DHC), "distdw", or a ``DiffDW``/``DistDW`` instance.
        weighting_b: "distdw" (default, DHC), "diffdw", or a ``DiffDW``/``DistDW`` instance.
        init_counts: optional (C,) ground-truth class counts; initialises every DistDW tracker.
        distdw_momentum: EMA momentum of trackers built from "distdw" (reference 0.99).
        diffdw_momentum: EMA momentum of trackers built from "diffdw" (reference (50−1)/50).
        diffdw_alpha: exponent α of DiffDW (paper 1/5).
        sup_loss, cps_loss, loss_mode: as :class:`CPS` (default reference ``DiceCELoss`` and
            weighted CE, both called with the per-call weight).
        init_b: re-initialisation of network B (see :class:`CPS`); default "kaiming".

    Raises:
        ValueError: unknown weighting name, a tracker whose ``num_classes`` differs, one tracker
            instance given for both networks, bad ``num_classes`` / momenta (see the trackers), or
            the :class:`CPS` errors.
        TypeError: a weighting that is neither a name nor a ``DiffDW``/``DistDW`` module.

    Example:
        >>> from scdl_monai.networks.vnet import VNet
        >>> dhc = DHC(VNet(out_channels=3, n_filters=4), VNet(out_channels=3, n_filters=4), num_classes=3,
        ...           init_counts=[1000, 100, 10])
        >>> x = torch.randn(1, 1, 16, 16, 16)
        >>> out = dhc(x, torch.randint(0, 3, (1, 1, 16, 16, 16)), x)
        >>> dhc.tracker_weights()["b"].shape
        torch.Size([3])
    """

    trackers_started: torch.Tensor

    def __init__(
        self,
        network_a: nn.Module,
        network_b: nn.Module,
        num_classes: int,
        weighting_a: str | nn.Module = "diffdw",
        weighting_b: str | nn.Module = "distdw",
        init_counts: torch.Tensor | Sequence[float] | None = None,
        distdw_momentum: float = 0.99,
        diffdw_momentum: float = 0.98,
        diffdw_alpha: float = 0.2,
        sup_loss: nn.Module | None = None,
        cps_loss: nn.Module | None = None,
        loss_mode: str = "reference",
        init_b: str | None = "kaiming",
    ) -> None:
        check_num_classes("DHC", num_classes)
        super().__init__(network_a, network_b, sup_loss=sup_loss, cps_loss=cps_loss, loss_mode=loss_mode, init_b=init_b)
        self.num_classes = num_classes
        options = {"distdw_momentum": distdw_momentum, "diffdw_momentum": diffdw_momentum, "diffdw_alpha": diffdw_alpha}
        self.weighting_a = self._build_tracker("weighting_a", weighting_a, **options)
        self.weighting_b = self._build_tracker("weighting_b", weighting_b, **options)
        if self.weighting_a is self.weighting_b:
            raise ValueError("DHC: weighting_a and weighting_b must be two tracker instances, got the same object.")
        self.register_buffer("trackers_started", torch.zeros((), dtype=torch.bool))
        if init_counts is not None:
            self.init_from_counts(init_counts)

    def _build_tracker(
        self, key: str, spec: str | nn.Module, distdw_momentum: float, diffdw_momentum: float, diffdw_alpha: float
    ) -> nn.Module:
        if isinstance(spec, (DistDW, DiffDW)):
            if spec.num_classes != self.num_classes:
                raise ValueError(
                    f"DHC: {key} tracks {spec.num_classes} classes but num_classes is {self.num_classes}."
                )
            return spec
        if not isinstance(spec, str):
            raise TypeError(
                f"DHC: {key} must be one of {WEIGHTINGS} or a DiffDW/DistDW module, got {type(spec).__name__}."
            )
        if look_up(spec, WEIGHTINGS, key, "DHC") == "distdw":
            return DistDW(self.num_classes, momentum=distdw_momentum)
        return DiffDW(self.num_classes, momentum=diffdw_momentum, alpha=diffdw_alpha, normalize=True)

    # ------------------------------------------------------------------ trackers
    def trackers(self) -> dict[str, nn.Module]:
        """The two weighting trackers, ``{"a": weighting_a, "b": weighting_b}``."""
        return {"a": self.weighting_a, "b": self.weighting_b}

    def tracker_weights(self) -> dict[str, torch.Tensor]:
        """Copies of the current (C,) weights, ``{"a": w_A, "b": w_B}`` (for logging)."""
        return {name: tracker.weights.detach().clone() for name, tracker in self.trackers().items()}

    @torch.no_grad()
    def init_from_counts(self, counts: torch.Tensor | Sequence[float]) -> None:
        """Initialise every DistDW tracker from ground-truth class counts (C,); marks the trackers started.

        DiffDW trackers have no data-dependent initial state and are left unchanged.

        Raises:
            ValueError: ``counts`` does not have C non-negative entries.
        """
        for tracker in self.trackers().values():
            if isinstance(tracker, DistDW):
                tracker.init_from_counts(counts)
        self.trackers_started.fill_(True)

    @property
    def needs_label_histogram(self) -> bool:
        """True when a tracker is DistDW (the DiffDW-DiffDW ablation has nothing to initialise)."""
        return any(isinstance(t, DistDW) for t in self.trackers().values())

    @torch.no_grad()
    def _update(self, tracker: nn.Module, logits: torch.Tensor, label_l: torch.Tensor) -> torch.Tensor:
        n_l = label_l.shape[0]
        pred = plain_tensor(logits).detach().argmax(dim=1, keepdim=True)
        if isinstance(tracker, DiffDW):
            target = plain_tensor(label_l).detach()
            target = target.round().long() if target.dtype.is_floating_point else target.long()
            return tracker.update(pred[:n_l], target)
        return tracker.update(pred[n_l:])

    def class_weights(
        self, logits_a: torch.Tensor, logits_b: torch.Tensor, label_l: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update both trackers from this iteration's argmaxes and return the new (w_A, w_B).

        Args:
            logits_a, logits_b: (B_l + B_u, C, *spatial) logits on cat(L, U).
            label_l: (B_l, 1, *spatial) ground truth.

        Returns:
            snapshots (C,) of the updated weights (detached; no gradient flows into them).
        """
        weight_a = self._update(self.weighting_a, logits_a, label_l)
        weight_b = self._update(self.weighting_b, logits_b, label_l)
        self.trackers_started.fill_(True)
        return weight_a, weight_b

    def forward(
        self, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None = None
    ) -> MethodOutput:
        """One DHC step (see the class docstring); returns the :class:`CPS` terms.

        Raises:
            ValueError: ``image_u`` is None (or empty) while a DistDW tracker needs the unlabeled
                half; the :class:`CPS` shape errors.
        """
        uses_distdw = any(isinstance(t, DistDW) for t in self.trackers().values())
        if uses_distdw and (image_u is None or image_u.shape[0] == 0):
            raise ValueError(
                "DHC: image_u must hold at least one unlabeled image: DistDW counts classes on the "
                "unlabeled half of the batch (give the trainer an unlabeled_data_loader)."
            )
        return super().forward(image_l, label_l, image_u)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, loss_mode={self.loss_mode!r}"
