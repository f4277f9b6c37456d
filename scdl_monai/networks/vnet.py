"""The "VNet" backbone of the semi-supervised medical segmentation literature.

This is the plain encoder-decoder used by UA-MT, SSL4MIS, CPS-as-run-by-DHC, DHC, GenericSSL,
GA-CPS, MagicNet and SCDL — **not** :class:`monai.networks.nets.VNet` (which has residual 5³
convolutions and PReLU). Swapping one for the other silently changes every baseline, so the
layout here (docs/methods.md#backbone) follows the reference file
``xmed-lab/DHC@a6f72d37:code/models/vnet.py`` (same layout as ``HiLab-git/SSL4MIS:code/networks/vnet.py``):

* a *conv unit* is ``Conv(k3, pad 1) -> Norm -> ReLU``; encoder stages have 1, 2, 3, 3, 3 units
  with widths ``n, 2n, 4n, 8n, 16n`` (``n = n_filters``), no residual add inside a stage;
* down-sampling: ``Conv(k2, s2) -> Norm -> ReLU``; up-sampling:
  ``ConvTranspose(k2, s2) -> Norm -> ReLU`` followed by an **additive** skip connection;
* decoder stages have 3, 3, 2, 1 units; the head is a ``1×1(×1)`` convolution to ``C`` classes;
* optional ``Dropout3d(0.5)`` on the bottleneck ``x5`` and on the last decoder feature
  (active in training mode only, as for any :mod:`torch.nn` dropout);
* every convolution keeps its bias, whatever the norm (so ``n=32``, 1 input channel, 14 classes
  and batch norm give exactly 37,778,126 parameters — DHC reports 37.8 M).

Layers are built with MONAI's factories (``Conv``, ``Norm``, ``Dropout``, ``Act``) so the same
code serves 1-, 2- and 3-D inputs.

Initialisation (docs/methods.md#backbone; ``HiLab-git/SSL4MIS:code/train_cross_pseudo_supervision_3D.py``
``kaiming_normal_init_weight`` / ``xavier_normal_init_weight``): Kaiming-normal or Xavier-normal
on the weights of (non-transposed) convolutions only, norm ``γ=1, β=0``; transposed convolutions
and all biases keep PyTorch's default initialisation. :func:`initialize_weights` applies this to
any module, so CPS can re-initialise a MONAI network too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.networks.layers.factories import Act, Conv, Dropout, Norm
from torch import nn

from scdl_monai.data.utils import check_number, look_up

__all__ = ["VNet", "initialize_weights", "NORMS", "INIT_SCHEMES"]

#: Normalisation choices of :class:`VNet` (reference names: batchnorm, instancenorm, groupnorm, none).
NORMS = ("batch", "instance", "group", "none")
#: Weight-initialisation schemes understood by :func:`initialize_weights`.
INIT_SCHEMES = ("kaiming", "xavier")

_ENCODER_UNITS = (1, 2, 3, 3, 3)  # DHC code/models/vnet.py block_one..block_five
_DECODER_UNITS = (3, 3, 2, 1)  # DHC code/models/vnet.py block_six..block_nine
_NUM_DOWN = len(_ENCODER_UNITS) - 1  # four stride-2 down-samplings -> factor 2**4 = 16

_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _initializable_modules(module: nn.Module, seen: set[int] | None = None):
    """``module.modules()`` order, without the subtrees of modules that keep their initialisation."""
    seen = set() if seen is None else seen
    if id(module) in seen or getattr(module, "keeps_initialization", False):
        return
    seen.add(id(module))
    yield module
    for child in module.children():
        yield from _initializable_modules(child, seen)


def initialize_weights(module: nn.Module, scheme: str = "kaiming") -> nn.Module:
    """Re-initialise the convolution and normalisation weights of any module in place.

    Every ``nn.Conv1d/2d/3d`` (transposed convolutions are *not* touched) gets its weight drawn
    from Kaiming-normal (``fan_in``, gain √2) or Xavier-normal (gain 1); its bias keeps its value.
    Every affine BatchNorm/InstanceNorm/GroupNorm/LayerNorm gets ``weight=1, bias=0``. Running
    statistics are left alone. A sub-module whose class sets ``keeps_initialization = True`` (the
    SCDL block and token extractor of a wrapped backbone) is skipped with its children, so wrapping
    a backbone changes neither what this function draws from the random stream nor the wrapper's
    own (zero-initialised) layers. Source: docs/methods.md#backbone (CPS: net A Kaiming, net B Xavier),
    ``xmed-lab/DHC@990998d0:code/train_cps.py``, ``HiLab-git/SSL4MIS:code/train_cross_pseudo_supervision_3D.py``.

    Args:
        module: any module (a :class:`VNet`, a MONAI network, ...); searched recursively.
        scheme: ``"kaiming"`` or ``"xavier"``.

    Returns:
        The same ``module`` (for chaining in configs).

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: unknown ``scheme`` (with a did-you-mean suggestion).

    Example:
        >>> net = initialize_weights(VNet(n_filters=4), "xavier")
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"initialize_weights: `module` must be an nn.Module, got {type(module).__name__}.")
    scheme = look_up(scheme, INIT_SCHEMES, "scheme", "initialize_weights", type_error=TypeError)
    for m in _initializable_modules(module):
        if isinstance(m, _PLAIN_CONVS):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight)
            else:
                nn.init.xavier_normal_(m.weight)
        elif isinstance(m, _NORM_TYPES):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return module


