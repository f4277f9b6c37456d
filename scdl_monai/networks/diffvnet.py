"""DiffVNet: the shared-encoder, three-decoder network of GenericSSL / A&D (Wang & Li, NeurIPS'23).

Layout (docs/methods.md#diffvnet) checked against the reference files
``xmed-lab/GenericSSL@e73bde94:code/DiffVNet/diff_vnet.py`` (``DiffVNet``, ``DenoiseModel``,
``TimeStepEmbedding``, ``*Temb`` blocks) and ``code/train_diffusion.py`` (``make_model_all``):

* **conv unit**: ``Conv(k3, pad 1) -> ReLU -> Norm -> Dropout(0.1)`` (note: ReLU *before* the norm,
  unlike :class:`~scdl_monai.networks.vnet.VNet`); **down**: ``Conv(k2, s2) -> ReLU -> Norm``;
  **up**: ``ConvTranspose(k2, s2) -> ReLU -> Norm`` followed by an additive skip. Down/up blocks
  have no dropout.
* **stems** (one conv unit each, width ``n``): :attr:`DiffVNet.embedding` maps the image,
  :attr:`DiffVNet.embedding_diffusion` maps ``cat(image, x_t)`` (``in_channels + C`` channels).
  The stem output is the first encoder feature ``x1``.
* **shared encoder**: down + stages of 2, 3, 3, 3 units, widths ``2n, 4n, 8n, 16n``
  (so the encoder stages are 1/2/3/3/3 with the stem), Dropout(0.5) on ``x5`` when ``has_dropout``.
* **three decoders of identical layout** (up + 3, 3, 2, 1 units, head ``1×1`` conv to ``C``,
  Dropout(0.5) on the last feature when ``has_dropout``): ``decoder_xi`` (D_ξ, time-conditioned,
  denoises), ``decoder_psi`` (D_ψ, difficulty-weighted supervised) and ``decoder_theta`` (D_θ,
  learns from pseudo-labels; **the inference network**, :meth:`DiffVNet.forward`).
* **time embedding**: 128-d sinusoidal embedding of ``t`` (:func:`timestep_embedding`) →
  ``Linear(128, 512)`` → swish → ``Linear(512, 512)`` = ``temb``. Time-conditioned blocks add
  ``Linear(512, C_out)(swish(temb))`` (broadcast over space) at their end (after dropout/norm):
  **every conv unit except the last unit of its stage** (``ConvBlockTemb``: ``temb_flag`` is False
  for the last unit, so one-unit stages — the stems and the last decoder stage — get none) and
  **every down and up block** of the encoder and of D_ξ. When ``t`` is None (the D_ψ / D_θ
  paths) nothing is added; the encoder is shared by all paths.
* ``has_dropout=True``, ``dropout_prob=0.5`` is what ``train_diffusion.py`` builds
  (``DiffVNet(..., normalization='batchnorm', has_dropout=True)``, default ``dropout_rate=0.5``).
* PyTorch default initialisation (the reference applies no re-initialisation).

Parameter names of the three decoders coincide except for D_ξ's ``temb_proj`` layers, so the
parameter EMA of A&D (:func:`scdl_monai.networks.weight_ema.ema_average_into`, ``decoder_theta ← (decoder_xi +
decoder_psi)/2``) matches every conv/norm parameter and naturally leaves the time projections out.

Parameter count (``n=32``, 1 input channel, ``C=14``, batch norm): **56,803,210**. The reference
module has 1,100,256 more (57,903,466), all of them layers that are constructed but never used: a
time MLP inside the image stem (``t`` is always None there: 328,704) and a ``temb_proj`` in the
last unit of every time-conditioned stage whose ``temb_flag`` is False (47·n·513 = 771,552). They
never receive gradients, so leaving them out changes no computation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Dropout, Norm
from torch import nn

from scdl_monai.data.utils import check_number, look_up
from scdl_monai.networks.vnet import NORMS

__all__ = ["DiffVNet", "DiffVNetEncoder", "DiffVNetDecoder", "TimeEmbedding", "timestep_embedding"]

_ENCODER_UNITS = (1, 2, 3, 3, 3)  # stem + block_two..block_five (diff_vnet.py Encoder_denoise)
_DECODER_UNITS = (3, 3, 2, 1)  # block_six..block_nine (diff_vnet.py Decoder / Decoder_denoise)
_NUM_DOWN = len(_ENCODER_UNITS) - 1  # factor 2**4 = 16
_TIME_DIM = 128  # TimeStepEmbedding.embed_dim_in
_TIME_HIDDEN = 4 * _TIME_DIM  # embed_dim_out = 512


def timestep_embedding(t: torch.Tensor, dim: int = _TIME_DIM) -> torch.Tensor:
    """Sinusoidal timestep embedding of DDPM (tensor2tensor form: ``[sin | cos]``).

    ``emb[:, k] = sin(t·f_k)``, ``emb[:, half + k] = cos(t·f_k)``, ``f_k = exp(−ln(10000)·k/(half−1))``,
    ``half = dim // 2``; an odd ``dim`` is zero-padded by one column
    (GenericSSL ``diff_vnet.py`` ``get_timestep_embedding``).

    Args:
        t: ``(B,)`` timesteps (any real dtype).
        dim: embedding size (>= 4).

    Returns:
        ``(B, dim)`` float32 tensor on ``t``'s device.

    Raises:
        ValueError: ``t`` not 1-D or ``dim < 4``.
    """
    if not isinstance(t, torch.Tensor) or t.ndim != 1:
        raise ValueError(f"timestep_embedding: `t` must be a 1-D tensor of timesteps, got {t!r}.")
    check_number(dim, "dim", "timestep_embedding", integer=True, minimum=4)
    half = dim // 2
    scale = math.log(10000.0) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -scale)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """``t -> Linear(hidden)(swish(Linear(sinusoidal(t))))``: ``(B,) -> (B, hidden)``.

    Args:
        dim: sinusoidal size (128 in GenericSSL).
        hidden: output size (``4·dim`` = 512 in GenericSSL).
    """

    def __init__(self, dim: int = _TIME_DIM, hidden: int = _TIME_HIDDEN) -> None:
        super().__init__()
        self.dim = dim
        self.dense = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, hidden)])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.dense[0](timestep_embedding(t, self.dim).to(self.dense[0].weight.dtype))
        return self.dense[1](F.silu(h))


def _norm(norm: str, spatial_dims: int, channels: int, num_groups: int) -> nn.Module | None:
    if norm == "batch":
        return Norm[Norm.BATCH, spatial_dims](channels)
    if norm == "instance":  # torch default: affine=False, no running stats (reference 'instancenorm')
        return Norm[Norm.INSTANCE, spatial_dims](channels)
    if norm == "group":
        return Norm[Norm.GROUP, spatial_dims](num_groups=num_groups, num_channels=channels)
    return None


class _Unit(nn.Module):
    """``conv -> ReLU -> [norm] -> [dropout] -> [+ temb_proj(swish(temb))]``.

    ``temb_proj`` exists only for time-conditioned units; it is applied only when a time
    embedding is given.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: str,
        num_groups: int,
        *,
        kind: str = "conv",
        dropout: float = 0.0,
        time_dim: int | None = None,
    ) -> None:
        super().__init__()
        if kind == "conv":
            self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=3, padding=1)
        elif kind == "down":
            self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=2, stride=2)
        else:  # "up"
            self.conv = Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, kernel_size=2, stride=2)
        self.norm = _norm(norm, spatial_dims, out_channels, num_groups)
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](p=dropout) if dropout > 0 else None
        self.temb_proj = nn.Linear(time_dim, out_channels) if time_dim is not None else None

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor | None = None) -> torch.Tensor:
        x = F.relu(self.conv(x), inplace=True)
        if self.norm is not None:
            x = self.norm(x)
        if self.dropout is not None:
            x = self.dropout(x)
        if self.temb_proj is not None and temb_act is not None:
            x = x + self.temb_proj(temb_act).reshape(*temb_act.shape[:1], -1, *([1] * (x.ndim - 2)))
        return x


