"""Deprecated path: ``scdl_monai.demo`` moved to :mod:`scdl_monai.cli.demo` (``python -m scdl_monai.demo`` still runs it)."""

import sys

from scdl_monai._deprecation import moved_names, run_moved_command

__getattr__, __dir__ = moved_names(__name__, ["scdl_monai.cli.demo"])

if __name__ == "__main__":
    sys.exit(run_moved_command("scdl_monai.demo", "scdl_monai.cli.demo"))
