"""Deprecated path: ``scdl_monai.cubes`` moved to :mod:`scdl_monai.data.cubes` (cube geometry) and
:mod:`scdl_monai.weighting.frequency` (class-frequency blending)."""

from scdl_monai._deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, ["scdl_monai.data.cubes", "scdl_monai.weighting.frequency"])
