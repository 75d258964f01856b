"""District data, validation, repair and point-in-district lookup."""

from __future__ import annotations

import json
import logging
import math
from importlib import resources

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon, box, mapping

from geo.districts import District, DistrictIndex, districts_from_geojson, load_districts, validate_geometry
from geo.errors import DistrictDataError, GeometryError, OutsideCityError

from .conftest import KNOWN_POINTS, SHARED_VERTEX

BOW_TIE = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])


def _feature(code: str, geometry: object, name_zh: str = "测试区", name_en: str = "Test") -> dict[str, object]:
    return {
        "type": "Feature",
        "properties": {"code": code, "name_zh": name_zh, "name_en": name_en},
        "geometry": geometry,
    }


def _collection(*features: dict[str, object]) -> dict[str, object]:
    return {"type": "FeatureCollection", "features": list(features)}


class TestDataFile:
    def test_metadata_states_source_precision_crs_and_legal_limits(self) -> None:
        text = resources.files("geo").joinpath("data", "xiamen_districts.geojson").read_text("utf-8")
        meta = json.loads(text)["metadata"]
        assert "not survey data" in meta["source"]
        assert "1-2 km" in meta["precision"]
        assert "EPSG:4326" in meta["crs"]
        assert "legal" in meta["legal_notice"]

    def test_six_districts_sorted_with_names(self, districts: tuple[District, ...]) -> None:
        assert [(d.code, d.name_zh) for d in districts] == [
            ("350203", "思明区"),
            ("350205", "海沧区"),
            ("350206", "湖里区"),
            ("350211", "集美区"),
            ("350212", "同安区"),
            ("350213", "翔安区"),
        ]
        assert all(d.name_en.endswith("District") for d in districts)

    def test_geometries_valid_simplified_and_within_city_extent(self, districts: tuple[District, ...]) -> None:
        for d in districts:
            assert d.geometry.is_valid
            for part in shapely.get_parts(d.geometry):
                if part.area > 1e-3:  # Gulangyu is a small extra ring
                    assert 10 <= len(part.exterior.coords) - 1 <= 40, d.code
        min_lon, min_lat, max_lon, max_lat = shapely.total_bounds([d.geometry for d in districts])
        assert 117.84 <= min_lon <= 117.88 and 118.42 <= max_lon <= 118.46
        assert 24.37 <= min_lat <= 24.44 and 24.89 <= max_lat <= 24.93

    def test_xiamen_island_holds_siming_south_of_huli(self, districts: tuple[District, ...]) -> None:
        by_code = {d.code: d.geometry for d in districts}
        island = shapely.union(by_code["350203"], by_code["350206"])
        assert box(118.05, 24.42, 118.21, 24.57).contains(island)
        assert by_code["350203"].centroid.y < by_code["350206"].centroid.y

    def test_land_neighbours_share_boundaries_without_gaps(self, districts: tuple[District, ...]) -> None:
        by_code = {d.code: d.geometry for d in districts}
        for a, b in [("350203", "350206"), ("350205", "350211"), ("350211", "350212"), ("350212", "350213")]:
            shared = by_code[a].intersection(by_code[b])
            assert shared.area == 0.0
            assert shared.length > 0.1, (a, b)  # a real common edge, > ~10 km

    def test_areas_are_plausible(self, districts: tuple[District, ...]) -> None:
        # Official land areas (km²) are roughly 84/186/66/275/658/351; the
        # outlines are approximations, so allow a generous band.
        official = {"350203": 84, "350205": 186, "350206": 66, "350211": 275, "350212": 658, "350213": 351}
        for d in districts:
            km2 = d.geometry.area * 111.32**2 * math.cos(math.radians(d.geometry.centroid.y))
            assert 0.6 * official[d.code] < km2 < 1.35 * official[d.code], (d.code, km2)


class TestValidateGeometry:
    def test_valid_polygon_returned_unchanged(self) -> None:
        square = box(0, 0, 1, 1)
        assert validate_geometry(square, label="square") is square

    def test_bow_tie_is_repaired_into_two_triangles(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING, logger="geo.districts"):
            fixed = validate_geometry(BOW_TIE, label="fence x")
        assert isinstance(fixed, MultiPolygon)
        assert fixed.is_valid
        assert len(fixed.geoms) == 2
        assert fixed.area == pytest.approx(2.0)
        assert "fence x: repaired invalid polygon (Self-intersection" in caplog.text

    def test_bow_tie_rejected_when_repair_disabled(self) -> None:
        with pytest.raises(GeometryError, match=r"fence x: invalid polygon \(Self-intersection.*repair is disabled"):
            validate_geometry(BOW_TIE, label="fence x", repair=False)

    def test_collapsed_polygon_cannot_be_repaired(self) -> None:
        flat = Polygon([(0, 0), (1, 1), (2, 2), (0, 0)])
        with pytest.raises(GeometryError, match="make_valid left no area"):
            validate_geometry(flat, label="flat")

    @pytest.mark.parametrize(
        ("geometry", "message"),
        [
            (Point(0, 0), "expected a Polygon or MultiPolygon, got Point"),
            (Polygon(), "geometry is empty"),
        ],
    )
    def test_rejects_non_polygons(self, geometry: Polygon, message: str) -> None:
        with pytest.raises(GeometryError, match=message):
            validate_geometry(geometry, label="g")

    def test_rejects_non_finite_coordinates(self) -> None:
        with np.errstate(invalid="ignore"):  # shapely warns while building it
            polygon = Polygon([(0, 0), (1, math.nan), (1, 1)])
        with pytest.raises(GeometryError, match="non-finite"):
            validate_geometry(polygon, label="g")


