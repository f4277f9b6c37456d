"""A small Gaussian-diffusion utility: linear β schedule, forward noising and a respaced DDIM sampler.

This is the part of DDPM/DDIM that GenericSSL / A&D needs (``docs/methods.md#diffusion``), written
for segmentation maps: the "data" ``x0`` is a one-hot label map scaled to ``[-1, 1]`` and the
network predicts ``x0`` directly (guided-diffusion's ``ModelMeanType.START_X``). Facts checked
against ``xmed-lab/GenericSSL:code/DiffVNet/diff_vnet.py`` and
``code/DiffVNet/guided_diffusion/gaussian_diffusion.py`` (an OpenAI guided-diffusion copy):

* schedule: ``β_t = linspace(1e-4, 0.02, T)``, ``T = 1000``, computed in float64
  (``get_named_beta_schedule("linear", 1000)``; its ``use_scale`` multiplies both ends by ``1000/T``,
  the identity at the reference's ``T``); ``ᾱ_t = Π_{s≤t} (1 − β_s)``;
* forward process ``q(x_t | x_0)``: ``x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε`` with ``t ∈ {0..T−1}``
  (index 0 is already one noising step);
* training timesteps ``t ~ U{0..T−1}`` per sample (``UniformSampler``);
* sampling: DDIM (η = 0) on the respaced timesteps ``space_timesteps(1000, [10]) = {0, 111, …, 999}``,
  starting from ``x_T ~ N(0, I)``. At each kept step ``t`` (descending) the model gets the *original*
  timestep ``t`` (``rescale_timesteps=False``), its output is the ``x0`` prediction clamped to
  ``[-1, 1]`` (``clip_denoised=True``), ``ε̂ = (x_t/√ᾱ_t − x̂0)/√(1/ᾱ_t − 1)`` and
  ``x_prev = √ᾱ_prev · x̂0 + √(1 − ᾱ_prev) · ε̂`` with ``ᾱ_prev`` the ``ᾱ`` of the previous kept step
  (1 before the first). The result is the **last clamped x0 prediction** (``pred_xstart`` of the
  final step, which for η = 0 equals the final sample).

Coefficients are computed in float64 and stored as float32 buffers, which is what the reference's
``_extract_into_tensor`` does (float64 table, indexed, then ``.float()``). Buffers are
non-persistent (they follow from the constructor arguments) and every tensor is created on the
device of the input it is used with, so the module needs no device code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from scdl_monai.data.utils import check_number

__all__ = ["linear_beta_schedule", "space_timesteps", "GaussianDiffusion"]

#: Reference constants (docs/methods.md#diffusion; GenericSSL ``diff_vnet.py``: ``time_steps = 1000``,
#: ``get_named_beta_schedule("linear", ...)``, ``space_timesteps(1000, [10])``).
NUM_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02
SAMPLING_STEPS = 10


def linear_beta_schedule(
    num_timesteps: int = NUM_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> torch.Tensor:
    """Linear β schedule of Ho et al. (DDPM), float64.

    Args:
        num_timesteps: ``T``.
        beta_start: ``β_0``; 1e-4 in DDPM / GenericSSL.
        beta_end: ``β_{T-1}``; 0.02 in DDPM / GenericSSL.

    Returns:
        ``(T,)`` float64 tensor ``linspace(beta_start, beta_end, T)`` on the CPU.

    Raises:
        ValueError: ``num_timesteps < 1`` or betas outside ``(0, 1]`` / decreasing.

    Example:
        >>> linear_beta_schedule(3, 0.1, 0.3)
        tensor([0.1000, 0.2000, 0.3000], dtype=torch.float64)
    """
    check_number(num_timesteps, "num_timesteps", integer=True, minimum=1)
    if not (0.0 < float(beta_start) <= float(beta_end) <= 1.0):
        raise ValueError(
            f"Need 0 < beta_start <= beta_end <= 1, got beta_start={beta_start!r}, beta_end={beta_end!r}."
        )
    return torch.linspace(float(beta_start), float(beta_end), num_timesteps, dtype=torch.float64)


def space_timesteps(num_timesteps: int, num_steps: int) -> tuple[int, ...]:
    """Evenly spaced subset of ``{0..T−1}`` for respaced sampling (guided-diffusion ``space_timesteps``).

    Uses guided-diffusion's rule for one section: stride ``(T−1)/(n−1)`` accumulated in floating
    point and rounded, so both ends are kept: ``space_timesteps(1000, 10) == (0, 111, 222, …, 999)``.

    Args:
        num_timesteps: ``T``.
        num_steps: ``n``, with ``1 <= n <= T`` (``n = 1`` keeps only step 0, as upstream).

    Returns:
        Sorted tuple of ``n`` distinct timesteps.

    Raises:
        ValueError: ``n`` outside ``[1, T]``.
    """
    check_number(num_timesteps, "num_timesteps", integer=True, minimum=1)
    check_number(num_steps, "num_steps", integer=True, minimum=1)
    if num_steps > num_timesteps:
        raise ValueError(f"`num_steps` must be <= num_timesteps={num_timesteps}, got {num_steps}.")
    stride = (num_timesteps - 1) / (num_steps - 1) if num_steps > 1 else 1.0
    steps, cursor = [], 0.0
    for _ in range(num_steps):
        steps.append(round(cursor))
        cursor += stride
    return tuple(steps)


class GaussianDiffusion(nn.Module):
    """Forward noising and respaced DDIM sampling for an x0-predicting model (docs/methods.md#diffusion).

    Shapes: ``x0``/``x_t``/``noise`` are ``(B, C, *spatial)``; timesteps are ``(B,)`` integer
    tensors with values in ``[0, num_timesteps)``.

    Args:
        num_timesteps: ``T`` (1000 in GenericSSL).
        beta_start: first β (1e-4).
        beta_end: last β (0.02).
        sampling_steps: number of respaced DDIM steps (10 → ``{0, 111, …, 999}``).
        clip_denoised: clamp every x0 prediction to ``[-1, 1]`` during sampling (reference: True).

    Raises:
        ValueError: invalid schedule or step counts.

    Example:
        >>> diffusion = GaussianDiffusion()
        >>> x0 = torch.zeros(2, 3, 8, 8, 8)
        >>> t = diffusion.sample_timesteps(2)
        >>> x_t = diffusion.q_sample(x0, t)
        >>> x0_hat = diffusion.ddim_sample(lambda x_t, t: torch.tanh(x_t), x0.shape)
        >>> tuple(x0_hat.shape)
        (2, 3, 8, 8, 8)
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sampling_timesteps: torch.Tensor

    def __init__(
        self,
        num_timesteps: int = NUM_TIMESTEPS,
        beta_start: float = BETA_START,
        beta_end: float = BETA_END,
        sampling_steps: int = SAMPLING_STEPS,
        clip_denoised: bool = True,
    ) -> None:
        super().__init__()
        betas = linear_beta_schedule(num_timesteps, beta_start, beta_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.num_timesteps = num_timesteps
        self.clip_denoised = bool(clip_denoised)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt().float(), persistent=False)
        self.register_buffer(
            "sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt().float(), persistent=False
        )
        steps = space_timesteps(num_timesteps, sampling_steps)
        self._steps: tuple[int, ...] = steps
        self.register_buffer("sampling_timesteps", torch.tensor(steps, dtype=torch.long), persistent=False)
        # float64 ᾱ at the kept steps and at their predecessors (1.0 before the first kept step), as the
        # respaced diffusion of the reference recomputes them.
        ab = alphas_cumprod[list(steps)]
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        self.register_buffer("_ddim_alpha_bar", ab.float(), persistent=False)
        self.register_buffer("_ddim_alpha_bar_prev", ab_prev.float(), persistent=False)
        self.register_buffer("_ddim_sqrt_recip", (1.0 / ab).sqrt().float(), persistent=False)
        self.register_buffer("_ddim_sqrt_recipm1", (1.0 / ab - 1.0).sqrt().float(), persistent=False)

    # ------------------------------------------------------------------ helpers
    def _check_t(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"GaussianDiffusion: `t` must be an integer tensor of shape ({batch},), got {t!r}.")
        if tuple(t.shape) != (batch,):
            raise ValueError(f"GaussianDiffusion: `t` must have shape ({batch},), got {tuple(t.shape)}.")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(
                f"GaussianDiffusion: timesteps must lie in [0, {self.num_timesteps}), got min {int(t.min())}, "
                f"max {int(t.max())}."
            )
        return t

    @staticmethod
    def _gather(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[t]`` reshaped to broadcast against ``like`` (B, C, *spatial), on its device/dtype."""
        values = table.to(like.device)[t.to(like.device)]
        dtype = like.dtype if like.dtype.is_floating_point else torch.float32
        return values.to(dtype).reshape(-1, *([1] * (like.ndim - 1)))

    # ------------------------------------------------------------------ forward process
    def sample_timesteps(
        self, batch_size: int, *, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``t ~ U{0..T−1}``, one per sample (reference ``UniformSampler``).

        Args:
            batch_size: ``B``.
            device: where to create ``t``; defaults to the device of this module's buffers.
            generator: optional ``torch.Generator`` (on ``device``) for reproducibility.

        Returns:
            ``(B,)`` int64 tensor.
        """
        check_number(batch_size, "batch_size", integer=True, minimum=1)
        device = self.betas.device if device is None else device
        return torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)

    def q_sample(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)``.

        Args:
            x0: ``(B, C, *spatial)`` clean data (GenericSSL: ``2·onehot(y) − 1``).
            t: ``(B,)`` integer timesteps in ``[0, T)``.
            noise: optional ``ε`` of ``x0``'s shape; drawn from ``N(0, I)`` (with ``generator``) if None.
            generator: used only when ``noise`` is None.

        Returns:
            ``x_t`` with ``x0``'s shape.

        Raises:
            TypeError/ValueError: bad ``t`` or a ``noise`` shape different from ``x0``'s.
        """
        if not isinstance(x0, torch.Tensor) or x0.ndim < 2:
            raise ValueError(f"GaussianDiffusion.q_sample: `x0` must be a (B, C, *spatial) tensor, got {x0!r}.")
        t = self._check_t(t, x0.shape[0])
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(
                f"GaussianDiffusion.q_sample: `noise` shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}."
            )
        return (
            self._gather(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def ddim_sample(
        self,
        denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        shape: Sequence[int],
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Deterministic (η = 0) DDIM over :attr:`sampling_timesteps`; returns the last clamped x0.

        Runs under ``torch.no_grad()`` (pseudo-labels carry no gradient). The model's train/eval
        mode is the caller's business: GenericSSL samples in **train** mode (dropout and batch-norm
        batch statistics active, ``xmed-lab/GenericSSL@e73bde94:code/train_diffusion.py``).

        Args:
            denoise_fn: ``denoise_fn(x_t, t) -> x0 prediction`` with ``x_t`` of ``shape`` and ``t``
                a ``(B,)`` int64 tensor of *original* timesteps (e.g. ``lambda x_t, t:
                net.denoise(image, x_t, t)``).
            shape: ``(B, C, *spatial)`` of the sample.
            noise: optional starting ``x_T`` of ``shape``; otherwise drawn from ``N(0, I)``.
            generator: ``torch.Generator`` used to draw ``x_T`` (the only randomness here).
            device: device of ``x_T`` when ``noise`` is None (default: this module's buffers).
            dtype: dtype of ``x_T`` when ``noise`` is None.

        Returns:
            ``(B, C, *spatial)`` x0 prediction of the final step, in ``[-1, 1]`` when
            ``clip_denoised``.

        Raises:
            ValueError: bad ``shape``/``noise``, or a model output of the wrong shape.
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise ValueError(f"GaussianDiffusion.ddim_sample: `shape` must be (B, C, *spatial), got {shape}.")
        if noise is None:
            device = self.betas.device if device is None else device
            x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(noise.shape) != shape:
                raise ValueError(
                    f"GaussianDiffusion.ddim_sample: `noise` shape {tuple(noise.shape)} != shape {shape}."
                )
            x = noise
        x0_hat = x
        for i in reversed(range(len(self._steps))):
            t = torch.full((shape[0],), self._steps[i], dtype=torch.long, device=x.device)
            x0_hat = denoise_fn(x, t)
            if tuple(x0_hat.shape) != shape:
                raise ValueError(
                    f"GaussianDiffusion.ddim_sample: denoise_fn returned shape {tuple(x0_hat.shape)}, expected {shape}."
                )
            if self.clip_denoised:
                x0_hat = x0_hat.clamp(-1.0, 1.0)
            sqrt_recip = self._ddim_sqrt_recip[i].to(x.device, torch.float32)
            sqrt_recipm1 = self._ddim_sqrt_recipm1[i].to(x.device, torch.float32)
            ab_prev = self._ddim_alpha_bar_prev[i].to(x.device, torch.float32)
            eps = (sqrt_recip * x - x0_hat) / sqrt_recipm1
            x = ab_prev.sqrt() * x0_hat + (1.0 - ab_prev).sqrt() * eps
        return x0_hat

    def extra_repr(self) -> str:
        return (
            f"num_timesteps={self.num_timesteps}, sampling_timesteps={self._steps}, "
            f"clip_denoised={self.clip_denoised}"
        )