def _conv_unit(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    norm: str,
    num_groups: int,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int = 1,
    transposed: bool = False,
) -> nn.Sequential:
    """``Conv -> [Norm] -> ReLU`` (the reference's ConvBlock / Down / Up unit)."""
    conv_type = Conv[Conv.CONVTRANS if transposed else Conv.CONV, spatial_dims]
    layers: list[nn.Module] = [
        conv_type(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding)
    ]
    if norm == "batch":
        layers.append(Norm[Norm.BATCH, spatial_dims](out_channels))
    elif norm == "instance":
        # non-affine, no running stats: torch.nn.InstanceNorm3d defaults (MagicNet, docs/methods.md#backbone)
        layers.append(Norm[Norm.INSTANCE, spatial_dims](out_channels, affine=False))
    elif norm == "group":
        layers.append(Norm[Norm.GROUP, spatial_dims](num_groups=num_groups, num_channels=out_channels))
    layers.append(Act[Act.RELU](inplace=True))
    return nn.Sequential(*layers)


def _stage(spatial_dims: int, in_channels: int, out_channels: int, units: int, norm: str, num_groups: int):
    """``units`` conv units (k3, pad 1); the first maps ``in_channels -> out_channels``."""
    return nn.Sequential(
        *(
            _conv_unit(spatial_dims, in_channels if i == 0 else out_channels, out_channels, norm, num_groups)
            for i in range(units)
        )
    )


