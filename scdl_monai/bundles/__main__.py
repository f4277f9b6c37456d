"""Deprecated entry point: ``python -m scdl_monai.bundles`` runs ``python -m scdl_monai.cli.bundle_tool``."""

import sys
import warnings

from scdl_monai._deprecation import SINCE
from scdl_monai.cli.bundle_tool import main

if __name__ == "__main__":
    warnings.warn(
        f"`python -m scdl_monai.bundles` is deprecated since scdl_monai {SINCE}: use `python -m scdl_monai.cli.bundle_tool`.",
        DeprecationWarning,
        stacklevel=1,
    )
    sys.exit(main())
