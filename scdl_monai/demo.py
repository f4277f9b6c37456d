"""Deprecated path: ``scdl_monai.demo`` moved to :mod:`scdl_monai.cli.demo`."""

import sys
import warnings

from scdl_monai._deprecation import SINCE, moved_names

__getattr__, __dir__ = moved_names(__name__, ["scdl_monai.cli.demo"])

if __name__ == "__main__":
    from scdl_monai.cli.demo import main

    warnings.warn(
        f"`python -m scdl_monai.demo` is deprecated since scdl_monai {SINCE}: use `python -m scdl_monai.cli.demo`.",
        DeprecationWarning,
        stacklevel=1,
    )
    sys.exit(main())
