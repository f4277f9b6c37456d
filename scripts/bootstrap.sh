#!/usr/bin/env bash
# Set up scdl_monai on a fresh machine: a virtual environment in .venv with the package and its
# test extras. torch is installed first and pinned (TORCH_SPEC) so that a machine without a GPU does
# not pull a multi-GB CUDA build through an unpinned requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
.venv/bin/python -c "import scdl_monai, monai, torch; print(f'scdl_monai {scdl_monai.__version__}, monai {monai.__version__}, torch {torch.__version__}')"
