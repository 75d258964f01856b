"""Pure spatial helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, Polygon, box

from geo import spatial
from geo.errors import CoordinateError
from geo.spatial import (
    EARTH_RADIUS_M,
    geofence_transitions,
    haversine_m,
    k_nearest,
    points_in_bbox,
    points_in_polygon,
)


@pytest.fixture
def cloud() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.uniform(117.9, 118.4, 5000), rng.uniform(24.4, 24.9, 5000)


class TestHaversine:
    def test_known_distances(self) -> None:
        assert haversine_m(118.0, 0.0, 119.0, 0.0) == pytest.approx(EARTH_RADIUS_M * math.pi / 180)
        assert haversine_m(118.1, 24.4, 118.1, 24.5) == pytest.approx(11_119.5, abs=1)
        assert haversine_m(118.1, 24.46, 118.1, 24.46) == 0.0
        assert haversine_m(0.0, 0.0, 180.0, 0.0) == pytest.approx(EARTH_RADIUS_M * math.pi)

    def test_broadcasts(self) -> None:
        d = haversine_m(np.array([118.0, 118.1]), np.array([24.5, 24.5]), 118.0, 24.5)
        assert isinstance(d, np.ndarray) and d[0] == 0.0 and d[1] == pytest.approx(10_118, abs=10)


class TestMasks:
    def test_bbox_edges_inclusive(self) -> None:
        lons = np.array([118.0, 118.1, 118.2, 118.05, math.nan])
        lats = np.array([24.4, 24.5, 24.5, 24.45, 24.45])
        assert points_in_bbox(lons, lats, (118.0, 24.4, 118.1, 24.5)).tolist() == [
            True,
            True,
            False,
            True,
            False,
        ]

    def test_bbox_matches_brute_force(self, cloud: tuple[np.ndarray, np.ndarray]) -> None:
        lons, lats = cloud
        mask = points_in_bbox(lons, lats, (118.0, 24.5, 118.2, 24.6))
        expected = [118.0 <= x <= 118.2 and 24.5 <= y <= 24.6 for x, y in zip(lons, lats, strict=True)]
        assert mask.tolist() == expected and 0 < mask.sum() < lons.size

    def test_inverted_bbox(self) -> None:
        with pytest.raises(CoordinateError, match="bbox"):
            points_in_bbox([118.0], [24.5], (118.2, 24.5, 118.0, 24.6))

    def test_polygon_matches_shapely(self, cloud: tuple[np.ndarray, np.ndarray]) -> None:
        lons, lats = cloud
        triangle = Polygon([(118.0, 24.5), (118.3, 24.55), (118.1, 24.8)])
        mask = points_in_polygon(lons, lats, triangle)
        expected = [triangle.intersects(Point(x, y)) for x, y in zip(lons, lats, strict=True)]
        assert mask.tolist() == expected and 0 < mask.sum() < lons.size

    def test_polygon_boundary_inclusive(self) -> None:
        assert points_in_polygon([118.0, 118.05], [24.5, 24.5], box(118.0, 24.5, 118.1, 24.6)).all()


class TestKNearest:
    @pytest.mark.parametrize("k", [0, 1, 5, 50])
    def test_matches_brute_force(self, cloud: tuple[np.ndarray, np.ndarray], k: int) -> None:
        lons, lats = cloud
        idx, dist = k_nearest(lons, lats, 118.10, 24.46, k)
        brute = sorted(
            (haversine_m(float(x), float(y), 118.10, 24.46), i) for i, (x, y) in enumerate(zip(lons, lats, strict=True))
        )[:k]
        assert idx.tolist() == [i for _, i in brute]
        assert dist.tolist() == pytest.approx([d for d, _ in brute])

    def test_ties_ordered_by_index_and_nan_skipped(self) -> None:
        lons = np.array([118.2, math.nan, 118.1, 118.1, 118.1])
        lats = np.array([24.5, 24.5, 24.5, 24.5, 24.5])
        idx, dist = k_nearest(lons, lats, 118.1, 24.5, 2)
        assert idx.tolist() == [2, 3] and dist.tolist() == [0.0, 0.0]
        idx, _ = k_nearest(lons, lats, 118.1, 24.5, 10)  # k larger than the set
        assert idx.tolist() == [2, 3, 4, 0]

    def test_negative_k(self) -> None:
        with pytest.raises(ValueError, match="k must be"):
            k_nearest([118.1], [24.5], 118.1, 24.5, -1)


def test_query_points_chunks_and_skips_non_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = shapely.STRtree([box(0, 0, 2, 2), box(1, 1, 3, 3)])
    lons = np.array([0.5, 1.5, math.nan, 2.5, 9.0, 1.0, 1.5, 0.1, 2.9, 1.2, 0.3])
    lats = np.array([0.5, 1.5, 1.0, 2.5, 9.0, 1.0, 0.5, 0.1, 2.9, 1.9, 0.3])
    whole = spatial.query_points(tree, lons, lats)
    monkeypatch.setattr(spatial, "_QUERY_CHUNK", 3)
    chunked = spatial.query_points(tree, lons, lats)
    assert [a.tolist() for a in chunked] == [a.tolist() for a in whole]
    pairs = sorted(zip(*(a.tolist() for a in chunked), strict=True))
    assert pairs == [(0, 0), (1, 0), (1, 1), (3, 1), (5, 0), (5, 1), (6, 0), (7, 0), (8, 1), (9, 0), (9, 1), (10, 0)]
    assert np.all(np.diff(chunked[0]) >= 0)


def test_geofence_transitions() -> None:
    entered, left = geofence_transitions({"a", "b"}, {"b", "c"})
    assert entered == frozenset({"c"}) and left == frozenset({"a"})
    assert geofence_transitions(set(), set()) == (frozenset(), frozenset())
