"""The demo's Xiamen: a located fleet of every device class, placed where such devices stand.

``citybrain demo`` (and ``citybrain simulate --size …``) runs this fleet. Every
device gets a seeded position inside its district's outline (``geo.districts``)
chosen by a rule of its class:

==================  ===========================================================
national air        hand-placed at (approximately) Xiamen's national stations
provincial air      anywhere in the district
micro air           half along a road (street-side units), half anywhere
water station       on a river polyline or at a reservoir / lake point
manhole cover       along a road, within ~20 m of its centre line
smart pole          along a road, within ~20 m of its centre line
pollution source    wastewater and flue-gas outlets at an industrial area
noise monitor       by GB 3096 zone class: 4a along a road, 3 in an industrial
                    area, 1 and 2 anywhere in the district
==================  ===========================================================

*Approximation*: the repository has no street or hydrography data, so each
district has a few hand-placed polylines for its main roads and rivers and a few
points for reservoirs, lakes and industrial areas (below), traced roughly from
public maps. Lines are clipped to the district outline and points outside it are
moved inside, so every device is in the district its code says. Replacing these
features by OpenStreetMap extracts changes :data:`FEATURES` only.

National and provincial stations carry ``assessment: true`` (the stations an
area's AQI is computed from, HJ 633) and their ``station_level``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import shapely
from shapely.geometry import LineString, Point
from shapely.ops import nearest_points

from devices.code import DeviceCode
from simulators.base import Drivers, Site
from simulators.city import CLASS_CODES, city_layout

__all__ = [
    "FEATURES",
    "FLEET_SIZES",
    "SEQUENCE_BASE",
    "DistrictFeatures",
    "FleetSize",
    "city_fleet",
    "demo_drivers",
    "road_lines",
    "water_features",
]

Lonlat = tuple[float, float]

#: First 流水号 of the demo fleet in each (district, class): clear of the demo's own
#: device (1), the city mix (500 000) and scenario-named sites (900 000).
SEQUENCE_BASE = 200_000
#: Largest distance (degrees, ~20 m) of a road-side device from the road's centre line.
ROAD_OFFSET_DEG = 0.0002
#: Jitter (degrees, ~60 m) of a device placed at a reservoir or industrial point.
POINT_JITTER_DEG = 0.0006


@dataclass(frozen=True, slots=True)
class DistrictFeatures:
    """Hand-placed features of one district (WGS84 lon/lat)."""

    roads: tuple[tuple[Lonlat, ...], ...]
    rivers: tuple[tuple[Lonlat, ...], ...] = ()
    lakes: tuple[Lonlat, ...] = ()
    industrial: tuple[Lonlat, ...] = ()
    national: tuple[Lonlat, ...] = ()


#: Roads, rivers, reservoirs and lakes, industrial areas and national air stations per district.
FEATURES: Mapping[str, DistrictFeatures] = {
    "350203": DistrictFeatures(  # 思明: 厦禾路, 环岛路, 湖滨南路-莲前路, 思明南北路, 嘉禾路
        roads=(
            ((118.085, 24.470), (118.110, 24.474), (118.135, 24.478)),
            ((118.100, 24.440), (118.130, 24.432), (118.165, 24.437), (118.190, 24.455)),
            ((118.095, 24.480), (118.130, 24.482), (118.160, 24.486), (118.190, 24.490)),
            ((118.090, 24.450), (118.095, 24.475), (118.105, 24.500)),
            ((118.120, 24.470), (118.125, 24.500)),
        ),
        lakes=((118.092, 24.484), (118.130, 24.466), (118.115, 24.471)),  # 筼筜湖, 上李水库, 东坪山水库
        national=((118.066, 24.449), (118.146, 24.489)),  # 鼓浪屿, 洪文
    ),
    "350205": DistrictFeatures(  # 海沧: 海沧大道, 马青路, 沧虹路, 新阳大道
        roads=(
            ((118.050, 24.480), (118.030, 24.470), (118.000, 24.460)),
            ((117.940, 24.550), (117.980, 24.530), (118.030, 24.520)),
            ((117.990, 24.460), (118.000, 24.500), (118.010, 24.550)),
            ((117.960, 24.540), (118.000, 24.560), (118.040, 24.570)),
        ),
        rivers=(((117.950, 24.560), (117.980, 24.530), (118.020, 24.500)),),  # 过芸溪
        lakes=((117.960, 24.500),),
        industrial=((117.985, 24.490), (118.020, 24.540)),
        national=((118.030, 24.482),),
    ),
    "350206": DistrictFeatures(  # 湖里: 成功大道, 仙岳路, 吕岭路, 机场路, 湖里大道
        roads=(
            ((118.125, 24.495), (118.128, 24.520), (118.130, 24.545)),
            ((118.090, 24.505), (118.130, 24.505), (118.180, 24.510)),
            ((118.100, 24.525), (118.150, 24.520), (118.190, 24.525)),
            ((118.120, 24.530), (118.150, 24.545), (118.180, 24.550)),
            ((118.090, 24.515), (118.120, 24.525)),
        ),
        lakes=((118.160, 24.510), (118.180, 24.520)),  # 湖边水库, 五缘湾
        industrial=((118.170, 24.515),),  # 火炬园
        national=((118.120, 24.515), (118.155, 24.527)),
    ),
    "350211": DistrictFeatures(  # 集美: 集美大道, 杏林路, 灌口-后溪, 孙坂路
        roads=(
            ((117.990, 24.600), (118.050, 24.610), (118.100, 24.600)),
            ((117.990, 24.580), (118.030, 24.585), (118.070, 24.590)),
            ((117.930, 24.620), (117.980, 24.640), (118.030, 24.660)),
            ((118.060, 24.620), (118.080, 24.660), (118.100, 24.700)),
        ),
        rivers=(((117.930, 24.660), (117.980, 24.630), (118.020, 24.610), (118.050, 24.600)),),  # 后溪
        lakes=((118.030, 24.670), (118.050, 24.590)),  # 坂头水库, 杏林湾
        industrial=((118.040, 24.580), (117.960, 24.630)),
        national=((118.100, 24.590),),
    ),
    "350212": DistrictFeatures(  # 同安: 环城路, 国道 324, 西柯, 莲花, 五显
        roads=(
            ((118.120, 24.720), (118.150, 24.740), (118.170, 24.730)),
            ((118.030, 24.660), (118.100, 24.700), (118.150, 24.720), (118.200, 24.730)),
            ((118.120, 24.660), (118.140, 24.700)),
            ((118.080, 24.780), (118.100, 24.820), (118.120, 24.860)),
            ((118.050, 24.700), (118.070, 24.750)),
        ),
        rivers=(
            ((118.180, 24.850), (118.160, 24.780), (118.150, 24.730)),  # 东溪
            ((118.050, 24.820), (118.100, 24.760), (118.140, 24.730)),  # 西溪
        ),
        lakes=((118.140, 24.800), (118.070, 24.790)),  # 汀溪水库, 莲花水库
        industrial=((118.140, 24.690),),
        national=((118.150, 24.725),),
    ),
    "350213": DistrictFeatures(  # 翔安: 翔安大道, 马巷, 新店, 内厝, 翔安南路
        roads=(
            ((118.220, 24.600), (118.260, 24.620), (118.300, 24.640), (118.330, 24.660)),
            ((118.230, 24.660), (118.250, 24.670), (118.280, 24.690)),
            ((118.260, 24.580), (118.280, 24.610), (118.300, 24.640)),
            ((118.300, 24.660), (118.330, 24.700), (118.360, 24.720)),
            ((118.210, 24.560), (118.240, 24.580)),
        ),
        rivers=(((118.280, 24.750), (118.260, 24.700), (118.250, 24.640)),),  # 九溪
        lakes=((118.290, 24.720),),  # 溪东水库
        industrial=((118.270, 24.600),),  # 火炬翔安产业区
        national=((118.250, 24.620),),
    ),
}


@dataclass(frozen=True, slots=True)
class FleetSize:
    """How many devices of each kind a demo fleet has (national stations: all of :data:`FEATURES`)."""

    provincial_per_district: int
    micro: int
    water: int
    noise: int
    covers: int
    poles: int
    #: Wastewater and flue-gas sources per industrial area (each district's ``industrial`` points).
    sources_per_area: int = 1


#: ``citybrain demo --size``: ``small`` for a laptop, ``city`` (default, > 2,000), ``large`` (~10,000).
FLEET_SIZES: Mapping[str, FleetSize] = {
    "small": FleetSize(provincial_per_district=1, micro=24, water=12, noise=12, covers=60, poles=30),
    "city": FleetSize(provincial_per_district=2, micro=300, water=48, noise=132, covers=1000, poles=600),
    "large": FleetSize(provincial_per_district=4, micro=1500, water=120, noise=600, covers=5000, poles=3000),
}

_NOISE_ZONES = (("1", 0.25), ("2", 0.35), ("3", 0.15), ("4a", 0.25))


def _district_lines(code: str, lines: Sequence[Sequence[Lonlat]]) -> list[Any]:
    geometry = city_layout().district(code).geometry
    out = []
    for line in lines:
        clipped = LineString(line).intersection(geometry)
        parts = getattr(clipped, "geoms", [clipped])
        out += [p for p in parts if isinstance(p, LineString) and p.length > 0]
    return out


def road_lines(code: str) -> list[Any]:
    """The district's roads, clipped to its outline (shapely LineStrings)."""
    return _district_lines(code, FEATURES[code].roads)


