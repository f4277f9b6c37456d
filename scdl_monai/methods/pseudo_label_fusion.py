"""GenericSSL / A&D pseudo-label fusion of the diffusion and the difficulty-aware decoders.

docs/methods.md#training-step, step 5; reference ``xmed-lab/GenericSSL@e73bde94:code/train_diffusion.py``
(``GaussianSmoothing(num_cls, 3, 1)(F.gumbel_softmax(p_u_xi, dim=1))``, ``F.softmax(p_u_psi)``,
``argmax(p_u_xi + p_u_psi)``) and ``code/utils/__init__.py`` (``GaussianSmoothing``):

1. ``p_ξ = GaussianSmooth(gumbel_softmax(x̂0, τ))`` where ``x̂0`` is the DDIM x0 prediction
   (clamped to ``[-1, 1]``) used as logits, ``τ = 1``; the smoothing is a per-channel 3-D
   Gaussian with a ``3³`` kernel, ``σ = 1``, normalised to sum 1 over the whole kernel, with **zero
   padding** (``padding="same"``). The kernel is the outer product of normalised 1-D kernels, so
   it is applied separably (MONAI ``separable_filtering``, ``mode="zeros"``).
2. ``p_ψ = softmax(D_ψ logits)``.
3. ``ŷ = argmax_c(p_ξ + p_ψ)``.

Because of the zero padding, ``Σ_c p_ξ`` is 1 only at voxels at least ``kernel_size // 2`` from
the border; at a border voxel it is the kernel mass inside the volume (``< 1``). This is the
reference behaviour and it slightly favours D_ψ at the patch border.

Everything runs under ``torch.no_grad()``: pseudo-labels carry no gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.layers import separable_filtering

__all__ = ["FusedPseudoLabels", "gaussian_kernel_1d", "smooth_gumbel_softmax", "fuse_pseudo_labels"]

#: Reference constants (GenericSSL train_diffusion.py): Gumbel τ (torch default 1), kernel 3, σ 1.
TAU = 1.0
KERNEL_SIZE = 3
SIGMA = 1.0


class FusedPseudoLabels(NamedTuple):
    """Output of :func:`fuse_pseudo_labels`.

    Attributes:
        labels: ``(B, 1, *spatial)`` int64 pseudo-labels ``argmax(p_xi + p_psi)``.
        p_xi: ``(B, C, *spatial)`` smoothed Gumbel-softmax of the diffusion x0 prediction.
        p_psi: ``(B, C, *spatial)`` softmax of the D_ψ logits.
    """

    labels: torch.Tensor
    p_xi: torch.Tensor
    p_psi: torch.Tensor


def gaussian_kernel_1d(kernel_size: int = KERNEL_SIZE, sigma: float = SIGMA) -> torch.Tensor:
    """Sampled 1-D Gaussian ``exp(−x²/(2σ²))`` at ``x = −r..r`` (``r = kernel_size // 2``), summing to 1.

    Its outer product over the spatial dims equals the reference's normalised ``k³`` kernel.

    Raises:
        ValueError: ``kernel_size`` not a positive odd int, or ``sigma <= 0``.
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"gaussian_kernel_1d: `kernel_size` must be a positive odd int, got {kernel_size!r}.")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not float(sigma) > 0:
        raise ValueError(f"gaussian_kernel_1d: `sigma` must be a positive float, got {sigma!r}.")
    r = kernel_size // 2
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-(x**2) / (2.0 * float(sigma) ** 2))
    return (k / k.sum()).float()


@torch.no_grad()
def smooth_gumbel_softmax(
    x0_pred: torch.Tensor,
    *,
    tau: float = TAU,
    kernel_size: int = KERNEL_SIZE,
    sigma: float = SIGMA,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``GaussianSmooth(gumbel_softmax(x0_pred, τ, dim=1))`` with zero padding (step 1 of the fusion).

    The Gumbel noise is ``−log(E)``, ``E ~ Exp(1)``, exactly as :func:`torch.nn.functional.gumbel_softmax`
    draws it; with ``generator=None`` that function is called, otherwise the same formula is
    evaluated with ``generator`` (reproducible sampling).

    Args:
        x0_pred: ``(B, C, *spatial)`` x0 prediction used as logits.
        tau: Gumbel-softmax temperature (> 0).
        kernel_size: odd smoothing kernel size per dimension.
        sigma: smoothing standard deviation (voxels).
        generator: optional ``torch.Generator`` on ``x0_pred``'s device.

    Returns:
        ``(B, C, *spatial)`` tensor, non-negative, ``Σ_c = 1`` away from the border.
    """
    if not isinstance(x0_pred, torch.Tensor) or x0_pred.ndim < 3:
        raise ValueError(f"smooth_gumbel_softmax: `x0_pred` must be a (B, C, *spatial) tensor, got {x0_pred!r}.")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not float(tau) > 0:
        raise ValueError(f"smooth_gumbel_softmax: `tau` must be a positive float, got {tau!r}.")
    kernel = gaussian_kernel_1d(kernel_size, sigma)
    logits = x0_pred.float()
    if generator is None:
        soft = F.gumbel_softmax(logits, tau=float(tau), hard=False, dim=1)
    else:
        gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
        soft = ((logits + gumbels) / float(tau)).softmax(dim=1)
    return separable_filtering(soft, kernel, mode="zeros")


@torch.no_grad()
def fuse_pseudo_labels(
    x0_pred: torch.Tensor,
    psi_logits: torch.Tensor,
    *,
    tau: float = TAU,
    kernel_size: int = KERNEL_SIZE,
    sigma: float = SIGMA,
    generator: torch.Generator | None = None,
) -> FusedPseudoLabels:
    """A&D pseudo-labels ``ŷ = argmax(GaussianSmooth(gumbel_softmax(x̂0)) + softmax(z_ψ))``.

    Args:
        x0_pred: ``(B, C, *spatial)`` DDIM x0 prediction of D_ξ on the unlabeled images.
        psi_logits: ``(B, C, *spatial)`` D_ψ logits on the same images.
        tau, kernel_size, sigma, generator: see :func:`smooth_gumbel_softmax`.

    Returns:
        :class:`FusedPseudoLabels` ``(labels (B, 1, *spatial) int64, p_xi, p_psi)``, all detached.

    Raises:
        ValueError: shapes differ, or invalid ``tau``/``kernel_size``/``sigma``.

    Example:
        >>> x0, z = torch.rand(1, 3, 8, 8, 8) * 2 - 1, torch.randn(1, 3, 8, 8, 8)
        >>> fuse_pseudo_labels(x0, z).labels.shape
        torch.Size([1, 1, 8, 8, 8])
    """
    if not isinstance(psi_logits, torch.Tensor) or not isinstance(x0_pred, torch.Tensor):
        raise ValueError("fuse_pseudo_labels: `x0_pred` and `psi_logits` must be tensors.")
    if x0_pred.shape != psi_logits.shape:
        raise ValueError(
            f"fuse_pseudo_labels: `x0_pred` shape {tuple(x0_pred.shape)} != `psi_logits` shape "
            f"{tuple(psi_logits.shape)}."
        )
    p_xi = smooth_gumbel_softmax(x0_pred, tau=tau, kernel_size=kernel_size, sigma=sigma, generator=generator)
    p_psi = psi_logits.float().softmax(dim=1)
    labels = torch.argmax(p_xi + p_psi, dim=1, keepdim=True)
    return FusedPseudoLabels(labels, p_xi, p_psi)
