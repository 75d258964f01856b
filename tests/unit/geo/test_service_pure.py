"""Pure helpers of the geo service: masking many points, sensitive codes, bbox parsing, AQI properties."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import HTTPException

from citybrain.routes.geo import aqi_properties, parse_bbox
from geo.grid import Grid, coarsen_to_cell
from geo.service import coarsen_many, is_sensitive_code


def test_coarsen_many_matches_scalar_and_never_raises(grid: Grid) -> None:
    lons = np.array([118.1012, 118.1234, 118.6, 200.0])  # in city, in city, sea east of frame, nonsense
    lats = np.array([24.4567, 24.5021, 24.4, 24.4])
    xs, ys = coarsen_many(grid, lons, lats)
    for i in range(2):
        assert (xs[i], ys[i]) == coarsen_to_cell(float(lons[i]), float(lats[i]), grid)
    assert (xs[2], ys[2]) == (118.6, 24.4)  # outside the frame: rounded to 0.01°
    assert np.isfinite(xs).all()


def test_coarsen_outside_district_inside_frame_uses_cell_centre(grid: Grid) -> None:
    xs, ys = coarsen_many(grid, np.array([118.3567]), np.array([24.3123]))  # open sea, inside the frame
    assert xs[0] == pytest.approx(118.355) and ys[0] == pytest.approx(24.315)


def test_sensitive_code_by_class_digits() -> None:
    sensitive = frozenset({"0111", "0105"})
    assert is_sensitive_code("35020301110000019", sensitive)
    assert not is_sensitive_code("35020301030000019", sensitive)


def test_parse_bbox() -> None:
    assert parse_bbox("118,24.4,118.2,24.6") == (118.0, 24.4, 118.2, 24.6)
    for bad in ("118,24", "a,b,c,d", "118.2,24.4,118,24.6", "nan,1,2,3"):
        with pytest.raises(HTTPException) as info:
            parse_bbox(bad)
        assert info.value.status_code == 422


def test_aqi_properties() -> None:
    assert aqi_properties(None) == {"aqi": None, "aqi_level": None, "aqi_colour": None}
    assert aqi_properties(42.0) == {"aqi": 42, "aqi_level": 1, "aqi_colour": "#00E400"}
    assert aqi_properties(160.2)["aqi_level"] == 4
