"""SCDL block: class proxy distributions, token assignments and the three embedding priors.

Semantic Class Distribution Learning (Su et al., arXiv 2603.05202, §2.1; docs/methods.md#scdl) models
every class ``c`` (background included) as a diagonal Gaussian ``N(μ_c, diag(σ_c²))`` in a
``D``-dimensional embedding space, softly assigns token embeddings to the classes, and turns the
assignments into priors that are added to the decoder of the host segmentation network.

This module holds the *network* side only (constants checked against the released module
``Zyh55555/SCDL@6b2541c7:networks/SCDL.py``):

* :class:`SCDL` — projector MLP, learnable proxies, proxy sampling, assignments, priors and the
  per-stage 1×1(×1) prior projections; its :meth:`SCDL.forward` returns an :class:`SCDLOutput`
  of tensors, never losses (the losses live in :mod:`scdl_monai.losses.class_distribution_loss`);
* :class:`TokenExtractor` — turns a backbone feature map into the token map fed to :class:`SCDL`;
* :func:`token_weights_from_labels`, :func:`token_weights_from_pseudo_label`,
  :func:`token_weights_from_confident_pseudo_label` and :func:`token_weights_from_assignment` —
  the per-token class weights ``w_{t,c}`` of the alignment losses.

Tokens are the cells of a regular grid over the patch (patch/8 per axis in the paper's setting,
e.g. 96³ → 12³ = 1728 tokens). Everything here is dimension-generic (1-, 2- or 3-D grids).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

from scdl_monai.data.utils import check_number, look_up

__all__ = [
    "SCDL",
    "SCDLOutput",
    "TokenExtractor",
    "TOKEN_SOURCES",
    "EVAL_PROXY_MODES",
    "token_weights_from_labels",
    "token_weights_from_pseudo_label",
    "token_weights_from_confident_pseudo_label",
    "token_weights_from_assignment",
]

#: Where :class:`TokenExtractor` takes its tokens from (paper §2.1: encoder embeddings; released
#: inference scripts: the pooled last decoder feature).
TOKEN_SOURCES = ("encoder", "decoder_final")
#: How :class:`SCDL` computes the mean assignment in eval mode (see its ``eval_proxy_samples``).
EVAL_PROXY_MODES = ("mean", "sample")

_INTERP_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


class SCDLOutput(NamedTuple):
    """Tensors produced by :meth:`SCDL.forward` (``L`` tokens, ``C`` classes, ``D = z_dim``).

    Attributes:
        z: token embeddings ``z = MLP(x)``, ``(B, L, D)``.
        z_normalized: ``ẑ = z / ‖z‖``, ``(B, L, D)``.
        assignment: mean cosine to the proxy samples ``ā_{t,c} = mean_s cos(ẑ_t, z̃_{c,s})``,
            ``(B, L, C)``, in a stochastic call; ``cos(ẑ_t, μ̂_c)`` in a deterministic one. Used
            by the code-form alignment losses.
        similarity: cosine to the proxy means ``cos(ẑ_t, μ̂_c)``, ``(B, L, C)``.
        probs: ``P(c|t) = softmax_c(cos(ẑ_t, μ̂_c) / τ_e2p)``, ``(B, L, C)``.
        probs_p2e: the same softmax with ``τ_p2e`` (identical to ``probs`` when the temperatures
            are equal, as in the reference), ``(B, L, C)``.
        mu: proxy means ``μ``, ``(C, D)``.
        sigma: proxy standard deviations ``σ = softplus(raw) > 0``, ``(C, D)``.
        prior: ``z_prior = concat(r_dist, r_center, z_sam)`` laid out on the token grid,
            ``(B, 3·D, *token_grid)``.
    """

    z: torch.Tensor
    z_normalized: torch.Tensor
    assignment: torch.Tensor
    similarity: torch.Tensor
    probs: torch.Tensor
    probs_p2e: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor
    prior: torch.Tensor


def _spatial_dims_arg(owner: str, value) -> int:
    if isinstance(value, bool) or value not in (1, 2, 3):
        raise ValueError(f"{owner}: `spatial_dims` must be 1, 2 or 3, got {value!r}.")
    return int(value)


def _shape_of(owner: str, name: str, target, spatial_dims: int) -> tuple[int, ...]:
    """Spatial shape from a tuple of ints or from a ``(B, C, *spatial)`` tensor."""
    if isinstance(target, torch.Tensor):
        if target.ndim != spatial_dims + 2:
            raise ValueError(
                f"{owner}: `{name}` tensor must be (B, C, *spatial) with {spatial_dims} spatial dims, "
                f"got shape {tuple(target.shape)}."
            )
        return tuple(target.shape[2:])
    try:
        shape = tuple(int(s) for s in target)
    except TypeError:
        raise TypeError(f"{owner}: `{name}` must be a spatial shape or a tensor, got {target!r}.") from None
    if len(shape) != spatial_dims or any(s < 1 for s in shape):
        raise ValueError(f"{owner}: `{name}` must be {spatial_dims} positive sizes, got {shape}.")
    return shape


class SCDL(nn.Module):
    """Class-distribution block of SCDL (paper §2.1): proxies, assignments, priors.

    Computation for a token map ``x`` of shape ``(B, x_dim, *grid)`` (``L = prod(grid)`` tokens):

    * ``z = MLP(x)`` with the projector ``x_dim → 2D → 2D → D`` (ReLU, Dropout ``dropout``),
      ``ẑ = z / ‖z‖``;
    * proxies: one learnable ``[C, 2D]`` matrix (Xavier-uniform, gain 1); ``μ`` = its first ``D``
      columns, ``σ = softplus(rest)``;
    * proxy samples ``z̃_{c,s} = normalize(μ_c + σ_c ⊙ ε_{c,s})``, ``ε ~ N(0, I)``,
      ``s = 1..num_proxy_samples``, drawn afresh every stochastic call;
    * mean assignment ``ā_{t,c} = mean_s cos(ẑ_t, z̃_{c,s}) = ẑ_t · mean_s z̃_{c,s}`` (cosine is
      linear in the unit sample, so the ``(B, L, C, S)`` tensor of the reference is never built);
      used by the code-form alignment losses;
    * ``P(c|t) = softmax_c(cos(ẑ_t, μ̂_c) / τ_e2p)`` (paper Eq. 2 has no temperature; the
      reference uses 0.2);
    * priors (paper Eqs. 5–7):

      - distribution-weighted ``r_dist_t = Σ_c softmax_c(cos(ẑ_t, μ̂_c) / τ_dist) · μ_c``, computed
        **the same way in training and evaluation**. Eq. 5 weights by the mean cosine to ``S``
        samples of each proxy; with ``σ = softplus(0) ≈ 0.69`` per dimension at initialisation a
        sample's norm is dominated by its noise, so those cosines are ~10× smaller than the cosine
        to the mean and the weights nearly uniform, while an evaluation pass cannot sample without
        becoming random. Weighting by the proxy means in both modes keeps the decoder's input
        distribution identical between training and inference (for a token at its class mean the
        own-class weight no longer jumps from ~0.1 in training to ~0.9 in evaluation). The paper's
        softmax has no temperature; ``τ_dist`` (default 0.2, like the released ``tau_e2p``) is
        configurable — ``tau_dist=1`` removes it;
      - center-similarity ``r_center_t = normalize(Σ_c softmax_c(cos(ẑ_t, μ̂_c)/τ_p2e) · μ̂_c)``
        (reference ``prior_p2e_tok``; paper Eq. 6 has unit temperature and un-normalised ``μ``);
      - token sampling ``z_sam_t = normalize(mean_e normalize(z_t + ε_e ⊙ σ_emb))``,
        ``e = 1..num_token_samples``, learnable ``σ_emb ∈ R^D``; ``ε = 0`` in a deterministic
        call, so there ``z_sam = ẑ``;
      - ``z_prior = concat(r_dist, r_center, z_sam)`` — ``3·D`` channels on the token grid.

    Stochastic and deterministic calls: by default a call is stochastic in training mode (proxy
    samples, token noise, projector dropout) and deterministic in eval mode (proxy means, no
    noise, no dropout). ``forward(tokens, stochastic=False)`` forces the deterministic path in
    training mode too — what a teacher or pseudo-label pass needs.

    Injection (paper §2.1 last paragraph): :meth:`project_prior` maps the prior with one
    bias-free 1×1(×1) convolution per target stage (``injection_channels``) and resizes it
    (linear/bilinear/trilinear) to each stage's spatial shape; the host network **adds** the results
    after its skip-sums, e.g. ``VNet.decode(features, injection=...)``. A bias-free 1×1 conv and
    linear interpolation commute, so projecting first (on the small token grid) is exact and cheap.
    The projections are **zero-initialised** by default, so a network with a fresh SCDL block
    computes exactly what its backbone computes (SCDL-X starts as X) and the prior enters the
    decoder only as the projections learn; ``zero_init_injection=False`` keeps PyTorch's default
    convolution initialisation, as the released ``UpFuseBlock.prior_proj`` (``Zyh55555/SCDL:
    networks/SCDL.py``) does.

    Args:
        num_classes: ``C``, background included (background has a proxy).
        x_dim: channels of the token map (reference ``x_dim``; 16 = last VNet feature at n=16).
        z_dim: embedding/proxy dimension ``D`` (reference default 256).
        num_proxy_samples: samples ``S`` per class proxy per forward (reference ``sample_num=50``).
        num_token_samples: samples ``E`` per token for ``z_sam`` (reference ``sample_num_emb=2``).
        sigma_emb_init: initial value of every entry of ``σ_emb`` (reference ``init_sigma_emb=0.05``).
        tau_e2p: temperature of ``probs`` (reference ``tau_e2p=0.2``).
        tau_p2e: temperature of ``probs_p2e``, which weights the center prior (reference
            ``tau_p2e=0.2``).
        tau_dist: temperature of the distribution-weighted prior (default 0.2; paper Eq. 5 has
            none, i.e. 1).
        dropout: dropout probability in the projector (reference 0.2).
        injection_channels: width of each target stage, one bias-free 1×1 conv ``3D → width`` per
            entry; ``None`` (default) builds none and :meth:`project_prior` is unavailable. For a
            :class:`~scdl_monai.networks.vnet.VNet` at all stages: ``net.decoder_channels``.
        spatial_dims: dimensionality of the token grid and of the injection convolutions.
        eval_proxy_samples: ``"mean"`` (default) — a deterministic call uses the proxy means for
            ``ā`` too (``ā = cos(ẑ, μ̂)``); ``"sample"`` — ``ā`` is sampled in eval mode as well,
            as the released module (which always samples) does. The prior never depends on it.
        zero_init_injection: zero-initialise the injection projections (default ``True``).
        proxy_sigma_init: initial proxy standard deviation ``σ`` (every entry), or ``None``
            (default) for the released module's initialisation: Xavier-uniform over the whole raw
            ``(C, 2D)`` parameter, i.e. ``σ ≈ softplus(0) ≈ 0.69`` against ``|μ| ≲ 0.1`` per entry, so
            sampled proxies start nearly isotropic. ``μ`` is drawn the same way either way.

    Raises:
        ValueError: a non-positive size/temperature, ``dropout`` outside [0, 1), bad
            ``spatial_dims``, ``injection_channels`` or ``eval_proxy_samples``.

    Example:
        >>> scdl = SCDL(num_classes=14, x_dim=16, injection_channels=(128, 64, 32, 16))
        >>> out = scdl(torch.randn(2, 16, 12, 12, 12))
        >>> out.prior.shape
        torch.Size([2, 768, 12, 12, 12])
        >>> inject = scdl.project_prior(out.prior, [(12,) * 3, (24,) * 3, (48,) * 3, (96,) * 3])
        >>> [tuple(t.shape[1:]) for t in inject][-1]
        (16, 96, 96, 96)
    """

    #: :func:`~scdl_monai.networks.vnet.initialize_weights` leaves this block alone (a baseline
    #: that re-initialises its networks must not touch the zero-initialised injection projections
    #: nor draw extra random numbers for them).
    keeps_initialization = True

    def __init__(
        self,
        num_classes: int,
        x_dim: int = 16,
        z_dim: int = 256,
        num_proxy_samples: int = 50,
        num_token_samples: int = 2,
        sigma_emb_init: float = 0.05,
        tau_e2p: float = 0.2,
        tau_p2e: float = 0.2,
        tau_dist: float = 0.2,
        dropout: float = 0.2,
        injection_channels: Sequence[int] | None = None,
        spatial_dims: int = 3,
        eval_proxy_samples: str = "mean",
        zero_init_injection: bool = True,
        proxy_sigma_init: float | None = None,
    ) -> None:
        super().__init__()
        owner = "SCDL"
        self.num_classes = check_number(num_classes, "num_classes", owner, integer=True, minimum=1)
        self.x_dim = check_number(x_dim, "x_dim", owner, integer=True, minimum=1)
        self.z_dim = check_number(z_dim, "z_dim", owner, integer=True, minimum=1)
        self.num_proxy_samples = check_number(num_proxy_samples, "num_proxy_samples", owner, integer=True, minimum=1)
        self.num_token_samples = check_number(num_token_samples, "num_token_samples", owner, integer=True, minimum=1)
        self.tau_e2p = check_number(tau_e2p, "tau_e2p", owner, strict=True)
        self.tau_p2e = check_number(tau_p2e, "tau_p2e", owner, strict=True)
        self.tau_dist = check_number(tau_dist, "tau_dist", owner, strict=True)
        self.spatial_dims = _spatial_dims_arg(owner, spatial_dims)
        if isinstance(sigma_emb_init, bool) or not isinstance(sigma_emb_init, (int, float)):
            raise ValueError(f"SCDL: `sigma_emb_init` must be a number, got {sigma_emb_init!r}.")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"SCDL: `dropout` must be a float in [0, 1), got {dropout!r}.")
        if not isinstance(zero_init_injection, bool):
            raise ValueError(f"SCDL: `zero_init_injection` must be a bool, got {zero_init_injection!r}.")
        self.eval_proxy_samples = look_up(eval_proxy_samples, EVAL_PROXY_MODES, "eval_proxy_samples", owner)
        if proxy_sigma_init is not None:
            proxy_sigma_init = check_number(proxy_sigma_init, "proxy_sigma_init", owner, strict=True)

        d = self.z_dim
        self.projector = nn.Sequential(
            nn.Linear(self.x_dim, 2 * d),
            nn.ReLU(inplace=True),
            nn.Dropout(float(dropout)),
            nn.Linear(2 * d, 2 * d),
            nn.ReLU(inplace=True),
            nn.Dropout(float(dropout)),
            nn.Linear(2 * d, d),
        )
        #: raw proxies [C, 2D]: μ = first D columns, σ = softplus(last D) (reference layout).
        self.proxies = nn.Parameter(torch.empty(self.num_classes, 2 * d))
        nn.init.xavier_uniform_(self.proxies, gain=1.0)
        if proxy_sigma_init is not None:  # σ = softplus(raw)  <=>  raw = log(expm1(σ))
            with torch.no_grad():
                self.proxies[:, d:].fill_(math.log(math.expm1(proxy_sigma_init)))
        #: learnable per-dimension token noise scale of the token-sampling prior.
        self.sigma_emb = nn.Parameter(torch.full((d,), float(sigma_emb_init)))

        if injection_channels is None:
            self.injection_channels: tuple[int, ...] = ()
        else:
            if isinstance(injection_channels, (str, bytes)) or not isinstance(injection_channels, Sequence):
                raise ValueError(
                    "SCDL: `injection_channels` must be a sequence of stage widths or None, "
                    f"got {injection_channels!r}."
                )
            self.injection_channels = tuple(
                check_number(c, f"injection_channels[{i}]", owner, integer=True, minimum=1)
                for i, c in enumerate(injection_channels)
            )
        conv = Conv[Conv.CONV, self.spatial_dims]
        self.injection_projections = nn.ModuleList(
            conv(3 * d, width, kernel_size=1, bias=False) for width in self.injection_channels
        )
        self.zero_init_injection = zero_init_injection
        if zero_init_injection:
            for proj in self.injection_projections:
                nn.init.zeros_(proj.weight)

    @property
    def prior_channels(self) -> int:
        """Channels of the prior map, ``3·z_dim``."""
        return 3 * self.z_dim

    def proxy_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, σ)``, each ``(C, D)``; ``σ = softplus(raw) > 0``."""
        mu = self.proxies[:, : self.z_dim]
        sigma = F.softplus(self.proxies[:, self.z_dim :])
        return mu, sigma

    def sample_proxies(self, num_samples: int | None = None) -> torch.Tensor:
        """L2-normalised proxy samples ``normalize(μ_c + σ_c ⊙ ε)``, ``(C, S, D)`` (differentiable).

        Args:
            num_samples: ``S``; defaults to ``num_proxy_samples``.
        """
        s = self.num_proxy_samples
        if num_samples is not None:
            s = check_number(num_samples, "num_samples", "SCDL", integer=True, minimum=1)
        mu, sigma = self.proxy_parameters()
        eps = torch.randn(mu.shape[0], s, mu.shape[1], device=mu.device, dtype=mu.dtype)
        return F.normalize(mu.unsqueeze(1) + sigma.unsqueeze(1) * eps, dim=-1)

    def project(self, x: torch.Tensor, stochastic: bool | None = None) -> torch.Tensor:
        """Token embeddings ``z = MLP(x)`` of ``(..., x_dim)`` tokens; dropout only when ``stochastic``.

        ``stochastic=None`` follows the module's mode (dropout in training, as ``self.projector(x)``).
        """
        if stochastic is None or (stochastic and self.training):
            return self.projector(x)
        for layer in self.projector:  # deterministic: the same layers without dropout
            if not isinstance(layer, nn.Dropout):
                x = layer(x)
        return x

    def _token_sampling_prior(self, z: torch.Tensor, z_normalized: torch.Tensor, stochastic: bool) -> torch.Tensor:
        if not stochastic:
            return z_normalized  # ε = 0: normalize(mean_e normalize(z)) = ẑ
        eps = torch.randn(*z.shape[:-1], self.num_token_samples, z.shape[-1], device=z.device, dtype=z.dtype)
        samples = F.normalize(z.unsqueeze(-2) + eps * self.sigma_emb, dim=-1)
        return F.normalize(samples.mean(dim=-2), dim=-1)

    def forward(self, tokens: torch.Tensor, stochastic: bool | None = None) -> SCDLOutput:
        """Embeddings, assignments and the prior map of a token map.

        Args:
            tokens: token MAP ``(B, x_dim, *grid)`` with ``spatial_dims`` grid dims — each grid cell
                is one token (e.g. :class:`TokenExtractor` output, 12³ for a 96³ patch).
            stochastic: sample proxies and token noise and apply the projector's dropout;
                ``None`` (default) = ``self.training``. ``False`` gives the deterministic result of
                eval mode whatever the mode (teacher / pseudo-label passes).

        Returns:
            :class:`SCDLOutput` (tensors only; losses are computed by the caller).

        Raises:
            TypeError: ``tokens`` is not a tensor.
            ValueError: wrong number of dims or channels.
        """
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"SCDL: `tokens` must be a tensor (B, x_dim, *grid), got {type(tokens).__name__}.")
        if tokens.ndim != self.spatial_dims + 2 or tokens.shape[1] != self.x_dim:
            raise ValueError(
                f"SCDL: `tokens` must have shape (B, x_dim={self.x_dim}, *grid) with {self.spatial_dims} "
                f"grid dims, got {tuple(tokens.shape)}."
            )
        stochastic = self.training if stochastic is None else bool(stochastic) and self.training
        grid = tokens.shape[2:]
        x = tokens.flatten(2).transpose(1, 2)  # (B, L, x_dim)
        z = self.project(x, stochastic)
        # The class statistics (cosines, softmax assignments at tau 0.2, priors) stay float32 under a
        # bf16/fp16 autocast policy: a bf16 cosine has ~3 significant digits, amplified 5x by 1/tau
        # (scdl_monai.engines.precision, "Where float32 is kept"). Tokens are few (patch/8 per axis): negligible cost.
        with torch.autocast(tokens.device.type, enabled=False):
            z = z.float()
            z_hat = F.normalize(z, dim=-1)
            mu, sigma = self.proxy_parameters()
            mu_hat = F.normalize(mu, dim=-1)

            similarity = z_hat @ mu_hat.t()
            if stochastic or self.eval_proxy_samples == "sample":
                proxy_centers = self.sample_proxies().mean(dim=1)  # (C, D): mean of unit samples
                assignment = z_hat @ proxy_centers.t()  # mean_s cos(ẑ, z̃_s) by linearity
            else:
                assignment = similarity
            probs = torch.softmax(similarity / self.tau_e2p, dim=-1)
            probs_p2e = probs if self.tau_p2e == self.tau_e2p else torch.softmax(similarity / self.tau_p2e, dim=-1)

            # one computation in every mode: weights from the proxy means (see the class docstring)
            dist_weights = probs if self.tau_dist == self.tau_e2p else torch.softmax(similarity / self.tau_dist, dim=-1)
            r_dist = dist_weights @ mu
            r_center = F.normalize(probs_p2e @ mu_hat, dim=-1)
            z_sam = self._token_sampling_prior(z, z_hat, stochastic)
            prior = torch.cat([r_dist, r_center, z_sam], dim=-1).transpose(1, 2).reshape(z.shape[0], -1, *grid)
        return SCDLOutput(z, z_hat, assignment, similarity, probs, probs_p2e, mu, sigma, prior)

    def project_prior(self, prior_map: torch.Tensor, target_shapes: Sequence) -> list[torch.Tensor]:
        """Per-stage injection tensors: bias-free 1×1 conv ``3D → width``, then resize.

        Args:
            prior_map: ``SCDLOutput.prior``, ``(B, 3·D, *grid)``.
            target_shapes: one entry per ``injection_channels`` entry: the stage's spatial shape
                (ints) or a ``(B, C, *spatial)`` tensor whose spatial shape is used.

        Returns:
            ``[(B, injection_channels[k], *target_shapes[k]) for k]``, in the order of
            ``injection_channels`` (for all VNet stages: pass as ``injection=`` to ``VNet.decode``).

        Raises:
            ValueError: no projections were built, wrong number of target shapes, or a prior map of
                the wrong shape.
        """
        if not self.injection_channels:
            raise ValueError("SCDL.project_prior: the block was built with `injection_channels=None`.")
        if not isinstance(prior_map, torch.Tensor) or prior_map.ndim != self.spatial_dims + 2:
            shape = tuple(prior_map.shape) if isinstance(prior_map, torch.Tensor) else type(prior_map).__name__
            raise ValueError(
                f"SCDL.project_prior: `prior_map` must be (B, {self.prior_channels}, *grid), got {shape}."
            )
        if prior_map.shape[1] != self.prior_channels:
            raise ValueError(
                f"SCDL.project_prior: `prior_map` has {prior_map.shape[1]} channels, expected "
                f"3·z_dim = {self.prior_channels}."
            )
        if isinstance(target_shapes, (str, bytes)) or len(target_shapes) != len(self.injection_channels):
            raise ValueError(
                f"SCDL.project_prior: `target_shapes` needs {len(self.injection_channels)} entries (one per "
                f"injection_channels {self.injection_channels}), got {target_shapes!r}."
            )
        outputs = []
        for k, (proj, target) in enumerate(zip(self.injection_projections, target_shapes)):
            shape = _shape_of("SCDL.project_prior", f"target_shapes[{k}]", target, self.spatial_dims)
            y = proj(prior_map)
            if tuple(y.shape[2:]) != shape:
                y = F.interpolate(y, size=shape, mode=_INTERP_MODES[self.spatial_dims], align_corners=False)
            outputs.append(y)
        return outputs


