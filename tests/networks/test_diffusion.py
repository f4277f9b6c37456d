"""Tests for scdl_monai.networks.diffusion: schedule, q_sample moments, respacing and the DDIM sampler."""

import math

import pytest
import torch

from scdl_monai.networks.diffusion import GaussianDiffusion, linear_beta_schedule, space_timesteps


def _alpha_bar_f64(T=1000, b0=1e-4, b1=0.02):
    """Independent float64 ᾱ: cumulative product of 1 - linspace(b0, b1, T)."""
    betas = [b0 + (b1 - b0) * i / (T - 1) for i in range(T)]
    out, acc = [], 1.0
    for b in betas:
        acc *= 1.0 - b
        out.append(acc)
    return torch.tensor(out, dtype=torch.float64)


def test_linear_schedule_endpoints_and_alpha_bar():
    betas = linear_beta_schedule()
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    d = GaussianDiffusion()
    ab = _alpha_bar_f64()
    torch.testing.assert_close(d.alphas_cumprod.double(), ab, rtol=1e-6, atol=0)
    # well-known value of the DDPM linear schedule at t = T - 1
    assert d.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)


def test_space_timesteps_reference_respacing():
    assert space_timesteps(1000, 10) == (0, 111, 222, 333, 444, 555, 666, 777, 888, 999)
    assert space_timesteps(1000, 1) == (0,)
    assert space_timesteps(5, 5) == (0, 1, 2, 3, 4)
    assert space_timesteps(1000, 4) == (0, 333, 666, 999)
    with pytest.raises(ValueError, match="num_steps"):
        space_timesteps(10, 11)


def test_q_sample_is_the_exact_affine_map_of_the_schedule():
    d = GaussianDiffusion()
    ab = _alpha_bar_f64()
    t = torch.tensor([0, 500, 999])
    x0 = torch.full((3, 2, 4, 4), 0.7)
    no_noise = d.q_sample(x0, t, torch.zeros_like(x0))
    unit_noise = d.q_sample(torch.zeros_like(x0), t, torch.ones_like(x0))
    for i, ti in enumerate(t.tolist()):
        assert torch.allclose(no_noise[i], torch.full_like(x0[i], 0.7 * math.sqrt(ab[ti])), rtol=1e-6)
        assert torch.allclose(unit_noise[i], torch.full_like(x0[i], math.sqrt(1 - ab[ti])), rtol=1e-6)


def test_q_sample_monte_carlo_mean_and_variance():
    d = GaussianDiffusion()
    ab = _alpha_bar_f64()
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([10, 300, 900])
    x0 = torch.tensor([1.0, -1.0, 0.5]).reshape(3, 1, 1).expand(3, 1, 200_000).contiguous()
    x_t = d.q_sample(x0, t, generator=g)
    for i, ti in enumerate(t.tolist()):
        mean, var = x_t[i].mean().item(), x_t[i].var().item()
        assert mean == pytest.approx(x0[i, 0, 0].item() * math.sqrt(ab[ti]), abs=0.01)
        assert var == pytest.approx(1 - ab[ti].item(), rel=0.02, abs=2e-4)


def test_q_sample_validation():
    d = GaussianDiffusion()
    x0 = torch.zeros(2, 1, 4)
    with pytest.raises(ValueError, match="shape"):
        d.q_sample(x0, torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        d.q_sample(x0, torch.tensor([0, 1000]))
    with pytest.raises(TypeError, match="integer"):
        d.q_sample(x0, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="noise"):
        d.q_sample(x0, torch.tensor([0, 1]), torch.zeros(2, 1, 5))


def test_sample_timesteps_range_and_seed():
    d = GaussianDiffusion()
    t1 = d.sample_timesteps(500, generator=torch.Generator().manual_seed(3))
    t2 = d.sample_timesteps(500, generator=torch.Generator().manual_seed(3))
    assert t1.dtype == torch.int64 and t1.shape == (500,)
    assert torch.equal(t1, t2) and 0 <= t1.min() and t1.max() < 1000 and t1.unique().numel() > 300


def _reference_ddim(denoise_fn, x, steps, ab64):
    """Guided-diffusion's respaced DDIM, η=0, x0-prediction clipped, in float64 (independent path)."""
    # respaced betas and cumulative products as SpacedDiffusion computes them
    new_ab, last = [], 1.0
    for s in steps:
        beta = 1 - ab64[s].item() / last
        last = ab64[s].item()
        new_ab.append((new_ab[-1] if new_ab else 1.0) * (1 - beta))
    pred = None
    for i in reversed(range(len(steps))):
        t = torch.full((x.shape[0],), steps[i], dtype=torch.long)
        pred = denoise_fn(x.float(), t).double().clamp(-1, 1)
        a, a_prev = new_ab[i], (new_ab[i - 1] if i > 0 else 1.0)
        eps = (math.sqrt(1 / a) * x - pred) / math.sqrt(1 / a - 1)
        x = pred * math.sqrt(a_prev) + math.sqrt(1 - a_prev) * eps
    return pred


def test_ddim_sample_matches_reference_recurrence_and_visits_respaced_steps():
    d = GaussianDiffusion()
    seen = []

    def denoise(x_t, t):
        seen.append(t.tolist())
        return 1.7 * torch.tanh(x_t) + 0.3 * (t.float() / 1000).reshape(-1, 1, 1, 1)

    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    out = d.ddim_sample(denoise, noise.shape, noise=noise)
    assert [s[0] for s in seen] == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert all(len(s) == 2 and s[0] == s[1] for s in seen)
    expected = _reference_ddim(denoise, noise.double(), list(space_timesteps(1000, 10)), _alpha_bar_f64())
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)


def test_ddim_sample_shape_seed_and_clamping():
    d = GaussianDiffusion()

    def denoise(x_t, t):  # deliberately out of range: must be clamped every step
        return 5.0 * x_t

    out1 = d.ddim_sample(denoise, (2, 4, 8, 8, 8), generator=torch.Generator().manual_seed(7))
    out2 = d.ddim_sample(denoise, (2, 4, 8, 8, 8), generator=torch.Generator().manual_seed(7))
    out3 = d.ddim_sample(denoise, (2, 4, 8, 8, 8), generator=torch.Generator().manual_seed(8))
    assert out1.shape == (2, 4, 8, 8, 8)
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)
    assert out1.min() >= -1 and out1.max() <= 1 and (out1.abs() == 1).any()
    unclamped = GaussianDiffusion(clip_denoised=False).ddim_sample(
        denoise, (2, 4, 8, 8, 8), generator=torch.Generator().manual_seed(7)
    )
    assert unclamped.abs().max() > 1


def test_ddim_sample_no_grad_and_validation():
    d = GaussianDiffusion(sampling_steps=3)
    w = torch.ones(1, requires_grad=True)
    out = d.ddim_sample(lambda x, t: torch.tanh(x * w), (1, 2, 4))
    assert not out.requires_grad
    with pytest.raises(ValueError, match="returned shape"):
        d.ddim_sample(lambda x, t: x[:, :1], (1, 2, 4))
    with pytest.raises(ValueError, match="noise"):
        d.ddim_sample(lambda x, t: x, (1, 2, 4), noise=torch.zeros(1, 2, 5))
