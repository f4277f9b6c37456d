"""Shared pytest fixtures and settings.

Tests run on CPU with tiny volumes; one intra-op thread keeps timings stable on a 2-core machine.
"""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "data" / "totalsegmentator-samples"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The real CT/MR samples shipped with the repository (TotalSegmentator, Apache-2.0)."""
    return SAMPLES
