"""GeoJSON FeatureCollections of districts, cells and points."""

from __future__ import annotations

import json
import math

import pytest
import shapely

from geo.districts import District
from geo.errors import CoordinateError
from geo.geojson import cells_feature_collection, districts_feature_collection, points_feature_collection
from geo.grid import Grid


class TestFeatureCollections:
    def test_districts(self, districts: tuple[District, ...]) -> None:
        fc = districts_feature_collection(districts, {"350203": {"aqi": 42}})
        json.dumps(fc)  # serialisable as is
        assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 6
        siming = fc["features"][0]
        assert siming["id"] == "350203"
        assert siming["properties"] == {"code": "350203", "name_zh": "思明区", "name_en": "Siming District", "aqi": 42}
        assert siming["geometry"]["type"] == "MultiPolygon"
        assert shapely.geometry.shape(siming["geometry"]).equals(districts[0].geometry)

    def test_districts_reject_unknown_code_and_reserved_key(self, districts: tuple[District, ...]) -> None:
        with pytest.raises(ValueError, match="unknown district codes"):
            districts_feature_collection(districts, {"350299": {}})
        with pytest.raises(ValueError, match="reserved"):
            districts_feature_collection(districts, {"350203": {"code": "x"}})

    def test_points(self) -> None:
        fc = points_feature_collection([118.1, 118.2], [24.46, 24.5], [{"v": 1}, {"v": 2}], ids=["a", "b"])
        assert json.loads(json.dumps(fc)) == fc
        assert fc["features"][1] == {
            "type": "Feature",
            "id": "b",
            "properties": {"v": 2},
            "geometry": {"type": "Point", "coordinates": [118.2, 24.5]},
        }
        assert points_feature_collection([], [])["features"] == []

    def test_points_reject_bad_input(self) -> None:
        with pytest.raises(CoordinateError, match="properties has 1 entries for 2 points"):
            points_feature_collection([118.1, 118.2], [24.46, 24.5], [{}])
        with pytest.raises(CoordinateError, match="finite"):
            points_feature_collection([math.nan], [24.46])

    def test_cells(self, grid: Grid) -> None:
        cells = [c for c in grid.cells.values() if c.district_code == "350206"]
        fc = cells_feature_collection(cells, {cells[0].code: {"count": 3}})
        json.dumps(fc)
        assert len(fc["features"]) == len(cells)
        assert fc["features"][0]["properties"] == {
            "code": cells[0].code,
            "district_code": "350206",
            "count": 3,
        }
