"""Deprecated path: ``scdl_monai.diffusion`` moved to :mod:`scdl_monai.networks.diffusion`."""

from scdl_monai._deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, ["scdl_monai.networks.diffusion"])
