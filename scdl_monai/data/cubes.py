"""Magic-cube operations of MagicNet (Chen et al., CVPR'23) as pure tensor functions.

MagicNet (docs/methods.md#magicnet) splits each training patch into a ``g × g × g`` grid of cubes (g = 3:
a 96³ patch gives 27 cubes of 32³) and uses them three ways:

1. **Cross-image partition and recovery** — for every grid position an independent permutation of
   the batch decides which image contributes the cube (:func:`cross_image_permutations`,
   :func:`cross_image_partition`); after the forward pass the inverse permutations put every cube
   of the output back in its source image (:func:`cross_image_recovery`).
2. **Within-image partition and location reasoning** — each image's cubes form a batch
   (:func:`partition_within_image`) whose absolute grid index is the target of a location head
   (:func:`location_labels`, shuffled consistently by :func:`shuffle_cubes`); the cube-wise
   decoder outputs are put back into a full volume (:func:`reassemble_cubes`).
3. **Cube-wise pseudo-label blending** — :func:`pseudo_label_cube_indices` selects which
   samples' cube features feed the blend of :mod:`scdl_monai.weighting.frequency` (with a switch
   reproducing the index bug of the GALoss / SCDL copies).

Axis convention: volumes are (B, C, D0, D1, D2) — MONAI's channel-first array order, where
images loaded by MONAI (ITK / NiBabel readers) have (D0, D1, D2) = voxel axes (x, y, z). A grid
coordinate ``(i0, i1, i2)`` indexes the cube along (D0, D1, D2); the absolute location label is
``i0 + g0·i1 + g0·g1·i2`` — for MONAI-loaded volumes and g = 3 exactly the reference's
``x + 3y + 9z`` (``get_loc_mask`` in ``DeepMed-Lab-ECNU/MagicNet:code/utils/cube_utils.py``, whose
``x`` is also the first spatial axis ``w`` of ``(bs, c, w, h, d)``). ``grid`` may be an int or a
per-axis triple; each spatial size must be a multiple of its grid size.

Sources: ``DeepMed-Lab-ECNU/MagicNet:code/utils/cube_utils.py`` (``get_part_and_rec_ind``,
``get_loc_mask``, ``OrganClassLogger``), ``.../cube_losses.py`` (``get_patch_list``,
``unmix_tensor``, ``cube_location_loss``, ``get_mix_pl``), ``.../train_main_btcv.py`` (blending);
``cicailalala/GALoss:utils/cube_losses.py`` (the copy with the index bug).

Example:
    >>> x = torch.randn(4, 1, 6, 6, 6)
    >>> perm = cross_image_permutations(4, 3, generator=torch.Generator().manual_seed(0))
    >>> torch.equal(cross_image_recovery(cross_image_partition(x, perm), perm), x)
    True
    >>> cubes = partition_within_image(x)  # (4, 27, 1, 2, 2, 2), cube k has location label k
    >>> torch.equal(reassemble_cubes(cubes), x)
    True
"""


from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "cross_image_permutations",
    "inverse_permutations",
    "cross_image_partition",
    "cross_image_recovery",
    "cube_coordinates",
    "location_labels",
    "partition_within_image",
    "shuffle_cubes",
    "reassemble_cubes",
    "pseudo_label_cube_indices",
]


def _grid3(grid: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(grid, int) and not isinstance(grid, bool):
        values: tuple = (grid,) * 3
    else:
        try:
            values = tuple(grid)  # type: ignore[arg-type]
        except TypeError:
            values = ()
    if len(values) != 3 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in values):
        raise ValueError(f"grid must be a positive int or three positive ints, got {grid!r}.")
    return values  # type: ignore[return-value]


