"""The demo's located Xiamen fleet: ≥ 2,000 devices in all six districts, each placed by its class."""

from __future__ import annotations

from collections import Counter

import pytest
import shapely
from shapely.geometry import Point

from devices.code import XIAMEN_DISTRICTS, parse
from devices.importer import default_assigner
from devices.models import shipped_models
from simulators.base import Site
from simulators.city import MODEL_FACTORIES, city_layout
from simulators.xiamen import FEATURES, ROAD_OFFSET_DEG, city_fleet, road_lines, water_features

# Placement tolerances in degrees (1e-3 ≈ 100 m): a road-side device is within ~30 m of a road.
NEAR_ROAD = ROAD_OFFSET_DEG * 1.5
NEAR_LAKE = 0.0015


@pytest.fixture(scope="module")
def fleet() -> list[Site]:
    return city_fleet("city", seed=42)


def _dist_to_lines(site: Site, lines: list) -> float:
    return min(line.distance(Point(site.lon, site.lat)) for line in lines)


def test_the_city_fleet_has_2000_located_devices_in_all_six_districts(fleet: list[Site]) -> None:
    assert len(fleet) >= 2000
    assert len({s.code for s in fleet}) == len(fleet)
    by_district = Counter(s.district for s in fleet)
    assert set(by_district) == set(XIAMEN_DISTRICTS) == set(FEATURES)
    assert min(by_district.values()) >= 300
    # Every class the simulators have.
    assert {s.model_id for s in fleet} == set(MODEL_FACTORIES)
    layout = city_layout()
    for s in fleet:
        # The point is in the district its code says, and the code is a valid city code.
        assert parse(s.code).district == s.district
        assert shapely.contains_xy(layout.district(s.district).geometry, s.lon, s.lat), s


def test_the_ledgers_point_in_district_check_agrees(fleet: list[Site]) -> None:
    # The bulk import's assigner (devices.importer) puts every point in the code's district.
    assigner = default_assigner()
    for s in fleet[::7]:
        assert assigner.assign(s.lon, s.lat).district.code == s.district, s


def test_each_class_stands_where_such_devices_stand(fleet: list[Site]) -> None:
    roads = {d: road_lines(d) for d in FEATURES}
    waters = {d: water_features(d) for d in FEATURES}
    for s in fleet:
        if s.model_id in ("manhole-cover", "smart-pole"):
            assert _dist_to_lines(s, roads[s.district]) <= NEAR_ROAD, s
        elif s.model_id == "water-station":
            rivers, lakes = waters[s.district]
            if s.attributes["waterbody"] == "river":
                assert _dist_to_lines(s, rivers) <= NEAR_ROAD, s
            else:
                assert min(Point(s.lon, s.lat).distance(Point(p)) for p in lakes) <= NEAR_LAKE, s
        elif s.model_id == "noise-monitor":
            zone = s.attributes["zone"]
            if zone == "4a":  # GB 3096 4a: either side of a trunk road
                assert _dist_to_lines(s, roads[s.district]) <= NEAR_ROAD, s
            elif zone == "3":  # industrial
                assert "industrial" in s.tags and FEATURES[s.district].industrial, s
        elif s.model_id.endswith("-source"):
            areas = FEATURES[s.district].industrial
            assert min(Point(s.lon, s.lat).distance(Point(p)) for p in areas) <= NEAR_LAKE, s
        elif s.model_id == "air-station":
            assert s.attributes["assessment"] is True
            assert s.attributes["station_level"] in ("national", "provincial")
    national = [s for s in fleet if s.attributes.get("station_level") == "national"]
    assert len(national) == sum(len(f.national) for f in FEATURES.values())
    assert {s.district for s in national} == set(XIAMEN_DISTRICTS)
    assert Counter(s.model_id for s in fleet)["water-station"] >= 6 * 4
    assert {s.attributes["waterbody"] for s in fleet if s.model_id == "water-station"} == {"river", "lake"}


def test_the_fleet_passes_the_models_attribute_checks(fleet: list[Site]) -> None:
    models = shipped_models()
    for s in fleet:
        model = models.get(s.model_id)
        names = {a["name"] for a in model.attributes}
        assert set(s.attributes) <= names, (s.model_id, set(s.attributes) - names)


def test_sizes_and_seeds() -> None:
    small = city_fleet("small", seed=42)
    assert 100 <= len(small) < 2000
    assert {s.district for s in small} == set(XIAMEN_DISTRICTS)
    assert city_fleet("small", seed=42) == small  # same seed, same city
    assert city_fleet("small", seed=7) != small
    with pytest.raises(KeyError):
        city_fleet("village")