class _Stage(nn.Module):
    """``units`` conv units; all but the last carry a time projection when time-conditioned."""

    def __init__(self, spatial_dims, in_channels, out_channels, units, norm, num_groups, unit_dropout, time_dim):
        super().__init__()
        self.units = nn.ModuleList(
            _Unit(
                spatial_dims,
                in_channels if i == 0 else out_channels,
                out_channels,
                norm,
                num_groups,
                dropout=unit_dropout,
                time_dim=time_dim if i < units - 1 else None,
            )
            for i in range(units)
        )

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor | None = None) -> torch.Tensor:
        for unit in self.units:
            x = unit(x, temb_act)
        return x


class DiffVNetEncoder(nn.Module):
    """Time-conditioned encoder after the stem: ``x1 -> [x1, x2, x3, x4, x5]``.

    ``forward(x1, temb=None)``: ``x1`` is ``(B, n, *spatial)``; ``temb`` is the ``(B, 512)`` time
    embedding or None. Returns the five features with widths ``n, 2n, 4n, 8n, 16n``.
    """

    def __init__(self, spatial_dims, n_filters, norm, num_groups, unit_dropout, has_dropout, dropout_prob, time_dim):
        super().__init__()
        widths = [n_filters * 2**i for i in range(len(_ENCODER_UNITS))]
        self.downsamples = nn.ModuleList(
            _Unit(spatial_dims, widths[i], widths[i + 1], norm, num_groups, kind="down", time_dim=time_dim)
            for i in range(_NUM_DOWN)
        )
        self.stages = nn.ModuleList(
            _Stage(
                spatial_dims,
                widths[i + 1],
                widths[i + 1],
                _ENCODER_UNITS[i + 1],
                norm,
                num_groups,
                unit_dropout,
                time_dim,
            )
            for i in range(_NUM_DOWN)
        )
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](p=dropout_prob) if has_dropout else None

    def forward(self, x1: torch.Tensor, temb: torch.Tensor | None = None) -> list[torch.Tensor]:
        temb_act = F.silu(temb) if temb is not None else None
        features = [x1]
        h = x1
        for down, stage in zip(self.downsamples, self.stages):
            h = stage(down(h, temb_act), temb_act)
            features.append(h)
        if self.dropout is not None:
            features[-1] = self.dropout(features[-1])
        return features


