"""Tests for scdl_monai.methods.pseudo_label_fusion (A&D pseudo-labels)."""

import math

import pytest
import torch
import torch.nn.functional as F

from scdl_monai.methods.pseudo_label_fusion import (
    fuse_pseudo_labels,
    gaussian_kernel_1d,
    smooth_gumbel_softmax,
)


def _reference_kernel_3d(size=3, sigma=1.0):
    """The reference's construction: product of 1-D Gaussians on a 3-D grid, normalised to sum 1."""
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    k = g[:, None, None] * g[None, :, None] * g[None, None, :]
    return k / k.sum()


def test_kernel_values():
    k = gaussian_kernel_1d(3, 1.0)
    e = math.exp(-0.5)
    assert torch.allclose(k, torch.tensor([e, 1.0, e]) / (1 + 2 * e))
    outer = k[:, None, None] * k[None, :, None] * k[None, None, :]
    assert torch.allclose(outer, _reference_kernel_3d())
    with pytest.raises(ValueError, match="kernel_size"):
        gaussian_kernel_1d(4)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel_1d(3, 0.0)


def test_smoothing_matches_torch_gumbel_softmax_and_zero_padded_conv3d():
    x0 = torch.rand(2, 4, 6, 7, 5, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = smooth_gumbel_softmax(x0, generator=torch.Generator().manual_seed(11))
    torch.manual_seed(11)  # same stream through the default generator
    soft = F.gumbel_softmax(x0, tau=1.0, dim=1)
    weight = _reference_kernel_3d().reshape(1, 1, 3, 3, 3).repeat(4, 1, 1, 1, 1)
    expected = F.conv3d(soft, weight, groups=4, padding="same")
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    # generator=None goes through torch's own gumbel_softmax
    torch.manual_seed(11)
    torch.testing.assert_close(smooth_gumbel_softmax(x0), expected, atol=1e-6, rtol=1e-5)


def test_fused_outputs_are_distributions_and_labels_are_integer_maps():
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 5, 8, 8, 8, generator=g) * 2 - 1
    z = torch.randn(2, 5, 8, 8, 8, generator=g, requires_grad=True)
    fused = fuse_pseudo_labels(x0, z, generator=torch.Generator().manual_seed(2))
    assert fused.labels.shape == (2, 1, 8, 8, 8) and fused.labels.dtype == torch.int64
    assert 0 <= fused.labels.min() and fused.labels.max() < 5
    assert not fused.labels.requires_grad and not fused.p_psi.requires_grad
    # p_psi: a distribution at every voxel
    assert torch.allclose(fused.p_psi.sum(1), torch.ones(2, 8, 8, 8))
    # p_xi: non-negative; sums to 1 away from the border, to the in-volume kernel mass at the border
    assert (fused.p_xi >= 0).all()
    s = fused.p_xi.sum(1)
    assert torch.allclose(s[:, 1:-1, 1:-1, 1:-1], torch.ones(2, 6, 6, 6), atol=1e-6)
    k = gaussian_kernel_1d()
    face = 1 - k[0].item()
    assert s[0, 0, 4, 4].item() == pytest.approx(face, abs=1e-6)
    assert s[0, 0, 0, 0].item() == pytest.approx(face**3, abs=1e-6)
    # labels are the argmax of the sum
    assert torch.equal(fused.labels, torch.argmax(fused.p_xi + fused.p_psi, dim=1, keepdim=True))


def test_confident_inputs_dominate_and_seed_reproducibility():
    # D_psi very confident in class 2 everywhere; x0 in [-1, 1] cannot outweigh it
    x0 = torch.full((1, 3, 4, 4, 4), -1.0)
    x0[:, 0] = 1.0
    z = torch.zeros(1, 3, 4, 4, 4)
    z[:, 2] = 50.0
    assert torch.all(fuse_pseudo_labels(x0, z).labels == 2)
    a = fuse_pseudo_labels(x0, torch.zeros_like(z), generator=torch.Generator().manual_seed(5))
    b = fuse_pseudo_labels(x0, torch.zeros_like(z), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.p_xi, b.p_xi) and torch.equal(a.labels, b.labels)


def test_errors():
    with pytest.raises(ValueError, match="shape"):
        fuse_pseudo_labels(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="tau"):
        smooth_gumbel_softmax(torch.zeros(1, 3, 4, 4), tau=0)