def water_features(code: str) -> tuple[list[Any], list[tuple[float, float]]]:
    """The district's rivers (clipped LineStrings) and reservoir/lake points (moved inside)."""
    rng = random.Random(f"lakes:{code}")
    f = FEATURES[code]
    return _district_lines(code, f.rivers), [_inside(code, p, rng) for p in f.lakes]


def _inside(code: str, point: Lonlat, rng: random.Random) -> tuple[float, float]:
    """``point`` if it is inside the district, else the nearest inside point (outlines are simplified)."""
    geometry = city_layout().district(code).geometry
    lon, lat = point
    if shapely.contains_xy(geometry, lon, lat):
        return lon, lat
    edge = nearest_points(geometry.boundary, Point(lon, lat))[0]
    inner = geometry.representative_point()
    for k in range(1, 50):
        f = 0.01 * k
        x, y = edge.x + (inner.x - edge.x) * f, edge.y + (inner.y - edge.y) * f
        if shapely.contains_xy(geometry, x, y):
            return round(x, 6), round(y, 6)
    return float(inner.x), float(inner.y)


def _near(code: str, centre: tuple[float, float], rng: random.Random, radius: float) -> tuple[float, float]:
    geometry = city_layout().district(code).geometry
    for _ in range(100):
        lon, lat = centre[0] + rng.uniform(-radius, radius), centre[1] + rng.uniform(-radius, radius)
        if shapely.contains_xy(geometry, lon, lat):
            return round(lon, 6), round(lat, 6)
    return centre


