"""The reference evaluation grid: nearest resizing as ``torch.nn.functional.interpolate`` does it."""

import numpy as np
import pytest

from scdl_monai.evaluation.grid import parse_grid, resize_nearest


def test_downsampling_picks_floor_of_i_times_in_over_out():
    labels = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    # rows: floor(0 * 2 / 1) = 0; columns: floor(j * 4 / 2) = 0, 2
    assert resize_nearest(labels, (1, 2)).tolist() == [[1, 3]]
    # 160x160x80-like ratios: 5 -> 2 picks floor(0 * 2.5) = 0 and floor(1 * 2.5) = 2
    assert resize_nearest(np.arange(5).reshape(1, 5), (1, 2)).tolist() == [[0, 2]]


def test_upsampling_repeats_voxels_and_keeps_dtype():
    labels = np.arange(8, dtype=np.int64).reshape(2, 2, 2)
    out = resize_nearest(labels, (4, 4, 4))
    assert out.dtype == np.int64 and out.shape == (4, 4, 4)
    assert out[1, 3, 2] == labels[0, 1, 1] and out[3, 0, 1] == labels[1, 0, 0]


def test_resizing_axes_independently_commutes_with_transposition():
    """(x, y, z) arrays resized give the transpose of the (z, y, x) arrays the reference resizes."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 14, size=(11, 7, 5))
    ours = resize_nearest(labels, (4, 6, 3))
    theirs = resize_nearest(labels.transpose(2, 1, 0), (3, 6, 4))
    np.testing.assert_array_equal(ours, theirs.transpose(2, 1, 0))


def test_same_shape_is_returned_unchanged_and_axes_must_match():
    labels = np.ones((3, 3, 3), np.int64)
    assert resize_nearest(labels, (3, 3, 3)) is labels
    with pytest.raises(ValueError, match="grid .* has 2 axes"):
        resize_nearest(labels, (3, 3))


def test_parse_grid():
    assert parse_grid("[160,160,80]") == (160, 160, 80)
    assert parse_grid("160, 160, 80") == (160, 160, 80)
    assert parse_grid([160, 160, 80]) == (160, 160, 80)
    assert parse_grid(None) is None
    for bad in ("[160,160]x", "[0,1,2]", "[1.5,2,3]", "[1,2,3,4]", "abc"):
        with pytest.raises(ValueError, match="grid must be"):
            parse_grid(bad)