def _check_volume(volumes: torch.Tensor, grid: tuple[int, int, int], name: str) -> tuple[int, int, int]:
    """Validate (B, C, D0, D1, D2) with every spatial size a multiple of its grid size; return cube sizes."""
    if not isinstance(volumes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(volumes).__name__}.")
    if volumes.ndim != 5:
        raise ValueError(f"{name} must have shape (B, C, D0, D1, D2), got {tuple(volumes.shape)}.")
    spatial = tuple(volumes.shape[2:])
    if any(size % g for size, g in zip(spatial, grid)):
        raise ValueError(f"{name}: spatial size {spatial} must be divisible by the cube grid {grid}.")
    return tuple(size // g for size, g in zip(spatial, grid))  # type: ignore[return-value]


def _check_permutations(permutations: torch.Tensor, batch_size: int, grid: tuple[int, int, int]) -> None:
    if not isinstance(permutations, torch.Tensor) or permutations.dtype != torch.long:
        raise TypeError("permutations must be an int64 tensor from cross_image_permutations().")
    if tuple(permutations.shape) != (batch_size, *grid):
        raise ValueError(
            f"permutations must have shape (B, g0, g1, g2) = {(batch_size, *grid)}, got {tuple(permutations.shape)}."
        )


def cross_image_permutations(
    batch_size: int,
    grid: int | Sequence[int] = 3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw one batch permutation per grid position (MagicNet cross-image partition).

    Drawn, like the reference, as ``argsort`` over the batch axis of uniform noise; pass a seeded
    ``generator`` (CPU) for reproducibility. The result is moved to ``device``.

    Args:
        batch_size: B (all images of the batch, labeled and unlabeled, are mixed together).
        grid: cubes per axis (int or triple).
        generator: optional ``torch.Generator`` for the noise.
        device: where to put the result.

    Returns:
        int64 (B, g0, g1, g2); ``perm[:, a, b, c]`` is a permutation of ``range(B)`` and mixed image
        ``j`` takes its cube ``(a, b, c)`` from image ``perm[j, a, b, c]``.

    Raises:
        ValueError: ``batch_size`` < 1 or a bad ``grid``.
    """
    grid3 = _grid3(grid)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    noise = torch.rand((batch_size, *grid3), generator=generator)
    return torch.argsort(noise, dim=0).to(device)


def inverse_permutations(permutations: torch.Tensor) -> torch.Tensor:
    """Inverse of every per-position batch permutation (``argsort`` over the batch axis)."""
    return torch.argsort(permutations, dim=0)


def _gather_cubes(volumes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[j, :, cube p] = volumes[index[j, p], :, cube p] for the grid given by index.shape[1:]."""
    b, c, *spatial = volumes.shape
    g0, g1, g2 = index.shape[1:]
    s0, s1, s2 = spatial[0] // g0, spatial[1] // g1, spatial[2] // g2
    blocks = volumes.reshape(b, c, g0, s0, g1, s1, g2, s2)
    full_index = index.to(volumes.device).reshape(b, 1, g0, 1, g1, 1, g2, 1).expand_as(blocks)
    return torch.gather(blocks, 0, full_index).reshape(volumes.shape)


def cross_image_partition(volumes: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """Mix cubes across the batch: ``mixed[j]`` at cube p = ``volumes[perm_p(j)]`` at cube p.

    Args:
        volumes: (B, C, D0, D1, D2), each spatial size a multiple of the grid of ``permutations``.
        permutations: int64 (B, g0, g1, g2) from :func:`cross_image_permutations`.

    Returns:
        (B, C, D0, D1, D2) mixed volumes (differentiable w.r.t. ``volumes``).

    Raises:
        TypeError / ValueError: wrong types or shapes.
    """
    grid = tuple(permutations.shape[1:]) if isinstance(permutations, torch.Tensor) and permutations.ndim == 4 else (0,)
    if len(grid) != 3:
        raise ValueError(f"permutations must have shape (B, g0, g1, g2), got {getattr(permutations, 'shape', None)}.")
    _check_volume(volumes, grid, "volumes")  # type: ignore[arg-type]
    _check_permutations(permutations, volumes.shape[0], grid)  # type: ignore[arg-type]
    return _gather_cubes(volumes, permutations)


def cross_image_recovery(mixed: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`cross_image_partition` ("recovery"), for any channel count.

    Applied in MagicNet to the mixed batch's 16-channel last decoder feature before the output
    convolution, so that the result is aligned with the original (unmixed) images.

    Args:
        mixed: (B, C', D0, D1, D2) output computed from the mixed batch (same grid).
        permutations: the permutations used for the partition.

    Returns:
        (B, C', D0, D1, D2) with every cube back in its source image.
    """
    return cross_image_partition(mixed, inverse_permutations(permutations))


def cube_coordinates(grid: int | Sequence[int] = 3, device: torch.device | str | None = None) -> torch.Tensor:
    """Grid coordinates (i0, i1, i2) of the cubes in the order used by this module.

    Cube number ``k`` sits at ``i0 = k % g0``, ``i1 = (k // g0) % g1``, ``i2 = k // (g0·g1)``, i.e.
    cubes are numbered by their absolute location label (first axis fastest).

    Returns:
        int64 (G, 3) with G = g0·g1·g2.
    """
    g0, g1, g2 = _grid3(grid)
    k = torch.arange(g0 * g1 * g2, device=device)
    return torch.stack([k % g0, (k // g0) % g1, k // (g0 * g1)], dim=1)


def location_labels(grid: int | Sequence[int] = 3, device: torch.device | str | None = None) -> torch.Tensor:
    """Absolute location label ``i0 + g0·i1 + g0·g1·i2`` of every cube (``x + 3y + 9z`` for g = 3).

    Because :func:`partition_within_image` numbers cubes by this label, the result equals
    ``arange(G)``; it is computed from the coordinates so the definition stays explicit.

    Returns:
        int64 (G,), the 27-way (for g = 3) target of MagicNet's location head.
    """
    g0, g1, _ = _grid3(grid)
    coords = cube_coordinates(grid, device)
    return coords[:, 0] + g0 * coords[:, 1] + g0 * g1 * coords[:, 2]


def partition_within_image(volumes: torch.Tensor, grid: int | Sequence[int] = 3) -> torch.Tensor:
    """Split every volume into its grid of cubes (MagicNet within-image partition).

    Args:
        volumes: (B, C, D0, D1, D2), each spatial size a multiple of its grid size.
        grid: cubes per axis (int or triple).

    Returns:
        (B, G, C, D0/g0, D1/g1, D2/g2); cube ``k`` of a sample is the one at
        :func:`cube_coordinates` ``[k]`` and its location label is ``k``. ``out[i]`` is the batch
        of cubes of sample ``i`` fed to the encoder.

    Raises:
        TypeError / ValueError: wrong types, shapes or grid.
    """
    g0, g1, g2 = grid3 = _grid3(grid)
    s0, s1, s2 = _check_volume(volumes, grid3, "volumes")
    b, c = volumes.shape[:2]
    blocks = volumes.reshape(b, c, g0, s0, g1, s1, g2, s2)
    # order (B, g2, g1, g0, C, s0, s1, s2): flattening (g2, g1, g0) gives k = i0 + g0*i1 + g0*g1*i2
    return blocks.permute(0, 6, 4, 2, 1, 3, 5, 7).reshape(b, g0 * g1 * g2, c, s0, s1, s2)


def shuffle_cubes(
    items: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shuffle cube features and their location labels with one permutation along dim 0.

    MagicNet shuffles the 27 flattened cube features and labels consistently before the location
    head (``cube_location_loss``: ``feat_flatten[idx]``, ``loc_mask[idx]``). Note that this does
    not change the mean NLL, nor BatchNorm1d batch statistics; it is provided for fidelity.

    Args:
        items: (G, ...) e.g. flattened bottleneck features of one sample's cubes.
        labels: (G,) location labels.
        generator: optional ``torch.Generator`` (CPU) for the permutation.

    Returns:
        ``(items[perm], labels[perm], perm)``.

    Raises:
        ValueError: when the leading sizes differ.
    """
    if items.shape[0] != labels.shape[0]:
        raise ValueError(f"items and labels must share dim 0, got {tuple(items.shape)} and {tuple(labels.shape)}.")
    perm = torch.randperm(items.shape[0], generator=generator).to(items.device)
    return items[perm], labels[perm.to(labels.device)], perm


def _reference_unmix_source(grid: tuple[int, int, int]) -> torch.Tensor:
    """Cube number placed at each position by the reference ``unmix_tensor`` (see reassemble_cubes)."""
    g0, g1, g2 = grid
    q = torch.arange(g0 * g1 * g2)
    # reference list index q enumerates positions with the LAST axis fastest: q = a*g1*g2 + b*g2 + c
    a, b, c = q // (g1 * g2), (q // g2) % g1, q % g2
    return a + g0 * b + g0 * g1 * c  # the same cube in this module's numbering


def reassemble_cubes(
    cubes: torch.Tensor,
    grid: int | Sequence[int] = 3,
    reproduce_grid_transpose_bug: bool = False,
) -> torch.Tensor:
    """Put cube-wise outputs back into full volumes (inverse of :func:`partition_within_image`).

    **Reference bug (switch):** MagicNet's ``get_patch_list`` enumerates cubes with the last axis
    fastest (list index ``9x + 3y + z`` for g = 3), but ``unmix_tensor`` reads the list at
    ``x + 3y + 9z``. So the reference puts the cube decoded from grid position (z, y, x) at
    (x, y, z): 18 of the 27 cubes land transposed across the first and last axes (in MagicNet
    upstream and in the GALoss / SCDL copies alike), for the within-image Dice term and for the
    cube-wise pseudo-label. The location labels themselves are correct. Default: correct
    placement; ``reproduce_grid_transpose_bug=True`` reproduces the reference placement.

    Args:
        cubes: (B, G, C, s0, s1, s2) with cube ``k`` belonging to :func:`cube_coordinates` ``[k]``.
        grid: cubes per axis (int or triple); G must equal g0·g1·g2.
        reproduce_grid_transpose_bug: place cubes like the reference ``unmix_tensor``.

    Returns:
        (B, C, g0·s0, g1·s1, g2·s2).

    Raises:
        TypeError / ValueError: wrong types or shapes.
    """
    g0, g1, g2 = grid3 = _grid3(grid)
    if not isinstance(cubes, torch.Tensor):
        raise TypeError(f"cubes must be a torch.Tensor, got {type(cubes).__name__}.")
    if cubes.ndim != 6 or cubes.shape[1] != g0 * g1 * g2:
        raise ValueError(
            f"cubes must have shape (B, G={g0 * g1 * g2}, C, s0, s1, s2) for grid {grid3}, got {tuple(cubes.shape)}."
        )
    if not isinstance(reproduce_grid_transpose_bug, bool):
        raise TypeError(f"reproduce_grid_transpose_bug must be a bool, got {reproduce_grid_transpose_bug!r}.")
    if reproduce_grid_transpose_bug:
        cubes = cubes[:, _reference_unmix_source(grid3).to(cubes.device)]
    b, _, c, s0, s1, s2 = cubes.shape
    blocks = cubes.reshape(b, g2, g1, g0, c, s0, s1, s2).permute(0, 4, 3, 5, 2, 6, 1, 7)
    return blocks.reshape(b, c, g0 * s0, g1 * s1, g2 * s2)


def pseudo_label_cube_indices(batch_size: int, labeled_bs: int, reproduce_index_bug: bool = False) -> list[int]:
    """Batch indices whose within-image cube features build the cube-wise pseudo-label.

    The batch is ``[labeled | unlabeled]``; the pseudo-label is for the unlabeled half, so the
    correct indices are ``labeled_bs + i`` for ``i < batch_size − labeled_bs`` (default).

    **Known bug (switch):** the GALoss and SCDL copies of ``get_mix_pl`` use ``feat_list[i]``, i.e.
    the **labeled** samples' cubes (indices ``0 … unlabeled_bs−1``) for the unlabeled
    pseudo-labels; upstream MagicNet fixed it (2023-12-15) to ``feat_list[i + unlabeled_bs]``, which
    equals ``labeled_bs + i`` for the 2 + 2 batch. The published GA/SCDL MagicNet numbers were
    produced with the bug: ``reproduce_index_bug=True`` returns ``[0, …, unlabeled_bs−1]``.

    Raises:
        ValueError: ``labeled_bs`` not in [0, batch_size).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if isinstance(labeled_bs, bool) or not isinstance(labeled_bs, int) or not 0 <= labeled_bs < batch_size:
        raise ValueError(f"labeled_bs must be an int in [0, batch_size={batch_size}), got {labeled_bs!r}.")
    unlabeled_bs = batch_size - labeled_bs
    if reproduce_index_bug:
        return list(range(unlabeled_bs))
    return [labeled_bs + i for i in range(unlabeled_bs)]