def _on_line(code: str, lines: list[Any], rng: random.Random, offset: float) -> tuple[float, float]:
    """A point at a random place along ``lines`` (length-weighted), up to ``offset`` off the line."""
    geometry = city_layout().district(code).geometry
    total = sum(line.length for line in lines)
    for _ in range(100):
        at = rng.uniform(0, total)
        for line in lines:
            if at <= line.length:
                break
            at -= line.length
        p = line.interpolate(at)
        lon, lat = p.x + rng.uniform(-offset, offset), p.y + rng.uniform(-offset, offset)
        if shapely.contains_xy(geometry, lon, lat):
            return round(lon, 6), round(lat, 6)
    p = lines[0].interpolate(0.5, normalized=True)
    return round(p.x, 6), round(p.y, 6)


def _anywhere(code: str, rng: random.Random) -> tuple[float, float]:
    geometry = city_layout().district(code).geometry
    west, south, east, north = geometry.bounds
    for _ in range(1000):
        lon, lat = rng.uniform(west, east), rng.uniform(south, north)
        if shapely.contains_xy(geometry, lon, lat):
            return round(lon, 6), round(lat, 6)
    p = geometry.representative_point()
    return float(p.x), float(p.y)


def city_fleet(size: str = "city", seed: int = 42) -> list[Site]:
    """The demo fleet of ``size`` (:data:`FLEET_SIZES`), placed by class (module docstring).

    The same ``(size, seed)`` gives the same fleet, so the platform can register it and a
    separate ``citybrain simulate`` process can run it. Each class is spread round-robin over
    the six districts; ``Site.tags`` names the placement (``road``, ``river``, ``lake``,
    ``industrial``, ``national``…) for tests and scenario selectors.

    Raises:
        KeyError: ``size`` is not one of :data:`FLEET_SIZES`.
    """
    spec = FLEET_SIZES[size]
    layout = city_layout()
    rng = random.Random(f"xiamen:{size}:{seed}")
    districts = sorted(FEATURES)
    roads = {d: road_lines(d) for d in districts}
    waters = {d: water_features(d) for d in districts}
    sequences: dict[tuple[str, str], int] = {}
    sites: list[Site] = []

    def add(model_id: str, district: str, where: tuple[float, float], attrs: dict[str, Any], tag: str) -> None:
        class_code = rng.choice(CLASS_CODES[model_id])
        seq = sequences.get((district, class_code), SEQUENCE_BASE)
        sequences[(district, class_code)] = seq + 1
        code = DeviceCode.build(district, class_code, seq).full
        lon, lat = where
        cell = layout.grid.code_in(district, lon, lat)
        tags = {tag}
        if cell in layout.low_lying:
            tags.add("low_lying")
        sites.append(Site(code, model_id, district, lon, lat, cell, attrs, frozenset(tags)))

    for d in districts:
        for point in FEATURES[d].national:
            attrs = {"station_level": "national", "assessment": True}
            add("air-station", d, _inside(d, point, rng), attrs, "national")
        for _ in range(spec.provincial_per_district):
            add("air-station", d, _anywhere(d, rng), {"station_level": "provincial", "assessment": True}, "provincial")

    def round_robin(n: int) -> list[str]:
        return [districts[i % len(districts)] for i in range(n)]

    for d in round_robin(spec.micro):
        if rng.random() < 0.5:
            add("air-micro", d, _on_line(d, roads[d], rng, ROAD_OFFSET_DEG), {}, "road")
        else:
            add("air-micro", d, _anywhere(d, rng), {}, "anywhere")
    for d in round_robin(spec.water):
        rivers, lakes = waters[d]
        if rivers and (not lakes or rng.random() < 0.6):
            attrs = {"waterbody": "river", "target_class": 3}
            add("water-station", d, _on_line(d, rivers, rng, ROAD_OFFSET_DEG), attrs, "river")
        else:
            attrs = {"waterbody": "lake", "target_class": 3}
            add("water-station", d, _near(d, rng.choice(lakes), rng, POINT_JITTER_DEG), attrs, "lake")
    for d in round_robin(spec.noise):
        zones = [z for z, _ in _NOISE_ZONES if z != "3" or FEATURES[d].industrial]
        weights = [w for z, w in _NOISE_ZONES if z in zones]
        zone = rng.choices(zones, weights)[0]
        if zone == "4a":
            where, tag = _on_line(d, roads[d], rng, ROAD_OFFSET_DEG), "road"
        elif zone == "3":
            where, tag = _near(d, rng.choice(FEATURES[d].industrial), rng, POINT_JITTER_DEG), "industrial"
        else:
            where, tag = _anywhere(d, rng), "anywhere"
        add("noise-monitor", d, where, {"zone": zone}, tag)
    for d in round_robin(spec.covers):
        attrs = {"depth_m": round(rng.uniform(2.0, 4.0), 2), "warning_level_m": 1.0, "danger_level_m": 1.5}
        add("manhole-cover", d, _on_line(d, roads[d], rng, ROAD_OFFSET_DEG), attrs, "road")
    for d in round_robin(spec.poles):
        add("smart-pole", d, _on_line(d, roads[d], rng, ROAD_OFFSET_DEG), {}, "road")
    for d in districts:
        for area in FEATURES[d].industrial:
            for model_id in ("wastewater-source", "fluegas-source"):
                for _ in range(spec.sources_per_area):
                    add(model_id, d, _near(d, area, rng, POINT_JITTER_DEG), {}, "industrial")
    return sites


def demo_drivers(sites: Sequence[Site], start: datetime, *, every: timedelta = timedelta(hours=4)) -> Drivers:
    """The demo's injected pollution episode: one national station's particulates × 4 for 30 min.

    It starts 10 minutes after ``start`` and repeats ``every``, so a newcomer sees a real
    alert within the first hour; everything else is normal traffic.
    """
    target = next((s.code for s in sites if "national" in s.tags), None)
    first = start + timedelta(minutes=10)

    def drivers(site: Site, t: datetime) -> Mapping[str, float]:
        if site.code != target or t < first:
            return {}
        into = (t - first) % every
        return {"pm_factor": 4.0} if into < timedelta(minutes=30) else {}

    return drivers
