"""Deprecated path: ``scdl_monai.precision`` moved to :mod:`scdl_monai.engines.precision`, :mod:`scdl_monai.engines.policy_inferer`, :mod:`scdl_monai.engines.cpu_bf16`."""

from scdl_monai._deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, ["scdl_monai.engines.precision", "scdl_monai.engines.policy_inferer", "scdl_monai.engines.cpu_bf16"])
