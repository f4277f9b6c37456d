"""SKCDF network: one shared VNet encoder, the SKC module on the bottleneck, two dual-head decoders.

Zhang, Yin et al., CVPR 2025 (docs/methods.md#skcdf); reference
``yinguanchun/SKCDF@12f807d:SKCDF/code/models/SKCDF.py`` (below ``SKCDF.py:N``), class
``VNet_Decouple_Attention_ABC`` (``SKCDF.py:724-771``):

* **encoder** E: the VNet encoder of this literature (:class:`~scdl_monai.networks.vnet.VNet`'s
  stages, Conv → BN → ReLU units, widths ``n…16n``), dropout 0.5 on ``x5`` (``SKCDF.py:95-145``);
* **SKC** (:class:`~scdl_monai.networks.skc.SKCModule`) on ``x5`` only; ``x1…x4`` untouched;
* two **decoders** of the VNet layout (``SKCDF.py:148-216``): ``decoder_l`` (D_l, labeled flow)
  and ``decoder_u`` (D_u, unlabeled flow), each with two ``1×1`` heads on the last ``n``-channel
  feature: ``head`` (main) and ``head_balanced`` (ABC-style balanced head, ``out_conv9_abc``);
  dropout 0.5 on that feature.

Passes: :meth:`SKCDFNetwork.labeled_pass` (training pass 1: batch ``[L; U]``, SKC in cross mode,
D_l), :meth:`SKCDFNetwork.unlabeled_pass` (pass 2: SKC in self mode, D_u) and :meth:`forward`
(inference: SKC in self mode, D_u main head; ``test.py:26-78``).

Initialisation as the reference trainer (``train_skcdf.py:67-74,183``): every convolution
(backbone, heads, token learners, ``map_out``) Xavier-normal, BN ``γ=1, β=0``; transposed
convolutions, conv biases and LayerNorms keep PyTorch's defaults; the attention ``Linear`` layers
are Xavier-uniform (their own init). Parameters at ``n=32``, ``C=14``, 64×128×128 patches:
50,917,320 (encoder 29,495,296; each decoder 8,283,292; local block 2,362,000; global block
2,493,440, of which 65,864 belong to the two never-used ``map_in`` convolutions).

The network keeps the VNet hooks SCDL needs for its inference path (:meth:`encode`,
:meth:`decode`, :attr:`feature_channels`, :attr:`decoder_channels`, :attr:`head`): ``encode`` ends
with the SKC module in self mode and ``decode`` is the inference decoder's main path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from monai.networks.layers.factories import Conv, Dropout
from torch import nn

from scdl_monai.data.utils import check_number, look_up
from scdl_monai.networks.skc import ATTENTION_MODES, SKCModule
from scdl_monai.networks.vnet import _DECODER_UNITS, _ENCODER_UNITS, NORMS, _conv_unit, _stage, initialize_weights

__all__ = ["SKCDFNetwork", "SKCDFOutput", "VNetEncoder", "DualHeadVNetDecoder"]

_NUM_DOWN = len(_ENCODER_UNITS) - 1


class SKCDFOutput(NamedTuple):
    """Logits of one decoder: ``logits`` (main head) and ``balanced`` (balanced head or None), ``(B, C, *spatial)``."""

    logits: torch.Tensor
    balanced: torch.Tensor | None


class VNetEncoder(nn.Module):
    """The encoder half of :class:`~scdl_monai.networks.vnet.VNet` (same stages and units).

    ``forward(x)`` returns ``[x1, …, x5]`` with widths ``n, 2n, 4n, 8n, 16n``; dropout on ``x5``
    when ``has_dropout`` (train mode only).
    """

    def __init__(self, spatial_dims, in_channels, n_filters, norm, has_dropout, dropout_prob, num_groups):
        super().__init__()
        widths = tuple(n_filters * 2**i for i in range(len(_ENCODER_UNITS)))
        self.stages = nn.ModuleList(
            _stage(spatial_dims, in_channels if i == 0 else w, w, u, norm, num_groups)
            for i, (w, u) in enumerate(zip(widths, _ENCODER_UNITS))
        )
        self.downsamples = nn.ModuleList(
            _conv_unit(spatial_dims, widths[i], widths[i + 1], norm, num_groups, kernel_size=2, stride=2, padding=0)
            for i in range(_NUM_DOWN)
        )
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](p=dropout_prob) if has_dropout else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        h = x
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i < _NUM_DOWN:
                features.append(h)
                h = self.downsamples[i](h)
        features.append(self.dropout(h) if self.dropout is not None else h)
        return features


class DualHeadVNetDecoder(nn.Module):
    """The decoder half of :class:`~scdl_monai.networks.vnet.VNet` with a main and a balanced head.

    :meth:`decode` returns ``(logits, balanced_logits or None, last_feature)``; ``injection`` is
    added after each stage's skip-sum as in :meth:`VNet.decode <scdl_monai.networks.vnet.VNet.decode>`.
    """

    def __init__(self, spatial_dims, n_filters, out_channels, norm, has_dropout, dropout_prob, num_groups, balanced):
        super().__init__()
        widths = tuple(n_filters * 2**i for i in range(len(_ENCODER_UNITS)))
        channels = tuple(reversed(widths[:-1]))
        self.upsamples = nn.ModuleList(
            _conv_unit(spatial_dims, cin, cout, norm, num_groups, kernel_size=2, stride=2, padding=0, transposed=True)
            for cin, cout in zip(reversed(widths[1:]), channels)
        )
        self.stages = nn.ModuleList(
            _stage(spatial_dims, w, w, u, norm, num_groups) for w, u in zip(channels, _DECODER_UNITS)
        )
        conv = Conv[Conv.CONV, spatial_dims]
        self.head = conv(n_filters, out_channels, kernel_size=1)
        self.head_balanced = conv(n_filters, out_channels, kernel_size=1) if balanced else None
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](p=dropout_prob) if has_dropout else None

    def decode(self, features: Sequence[torch.Tensor], injection: Sequence[torch.Tensor | None] | None = None):
        skips = list(features[:-1])[::-1]
        inject = [None] * len(self.stages) if injection is None else list(injection)
        if len(inject) != len(self.stages):
            raise ValueError(f"DualHeadVNetDecoder: expected {len(self.stages)} injections (or None), got {len(inject)}.")
        h = features[-1]
        for up, stage, skip, extra in zip(self.upsamples, self.stages, skips, inject):
            h = up(h) + skip
            if extra is not None:
                h = h + extra
            h = stage(h)
        if self.dropout is not None:
            h = self.dropout(h)
        balanced = self.head_balanced(h) if self.head_balanced is not None else None
        return self.head(h), balanced, h

    def forward(self, features: Sequence[torch.Tensor]) -> SKCDFOutput:
        logits, balanced, _ = self.decode(features)
        return SKCDFOutput(logits, balanced)


class SKCDFNetwork(nn.Module):
    """Shared VNet encoder + SKC on ``x5`` + decoders D_l and D_u with main and balanced heads.

    Shapes: input ``(B, in_channels, *patch_size)`` (the global block is built for the bottleneck
    ``patch_size / 16``, so training and sliding-window inference use that patch); logits
    ``(B, out_channels, *patch_size)``.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: image channels.
        out_channels: classes ``C`` (background included).
        n_filters: base width ``n`` (reference 32).
        patch_size: training/inference patch; every size divisible by ``16 · window_size``.
        norm: VNet norm (reference ``"batch"``).
        has_dropout: dropout on ``x5`` and on each decoder's last feature (reference True).
        dropout_prob: 0.5.
        skc_enabled: use the SKC module (False: the Table 6 baseline, decoupled decoders and
            balanced heads only).
        skc: keyword arguments of :class:`~scdl_monai.networks.skc.SKCModule` other than
            ``channels``/``spatial_size``/``spatial_dims`` (``blocks``, ``fusion``, ``num_heads``,
            ``dropout``, ``window_size``, ``global_self_head_layout``, ``local_self_proj_dropout``,
            ``detach_unlabeled``, ``unused_token_params``).
        attention: ``"cross"`` (reference: pass 1 in cross mode) or ``"self"`` (the Table 6 "SA"
            ablation, ``Self_Attention/Self_Attention.py``: per-sample self attention in both passes).
        balanced_head: build the balanced heads (reference True).
        decoupled: two decoders (reference); False: one decoder (``decoder_l``) serves both passes.
        inference_decoder: ``"u"`` (reference) or ``"l"``.
        inference_head: ``"main"`` (reference) or ``"balanced"``.
        init: ``"xavier"`` (reference), ``"kaiming"`` or None (PyTorch defaults);
            :func:`~scdl_monai.networks.vnet.initialize_weights`.
        num_groups: groups for ``norm="group"``.

    Raises:
        ValueError: invalid arguments (named in the message).

    Example:
        >>> net = SKCDFNetwork(out_channels=3, n_filters=4, patch_size=(32, 32, 32))
        >>> net(torch.randn(1, 1, 32, 32, 32)).shape
        torch.Size([1, 3, 32, 32, 32])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        n_filters: int = 32,
        patch_size: Sequence[int] = (128, 128, 64),
        norm: str = "batch",
        has_dropout: bool = True,
        dropout_prob: float = 0.5,
        skc_enabled: bool = True,
        skc: Mapping[str, Any] | None = None,
        attention: str = "cross",
        balanced_head: bool = True,
        decoupled: bool = True,
        inference_decoder: str = "u",
        inference_head: str = "main",
        init: str | None = "xavier",
        num_groups: int = 16,
    ) -> None:
        super().__init__()
        owner = "SKCDFNetwork"
        if isinstance(spatial_dims, bool) or spatial_dims not in (1, 2, 3):
            raise ValueError(f"{owner}: `spatial_dims` must be 1, 2 or 3, got {spatial_dims!r}.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("n_filters", n_filters)):
            check_number(value, name, owner, integer=True, minimum=1)
        patch = tuple(patch_size) if isinstance(patch_size, Sequence) and not isinstance(patch_size, str) else None
        if patch is None or len(patch) != spatial_dims or any(isinstance(p, bool) or not isinstance(p, int) for p in patch):
            raise ValueError(f"{owner}: `patch_size` must be {spatial_dims} ints, got {patch_size!r}.")
        factor = 2**_NUM_DOWN
        if any(p % factor for p in patch):
            raise ValueError(f"{owner}: every `patch_size` entry must be divisible by {factor}, got {list(patch)}.")
        norm = look_up(norm, NORMS, "norm", owner)
        if isinstance(dropout_prob, bool) or not isinstance(dropout_prob, (int, float)) or not 0 <= dropout_prob <= 1:
            raise ValueError(f"{owner}: `dropout_prob` must be a probability in [0, 1], got {dropout_prob!r}.")
        self.attention = look_up(attention, ATTENTION_MODES, "attention", owner)
        self.inference_decoder = look_up(inference_decoder, ("u", "l"), "inference_decoder", owner)
        self.inference_head = look_up(inference_head, ("main", "balanced"), "inference_head", owner)
        if self.inference_head == "balanced" and not balanced_head:
            raise ValueError(f"{owner}: inference_head='balanced' needs balanced_head=True.")
        if self.inference_decoder == "u" and not decoupled:
            self.inference_decoder = "l"  # one decoder: it is the inference decoder
        if skc is not None and not isinstance(skc, Mapping):
            raise ValueError(f"{owner}: `skc` must be a dict of SKCModule arguments or None, got {type(skc).__name__}.")
        if init is not None:
            init = look_up(init, ("kaiming", "xavier"), "init", owner)

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_filters = n_filters
        self.patch_size = patch
        self.balanced_head = bool(balanced_head)
        self.decoupled = bool(decoupled)
        widths = tuple(n_filters * 2**i for i in range(len(_ENCODER_UNITS)))
        #: encoder feature widths of x1..x5 (VNet hook)
        self.feature_channels: tuple[int, ...] = widths
        #: widths at the decoder injection points (VNet hook): (8n, 4n, 2n, n)
        self.decoder_channels: tuple[int, ...] = tuple(reversed(widths[:-1]))
        drop = float(dropout_prob)
        self.encoder = VNetEncoder(spatial_dims, in_channels, n_filters, norm, bool(has_dropout), drop, num_groups)
        bottleneck = tuple(p // factor for p in patch)
        self.skc = (
            SKCModule(widths[-1], bottleneck, spatial_dims, **dict(skc or {})) if skc_enabled else None
        )
        dec = (spatial_dims, n_filters, out_channels, norm, bool(has_dropout), drop, num_groups, self.balanced_head)
        self.decoder_l = DualHeadVNetDecoder(*dec)
        self.decoder_u = DualHeadVNetDecoder(*dec) if self.decoupled else None
        if init is not None:
            initialize_weights(self, init)

    # ------------------------------------------------------------------ pieces
    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"SKCDFNetwork: input must be (B, {self.in_channels}, *spatial) with {self.spatial_dims} spatial "
                f"dims, got {got}."
            )
        if self.skc is not None and tuple(x.shape[2:]) != self.patch_size:
            raise ValueError(
                f"SKCDFNetwork: input spatial size {tuple(x.shape[2:])} differs from patch_size {self.patch_size} "
                "(the SKC global block is built for that patch); infer with a sliding window of patch_size."
            )

    def complement(self, x5: torch.Tensor, mode: str = "self") -> torch.Tensor:
        """The SKC module on the bottleneck (identity when disabled); ``mode`` ``"cross"`` or ``"self"``."""
        return x5 if self.skc is None else self.skc(x5, mode)

    def _features(self, x: torch.Tensor, mode: str) -> list[torch.Tensor]:
        self._check(x)
        features = self.encoder(x)
        features[-1] = self.complement(features[-1], mode)
        return features

    def _decoder(self, which: str) -> DualHeadVNetDecoder:
        return self.decoder_u if which == "u" and self.decoder_u is not None else self.decoder_l

    # ------------------------------------------------------------------ passes
    def labeled_pass(self, image: torch.Tensor) -> SKCDFOutput:
        """Training pass 1 (``train_skcdf.py:243-252``): ``image = cat[x_L, x_U]`` (equal halves),
        SKC in cross mode (self mode when ``attention="self"``), D_l; outputs for all samples."""
        return self.decoder_l(self._features(image, self.attention))

    def unlabeled_pass(self, image: torch.Tensor) -> SKCDFOutput:
        """Training pass 2 (``train_skcdf.py:274``): SKC in self mode, D_u (D_l when not decoupled)."""
        return self._decoder("u")(self._features(image, "self"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference logits: E → SKC (self) → inference decoder → inference head (``test.py:26-78``)."""
        out = self._decoder(self.inference_decoder)(self._features(x, "self"))
        return out.balanced if self.inference_head == "balanced" else out.logits

    # ------------------------------------------------------------------ VNet-style hooks (inference path)
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x1, …, x5]`` with the SKC module applied to ``x5`` in self mode."""
        return self._features(x, "self")

    def decode(self, features: Sequence[torch.Tensor], injection=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference decoder, main head: ``(logits, last_feature)``; ``injection`` as in VNet.decode."""
        logits, _, last = self._decoder(self.inference_decoder).decode(features, injection)
        return logits, last

    @property
    def head(self) -> nn.Module:
        """The inference decoder's main head."""
        return self._decoder(self.inference_decoder).head