class TokenExtractor(nn.Module):
    """Token map for :class:`SCDL` from one backbone feature map.

    * ``"encoder"`` (paper: tokens are encoder embeddings; needed when the prior is injected at
      every decoder stage, since it must exist before decoding): a 1×1(×1) convolution of an
      encoder feature to ``x_dim`` channels, e.g. VNet ``x4`` (8n channels, already at patch/8), so
      ``pool_factor`` defaults to 1.
    * ``"decoder_final"`` (released inference code): adaptive average pooling of the last decoder
      feature (e.g. VNet ``x9``, n channels at full resolution) by ``pool_factor`` (default 8) per
      axis — 96³ → 12³ tokens. No parameters when ``in_channels == x_dim`` (the reference: 16 = 16);
      otherwise a 1×1 convolution adapts the width.

    Pooling uses :func:`torch.nn.functional.adaptive_avg_pool3d` (or 1-/2-D) to
    ``spatial // pool_factor``, i.e. exact block means when the size is divisible. Pooling and the
    1×1 conv commute (both linear), so pooling runs first.

    Args:
        source: ``"encoder"`` or ``"decoder_final"``.
        in_channels: channels of the feature map given to :meth:`forward`.
        x_dim: token channels (``SCDL.x_dim``).
        spatial_dims: 1, 2 or 3.
        pool_factor: down-sampling per axis; ``None`` → 1 (encoder) or 8 (decoder_final).

    Raises:
        ValueError: unknown ``source`` (with a suggestion) or non-positive sizes.

    Example:
        >>> tok = TokenExtractor("decoder_final", in_channels=16, x_dim=16)
        >>> tok(torch.zeros(1, 16, 96, 96, 96)).shape
        torch.Size([1, 16, 12, 12, 12])
    """

    #: left alone by :func:`~scdl_monai.networks.vnet.initialize_weights` (see :class:`SCDL`).
    keeps_initialization = True

    def __init__(
        self,
        source: str = "encoder",
        in_channels: int = 128,
        x_dim: int = 16,
        spatial_dims: int = 3,
        pool_factor: int | None = None,
    ) -> None:
        super().__init__()
        owner = "TokenExtractor"
        self.source = look_up(source, TOKEN_SOURCES, "source", owner)
        self.in_channels = check_number(in_channels, "in_channels", owner, integer=True, minimum=1)
        self.x_dim = check_number(x_dim, "x_dim", owner, integer=True, minimum=1)
        self.spatial_dims = _spatial_dims_arg(owner, spatial_dims)
        if pool_factor is None:
            pool_factor = 1 if self.source == "encoder" else 8
        self.pool_factor = check_number(pool_factor, "pool_factor", owner, integer=True, minimum=1)
        if self.source == "encoder" or self.in_channels != self.x_dim:
            self.proj: nn.Module = Conv[Conv.CONV, self.spatial_dims](self.in_channels, self.x_dim, kernel_size=1)
        else:
            self.proj = nn.Identity()

    def token_shape(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Token grid for a feature of the given spatial shape: ``spatial // pool_factor``."""
        return tuple(int(s) // self.pool_factor for s in spatial_shape)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` → token map ``(B, x_dim, *spatial // pool_factor)``.

        Raises:
            ValueError: wrong dims/channels, or a spatial size smaller than ``pool_factor``.
        """
        if not isinstance(feature, torch.Tensor) or feature.ndim != self.spatial_dims + 2:
            shape = tuple(feature.shape) if isinstance(feature, torch.Tensor) else type(feature).__name__
            raise ValueError(
                f"TokenExtractor: `feature` must be (B, {self.in_channels}, *spatial) with "
                f"{self.spatial_dims} spatial dims, got {shape}."
            )
        if feature.shape[1] != self.in_channels:
            raise ValueError(
                f"TokenExtractor: `feature` has {feature.shape[1]} channels, expected in_channels={self.in_channels}."
            )
        if self.pool_factor > 1:
            grid = self.token_shape(feature.shape[2:])
            if min(grid) < 1:
                raise ValueError(
                    f"TokenExtractor: feature spatial size {tuple(feature.shape[2:])} is smaller than "
                    f"pool_factor={self.pool_factor}."
                )
            pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[self.spatial_dims - 1]
            feature = pool(feature, grid)
        return self.proj(feature)


def token_weights_from_labels(label: torch.Tensor, num_classes: int, token_shape: Sequence[int]) -> torch.Tensor:
    """Ground-truth class proportions of every token's region (labeled tokens, paper §2.1).

    ``w_{t,c}`` = fraction of the voxels of token ``t``'s cell that carry class ``c``: adaptive
    average pooling of the one-hot label to the token grid (exact areas when each spatial size is
    divisible by the grid size; the reference's ``mask_to_token_dist`` uses area interpolation).
    Each row sums to 1. Not differentiable (labels are integers).

    Args:
        label: class indices ``(B, 1, *spatial)`` with values in ``[0, num_classes)``; an integer
            tensor, or a float tensor holding integers (as MONAI's loaders produce).
        num_classes: ``C``.
        token_shape: the token grid, one size per spatial dim (e.g. ``(12, 12, 12)``).

    Returns:
        ``(B, L, C)`` float weights, ``L = prod(token_shape)``, tokens in row-major grid order
        (the order of :meth:`SCDL.forward`).

    Raises:
        TypeError: ``label`` is not a real-valued tensor.
        ValueError: bad shape, fractional or out-of-range label values, or a bad ``token_shape``.

    Example:
        >>> lab = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long); lab[..., :2, :2, :1] = 1
        >>> token_weights_from_labels(lab, 2, (2, 2, 2))[0, 0]
        tensor([0.5000, 0.5000])
    """
    if not isinstance(label, torch.Tensor) or label.dtype == torch.bool or label.dtype.is_complex:
        what = label.dtype if isinstance(label, torch.Tensor) else type(label).__name__
        raise TypeError(f"token_weights_from_labels: `label` must be an integer tensor (B, 1, *spatial), got {what}.")
    if hasattr(label, "as_tensor"):  # MONAI MetaTensor -> plain tensor (no metadata in the weights)
        label = label.as_tensor()
    if label.ndim < 3 or label.ndim > 5 or label.shape[1] != 1:
        raise ValueError(f"token_weights_from_labels: `label` must be (B, 1, *spatial), got {tuple(label.shape)}.")
    num_classes = check_number(num_classes, "num_classes", "token_weights_from_labels", integer=True, minimum=1)
    spatial_dims = label.ndim - 2
    grid = _shape_of("token_weights_from_labels", "token_shape", token_shape, spatial_dims)
    if label.numel():
        # one device sync for all checks
        stats = [label.min(), label.max()]
        if label.dtype.is_floating_point:
            stats.append((label != label.round()).any())
        lo, hi, *fractional = torch.stack([v.to(torch.float64) for v in stats]).tolist()
        if fractional and fractional[0]:
            raise ValueError(
                "token_weights_from_labels: a floating-point `label` must hold integer class indices, "
                "got fractional values (soft labels are not class indices)."
            )
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"token_weights_from_labels: `label` values must be in [0, {num_classes}), got range "
                f"[{lo:g}, {hi:g}]."
            )
    onehot = F.one_hot(label[:, 0].long(), num_classes).movedim(-1, 1).float()  # (B, C, *spatial)
    pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[spatial_dims - 1]
    return pool(onehot, grid).flatten(2).transpose(1, 2)


def token_weights_from_pseudo_label(logits: torch.Tensor, token_shape: Sequence[int]) -> torch.Tensor:
    """Pseudo-label class proportions for unlabeled tokens (no confidence threshold).

    The (detached) argmax of ``logits`` is pooled like a label, see :func:`token_weights_from_labels`.

    Args:
        logits: segmentation logits or probabilities ``(B, C, *spatial)``.
        token_shape: the token grid.

    Returns:
        ``(B, L, C)`` weights without gradient.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim < 3:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"token_weights_from_pseudo_label: `logits` must be (B, C, *spatial), got {shape}.")
    pseudo = logits.detach().argmax(dim=1, keepdim=True)
    return token_weights_from_labels(pseudo, logits.shape[1], token_shape)


def token_weights_from_confident_pseudo_label(
    logits: torch.Tensor, token_shape: Sequence[int], threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class proportions of a (peer's) confident pseudo-label per token, and which tokens have one.

    Voxel ``v`` counts when ``max_c softmax(logits)_v ≥ threshold``; ``w_{t,c}`` is the share of
    the confident voxels of token ``t``'s cell whose argmax is ``c`` (rows sum to 1), and the mask
    marks the tokens with at least one confident voxel — the others carry no target and must be
    left out of the loss. ``threshold=0`` keeps every voxel (then the weights equal
    :func:`token_weights_from_pseudo_label`). Adaptive average pooling as in
    :func:`token_weights_from_labels`; no gradient.

    Args:
        logits: ``(B, C, *spatial)`` logits of the network that provides the target.
        token_shape: the token grid.
        threshold: confidence threshold in ``[0, 1]``.

    Returns:
        ``(weights (B, L, C), mask (B, L) bool)``.

    Raises:
        ValueError: bad shapes or ``threshold`` outside ``[0, 1]``.

    Example:
        >>> logits = torch.zeros(1, 2, 4, 4, 4); logits[:, 1, :2] = 5.0  # confident class 1 in half
        >>> w, mask = token_weights_from_confident_pseudo_label(logits, (2, 2, 2), threshold=0.9)
        >>> mask[0].tolist(), w[0, 0].tolist()
        ([True, True, True, True, False, False, False, False], [0.0, 1.0])
    """
    owner = "token_weights_from_confident_pseudo_label"
    if not isinstance(logits, torch.Tensor) or logits.ndim < 3 or logits.ndim > 5:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{owner}: `logits` must be (B, C, *spatial), got {shape}.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{owner}: `threshold` must be a number in [0, 1], got {threshold!r}.")
    if hasattr(logits, "as_tensor"):
        logits = logits.as_tensor()
    spatial_dims = logits.ndim - 2
    grid = _shape_of(owner, "token_shape", token_shape, spatial_dims)
    with torch.no_grad():
        probs = torch.softmax(logits.detach().float(), dim=1)
        confidence, pseudo = probs.max(dim=1)
        confident = (confidence >= float(threshold)).unsqueeze(1).float()  # (B, 1, *spatial)
        onehot = F.one_hot(pseudo, logits.shape[1]).movedim(-1, 1).float() * confident
        pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[spatial_dims - 1]
        shares = pool(onehot, grid).flatten(2).transpose(1, 2)  # (B, L, C), rows sum to the confident share
        mass = shares.sum(dim=-1, keepdim=True)
        weights = shares / mass.clamp_min(torch.finfo(shares.dtype).tiny)
        return weights, mass[..., 0] > 0


def token_weights_from_assignment(probs: torch.Tensor, probs_p2e: torch.Tensor | None = None) -> torch.Tensor:
    """Sharpened, detached assignment weights for unlabeled tokens (reference ``bi_sim``).

    ``w_{t,c} = P_e2p(c|t)·P_p2e(c|t) / Σ_c' P_e2p(c'|t)·P_p2e(c'|t)``; with one argument (or equal
    temperatures, as in the reference) this is ``P² / Σ P²``. Source:
    ``Zyh55555/SCDL:networks/SCDL.py`` (``bi_sim``, the weights used when no ground truth is given).

    Args:
        probs: ``P(c|t)``, ``(..., C)`` — e.g. ``SCDLOutput.probs``.
        probs_p2e: optional second assignment of the same shape (``SCDLOutput.probs_p2e``).

    Returns:
        Weights of the same shape, rows summing to 1, no gradient.

    Raises:
        ValueError: shapes differ.
    """
    if probs_p2e is None:
        probs_p2e = probs
    if probs.shape != probs_p2e.shape:
        raise ValueError(
            f"token_weights_from_assignment: `probs` {tuple(probs.shape)} and `probs_p2e` "
            f"{tuple(probs_p2e.shape)} must have the same shape."
        )
    with torch.no_grad():
        joint = probs.detach() * probs_p2e.detach()
        return joint / joint.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(joint.dtype).tiny)
