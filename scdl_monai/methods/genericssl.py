"""GenericSSL / A&D: diffusion-based Aggregating & Decoupling (Wang & Li, NeurIPS 2023).

One :class:`~scdl_monai.networks.diffvnet.DiffVNet` with a shared, time-conditioned encoder and
three decoders: D_ξ (diffusion, denoises a noisy label map), D_ψ (difficulty-weighted supervised)
and D_θ (learns from pseudo-labels; **the only decoder used at inference**). The per-iteration
procedure is that of docs/methods.md#training-step, checked against
``xmed-lab/GenericSSL@e73bde94:code/train_diffusion.py`` (the training loop and class ``Difficulty``).

Reference configuration (Synapse 20 %), for the bundle, not for this module: SGD lr 1e-2,
nesterov, momentum 0.9, weight decay 3e-5, one optimizer over the whole DiffVNet, poly 0.9 stepped
after each epoch, μ_max = 10 with a per-epoch sigmoid ramp-up over all epochs (both lagging one
epoch), 300 epochs, batch 2 labeled + 2 unlabeled, AMP. lr and μ are the values of the README's
command (``bash train.sh ... -l 1e-2 -w 10 -n 300``); the script's argparse defaults are different
(``--base_lr 0.001``, ``-w/--mu 2.0``) and are **not** used here. The reference loop runs
``range(max_epoch + 1)``, i.e. 301 epochs for ``-n 300`` (the last one at the poly floor); the
bundle trains ``max_epochs = 300``. Validation every epoch with D_θ; early stop after 100 epochs
without improvement. No AMOS configuration exists upstream: the AMOS bundle is the Synapse one
with C = 16 (the ``methods/genericssl`` bundle component is dataset-agnostic).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from scdl_monai.networks.diffusion import GaussianDiffusion
from scdl_monai.networks.weight_ema import ema_average_into
from scdl_monai.losses.segmentation import DiceCELoss
from scdl_monai.methods.base import MethodOutput, SemiSupervisedMethod, call_loss, class_labels, plain_tensor
from scdl_monai.methods.pseudo_label_fusion import KERNEL_SIZE, SIGMA, TAU, FusedPseudoLabels, fuse_pseudo_labels
from scdl_monai.weighting import DiffDW

__all__ = ["GenericSSL", "GenericSSLPasses", "GenericSSLTerms"]

_LOSS_MODES = ("reference", "monai")
#: what a network must provide (DiffVNet's explicit hooks).
_NETWORK_API = ("denoise", "difficulty_logits", "theta_logits", "decoder_xi", "decoder_psi", "decoder_theta")


class GenericSSLPasses(NamedTuple):
    """The network passes of one A&D step (output of the training forward).

    Attributes:
        xi_logits_l: (B_l, C, *spatial) D_ξ x0 prediction on the labeled images (used as logits).
        psi_logits_l: (B_l, C, *spatial) D_ψ logits on the labeled images.
        pseudo_label: (B_u, 1, *spatial) int64 fused pseudo-labels (no gradient).
        theta_logits_u: (B_u, C, *spatial) D_θ logits on the unlabeled images.
    """

    xi_logits_l: torch.Tensor
    psi_logits_l: torch.Tensor
    pseudo_label: torch.Tensor
    theta_logits_u: torch.Tensor


class GenericSSLTerms(NamedTuple):
    """Loss terms of one A&D step, before they are combined (non-detached: tests and analysis).

    Attributes:
        loss_deno: L_deno = CE + Dice of D_ξ's x0 prediction vs y_L (unweighted).
        loss_diff: L_diff = CE + Dice of D_ψ vs y_L, weighted by ``class_weight``.
        loss_u: L_u = CE + Dice of D_θ vs the pseudo-labels (unweighted).
        class_weight: (C,) DiffDW weight of this step (updated from D_ξ's detached prediction).
        timesteps: (B_l,) diffusion timesteps drawn for the labeled images.
        passes: the :class:`GenericSSLPasses` (logits and pseudo-labels).
    """

    loss_deno: torch.Tensor
    loss_diff: torch.Tensor
    loss_u: torch.Tensor
    class_weight: torch.Tensor
    timesteps: torch.Tensor
    passes: GenericSSLPasses


class _TrainingPasses(nn.Module):
    """All gradient-carrying passes of one step in one ``forward`` (what DDP wraps).

    DistributedDataParallel synchronises gradients only for computations run through its own
    ``forward``; A&D needs three different network paths (D_ξ, D_ψ, D_θ) per step, so they are
    grouped here rather than dispatched by a string. The order is the reference's: D_ξ(L), D_ψ(L),
    pseudo-labels under ``no_grad`` (DDIM on D_ξ, D_ψ(U)), then D_θ(U) — so dropout masks and
    batch-norm running statistics see the same sequence of batches.
    """

    def __init__(self, network: nn.Module, pseudo_labeller: Callable[[torch.Tensor], FusedPseudoLabels]) -> None:
        super().__init__()
        self.network = network
        self._pseudo_labeller = pseudo_labeller  # a bound method, not a module: nothing registered

    def forward(
        self, image_l: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, image_u: torch.Tensor
    ) -> GenericSSLPasses:
        xi_logits_l = self.network.denoise(image_l, x_t, t)
        psi_logits_l = self.network.difficulty_logits(image_l)
        pseudo_label = self._pseudo_labeller(image_u).labels
        # ``network(x)`` is D_θ (DiffVNet.forward); called as the module so that a wrapper (SCDL's
        # SCDLNetwork: prior injected into D_θ, outputs recorded) sees this pass
        theta_logits_u = self.network(image_u)
        return GenericSSLPasses(xi_logits_l, psi_logits_l, pseudo_label, theta_logits_u)


class GenericSSL(SemiSupervisedMethod):
    """A&D: a diffusion decoder and a difficulty-weighted decoder teach a third one, D_θ.

    Per training iteration (:meth:`train_step`; docs/methods.md#training-step; the engine puts the method in
    **train** mode, which every pass below — pseudo-labelling included — runs in):

    1. :meth:`aggregate_decoders` **before** the forward: for every *parameter* of D_θ with the
       same name and shape in D_ξ and D_ψ, ``θ ← m·θ + (1−m)·(ξ + ψ)/2`` with ``m = ema_momentum``
       (0.99). Buffers (batch-norm statistics) are not averaged; time-embedding layers are skipped
       (D_θ has none; ``ema_skip`` also excludes any name containing ``"temb"``). D_θ additionally
       gets SGD gradients from L_u.
    2. ``x0 = 2·onehot(y_L) − 1``, ``t ~ U{0..T−1}`` per sample, ``x_t = q_sample(x0, t)``
       (linear β 1e-4 → 0.02, T = 1000: :class:`~scdl_monai.networks.diffusion.GaussianDiffusion`).
    3. ``L_deno = CE + Dice(D_ξ(x_L, x_t, t), y_L)`` — D_ξ's x0 prediction is used directly as
       **logits** (no MSE), unweighted.
    4. ``w = DiffDW(argmax D_ξ(...) detached, y_L)`` (DiffDW recurrence without max-normalisation,
       ``w = C·d·dw``, τ = 50, α = 1/5); ``L_diff = CE + Dice(D_ψ(x_L), y_L; w)`` with the same
       ``w`` in both terms.
    5. Pseudo-labels under ``no_grad`` (still train mode): 10-step DDIM from ``randn`` with the
       x0 prediction clamped to [−1, 1] (:meth:`GaussianDiffusion.ddim_sample`), then
       ``ŷ_U = argmax(GaussianSmooth(gumbel_softmax(x̂0)) + softmax(D_ψ(x_U)))``
       (:func:`~scdl_monai.methods.pseudo_label_fusion.fuse_pseudo_labels`).
    6. ``L_u = CE + Dice(D_θ(x_U), ŷ_U)``, unweighted.
    7. ``loss = L_deno + L_diff + μ(e)·L_u`` with μ(e) the ``unsup_weight`` buffer, set by
       :class:`~scdl_monai.handlers.schedules.UnsupWeightSchedule` (sigmoid ramp-up to
       ``unsup_weight_max`` over all epochs, per epoch, lag 1 — the reference updates μ after
       each epoch from the finished epoch's index).

    The CE + Dice is :class:`~scdl_monai.losses.segmentation.DiceCELoss` in the reference form
    (GenericSSL ``DC_and_CE_loss`` = DHC's: weighted CE, batch soft Dice smooth 1 without
    background, −mean w_k·dc_k). Every D_θ/D_ψ/D_ξ pass runs the stem and the shared encoder
    itself (separate batch-norm statistics per pass, as in the reference).

    Gradient flow: L_deno reaches D_ξ, the time embedding, the diffusion stem and the encoder;
    L_diff reaches D_ψ, the image stem and the encoder; L_u reaches D_θ, the image stem and the
    encoder. Pseudo-labels and DiffDW weights carry no gradient.

    ``MethodOutput.pred`` is D_ψ's labeled logits (for training metrics only): the reference runs
    no D_θ pass on labeled images, and adding one just for logging would cost a forward and shift
    batch-norm statistics. Validation and inference use D_θ (:meth:`inference_network`).

    State: the DiffDW tracker is the sub-module ``difficulty`` (buffers, checkpointed with the
    method); the diffusion schedule holds only non-persistent buffers derived from its arguments.

    Multi-GPU: :meth:`wrap_ddp` wraps a module that runs all gradient-carrying passes in one
    ``forward`` (DDP needs that); the plain network stays the registered sub-module, so checkpoint
    keys do not change. Each rank updates its DiffDW tracker from its own batch; the decoder EMA is
    identical on all ranks because the parameters are.

    Args:
        network: a :class:`~scdl_monai.networks.diffvnet.DiffVNet` (anything with its ``denoise``,
            ``difficulty_logits``, ``theta_logits`` hooks and ``decoder_xi/psi/theta`` modules).
        num_classes: C including background (Synapse 14, AMOS 16); must equal the network's
            output channels.
        diffusion: the Gaussian diffusion (default ``GaussianDiffusion()``: T = 1000, linear β,
            10 DDIM steps, clamped x0).
        ema_momentum: m of step 1 (reference ``--ema_w 0.99``).
        unsup_weight_max: μ_max, the final weight of L_u (README command ``-w 10``; argparse
            default 2). The method only records it (``self.unsup_weight_max``); the value in use
            is the ``unsup_weight`` buffer that the ramp-up handler sets, so give the handler the
            same number (the bundle reads one config key for both).
        deno_loss, diff_loss, unsup_loss: losses ``(logits, target[, weight])``; default
            ``DiceCELoss(mode=loss_mode)`` each. ``diff_loss`` is called with ``weight=w``.
        loss_mode: "reference" (DHC/GenericSSL loss forms) or "monai"; used for default losses.
        diffdw_momentum: DiffDW EMA momentum ``(τ−1)/τ``, τ = 50 (``Difficulty(accumulate_iters=50)``).
        diffdw_alpha: DiffDW exponent α (1/5).
        ema_skip: name substrings of D_θ parameters never averaged (default ``("temb",)``).
        gumbel_tau, smooth_kernel_size, smooth_sigma: fusion parameters (1, 3, 1 in the reference).

    Raises:
        TypeError: ``network`` lacks the DiffVNet hooks.
        ValueError: ``num_classes`` < 2 or different from the network's output channels, bad
            ``ema_momentum``/``unsup_weight_max``/``loss_mode``, a ``diffusion`` that is not a
            ``GaussianDiffusion``, or no D_θ parameter that the EMA would update.

    Example:
        >>> from scdl_monai.networks.diffvnet import DiffVNet
        >>> method = GenericSSL(DiffVNet(out_channels=3, n_filters=4), num_classes=3)
        >>> x_l, x_u = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 32, 32, 32)
        >>> out = method.train_step(None, x_l, torch.randint(0, 3, (1, 1, 32, 32, 32)), x_u)
        >>> sorted(out.terms)
        ['loss_deno', 'loss_diff', 'loss_u', 'unsup_weight']
    """

    network_names = ("network",)
    #: SCDL plug-in (``SCDLMethod(labeled_pass="auto")``): D_θ, the decoder that carries the prior,
    #: sees only unlabeled images, so the labeled tokens need their own encoder pass.
    scdl_labeled_pass = "encoder"

    def __init__(
        self,
        network: nn.Module,
        num_classes: int,
        diffusion: GaussianDiffusion | None = None,
        ema_momentum: float = 0.99,
        unsup_weight_max: float = 10.0,
        deno_loss: nn.Module | None = None,
        diff_loss: nn.Module | None = None,
        unsup_loss: nn.Module | None = None,
        loss_mode: str = "reference",
        diffdw_momentum: float = 0.98,
        diffdw_alpha: float = 0.2,
        ema_skip: Iterable[str] | None = ("temb",),
        gumbel_tau: float = TAU,
        smooth_kernel_size: int = KERNEL_SIZE,
        smooth_sigma: float = SIGMA,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"GenericSSL: network must be an nn.Module (a DiffVNet), got {type(network).__name__}.")
        missing = [name for name in _NETWORK_API if not hasattr(network, name)]
        if missing:
            raise TypeError(
                f"GenericSSL: network must provide the DiffVNet hooks {_NETWORK_API}; "
                f"{type(network).__name__} lacks {missing}."
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"GenericSSL: num_classes must be an int >= 2 (background + organs), got {num_classes!r}.")
        out_channels = getattr(network, "out_channels", num_classes)
        if out_channels != num_classes:
            raise ValueError(
                f"GenericSSL: num_classes={num_classes} but the network has out_channels={out_channels}."
            )
        if diffusion is None:
            diffusion = GaussianDiffusion()
        if not isinstance(diffusion, GaussianDiffusion):
            raise ValueError(
                "GenericSSL: diffusion must be a scdl_monai.networks.diffusion.GaussianDiffusion, "
                f"got {type(diffusion).__name__}."
            )
        if isinstance(ema_momentum, bool) or not isinstance(ema_momentum, (int, float)) or not 0 <= ema_momentum <= 1:
            raise ValueError(f"GenericSSL: ema_momentum must be a float in [0, 1], got {ema_momentum!r}.")
        if isinstance(unsup_weight_max, bool) or not isinstance(unsup_weight_max, (int, float)) or unsup_weight_max < 0:
            raise ValueError(f"GenericSSL: unsup_weight_max must be a float >= 0, got {unsup_weight_max!r}.")
        if loss_mode not in _LOSS_MODES:
            raise ValueError(f"GenericSSL: loss_mode must be one of {_LOSS_MODES}, got {loss_mode!r}.")

        self.network = network
        self.num_classes = num_classes
        self.diffusion = diffusion
        self.ema_momentum = float(ema_momentum)
        self.unsup_weight_max = float(unsup_weight_max)
        self.ema_skip = tuple(ema_skip) if ema_skip is not None else ()
        self.loss_mode = loss_mode
        self.deno_loss = DiceCELoss(mode=loss_mode) if deno_loss is None else deno_loss
        self.diff_loss = DiceCELoss(mode=loss_mode) if diff_loss is None else diff_loss
        self.unsup_loss = DiceCELoss(mode=loss_mode) if unsup_loss is None else unsup_loss
        # GenericSSL's Difficulty = DHC's DiffDW without the max-normalisation (docs/methods.md#diffdw).
        self.difficulty = DiffDW(num_classes, momentum=diffdw_momentum, alpha=diffdw_alpha, normalize=False)
        self.fusion_kwargs = {"tau": gumbel_tau, "kernel_size": smooth_kernel_size, "sigma": smooth_sigma}

        # Which D_θ parameters the EMA touches is fixed by the architecture: check it once.
        theta_params = dict(network.decoder_theta.named_parameters())
        sources = (dict(network.decoder_xi.named_parameters()), dict(network.decoder_psi.named_parameters()))
        self._ema_names = [
            name
            for name, p in theta_params.items()
            if not any(s in name for s in self.ema_skip)
            and all(name in src and src[name].shape == p.shape for src in sources)
        ]
        if not self._ema_names:
            raise ValueError(
                "GenericSSL: no parameter of network.decoder_theta has a same-name, same-shape twin in "
                "decoder_xi and decoder_psi, so the decoder EMA would do nothing."
            )
        # Not registered as a sub-module (the network would appear twice in state_dict).
        object.__setattr__(self, "_passes", _TrainingPasses(network, self.pseudo_labels))

    # ------------------------------------------------------------------ pieces
    def ema_parameter_names(self) -> list[str]:
        """Names (in ``decoder_theta``) of the parameters that :meth:`aggregate_decoders` updates."""
        return list(self._ema_names)

    @torch.no_grad()
    def aggregate_decoders(self) -> list[str]:
        """Step 1: ``θ ← m·θ + (1−m)·(ξ + ψ)/2`` in place on D_θ's parameters (buffers untouched).

        Returns:
            the names of the updated D_θ parameters.
        """
        net = self.network
        return ema_average_into(
            net.decoder_theta, [net.decoder_xi, net.decoder_psi], momentum=self.ema_momentum, skip=self.ema_skip
        )

    def noisy_labels(self, label_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 2: ``x_t = q_sample(2·onehot(y_L) − 1, t)`` with ``t ~ U{0..T−1}`` per sample.

        Args:
            label_l: (B_l, 1, *spatial) int64 labels in ``[0, C)``.

        Returns:
            ``(x_t, t)``: (B_l, C, *spatial) float32 noisy label map and (B_l,) int64 timesteps.
        """
        onehot = torch.zeros(
            (label_l.shape[0], self.num_classes, *label_l.shape[2:]), dtype=torch.float32, device=label_l.device
        ).scatter_(1, label_l, 1.0)
        t = self.diffusion.sample_timesteps(label_l.shape[0], device=label_l.device)
        return self.diffusion.q_sample(onehot * 2.0 - 1.0, t), t

    @torch.no_grad()
    def pseudo_labels(self, image_u: torch.Tensor) -> FusedPseudoLabels:
        """Step 5: DDIM x0 of D_ξ and D_ψ's softmax fused into hard pseudo-labels (no gradient).

        Runs in the network's current mode: during training that is **train** mode (dropout and
        batch statistics active), as in the reference, where ``model.train()`` stays on.

        Args:
            image_u: (B_u, C_in, *spatial) unlabeled images.

        Returns:
            :class:`~scdl_monai.methods.pseudo_label_fusion.FusedPseudoLabels` with
            ``labels`` (B_u, 1, *spatial) int64.
        """
        net = self.network
        shape = (image_u.shape[0], self.num_classes, *image_u.shape[2:])
        x0_hat = self.diffusion.ddim_sample(
            lambda x_t, t: net.denoise(image_u, x_t, t), shape, device=image_u.device, dtype=torch.float32
        )
        psi_logits_u = net.difficulty_logits(image_u)
        return fuse_pseudo_labels(x0_hat, psi_logits_u, **self.fusion_kwargs)

    def _runner(self) -> nn.Module:
        if "passes" not in self._ddp_wrappers and self._passes.network is not self.network:
            # the network was replaced after construction (e.g. wrapped by SCDLMethod): follow it
            object.__setattr__(self, "_passes", _TrainingPasses(self.network, self.pseudo_labels))
        return self._ddp_wrappers.get("passes", self._passes)

    def _check_inputs(
        self, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if image_u is None or image_u.shape[0] == 0:
            raise ValueError(
                "GenericSSL: image_u must hold at least one unlabeled image (pseudo-labels and L_u need it); "
                "give the trainer an unlabeled_data_loader."
            )
        image_l, label_l, image_u = plain_tensor(image_l), plain_tensor(label_l), plain_tensor(image_u)
        self.check_batches(image_l, label_l, image_u)
        return image_l, class_labels(label_l, self.num_classes, "GenericSSL"), image_u

    def compute_losses(
        self, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None
    ) -> GenericSSLTerms:
        """Steps 2–6 (no decoder EMA): the three loss terms with their graphs.

        Args:
            image_l: (B_l, C_in, *spatial) labeled images.
            label_l: (B_l, 1, *spatial) labels (integer, or float holding integers).
            image_u: (B_u, C_in, *spatial) unlabeled images (required).

        Raises:
            ValueError: ``image_u`` missing/empty, mismatched shapes, label values outside ``[0, C)``.
        """
        image_l, label_l, image_u = self._check_inputs(image_l, label_l, image_u)
        x_t, t = self.noisy_labels(label_l)
        passes: GenericSSLPasses = self._runner()(image_l, x_t, t, image_u)
        loss_deno = call_loss(self.deno_loss, passes.xi_logits_l, label_l)
        xi_pred = plain_tensor(passes.xi_logits_l).detach().argmax(dim=1, keepdim=True)
        class_weight = self.difficulty.update(xi_pred, label_l)
        loss_diff = call_loss(self.diff_loss, passes.psi_logits_l, label_l, class_weight)
        loss_u = call_loss(self.unsup_loss, passes.theta_logits_u, passes.pseudo_label)
        return GenericSSLTerms(loss_deno, loss_diff, loss_u, class_weight, t, passes)

    # ------------------------------------------------------------------ training
    def forward(
        self, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None = None
    ) -> MethodOutput:
        """Steps 2–7 (everything but the decoder EMA, which :meth:`train_step` runs first).

        Returns:
            ``MethodOutput(loss = L_deno + L_diff + μ·L_u, pred = D_ψ labeled logits (detached),
            terms = {loss_deno, loss_diff, loss_u, unsup_weight})``.
        """
        terms = self.compute_losses(image_l, label_l, image_u)
        loss = terms.loss_deno + terms.loss_diff + self.unsup_weight * terms.loss_u
        logged = {
            "loss_deno": terms.loss_deno.detach(),
            "loss_diff": terms.loss_diff.detach(),
            "loss_u": terms.loss_u.detach(),
            "unsup_weight": self.unsup_weight.detach().clone(),
        }
        return MethodOutput(loss=loss, pred=terms.passes.psi_logits_l.detach(), terms=logged)

    def train_step(
        self, engine: Any, image_l: torch.Tensor, label_l: torch.Tensor, image_u: torch.Tensor | None
    ) -> MethodOutput:
        """One A&D iteration: :meth:`aggregate_decoders` (step 1, before the forward), then :meth:`forward`."""
        self.aggregate_decoders()
        return self(image_l, label_l, image_u)

    # ------------------------------------------------------------------ networks
    def wrap_ddp(self, **ddp_kwargs: Any) -> GenericSSL:
        """Wrap the training passes (not only D_θ's ``forward``) in ``DistributedDataParallel``.

        Call after ``.to(device)`` and ``torch.distributed.init_process_group``. Every parameter
        receives a gradient each step, so ``find_unused_parameters`` is not needed.

        Returns:
            self (chainable in a config expression).
        """
        self._runner()  # follow a replaced network before wrapping
        return self._wrap_passes_ddp(self._passes, **ddp_kwargs)

    def inference_network(self) -> nn.Module:
        """The DiffVNet itself: its ``forward`` is D_θ (image stem → shared encoder → D_θ)."""
        return self.network

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, ema_momentum={self.ema_momentum}, "
            f"unsup_weight_max={self.unsup_weight_max}, loss_mode={self.loss_mode!r}"
        )
