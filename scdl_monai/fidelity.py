"""Deprecated path: ``scdl_monai.fidelity`` moved to :mod:`scdl_monai.bundles.fidelity`."""

from scdl_monai._deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, ["scdl_monai.bundles.fidelity"])
