"""Deprecated path: ``scdl_monai.inference`` moved to :mod:`scdl_monai.cli.inference` (``python -m scdl_monai.inference`` still runs it)."""

import sys

from scdl_monai._deprecation import moved_names, run_moved_command

__getattr__, __dir__ = moved_names(__name__, ["scdl_monai.cli.inference"])

if __name__ == "__main__":
    sys.exit(run_moved_command("scdl_monai.inference", "scdl_monai.cli.inference"))
