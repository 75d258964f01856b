"""Assigner: single and bulk assignment, boundaries, outside points, geofences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely.geometry import Polygon, box

from geo.assign import Assigner
from geo.coords import Crs, Location, wgs84_to_gcj02
from geo.districts import District
from geo.errors import CoordinateError, GeoError, GeometryError, OutsideCityError
from geo.grid import Grid

from .conftest import KNOWN_POINTS, SHARED_VERTEX


@pytest.mark.parametrize(("code", "point"), sorted(KNOWN_POINTS.items()))
def test_known_point_in_each_district(assigner: Assigner, code: str, point: tuple[float, float]) -> None:
    result = assigner.assign(*point)
    assert result.district.code == code
    assert result.grid_cell.startswith(code) and result.grid_cell in assigner.grid.cells


def test_shared_boundary_goes_to_lowest_code_in_both_paths(assigner: Assigner) -> None:
    assert assigner.assign(*SHARED_VERTEX).district.code == "350203"
    codes, cells, outside = assigner.assign_many([SHARED_VERTEX[0]], [SHARED_VERTEX[1]])
    assert codes.tolist() == ["350203"] and cells[0].startswith("350203") and not outside[0]


@pytest.mark.parametrize(
    ("lon", "lat", "nearest"),
    [
        (118.6, 24.9, "翔安区"),  # Quanzhou
        (118.15, 24.40, "思明区"),  # sea south of Xiamen Island
        (118.37, 24.45, "翔安区"),  # Kinmen (金门), not part of Xiamen
    ],
)
def test_outside_city_raises_with_location_and_nearest(
    assigner: Assigner, lon: float, lat: float, nearest: str
) -> None:
    with pytest.raises(OutsideCityError) as info:
        assigner.assign(lon, lat)
    message = str(info.value)
    assert f"lon={lon:.6f}, lat={lat:.6f}" in message
    assert f"nearest is {nearest}" in message and " km" in message


@pytest.mark.parametrize(("lon", "lat"), [(math.nan, 24.5), (118.1, math.inf), (200.0, 24.5)])
def test_invalid_coordinate(assigner: Assigner, lon: float, lat: float) -> None:
    with pytest.raises(CoordinateError):
        assigner.assign(lon, lat)


def test_assign_many_agrees_with_assign_on_random_sample(assigner: Assigner) -> None:
    rng = np.random.default_rng(20240501)
    lons = rng.uniform(117.85, 118.45, 3000)
    lats = rng.uniform(24.37, 24.92, 3000)
    codes, cells, outside = assigner.assign_many(lons, lats)
    assert 0 < outside.sum() < lons.size  # the sample covers both cases
    for i in range(lons.size):
        try:
            expected = assigner.assign(float(lons[i]), float(lats[i]))
        except OutsideCityError:
            assert outside[i] and codes[i] == "" and cells[i] == ""
        else:
            assert not outside[i]
            assert (codes[i], cells[i]) == (expected.district.code, expected.grid_cell)


def test_assign_many_flags_non_finite_and_handles_empty(assigner: Assigner) -> None:
    codes, cells, outside = assigner.assign_many([math.nan, 118.10, math.inf], [24.46, 24.46, 24.46])
    assert outside.tolist() == [True, False, True]
    assert codes.tolist() == ["", "350203", ""]
    assert [len(c) for c in cells.tolist()] == [0, 15, 0]
    empty = assigner.assign_many(np.array([]), np.array([]))
    assert empty.district_codes.size == empty.cell_codes.size == empty.outside.size == 0


def test_assign_many_rejects_mismatched_arrays(assigner: Assigner) -> None:
    with pytest.raises(CoordinateError, match="equal length"):
        assigner.assign_many([118.1, 118.2], [24.46])


def test_assign_location_converts_gcj02(assigner: Assigner) -> None:
    lon, lat = KNOWN_POINTS["350206"]
    glon, glat = wgs84_to_gcj02(lon, lat)
    assert assigner.assign_location(Location(glon, glat, Crs.GCJ02)) == assigner.assign(lon, lat)


class TestFences:
    def test_single_point_fences_sorted(self, assigner: Assigner) -> None:
        assert assigner.assign(118.10, 24.44).fences == ("island-south", "xmu")
        assert assigner.assign(118.13, 24.545).fences == ("airport",)
        assert assigner.assign(*KNOWN_POINTS["350212"]).fences == ()

    def test_fence_boundary_is_inside(self, assigner: Assigner) -> None:
        assert assigner.fences_of(118.09, 24.44) == ("island-south", "xmu")

    def test_fences_many_agrees_with_fences_of(self, assigner: Assigner) -> None:
        rng = np.random.default_rng(11)
        lons = np.append(rng.uniform(118.05, 118.22, 1500), math.nan)
        lats = np.append(rng.uniform(24.41, 24.58, 1500), 24.44)
        hits = assigner.fences_many(lons, lats)
        assert np.all(np.diff(hits.point_index) >= 0)
        got: dict[int, list[str]] = {}
        for i, fence_id in zip(hits.point_index.tolist(), hits.fence_ids.tolist(), strict=True):
            got.setdefault(i, []).append(fence_id)
        for i in range(lons.size - 1):
            assert tuple(got.get(i, [])) == assigner.fences_of(float(lons[i]), float(lats[i]))
        assert lons.size - 1 not in got
        assert 0 < len(got) < lons.size

    def test_points_outside_city_can_still_be_in_a_fence(self, districts: tuple[District, ...], grid: Grid) -> None:
        sea = Assigner(districts, grid, [("bay", box(118.13, 24.58, 118.19, 24.62))])
        hits = sea.fences_many([118.16], [24.60])
        assert hits.point_index.tolist() == [0] and hits.fence_ids.tolist() == ["bay"]
        assert sea.assign_many([118.16], [24.60]).outside.tolist() == [True]

    def test_no_fences(self, districts: tuple[District, ...], grid: Grid) -> None:
        bare = Assigner(districts, grid)
        assert bare.fence_ids == ()
        assert bare.assign(118.10, 24.44).fences == ()
        assert bare.fences_many([118.10], [24.44]).point_index.size == 0

    def test_bow_tie_fence_repaired(self, districts: tuple[District, ...], grid: Grid) -> None:
        bow_tie = Polygon([(118.09, 24.44), (118.11, 24.46), (118.11, 24.44), (118.09, 24.46)])
        fenced = Assigner(districts, grid, [("bow", bow_tie)])
        assert fenced.fences_of(118.095, 24.45) == ("bow",)  # in the left triangle
        assert fenced.fences_of(118.10, 24.4430) == ()  # below the crossing, between the triangles

    @pytest.mark.parametrize(
        ("fences", "error", "message"),
        [
            ([("a", box(0, 0, 1, 1)), ("a", box(0, 0, 1, 1))], ValueError, "duplicate fence id 'a'"),
            ([("", box(0, 0, 1, 1))], ValueError, "non-empty strings"),
            ([("line", Polygon([(0, 0), (1, 1), (2, 2)]))], GeometryError, "geofence 'line'"),
        ],
    )
    def test_bad_fences(
        self,
        districts: tuple[District, ...],
        grid: Grid,
        fences: list[tuple[str, Polygon]],
        error: type[Exception],
        message: str,
    ) -> None:
        with pytest.raises(error, match=message):
            Assigner(districts, grid, fences)


def test_grid_from_other_districts_rejected(districts: tuple[District, ...], grid: Grid) -> None:
    with pytest.raises(GeoError, match="different districts"):
        Assigner(districts[:3], grid)