class TestDistrictsFromGeojson:
    def test_bow_tie_district_is_repaired(self) -> None:
        (district,) = districts_from_geojson(_collection(_feature("350299", mapping(BOW_TIE))))
        assert district.geometry.is_valid and district.geometry.area == pytest.approx(2.0)

    def test_bow_tie_district_rejected_without_repair(self) -> None:
        with pytest.raises(GeometryError, match=r"district 350299 \(测试区\): invalid polygon"):
            districts_from_geojson(_collection(_feature("350299", mapping(BOW_TIE))), repair=False)

    def test_overlapping_districts_rejected(self) -> None:
        data = _collection(_feature("350201", mapping(box(0, 0, 2, 2))), _feature("350202", mapping(box(1, 1, 3, 3))))
        with pytest.raises(DistrictDataError, match="350201 and 350202 overlap"):
            districts_from_geojson(data)

    def test_touching_districts_accepted(self) -> None:
        data = _collection(_feature("350202", mapping(box(1, 0, 2, 1))), _feature("350201", mapping(box(0, 0, 1, 1))))
        assert [d.code for d in districts_from_geojson(data)] == ["350201", "350202"]

    @pytest.mark.parametrize(
        ("data", "error", "message"),
        [
            ({"type": "Feature"}, DistrictDataError, "FeatureCollection"),
            (_collection({"type": "Feature", "geometry": None}), DistrictDataError, "missing properties"),
            (_collection(_feature("350201", None, name_en="")), DistrictDataError, r"\['name_en'\]"),
            (_collection(_feature("3502", mapping(box(0, 0, 1, 1)))), DistrictDataError, "6 digits"),
            (_collection(_feature("350201", None)), GeometryError, "unreadable geometry"),
            (
                _collection(_feature("350201", {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]})),
                GeometryError,
                "unreadable geometry",
            ),
            (
                _collection(_feature("350201", mapping(Point(0, 0)))),
                GeometryError,
                "expected a Polygon or MultiPolygon",
            ),
            (
                _collection(_feature("350201", mapping(box(0, 0, 1, 1))), _feature("350201", mapping(box(2, 2, 3, 3)))),
                DistrictDataError,
                "duplicate district code",
            ),
        ],
    )
    def test_malformed_data_rejected_with_clear_message(
        self, data: dict[str, object], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=message):
            districts_from_geojson(data)

    def test_missing_resource(self) -> None:
        with pytest.raises(DistrictDataError, match=r"cannot read district data 'nope\.geojson'"):
            load_districts("nope.geojson")


class TestDistrictIndex:
    @pytest.mark.parametrize(("code", "point"), sorted(KNOWN_POINTS.items()))
    def test_known_point_in_each_district(
        self, districts: tuple[District, ...], code: str, point: tuple[float, float]
    ) -> None:
        located = DistrictIndex(districts).locate(*point)
        assert located is not None and located.code == code

    def test_shared_boundary_goes_to_lowest_code(self, districts: tuple[District, ...]) -> None:
        by_code = {d.code: d.geometry for d in districts}
        vertex = Point(*SHARED_VERTEX)
        assert by_code["350203"].boundary.intersects(vertex) and by_code["350206"].boundary.intersects(vertex)
        index = DistrictIndex(reversed(districts))  # input order must not matter
        located = index.locate(*SHARED_VERTEX)
        assert located is not None and located.code == "350203"
        assert index.locate_many([SHARED_VERTEX[0]], [SHARED_VERTEX[1]]).tolist() == [0]

    def test_outside_points(self, districts: tuple[District, ...]) -> None:
        index = DistrictIndex(districts)
        assert index.locate(118.6, 24.9) is None  # Quanzhou
        assert index.locate(118.15, 24.60) is None  # Tong'an Bay, open water
        assert index.locate_many([118.6, math.nan, 118.10], [24.9, 24.46, math.inf]).tolist() == [-1, -1, -1]

    def test_nearest_and_outside_error(self, districts: tuple[District, ...]) -> None:
        index = DistrictIndex(districts)
        district, metres = index.nearest(118.15, 24.40)  # sea south of Xiamen Island
        assert district.code == "350203"
        assert 2_500 < metres < 4_500  # coast at ~24.43N
        error = index.outside_error(118.6, 24.9)
        assert isinstance(error, OutsideCityError)
        assert "lon=118.600000, lat=24.900000" in str(error)
        assert "翔安区" in str(error) and "350213" in str(error) and " km" in str(error)

    def test_nearest_inside_is_zero(self, districts: tuple[District, ...]) -> None:
        district, metres = DistrictIndex(districts).nearest(*KNOWN_POINTS["350212"])
        assert district.code == "350212" and metres == 0.0

    def test_rejects_empty_and_duplicates(self, districts: tuple[District, ...]) -> None:
        with pytest.raises(DistrictDataError, match="at least one"):
            DistrictIndex([])
        with pytest.raises(DistrictDataError, match="duplicate"):
            DistrictIndex([districts[0], districts[0]])


def test_district_rejects_invalid_fields() -> None:
    with pytest.raises(GeometryError, match="valid Polygon"):
        District("350299", "测试区", "Test", BOW_TIE)
    with pytest.raises(DistrictDataError, match="name_zh and name_en"):
        District("350299", "", "Test", box(0, 0, 1, 1))
