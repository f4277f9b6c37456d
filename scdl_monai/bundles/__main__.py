"""Deprecated entry point: ``python -m scdl_monai.bundles`` runs ``python -m scdl_monai.cli.bundle_tool``."""

import sys

from scdl_monai._deprecation import run_moved_command

if __name__ == "__main__":
    sys.exit(run_moved_command("scdl_monai.bundles", "scdl_monai.cli.bundle_tool"))
