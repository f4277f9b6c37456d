"""MagicNet network pieces: the cube location head and the wrapper around a VNet backbone.

MagicNet (Chen et al., CVPR'23; docs/methods.md#magicnet) uses the plain VNet of this literature
(``n_filters=16``, non-affine InstanceNorm) plus a small MLP, ``FcLayer``, that predicts where a
cube came from in its patch from the cube's flattened bottleneck feature:

    Linear(16n · (cube/16)³ → 4096) → BatchNorm1d(4096) → LeakyReLU(0.2) → Linear(4096 → G)

with ``G`` = number of cubes per patch (27 for a 96³ patch of 32³ cubes, where the input width is
256 · 2³ = 2048). Source: ``DeepMed-Lab-ECNU/MagicNet:code/networks/magicnet.py`` (``FcLayer``,
``VNet_Magic``); the GALoss copy ``cicailalala/GALoss:networks/magicnet.py`` is identical.

:class:`MagicNetwork` does not re-implement the backbone: it holds a
:class:`~scdl_monai.networks.vnet.VNet` and exposes what the method needs through the VNet hooks
(``encode`` → bottleneck ``x5``, ``decode`` → logits and the last decoder feature ``x9``,
``head`` = the 1×1 output convolution applied after cube recovery).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from scdl_monai.data.utils import check_number
from scdl_monai.networks.prior_injection import SCDLNetwork
from scdl_monai.networks.vnet import VNet

__all__ = ["LocationHead", "MagicNetwork", "SegmentationFeatures", "location_head_in_features"]

#: hidden width and LeakyReLU slope of MagicNet's FcLayer (``code/networks/magicnet.py``)
_FC_HIDDEN = 4096
_FC_SLOPE = 0.2


def _cube3(cube_size: int | Sequence[int], name: str = "cube_size") -> tuple[int, int, int]:
    values = (cube_size,) * 3 if isinstance(cube_size, int) and not isinstance(cube_size, bool) else tuple(cube_size)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"`{name}` must be a positive int or three positive ints, got {cube_size!r}.")
    return values  # type: ignore[return-value]


def location_head_in_features(bottleneck_channels: int, cube_size: int | Sequence[int], shape_factor: int = 16) -> int:
    """Width of a flattened cube bottleneck: ``C5 · Π(cube_i / shape_factor)``.

    For MagicNet's VNet (``C5 = 16·n_filters``, down-sampling factor 16) and 32³ cubes:
    ``256 · 2³ = 2048`` (``DeepMed-Lab-ECNU/MagicNet@ae596e36:code/networks/magicnet.py`` ``FcLayer``).

    Raises:
        ValueError: non-positive sizes, or a cube size not divisible by ``shape_factor``.
    """
    check_number(bottleneck_channels, "bottleneck_channels", integer=True, minimum=1)
    cubes = _cube3(cube_size)
    if any(c % shape_factor for c in cubes):
        raise ValueError(f"`cube_size` {cubes} must be divisible by the backbone's shape factor {shape_factor}.")
    features = bottleneck_channels
    for c in cubes:
        features *= c // shape_factor
    return features


class LocationHead(nn.Module):
    """MagicNet's ``FcLayer``: G-way cube-location classifier on flattened bottleneck features.

    ``Linear(in → hidden) → BatchNorm1d(hidden) → LeakyReLU(0.2) → Linear(hidden → G)``; the
    constants are those of ``DeepMed-Lab-ECNU/MagicNet:code/networks/magicnet.py``. MagicNet calls
    it once per sample on that sample's G cubes, so BatchNorm1d sees a batch of G rows.

    Args:
        in_features: flattened cube bottleneck width (:func:`location_head_in_features`).
        num_locations: G, cubes per patch (27 for a 3×3×3 grid).
        hidden_features: hidden width (4096 in the reference; smaller for tests).
        negative_slope: LeakyReLU slope (0.2).

    Shapes:
        ``forward``: (N, in_features) → (N, num_locations) logits.

    Raises:
        ValueError: a non-positive width or count.

    Example:
        >>> head = LocationHead(location_head_in_features(256, 32), 27)
        >>> head(torch.randn(27, 2048)).shape
        torch.Size([27, 27])
    """

    def __init__(
        self,
        in_features: int,
        num_locations: int,
        hidden_features: int = _FC_HIDDEN,
        negative_slope: float = _FC_SLOPE,
    ) -> None:
        super().__init__()
        sizes = (("in_features", in_features), ("num_locations", num_locations), ("hidden_features", hidden_features))
        for key, value in sizes:
            check_number(value, key, "LocationHead", integer=True, minimum=1)
        self.in_features = in_features
        self.num_locations = num_locations
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden_features),
            nn.BatchNorm1d(hidden_features),
            nn.LeakyReLU(negative_slope=float(negative_slope), inplace=True),
            nn.Linear(hidden_features, num_locations),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Location logits for flattened cube features ``(N, in_features)`` (any trailing dims are flattened)."""
        features = torch.flatten(features, start_dim=1)
        if features.shape[1] != self.in_features:
            raise ValueError(
                f"LocationHead: flattened features have {features.shape[1]} values per cube, "
                f"expected in_features={self.in_features}."
            )
        return self.layers(features)


