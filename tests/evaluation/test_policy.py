"""Tests of the single empty-class policy (docs/evaluation.md)."""

import math

import pytest

from scdl_monai.evaluation.policy import (
    REFERENCE_BOTH_EMPTY_DICE,
    REFERENCE_EMPTY_DISTANCE,
    ClassStatus,
    class_status,
    empty_class_values,
    resolve_distance_cap,
)


def test_class_status_covers_the_four_cases():
    assert class_status(True, True) is ClassStatus.PRESENT
    assert class_status(False, True) is ClassStatus.MISSED
    assert class_status(True, False) is ClassStatus.FALSE_POSITIVE
    assert class_status(False, False) is ClassStatus.BOTH_EMPTY


def test_diagonal_cap_is_field_of_view_diagonal_in_mm():
    # shape (10, 20, 5) with spacing (1, 0.5, 4) mm -> extents (10, 10, 20) mm.
    assert resolve_distance_cap("diagonal", (10, 20, 5), (1.0, 0.5, 4.0)) == pytest.approx(math.sqrt(600))
    assert resolve_distance_cap("diagonal", (3, 4), None) == pytest.approx(5.0)


def test_numeric_cap_and_errors():
    assert resolve_distance_cap(50, (4, 4, 4)) == 50.0
    assert resolve_distance_cap("12.5", (4, 4, 4)) == 12.5
    with pytest.raises(ValueError, match="distance_cap"):
        resolve_distance_cap("diag", (4, 4, 4))
    with pytest.raises(ValueError, match="distance_cap"):
        resolve_distance_cap(-1.0, (4, 4, 4))
    with pytest.raises(ValueError, match="spacing"):
        resolve_distance_cap("diagonal", (4, 4, 4), (1.0, 1.0))


def test_project_values():
    assert empty_class_values(ClassStatus.PRESENT, "project", 9.0) is None
    assert empty_class_values(ClassStatus.MISSED, "project", 9.0) == (0.0, 9.0, 9.0)
    assert empty_class_values(ClassStatus.FALSE_POSITIVE, "project", 9.0) == (0.0, 9.0, 9.0)
    assert all(math.isnan(v) for v in empty_class_values(ClassStatus.BOTH_EMPTY, "project", 9.0))


def test_reference_values_reproduce_upstream_including_the_scale_bug():
    assert REFERENCE_EMPTY_DISTANCE == 128.0 and REFERENCE_BOTH_EMPTY_DICE == 1.0
    assert empty_class_values(ClassStatus.MISSED, "reference", math.nan) == (0.0, 128.0, 128.0)
    assert empty_class_values(ClassStatus.FALSE_POSITIVE, "reference", math.nan) == (0.0, 128.0, 128.0)
    assert empty_class_values(ClassStatus.BOTH_EMPTY, "reference", math.nan) == (1.0, 0.0, 0.0)


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="mode='medpy'"):
        empty_class_values(ClassStatus.MISSED, "medpy", 1.0)


def test_each_reference_convention_reproduces_its_script():
    from scdl_monai.evaluation.policy import REFERENCE_CONVENTIONS, check_reference, reference_warning

    assert set(REFERENCE_CONVENTIONS) == {"dhc", "genericssl", "ga", "magicnet"}
    # GALoss: Dice is a fraction there, so both empty (1) is 100 %; 128 for one empty side
    assert empty_class_values(ClassStatus.BOTH_EMPTY, "reference", math.nan, "ga") == (100.0, 0.0, 0.0)
    assert empty_class_values(ClassStatus.MISSED, "reference", math.nan, "ga") == (0.0, 128.0, 128.0)
    # MagicNet cal_metric: any empty side -> every metric 0 (a miss lowers the mean ASD)
    for status in (ClassStatus.MISSED, ClassStatus.FALSE_POSITIVE, ClassStatus.BOTH_EMPTY):
        assert empty_class_values(status, "reference", math.nan, "magicnet") == (0.0, 0.0, 0.0)
    assert empty_class_values(ClassStatus.BOTH_EMPTY, "reference", math.nan, "genericssl") == (1.0, 0.0, 0.0)
    assert check_reference("ga").empty_prediction_zeroes_case and not check_reference("dhc").empty_prediction_zeroes_case
    assert "VOXELS" in reference_warning("ga") and "ga conventions" in reference_warning("ga")
    with pytest.raises(ValueError, match="reference must be one of"):
        empty_class_values(ClassStatus.MISSED, "reference", math.nan, "nnunet")