class DiffVNetDecoder(nn.Module):
    """Decoder ``[x1..x5] -> logits``; time-conditioned when built with ``time_dim``.

    ``forward(features, temb=None)`` returns ``(B, out_channels, *spatial)`` logits. A plain
    decoder (``time_dim=None``) has no ``temb_proj`` layers and ignores ``temb``.
    """

    def __init__(
        self, spatial_dims, n_filters, out_channels, norm, num_groups, unit_dropout, has_dropout, dropout_prob, time_dim
    ):
        super().__init__()
        widths = [n_filters * 2**i for i in range(len(_ENCODER_UNITS))]
        dec = list(reversed(widths[:-1]))  # 8n, 4n, 2n, n
        ups_in = list(reversed(widths[1:]))  # 16n, 8n, 4n, 2n
        self.upsamples = nn.ModuleList(
            _Unit(spatial_dims, cin, cout, norm, num_groups, kind="up", time_dim=time_dim)
            for cin, cout in zip(ups_in, dec)
        )
        self.stages = nn.ModuleList(
            _Stage(spatial_dims, w, w, u, norm, num_groups, unit_dropout, time_dim) for w, u in zip(dec, _DECODER_UNITS)
        )
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](p=dropout_prob) if has_dropout else None
        self.head = Conv[Conv.CONV, spatial_dims](n_filters, out_channels, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor], temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(features, temb)[0]

    def decode(
        self,
        features: Sequence[torch.Tensor],
        temb: torch.Tensor | None = None,
        injection: Sequence[torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, last_feature)``; ``injection[k]`` (or None) is added to stage ``k`` after its skip-sum.

        The injection points are those of :meth:`scdl_monai.networks.vnet.VNet.decode` (the SCDL
        prior hook, docs/methods.md#priors-and-injection); ``last_feature`` is what the 1×1 head sees (after dropout).

        Raises:
            ValueError: wrong number of features or injections, or an injection that does not
                broadcast to its stage.
        """
        if len(features) != len(_ENCODER_UNITS):
            raise ValueError(f"DiffVNetDecoder: expected {len(_ENCODER_UNITS)} features, got {len(features)}.")
        inject = [None] * len(self.stages) if injection is None else list(injection)
        if len(inject) != len(self.stages):
            raise ValueError(f"DiffVNetDecoder: expected {len(self.stages)} injections (or None), got {len(inject)}.")
        temb_act = F.silu(temb) if temb is not None else None
        skips = list(features[:-1])[::-1]
        h = features[-1]
        for k, (up, stage, skip) in enumerate(zip(self.upsamples, self.stages, skips)):
            h = up(h, temb_act) + skip
            if inject[k] is not None:
                try:
                    compatible = torch.broadcast_shapes(h.shape, inject[k].shape) == h.shape
                except RuntimeError:
                    compatible = False
                if not compatible:
                    raise ValueError(
                        f"DiffVNetDecoder: injection[{k}] of shape {tuple(inject[k].shape)} does not broadcast "
                        f"to decoder stage {k} of shape {tuple(h.shape)}."
                    )
                h = h + inject[k]
            h = stage(h, temb_act)
        if self.dropout is not None:
            h = self.dropout(h)
        return self.head(h), h


class DiffVNet(nn.Module):
    """GenericSSL's DiffVNet: shared time-conditioned encoder, two stems, decoders D_ξ, D_ψ, D_θ.

    Shapes (every spatial size divisible by 16, ``C = out_channels``):

    * ``x`` image ``(B, in_channels, *spatial)``; ``x_t`` noisy label map ``(B, C, *spatial)``;
      ``t`` ``(B,)`` integer timesteps;
    * :meth:`encode` → ``[x1..x5]`` with widths ``n, 2n, 4n, 8n, 16n`` at scales ``1, ½, ¼, ⅛, 1/16``;
    * :meth:`denoise` (D_ξ), :meth:`difficulty_logits` (D_ψ), :meth:`theta_logits` (D_θ) and
      :meth:`forward` (= D_θ, for MONAI inferers) → ``(B, C, *spatial)`` logits.

    Each method runs the stem and the shared encoder itself (one forward per call, as the
    reference does); to share one encoder pass between D_ψ and D_θ call :meth:`encode` once and
    the decoder modules directly (``net.decoder_psi(features)``).

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: image channels.
        out_channels: classes ``C`` (background included); also the channels of ``x_t``.
        n_filters: base width ``n`` (32 in GenericSSL).
        norm: ``"batch"`` (reference), ``"instance"``, ``"group"`` or ``"none"``.
        has_dropout: Dropout(``dropout_prob``) on ``x5`` and on each decoder's last feature
            (reference run: True).
        dropout_prob: 0.5 in the reference (``dropout_rate``).
        unit_dropout: dropout at the end of every conv unit (0.1 in the reference).
        num_groups: groups for ``norm="group"`` (16 in the reference); must divide every width.
        time_dim: sinusoidal embedding size (128); the time MLP width is ``4·time_dim`` (512).

    Raises:
        ValueError: invalid arguments (named in the message).

    Example:
        >>> net = DiffVNet(in_channels=1, out_channels=14, n_filters=32)
        >>> sum(p.numel() for p in net.parameters())
        56803210
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        n_filters: int = 32,
        norm: str = "batch",
        has_dropout: bool = True,
        dropout_prob: float = 0.5,
        unit_dropout: float = 0.1,
        num_groups: int = 16,
        time_dim: int = _TIME_DIM,
    ) -> None:
        super().__init__()
        if isinstance(spatial_dims, bool) or spatial_dims not in (1, 2, 3):
            raise ValueError(f"DiffVNet: `spatial_dims` must be 1, 2 or 3, got {spatial_dims!r}.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("n_filters", n_filters)):
            check_number(value, name, "DiffVNet", integer=True, minimum=1)
        check_number(time_dim, "time_dim", "DiffVNet", integer=True, minimum=4)
        norm = look_up(norm, NORMS, "norm", "DiffVNet")
        for name, value in (("dropout_prob", dropout_prob), ("unit_dropout", unit_dropout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"DiffVNet: `{name}` must be a float in [0, 1], got {value!r}.")
        widths = tuple(n_filters * 2**i for i in range(len(_ENCODER_UNITS)))
        if norm == "group":
            check_number(num_groups, "num_groups", "DiffVNet", integer=True, minimum=1)
            if any(w % num_groups for w in widths):
                raise ValueError(
                    f"DiffVNet: norm='group' needs every width {widths} divisible by `num_groups`={num_groups}."
                )

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_filters = n_filters
        #: encoder feature widths of x1..x5
        self.feature_channels: tuple[int, ...] = widths
        #: widths of the decoder stages (8n, 4n, 2n, n), as in VNet (SCDL injection hook)
        self.decoder_channels: tuple[int, ...] = tuple(reversed(widths[:-1]))
        hidden = 4 * time_dim
        common = dict(norm=norm, num_groups=num_groups)
        unit_p, drop_p = float(unit_dropout), float(dropout_prob)

        self.time_embed = TimeEmbedding(time_dim, hidden)
        # Stems are one-unit stages: the (only) unit is the last one, so no time projection.
        self.embedding = _Unit(spatial_dims, in_channels, n_filters, dropout=unit_p, **common)
        self.embedding_diffusion = _Unit(spatial_dims, in_channels + out_channels, n_filters, dropout=unit_p, **common)
        self.encoder = DiffVNetEncoder(
            spatial_dims, n_filters, norm, num_groups, unit_p, bool(has_dropout), drop_p, time_dim=hidden
        )
        dec_args = (spatial_dims, n_filters, out_channels, norm, num_groups, unit_p, bool(has_dropout), drop_p)
        self.decoder_xi = DiffVNetDecoder(*dec_args, time_dim=hidden)
        self.decoder_psi = DiffVNetDecoder(*dec_args, time_dim=None)
        self.decoder_theta = DiffVNetDecoder(*dec_args, time_dim=None)

    # ------------------------------------------------------------------ shapes
    def shape_factor(self) -> tuple[int, ...]:
        """Required divisor of each spatial size: 16 per dimension (four down-samplings)."""
        return (2**_NUM_DOWN,) * self.spatial_dims

    def is_valid_shape(self, x_or_shape) -> bool:
        """Whether every spatial size (of a ``(B, C, *spatial)`` tensor or shape, or a spatial shape) divides by 16."""
        shape = tuple(x_or_shape.shape) if isinstance(x_or_shape, torch.Tensor) else tuple(int(s) for s in x_or_shape)
        spatial = shape[2:] if len(shape) == self.spatial_dims + 2 else shape
        if len(spatial) != self.spatial_dims:
            raise ValueError(f"DiffVNet: expected {self.spatial_dims} spatial dims, got shape {shape}.")
        return all(s % f == 0 for s, f in zip(spatial, self.shape_factor()))

    def _check(self, name: str, x: torch.Tensor, channels: int, like: torch.Tensor | None = None) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != self.spatial_dims + 2:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"DiffVNet: `{name}` must be a (B, C, *spatial) tensor with {self.spatial_dims} spatial dims, "
                f"got {got}."
            )
        if x.shape[1] != channels:
            raise ValueError(f"DiffVNet: `{name}` has {x.shape[1]} channels, expected {channels}.")
        if like is not None and (x.shape[0] != like.shape[0] or x.shape[2:] != like.shape[2:]):
            raise ValueError(
                f"DiffVNet: `{name}` shape {tuple(x.shape)} must match the image's batch and spatial size "
                f"{tuple(like.shape)}."
            )
        if not self.is_valid_shape(x):
            raise ValueError(
                f"DiffVNet: input spatial size {tuple(x.shape[2:])} must be divisible by {self.shape_factor()}; "
                "pad or crop the input (e.g. monai.transforms.DivisiblePad(k=16))."
            )

    def _temb(self, t: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if t is None:
            return None
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (batch,):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"DiffVNet: `t` must be a ({batch},) tensor of timesteps, got {got}.")
        return self.time_embed(t)

    # ------------------------------------------------------------------ hooks
    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """Time embedding ``temb`` ``(B, 4·time_dim)`` of ``(B,)`` timesteps (before the swish)."""
        if not isinstance(t, torch.Tensor) or t.ndim != 1:
            raise ValueError(f"DiffVNet.embed_time: `t` must be a 1-D tensor of timesteps, got {t!r}.")
        return self.time_embed(t)

    def _encode(self, x, x_t, temb) -> list[torch.Tensor]:
        stem = self.embedding(x) if x_t is None else self.embedding_diffusion(torch.cat([x, x_t], dim=1))
        return self.encoder(stem, temb)

    def encode(
        self, x: torch.Tensor, t: torch.Tensor | None = None, x_t: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Stem + shared encoder → ``[x1, x2, x3, x4, x5]``.

        Args:
            x: image ``(B, in_channels, *spatial)``.
            t: optional ``(B,)`` timesteps; when given the encoder adds the time projections.
            x_t: optional noisy label map ``(B, C, *spatial)``; when given the diffusion stem
                ``embedding_diffusion(cat(x, x_t))`` is used, otherwise the image stem.

        Raises:
            ValueError: wrong dims/channels, mismatched shapes, spatial size not divisible by 16.
        """
        self._check("x", x, self.in_channels)
        if x_t is not None:
            self._check("x_t", x_t, self.out_channels, like=x)
        return self._encode(x, x_t, self._temb(t, x.shape[0]))

    def denoise(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """D_ξ: x0 prediction (used as logits) from image, noisy label map and timesteps.

        ``decoder_xi(encoder(embedding_diffusion(cat(x, x_t)), temb(t)), temb(t))``.
        """
        self._check("x", x, self.in_channels)
        self._check("x_t", x_t, self.out_channels, like=x)
        temb = self._temb(t, x.shape[0])
        return self.decoder_xi(self._encode(x, x_t, temb), temb)

    def difficulty_logits(self, x: torch.Tensor) -> torch.Tensor:
        """D_ψ logits: ``decoder_psi(encoder(embedding(x)))`` (no time conditioning)."""
        self._check("x", x, self.in_channels)
        return self.decoder_psi(self._encode(x, None, None))

    def theta_logits(self, x: torch.Tensor) -> torch.Tensor:
        """D_θ logits: ``decoder_theta(encoder(embedding(x)))`` (no time conditioning)."""
        self._check("x", x, self.in_channels)
        return self.decoder_theta(self._encode(x, None, None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference network (D_θ): ``(B, in_channels, *spatial) -> (B, C, *spatial)`` logits."""
        return self.theta_logits(x)

    # ------------------------------------------------------------------ VNet-style hooks (D_θ path)
    def decode(
        self, features: Sequence[torch.Tensor], injection: Sequence[torch.Tensor | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """D_θ decoder with optional per-stage injection: ``(logits, last_feature)``.

        With :meth:`encode` (image stem, no ``t``), :attr:`feature_channels`,
        :attr:`decoder_channels` and :attr:`head` this gives DiffVNet the encoder/decoder hooks of
        :class:`~scdl_monai.networks.vnet.VNet` for its inference path, so
        :class:`~scdl_monai.networks.prior_injection.SCDLDiffVNet` can wrap it: tokens from the shared
        encoder, prior injected into D_θ (docs/methods.md#priors-and-injection). ``decode(encode(x))[0]``
        equals ``forward(x)``.
        """
        return self.decoder_theta.decode(features, None, injection)

    @property
    def head(self) -> nn.Module:
        """D_θ's 1×1 output layer (for SCDL ``injection="head"``)."""
        return self.decoder_theta.head