class VNet(nn.Module):
    """UA-MT/SSL4MIS/DHC-style VNet with encoder/decoder hooks (docs/methods.md#backbone).

    Shapes (``S = spatial_dims``, every spatial size divisible by 16):

    * input ``x``: ``(B, in_channels, *spatial)``;
    * :meth:`encode` returns ``[x1, x2, x3, x4, x5]`` with ``xi``: ``(B, feature_channels[i-1],
      *spatial / 2**(i-1))``, i.e. widths ``n, 2n, 4n, 8n, 16n``;
    * :meth:`decode` returns ``(logits (B, out_channels, *spatial), last_feature (B, n, *spatial))``;
    * :meth:`forward` returns the logits only (MONAI inferers, ``verify_net_in_out``).

    Decoder stages / injection points (index ``k`` of ``injection`` in :meth:`decode`): the tensor
    is **added right after the skip-sum** of stage ``k`` and before that stage's conv units.

    ==  ================  ========================  =================  ==========================
    k   skip-sum           channels (decoder_chan.)  spatial scale      conv units that follow
    ==  ================  ========================  =================  ==========================
    0   up(x5) + x4        8n                        1/8                3
    1   up(.)  + x3        4n                        1/4                3
    2   up(.)  + x2        2n                        1/2                2
    3   up(.)  + x1        n                         1                  1 (then dropout, head)
    ==  ================  ========================  =================  ==========================

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: image channels.
        out_channels: classes ``C`` (background included).
        n_filters: base width ``n``; 32 for DHC/CPS/GenericSSL, 16 for GA-CPS/MagicNet/SCDL.
        norm: ``"batch"`` (CPS/DHC/GA-CPS), ``"instance"`` (non-affine, MagicNet), ``"group"``
            (``num_groups`` groups) or ``"none"``. Instance norm (and batch norm in training with
            batch size 1) needs more than one voxel at the bottleneck, i.e. an input of at least
            32 along one dimension.
        has_dropout: apply dropout to ``x5`` and to the last decoder feature (train mode only).
        dropout_prob: dropout probability; 0.5 in the reference (DHC vnet.py).
        init: ``"kaiming"`` (default, docs/methods.md#backbone), ``"xavier"``, or ``None`` for PyTorch's
            default initialisation; see :func:`initialize_weights`.
        num_groups: groups for ``norm="group"``; 16 in the reference (DHC vnet.py). Every stage
            width ``n·2**i`` must be divisible by it.

    Raises:
        ValueError: invalid ``spatial_dims``, channel counts, ``norm``, ``dropout_prob``, ``init``,
            or ``num_groups`` not dividing the widths.

    Example:
        >>> net = VNet(spatial_dims=3, in_channels=1, out_channels=14, n_filters=32)
        >>> sum(p.numel() for p in net.parameters())
        37778126
        >>> net(torch.zeros(1, 1, 96, 96, 96)).shape  # doctest: +SKIP
        torch.Size([1, 14, 96, 96, 96])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        n_filters: int = 16,
        norm: str = "batch",
        has_dropout: bool = False,
        dropout_prob: float = 0.5,
        init: str | None = "kaiming",
        num_groups: int = 16,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"VNet: `spatial_dims` must be 1, 2 or 3, got {spatial_dims!r}.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("n_filters", n_filters)):
            check_number(value, name, "VNet", integer=True, minimum=1)
        norm = look_up(norm, NORMS, "norm", "VNet")
        if not isinstance(dropout_prob, (int, float)) or not 0.0 <= float(dropout_prob) <= 1.0:
            raise ValueError(f"VNet: `dropout_prob` must be a float in [0, 1], got {dropout_prob!r}.")
        if init is not None:
            init = look_up(init, INIT_SCHEMES, "init", "VNet")

        widths = tuple(n_filters * 2**i for i in range(len(_ENCODER_UNITS)))
        if norm == "group":
            check_number(num_groups, "num_groups", "VNet", integer=True, minimum=1)
            bad = [w for w in widths if w % num_groups]
            if bad:
                raise ValueError(
                    f"VNet: norm='group' needs every stage width {widths} divisible by `num_groups`="
                    f"{num_groups}; {bad[0]} is not (n_filters={n_filters})."
                )

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_filters = n_filters
        self.norm = norm
        self.has_dropout = bool(has_dropout)
        #: encoder feature widths of x1..x5: (n, 2n, 4n, 8n, 16n)
        self.feature_channels: tuple[int, ...] = widths
        #: widths at the four decoder injection points (after each skip-sum): (8n, 4n, 2n, n)
        self.decoder_channels: tuple[int, ...] = tuple(reversed(widths[:-1]))
        #: down-sampling factor of each injection point relative to the input: (8, 4, 2, 1)
        self.decoder_scales: tuple[int, ...] = tuple(2**i for i in reversed(range(_NUM_DOWN)))

        def unit(cin, cout, **kw):
            return _conv_unit(spatial_dims, cin, cout, norm, num_groups, **kw)

        self.encoder_stages = nn.ModuleList(
            _stage(spatial_dims, in_channels if i == 0 else w, w, u, norm, num_groups)
            for i, (w, u) in enumerate(zip(widths, _ENCODER_UNITS))
        )
        self.downsamples = nn.ModuleList(
            unit(widths[i], widths[i + 1], kernel_size=2, stride=2, padding=0) for i in range(_NUM_DOWN)
        )
        self.upsamples = nn.ModuleList(
            unit(cin, cout, kernel_size=2, stride=2, padding=0, transposed=True)
            for cin, cout in zip(reversed(widths[1:]), self.decoder_channels)
        )
        self.decoder_stages = nn.ModuleList(
            _stage(spatial_dims, w, w, u, norm, num_groups) for w, u in zip(self.decoder_channels, _DECODER_UNITS)
        )
        self.head = Conv[Conv.CONV, spatial_dims](n_filters, out_channels, kernel_size=1)
        # One parameter-free module serves both dropout sites, as in the reference.
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](p=float(dropout_prob))

        if init is not None:
            initialize_weights(self, init)

    # ------------------------------------------------------------------ shapes
    def shape_factor(self) -> tuple[int, ...]:
        """Required divisor of each spatial size: ``2**4 = 16`` per dimension (four down-samplings)."""
        return (2**_NUM_DOWN,) * self.spatial_dims

    def _spatial_shape(self, x_or_shape) -> tuple[int, ...]:
        if isinstance(x_or_shape, torch.Tensor):
            shape = tuple(x_or_shape.shape)
            if len(shape) != self.spatial_dims + 2:
                raise ValueError(
                    f"VNet expects a (B, C, *spatial) tensor with {self.spatial_dims} spatial dims, "
                    f"got shape {shape}."
                )
            return shape[2:]
        shape = tuple(int(s) for s in x_or_shape)
        if len(shape) == self.spatial_dims:
            return shape
        if len(shape) == self.spatial_dims + 2:
            return shape[2:]
        raise ValueError(
            f"VNet: a shape must have {self.spatial_dims} (spatial) or {self.spatial_dims + 2} "
            f"(B, C, *spatial) entries, got {shape}."
        )

    def is_valid_shape(self, x_or_shape) -> bool:
        """Whether every spatial size is divisible by :meth:`shape_factor`.

        Args:
            x_or_shape: a ``(B, C, *spatial)`` tensor, or a shape given as ``spatial`` or
                ``(B, C, *spatial)``.
        """
        spatial = self._spatial_shape(x_or_shape)
        return all(s % f == 0 for s, f in zip(spatial, self.shape_factor()))

    def _check_input(self, x: torch.Tensor) -> None:
        spatial = self._spatial_shape(x)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"VNet: input has {x.shape[1]} channels, expected in_channels={self.in_channels}.")
        factor = self.shape_factor()
        bad = [(d, s) for d, (s, f) in enumerate(zip(spatial, factor)) if s % f]
        if bad:
            dims = ", ".join(f"spatial dim {d} has size {s}" for d, s in bad)
            raise ValueError(
                f"VNet: input spatial size {spatial} must be divisible by {factor} ({dims}); "
                "pad or crop the input (e.g. monai.transforms.DivisiblePad(k=16))."
            )

    # ------------------------------------------------------------------ hooks
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features ``[x1, x2, x3, x4, x5]`` (widths :attr:`feature_channels`).

        ``x5`` already has the bottleneck dropout applied when ``has_dropout`` and training.

        Raises:
            ValueError: wrong number of dims/channels, or a spatial size not divisible by 16.
        """
        self._check_input(x)
        features = []
        h = x
        for i, stage in enumerate(self.encoder_stages):
            h = stage(h)
            if i < _NUM_DOWN:
                features.append(h)
                h = self.downsamples[i](h)
        if self.has_dropout:
            h = self.dropout(h)
        features.append(h)
        return features

    def _injection_list(self, injection) -> list[torch.Tensor | None]:
        n = len(self.decoder_channels)
        if injection is None:
            return [None] * n
        if isinstance(injection, Mapping):
            bad = [k for k in injection if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n]
            if bad:
                raise ValueError(f"VNet.decode: `injection` keys must be stage indices 0..{n - 1}, got {bad[0]!r}.")
            return [injection.get(k) for k in range(n)]
        if isinstance(injection, Sequence) and not isinstance(injection, str):
            if len(injection) != n:
                raise ValueError(
                    f"VNet.decode: `injection` must have {n} entries (one per decoder stage, "
                    f"channels {self.decoder_channels}), got {len(injection)}."
                )
            return list(injection)
        raise TypeError(
            f"VNet.decode: `injection` must be None, a sequence of {n} tensors/None or a dict "
            f"{{stage: tensor}}, got {type(injection).__name__}."
        )

    def decode(self, features: Sequence[torch.Tensor], injection=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder with optional per-stage additive injection (SCDL hook, docs/methods.md#backbone).

        Args:
            features: ``[x1, x2, x3, x4, x5]`` as returned by :meth:`encode`.
            injection: ``None``, a sequence of 4 entries, or a dict ``{stage: tensor}``; each entry
                is ``None`` or a tensor broadcastable to the stage's skip-sum
                ``(B, decoder_channels[k], *spatial / decoder_scales[k])`` (see the class table).

        Returns:
            ``(logits, last_feature)``: ``(B, out_channels, *spatial)`` and the last decoder
            feature ``(B, n_filters, *spatial)`` as fed to the head (after dropout, if active).

        Raises:
            ValueError: wrong number of features, bad injection keys/length, or an injection that
                would change the shape of the stage it is added to.
        """
        if len(features) != len(self.feature_channels):
            raise ValueError(f"VNet.decode: expected {len(self.feature_channels)} features, got {len(features)}.")
        inject = self._injection_list(injection)
        skips = list(features[:-1])[::-1]  # x4, x3, x2, x1
        h = features[-1]
        for k, (up, stage, skip) in enumerate(zip(self.upsamples, self.decoder_stages, skips)):
            h = up(h) + skip
            if inject[k] is not None:
                extra = inject[k]
                try:
                    compatible = torch.broadcast_shapes(h.shape, extra.shape) == h.shape
                except RuntimeError:
                    compatible = False
                if not compatible:
                    raise ValueError(
                        f"VNet.decode: injection[{k}] of shape {tuple(extra.shape)} does not broadcast "
                        f"to decoder stage {k} of shape {tuple(h.shape)}."
                    )
                h = h + extra
            h = stage(h)
        if self.has_dropout:
            h = self.dropout(h)
        return self.head(h), h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` for ``x`` of shape ``(B, in_channels, *spatial)``."""
        logits, _ = self.decode(self.encode(x))
        return logits
