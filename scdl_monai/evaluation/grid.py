"""The evaluation grid of reference mode: label maps nearest-resized to the reference's own grid.

The reference test scripts do not score on the original image grid. They score on the grid their
preprocessing made, by resizing the original label map with ``torch.nn.functional.interpolate(...,
mode="nearest")``:

* DHC (paper-era, ``xmed-lab/DHC@a6f72d3:code/evaluate_Ntimes.py:46-51``) and GenericSSL (labels of
  ``xmed-lab/GenericSSL@e73bde9:code/data/preprocess_synapse.py``, read by ``code/evaluate.py:35-36``):
  ``patch + patch // 4`` = 80×160×160 (z, y, x), i.e. 160×160×80 in this project's (x, y, z)
  arrays — the ``resize_grid`` of the "dhc" protocol. The prediction comes from the sliding window
  on that grid.
* GA-CPS / GA-MagicNet (``cicailalala/GALoss@65642f5:utils/test_util_vnet_AB.py:32-37``):
  prediction **and** label nearest-resized to (160, 160, 80) — the ``resize_grid`` of the "ga"
  protocol.

``F.interpolate`` in ``"nearest"`` mode picks source index ``floor(i * in / out)`` along each axis
independently, so resizing an (x, y, z) array gives the transpose of resizing the (z, y, x) array
SimpleITK hands the reference scripts: the same voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["parse_grid", "resize_nearest"]


def parse_grid(grid: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """A grid shape from a sequence or a ``"[160,160,80]"`` / ``"160,160,80"`` string; ``None`` stays ``None``.

    Raises:
        ValueError: when the grid is not 2 or 3 positive integers.
    """
    if grid is None:
        return None
    items = grid
    if isinstance(grid, str):
        items = [g.strip() for g in grid.strip().strip("[]()").split(",") if g.strip()]
    try:
        shape = tuple(int(g) for g in items)
        exact = all(float(g) == int(g) for g in items)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be 2 or 3 positive integers such as [160,160,80], got grid={grid!r}.") from None
    if not exact or len(shape) not in (2, 3) or any(g <= 0 for g in shape):
        raise ValueError(f"grid must be 2 or 3 positive integers such as [160,160,80], got grid={grid!r}.")
    return shape


def resize_nearest(labels: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """``labels`` (H, W[, D]) nearest-resized to ``grid`` exactly as the reference scripts do.

    ``torch.nn.functional.interpolate(float labels[None, None], size=grid, mode="nearest")``; an
    array already of shape ``grid`` is returned unchanged.

    Raises:
        ValueError: when ``grid`` does not have one entry per axis of ``labels``.
    """
    labels = np.asarray(labels)
    grid = tuple(int(g) for g in grid)
    if len(grid) != labels.ndim:
        raise ValueError(f"grid {grid} has {len(grid)} axes but the label map has shape {labels.shape}.")
    if labels.shape == grid:
        return labels
    x = torch.from_numpy(labels.astype(np.float32))[None, None]
    return F.interpolate(x, size=grid, mode="nearest")[0, 0].numpy().astype(labels.dtype)
