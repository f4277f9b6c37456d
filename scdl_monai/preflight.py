"""Deprecated path: ``scdl_monai.preflight`` moved to :mod:`scdl_monai.engines.preflight`."""

from scdl_monai._deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, ["scdl_monai.engines.preflight"])
