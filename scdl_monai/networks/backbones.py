"""Backbone factory: select the segmentation network of a method by name.

Names (see :data:`BACKBONES`):

* ``"vnet"`` — :class:`scdl_monai.networks.vnet.VNet`, the UA-MT/SSL4MIS/DHC VNet every reference
  method uses (docs/methods.md#backbone); inputs divisible by 16.
* ``"unet"`` — :class:`monai.networks.nets.UNet`. Its required ``channels``/``strides`` default to
  :data:`UNET_DEFAULTS` (MONAI's 3-D spleen-segmentation tutorial: widths 16…256, four stride-2
  levels, 2 residual units, batch norm); inputs divisible by 16.
* ``"segresnet"`` — :class:`monai.networks.nets.SegResNet` with MONAI's defaults
  (``init_filters=8``, GroupNorm with 8 groups); inputs divisible by 8.

``n_filters`` is accepted by every name so that swapping the backbone in a bundle changes one key:
it is VNet's base width, UNet's ``channels = (n, 2n, 4n, 8n, 16n)`` and SegResNet's
``init_filters``. Likewise ``dropout`` (a probability; ``0``/``None`` = none) is VNet's
``has_dropout``/``dropout_prob`` (``Dropout3d`` on the bottleneck and the last decoder feature, the
reference ``has_dropout=True`` of ``xmed-lab/DHC:code/train_dhc.py`` ``make_model_all``), UNet's
``dropout`` and SegResNet's ``dropout_prob``; and ``init`` (``"kaiming"``, ``"xavier"`` or ``None``
for PyTorch's default) is VNet's own ``init`` and, for the MONAI networks, a re-initialisation with
:func:`~scdl_monai.networks.vnet.initialize_weights` (``None``, their default, leaves MONAI's).
Every other keyword goes to the network's constructor unchanged.

A bundle selects a backbone either through this factory (the name can then be overridden from the
command line, e.g. ``--network_def#name segresnet``)::

    "network_def": {
        "_target_": "scdl_monai.networks.backbones.build_backbone",
        "name": "unet", "spatial_dims": 3, "in_channels": 1,
        "out_channels": "@num_classes", "n_filters": 16
    }

or by naming the class directly, which bypasses the factory and its defaults::

    "network_def": {"_target_": "scdl_monai.networks.vnet.VNet", "n_filters": 32,
                    "out_channels": "@num_classes", "norm": "batch"}
    "network_def": {"_target_": "monai.networks.nets.SegResNet", "out_channels": "@num_classes"}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from monai.networks.nets import SegResNet, UNet
from torch import nn

from scdl_monai.data.utils import check_number, look_up
from scdl_monai.networks.vnet import VNet, initialize_weights

__all__ = ["BACKBONES", "UNET_DEFAULTS", "build_backbone"]

#: Defaults filled in for ``"unet"`` when not given (MONAI spleen 3-D segmentation tutorial).
UNET_DEFAULTS: Mapping = MappingProxyType(
    {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2, "norm": "batch"}
)


def _take_n_filters(name: str, kwargs: dict, key: str):
    """Pop ``n_filters`` from ``kwargs``; refuse it together with the native key it maps to."""
    n_filters = kwargs.pop("n_filters", None)
    if n_filters is not None and key in kwargs:
        raise ValueError(
            f"build_backbone({name!r}): give either `n_filters` ({n_filters!r}) or `{key}` "
            f"({kwargs[key]!r}), not both."
        )
    if n_filters is not None:
        check_number(n_filters, "n_filters", f"build_backbone({name!r})", integer=True, minimum=1)
    return n_filters


def _take_dropout(name: str, kwargs: dict, key: str | None) -> float | None:
    """Pop the generic ``dropout`` probability; refuse it together with the native key it maps to."""
    if "dropout" not in kwargs:
        return None
    p = kwargs.pop("dropout")
    if p is not None and key is not None and key in kwargs:
        raise ValueError(f"build_backbone({name!r}): give either `dropout` ({p!r}) or `{key}` ({kwargs[key]!r}), not both.")
    if p is None:
        return None
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"build_backbone({name!r}): `dropout` must be a probability in [0, 1] or None, got {p!r}.")
    return float(p)


def _build_vnet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    p = _take_dropout("vnet", kwargs, "has_dropout")
    if p is not None:
        kwargs["has_dropout"] = p > 0
        if p > 0:
            kwargs["dropout_prob"] = p
    return VNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)


def _build_unet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    n_filters = _take_n_filters("unet", kwargs, "channels")
    if n_filters is not None:
        kwargs["channels"] = tuple(n_filters * 2**i for i in range(len(UNET_DEFAULTS["channels"])))
    if "channels" in kwargs and "strides" not in kwargs:
        kwargs["strides"] = (2,) * (len(kwargs["channels"]) - 1)
    for key, value in UNET_DEFAULTS.items():
        kwargs.setdefault(key, value)
    p = _take_dropout("unet", kwargs, None)  # UNet's own keyword is `dropout` too
    if p:
        kwargs["dropout"] = p
    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)


def _build_segresnet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    n_filters = _take_n_filters("segresnet", kwargs, "init_filters")
    if n_filters is not None:
        kwargs["init_filters"] = n_filters
    p = _take_dropout("segresnet", kwargs, "dropout_prob")
    if p:
        kwargs["dropout_prob"] = p
    return SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "vnet": _build_vnet,
    "unet": _build_unet,
    "segresnet": _build_segresnet,
}
#: Backbone names understood by :func:`build_backbone`.
BACKBONES = tuple(_BUILDERS)


def build_backbone(
    name: str, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, **kwargs
) -> nn.Module:
    """Build a segmentation backbone by name.

    Args:
        name: one of :data:`BACKBONES` (case-insensitive).
        spatial_dims: 2 or 3 (1 also works for ``"vnet"``).
        in_channels: image channels.
        out_channels: classes ``C`` (background included).
        kwargs: forwarded to the constructor; ``n_filters`` is translated per backbone (module
            docstring), and so are ``dropout`` and ``init``; ``"unet"`` fills missing ``channels``/``strides``/``num_res_units``/``norm``
            from :data:`UNET_DEFAULTS` (``strides`` follows the length of a given ``channels``).

    Returns:
        A module with ``forward(x (B, in_channels, *spatial)) -> logits (B, out_channels, *spatial)``.

    Raises:
        ValueError: unknown ``name`` (:class:`~scdl_monai.data.utils.UnknownNameError`, with a
            did-you-mean suggestion), ``n_filters`` given together
            with ``channels``/``init_filters``, or an invalid VNet argument.
        TypeError: a keyword the chosen network does not accept (the message names the backbone).

    Example:
        >>> net = build_backbone("unet", out_channels=14, n_filters=8)
    """
    key = look_up(name, BACKBONES, "name", "build_backbone", type_error=TypeError)
    init = kwargs.pop("init", None) if key != "vnet" else None
    try:
        net = _BUILDERS[key](spatial_dims, in_channels, out_channels, **kwargs)
    except TypeError as err:
        raise TypeError(f"build_backbone({key!r}): {err}") from err
    return initialize_weights(net, init) if init is not None else net
