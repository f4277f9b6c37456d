"""GA-CPS: cross pseudo supervision trained with the gradient-aware losses (Qi, Wu, Chan, ECCV'24).

GA changes only the losses of CPS (docs/methods.md#ga-cps, ``cicailalala/GALoss@65642f50:train_Synapse_CPS.py``):

.. math::
    L = \\sum_{m \\in \\{A, B\\}} \\big[\\mathrm{GACE}_{k=10}(z_m^L, y) + \\mathrm{GADice}(z_m^L, y)\\big]
        + w_{cps}(e)\\,\\big[\\mathrm{GACE}_{k=100}(z_A, \\arg\\max z_B) + \\mathrm{GACE}_{k=100}(z_B, \\arg\\max z_A)\\big]

with the pseudo-label term over the **whole** batch (labeled and unlabeled), γ = 0.5 everywhere,
network A Kaiming-initialised and network B Xavier-initialised. Everything else (one forward per
network on the full batch, detached hard pseudo-labels, logit-mean inference) is
:class:`~scdl_monai.methods.cps.CPS`, which this class reuses by passing the GA losses in.

Schedules (bundle config, stock handlers of :mod:`scdl_monai.handlers.schedules`):

- CPS weight per epoch, no lag: ``UnsupWeightSchedule(method, w_max=0.1, ramp_epochs=E,
  epoch_level=True, lag=0)`` gives ``0.1·exp(−5(1 − e/E)²)`` in epoch ``e`` (0-based) with
  ``E = max_iterations // iterations_per_epoch + 1`` (Synapse 17000 // 16 + 1 = 1063);
- learning rate per iteration: ``LrScheduleHandler(poly_lr_scheduler(opt, 17000),
  epoch_level=False)`` for each of the two SGD optimizers (lr 0.01, momentum 0.9, wd 1e-4) gives
  ``0.01·(1 − i/17000)^0.9`` in iteration ``i`` (0-based);
- the reference loop runs ``E`` whole epochs (``E·iterations_per_epoch`` iterations, 17,008 for
  Synapse): ``max_epochs = E`` with ``epoch_length = iterations_per_epoch`` reproduces that. Its
  last 8 iterations use lr ``0.01·(1/17000)^0.9`` (it clamps the index), ``PolynomialLR`` uses 0.
"""

from __future__ import annotations

import torch
from torch import nn

from scdl_monai.losses.ga import GACELoss, GADiceLoss
from scdl_monai.methods.cps import CPS

__all__ = ["GASupervisedLoss", "GACPS"]

# cicailalala/GALoss:train_Synapse_CPS.py — ce_loss = GACE(k=10, gama=0.5); ce_loss_k100 = GACE(k=100, gama=0.5)
_SUP_K = 10
_CPS_K = 100
_GAMMA = 0.5


class GASupervisedLoss(nn.Module):
    """``GACE(k, γ)(logits, y) + GADice(logits, y)`` — GA's supervised loss, 1:1.

    Same contract as every project loss: logits (B, C, *spatial), integer target (B, 1, *spatial),
    optional per-call (C,) ``weight`` forwarded to both parts.

    Args:
        k: percentage of hardest voxels kept by GACE (10 in GA-CPS / GA-MagicNet).
        gamma: GACE class-normalisation exponent (0.5).

    Example:
        >>> loss = GASupervisedLoss()
        >>> value = loss(torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8)))
    """

    def __init__(self, k: float = _SUP_K, gamma: float = _GAMMA) -> None:
        super().__init__()
        self.ce = GACELoss(k=k, gamma=gamma)
        self.dice = GADiceLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.ce(logits, target, weight) + self.dice(logits, target, weight)


class GACPS(CPS):
    """CPS with GA losses (GA-CPS; docs/methods.md#ga-cps). Only the constructor differs from :class:`CPS`.

    Args:
        network_a: network A (GA-CPS: VNet, ``n_filters=16``, BatchNorm, no dropout).
        network_b: network B, another instance of the same architecture.
        sup_k: GACE ``k`` of the supervised term (10).
        cps_k: GACE ``k`` of the cross pseudo-supervision term (100: no hard-voxel mining).
        gamma: GACE γ of both terms (0.5).
        init_a: re-initialise A's convolutions with
            :func:`~scdl_monai.networks.vnet.initialize_weights` (``"kaiming"`` as the reference's
            ``kaiming_normal_init_weight``), or None to keep A as given.
        init_b: same for B (``"xavier"``, the reference's ``xavier_normal_init_weight``).

    Raises:
        TypeError / ValueError: as :class:`CPS`, plus invalid ``k``/``gamma`` (from :class:`GACELoss`)
            or an unknown ``init_a``.

    Example:
        >>> from scdl_monai.networks.vnet import VNet
        >>> method = GACPS(VNet(out_channels=3, n_filters=4), VNet(out_channels=3, n_filters=4))
        >>> type(method.cps_loss).__name__, method.cps_loss.k
        ('GACELoss', 100)
    """

    def __init__(
        self,
        network_a: nn.Module,
        network_b: nn.Module,
        sup_k: float = _SUP_K,
        cps_k: float = _CPS_K,
        gamma: float = _GAMMA,
        init_a: str | None = "kaiming",
        init_b: str | None = "xavier",
    ) -> None:
        from scdl_monai.networks.vnet import INIT_SCHEMES, initialize_weights  # lazy, as in CPS

        if init_a is not None and init_a not in INIT_SCHEMES:
            raise ValueError(f"GACPS: init_a must be one of {INIT_SCHEMES} or None, got {init_a!r}.")
        super().__init__(
            network_a,
            network_b,
            sup_loss=GASupervisedLoss(k=sup_k, gamma=gamma),
            cps_loss=GACELoss(k=cps_k, gamma=gamma),
            init_b=init_b,
        )
        if init_a is not None:
            initialize_weights(network_a, init_a)
