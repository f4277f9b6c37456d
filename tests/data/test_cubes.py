"""Tests for scdl_monai.data.cubes: MagicNet cube partition / recovery / location labels (docs/methods.md#magicnet)."""

from __future__ import annotations

import itertools

import pytest
import torch

from scdl_monai.data.cubes import (
    cross_image_partition,
    cross_image_permutations,
    cross_image_recovery,
    cube_coordinates,
    location_labels,
    partition_within_image,
    pseudo_label_cube_indices,
    reassemble_cubes,
    shuffle_cubes,
)


def _volumes(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _cube(volume, coords, sizes):
    """volume[..., cube at grid coords] for a (C, D0, D1, D2) volume."""
    (a, b, c), (s0, s1, s2) = coords, sizes
    return volume[:, a * s0 : (a + 1) * s0, b * s1 : (b + 1) * s1, c * s2 : (c + 1) * s2]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("shape, grid", [((4, 2, 6, 9, 12), 3), ((3, 1, 6, 4, 10), (3, 2, 5))])
def test_cross_image_partition_then_recovery_is_identity(seed, shape, grid):
    x = _volumes(shape, seed)
    perm = cross_image_permutations(shape[0], grid, generator=torch.Generator().manual_seed(seed))
    mixed = cross_image_partition(x, perm)
    assert mixed.shape == x.shape
    assert torch.equal(cross_image_recovery(mixed, perm), x)


def test_cross_image_partition_takes_each_cube_from_the_permuted_image():
    x = _volumes((4, 2, 6, 9, 12), seed=5)
    perm = cross_image_permutations(4, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(perm.sort(dim=0).values, torch.arange(4).view(4, 1, 1, 1).expand(4, 3, 3, 3))
    assert not (perm == torch.arange(4).view(4, 1, 1, 1)).all()  # something is actually mixed
    mixed = cross_image_partition(x, perm)
    sizes = (2, 3, 4)
    for j, coords in itertools.product(range(4), itertools.product(range(3), repeat=3)):
        source = int(perm[(j, *coords)])
        assert torch.equal(_cube(mixed[j], coords, sizes), _cube(x[source], coords, sizes))


def test_cross_image_recovery_undoes_mixing_of_a_voxelwise_network_with_other_channels():
    # a voxel-wise map (1x1x1 conv) commutes with cube mixing: recovery(f(mix(x))) == f(x)
    x = _volumes((4, 2, 6, 6, 6), seed=7)
    f = torch.nn.Conv3d(2, 5, kernel_size=1)
    perm = cross_image_permutations(4, 3, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        recovered = cross_image_recovery(f(cross_image_partition(x, perm)), perm)
        assert torch.allclose(recovered, f(x), atol=1e-6)


def test_cross_image_permutations_reproducible_with_seed():
    a = cross_image_permutations(4, 3, generator=torch.Generator().manual_seed(11))
    b = cross_image_permutations(4, 3, generator=torch.Generator().manual_seed(11))
    c = cross_image_permutations(4, 3, generator=torch.Generator().manual_seed(12))
    assert a.shape == (4, 3, 3, 3) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cross_image_errors():
    perm = cross_image_permutations(2, 3)
    with pytest.raises(ValueError, match="divisible by the cube grid"):
        cross_image_partition(torch.zeros(2, 1, 6, 6, 7), perm)
    with pytest.raises(ValueError, match=r"\(B, g0, g1, g2\)"):
        cross_image_partition(torch.zeros(4, 1, 6, 6, 6), perm)
    with pytest.raises(ValueError, match="grid"):
        cross_image_permutations(2, 0)
    with pytest.raises(ValueError, match="batch_size"):
        cross_image_permutations(0, 3)


def test_location_labels_are_x_plus_3y_plus_9z_of_the_cube_content():
    # voxel value = 100*x + 10*y + z of its cube, with x the FIRST spatial axis (MONAI order)
    volume = torch.zeros(1, 1, 6, 9, 12)
    for x, y, z in itertools.product(range(3), repeat=3):
        volume[0, 0, 2 * x : 2 * x + 2, 3 * y : 3 * y + 3, 4 * z : 4 * z + 4] = 100 * x + 10 * y + z
    cubes = partition_within_image(volume)
    labels = location_labels(3)
    assert cubes.shape == (1, 27, 1, 2, 3, 4)
    for k in range(27):
        code = int(cubes[0, k].unique().item())
        x, y, z = code // 100, (code // 10) % 10, code % 10
        assert int(labels[k]) == x + 3 * y + 9 * z
        assert tuple(cube_coordinates(3)[k].tolist()) == (x, y, z)


def test_location_labels_non_cubic_grid():
    labels = location_labels((3, 2, 2))
    coords = cube_coordinates((3, 2, 2))
    assert torch.equal(labels, coords[:, 0] + 3 * coords[:, 1] + 6 * coords[:, 2])
    assert sorted(labels.tolist()) == list(range(12))


@pytest.mark.parametrize("shape, grid", [((2, 3, 6, 9, 12), 3), ((2, 1, 6, 4, 10), (3, 2, 5)), ((1, 2, 8, 8, 8), 1)])
def test_within_image_partition_then_reassembly_is_identity(shape, grid):
    x = _volumes(shape, seed=3)
    cubes = partition_within_image(x, grid)
    assert torch.equal(reassemble_cubes(cubes, grid), x)


def test_reassembly_reference_bug_switch_transposes_first_and_last_grid_axes():
    x = _volumes((2, 1, 6, 6, 6), seed=4)
    cubes = partition_within_image(x)
    buggy = reassemble_cubes(cubes, 3, reproduce_grid_transpose_bug=True)

    # plain re-statement of the reference: cubes listed with the LAST axis fastest, then the list
    # element number x + 3y + 9z is written at grid position (x, y, z)
    listed = [_cube(x[0], (a, b, c), (2, 2, 2)) for a in range(3) for b in range(3) for c in range(3)]
    reference = torch.zeros_like(x[0])
    for a, b, c in itertools.product(range(3), repeat=3):
        reference[:, 2 * a : 2 * a + 2, 2 * b : 2 * b + 2, 2 * c : 2 * c + 2] = listed[a + 3 * b + 9 * c]
    assert torch.equal(buggy[0], reference)
    # i.e. position (x, y, z) holds the cube of (z, y, x); 9 diagonal cubes (x == z) stay in place
    for a, b, c in itertools.product(range(3), repeat=3):
        assert torch.equal(_cube(buggy[1], (a, b, c), (2, 2, 2)), _cube(x[1], (c, b, a), (2, 2, 2)))
    assert not torch.equal(buggy, x)


def test_shuffle_cubes_keeps_features_and_labels_paired():
    feats = torch.arange(27).float().view(27, 1).repeat(1, 4) * 10
    labels = location_labels(3)
    shuffled, shuffled_labels, perm = shuffle_cubes(feats, labels, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(perm, torch.arange(27))
    assert torch.equal(shuffled[:, 0], shuffled_labels.float() * 10)
    with pytest.raises(ValueError, match="dim 0"):
        shuffle_cubes(feats[:5], labels)


def test_within_image_errors():
    with pytest.raises(ValueError, match=r"\(B, C, D0, D1, D2\)"):
        partition_within_image(torch.zeros(1, 6, 6, 6))
    with pytest.raises(ValueError, match="divisible"):
        partition_within_image(torch.zeros(1, 1, 6, 6, 8))
    with pytest.raises(ValueError, match="G=27"):
        reassemble_cubes(torch.zeros(1, 26, 1, 2, 2, 2))


def test_pseudo_label_cube_indices_fix_and_bug_switch():
    assert pseudo_label_cube_indices(4, 2) == [2, 3]  # the unlabeled half (upstream fix)
    assert pseudo_label_cube_indices(4, 2, reproduce_index_bug=True) == [0, 1]  # GALoss/SCDL copies
    assert pseudo_label_cube_indices(5, 2) == [2, 3, 4]
    assert pseudo_label_cube_indices(5, 2, reproduce_index_bug=True) == [0, 1, 2]
    with pytest.raises(ValueError, match="labeled_bs"):
        pseudo_label_cube_indices(4, 4)