class SegmentationFeatures(NamedTuple):
    """Output of :meth:`MagicNetwork.features`: logits (B, C, *spatial) and last decoder feature (B, n, *spatial)."""

    logits: torch.Tensor
    feature: torch.Tensor


class MagicNetwork(nn.Module):
    """A VNet plus MagicNet's location head, with the hooks the MagicNet method calls.

    * :meth:`forward` — logits only (inference, MONAI inferers);
    * :meth:`features` — ``(logits, x9)`` like ``VNet_Magic.forward``;
    * :meth:`encode` / :meth:`decode` — the VNet hooks (``encode(x)[-1]`` is the bottleneck);
    * :meth:`head` — the 1×1 output convolution, applied to recovered features;
    * :meth:`locate` — location logits from (G, C5, *cube/16) bottleneck features.

    Args:
        backbone: a :class:`~scdl_monai.networks.vnet.VNet` (or an
            :class:`~scdl_monai.networks.prior_injection.SCDLNetwork` around one; MagicNet: ``n_filters=16``,
            ``norm="instance"``, ``init=None`` — the reference keeps PyTorch's default init).
        cube_size: cube edge (32 in the reference; int or per-axis triple).
        patch_size: training patch edge (96); ``patch/cube`` gives the grid and G = its product.
        hidden_features: hidden width of the location head (4096).

    Raises:
        TypeError: ``backbone`` is not a VNet.
        ValueError: cube not dividing the patch, cube not divisible by 16, or an instance-norm
            backbone with fewer than 2 bottleneck voxels per cube (InstanceNorm cannot normalise
            one voxel; use ``cube_size >= 32`` or ``norm="batch"``/``"group"``).

    Example:
        >>> net = MagicNetwork(VNet(out_channels=14, n_filters=16, norm="instance", init=None))
        >>> net.location_head.in_features, net.num_locations
        (2048, 27)
    """

    def __init__(
        self,
        backbone: VNet,
        cube_size: int | Sequence[int] = 32,
        patch_size: int | Sequence[int] = 96,
        hidden_features: int = _FC_HIDDEN,
    ) -> None:
        super().__init__()
        bare = backbone.backbone if isinstance(backbone, SCDLNetwork) else backbone
        if not isinstance(bare, VNet):
            raise TypeError(
                f"MagicNetwork: `backbone` must be a scdl_monai.networks.vnet.VNet (encode/decode hooks), or an "
                f"SCDLNetwork around one, got {type(backbone).__name__}."
            )
        if backbone.spatial_dims != 3:
            raise ValueError(f"MagicNetwork: the backbone must be 3-D, got spatial_dims={backbone.spatial_dims}.")
        cubes = _cube3(cube_size, "cube_size")
        patches = _cube3(patch_size, "patch_size")
        if any(p % c for p, c in zip(patches, cubes)):
            raise ValueError(f"MagicNetwork: `patch_size` {patches} must be a multiple of `cube_size` {cubes}.")
        factor = backbone.shape_factor()[0]
        in_features = location_head_in_features(backbone.feature_channels[-1], cubes, factor)
        bottleneck_voxels = 1
        for c in cubes:
            bottleneck_voxels *= c // factor
        if backbone.norm == "instance" and bottleneck_voxels < 2:
            raise ValueError(
                f"MagicNetwork: cube_size {cubes} gives {bottleneck_voxels} bottleneck voxel per cube; "
                "InstanceNorm needs more than one. Use cube_size >= 32 along one axis or norm='batch'/'group'."
            )
        self.backbone = backbone
        self.cube_size = cubes
        self.patch_size = patches
        self.grid: tuple[int, int, int] = tuple(p // c for p, c in zip(patches, cubes))  # type: ignore[assignment]
        self.num_locations = self.grid[0] * self.grid[1] * self.grid[2]
        self.location_head = LocationHead(in_features, self.num_locations, hidden_features)

    @property
    def out_channels(self) -> int:
        """Number of classes C of the backbone."""
        return self.backbone.out_channels

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x1, …, x5]`` of the backbone (``x5`` = bottleneck)."""
        return self.backbone.encode(x)

    def decode(self, features: Sequence[torch.Tensor]) -> SegmentationFeatures:
        """``(logits, last decoder feature)`` from encoder features."""
        logits, feature = self.backbone.decode(features)
        return SegmentationFeatures(logits, feature)

    def features(self, x: torch.Tensor) -> SegmentationFeatures:
        """``(logits (B, C, *spatial), x9 (B, n_filters, *spatial))`` — ``VNet_Magic.forward``."""
        return self.decode(self.encode(x))

    def head(self, feature: torch.Tensor) -> torch.Tensor:
        """The output 1×1 convolution (``forward_prediction_head``): (B, n, *sp) → (B, C, *sp)."""
        return self.backbone.head(feature)

    def locate(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """Location logits (G, num_locations) for one sample's cube bottlenecks (G, C5, *cube/16)."""
        return self.location_head(bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits (B, C, *spatial)."""
        return self.backbone(x)
