"""A whole city of virtual devices: placement in Xiamen's districts and grid, and model factories.

Devices are spread over the six districts, placed at a seeded random point
inside their district outline (``geo.districts``) and given the grid cell that
point falls in (``geo.grid``). Codes are real city device codes
(:meth:`devices.code.DeviceCode.build`), with sequences from ``sequence_base``
so that they never collide with the demo's registered stations (1, 2, …).

*Low-lying cells*: the repository has no elevation model, so the simulator uses
the coastline as a proxy — a cell piece that the sea clips (its land area is
under 85 % of a full cell) counts as low-lying. Xiamen's flood-prone areas
(reclaimed land along the bays) are indeed coastal; a DEM can replace the proxy
by changing :func:`low_lying_cells` only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import shapely

from devices.code import XIAMEN_DISTRICTS, DeviceCode
from geo.districts import District, load_districts
from geo.grid import Grid
from simulators.air import AirStation
from simulators.base import NO_DRIVERS, Drivers, Site, ValueModel
from simulators.manhole import ManholeCover
from simulators.noise import NoiseMonitor
from simulators.pole import SmartPole
from simulators.source import FluegasSource, WastewaterSource
from simulators.water import WaterStation

__all__ = [
    "CLASS_CODES",
    "MODEL_FACTORIES",
    "CityLayout",
    "build_sites",
    "city_layout",
    "low_lying_cells",
    "make_model",
]

#: Facility class (大类+小类) each model's devices are coded under (devices/data/classes.yaml).
CLASS_CODES: Mapping[str, tuple[str, ...]] = {
    "air-station": ("0308",),
    "air-micro": ("0308",),
    "water-station": ("0308",),
    "noise-monitor": ("0311",),
    "manhole-cover": ("0102", "0103"),  # sewage and storm-water covers: the ones that flood
    "smart-pole": ("0701",),
    "wastewater-source": ("0310",),
    "fluegas-source": ("0308",),
}
_LOW_LYING_FRACTION = 0.85
_ZONES = (("1", 0.3), ("2", 0.35), ("3", 0.1), ("4a", 0.25))

ModelFactory = Callable[[Site, int, Drivers], ValueModel]


def _air(site: Site, seed: int, drivers: Drivers) -> ValueModel:
    return AirStation(site.code, seed, micro=site.model_id == "air-micro", site=site, drivers=drivers)


#: Model id → constructor of its value model (an explicit registry, conventions §3).
MODEL_FACTORIES: Mapping[str, ModelFactory] = {
    "air-station": _air,
    "air-micro": _air,
    "water-station": lambda site, seed, d: WaterStation(site.code, seed, site=site, drivers=d),
    "noise-monitor": lambda site, seed, d: NoiseMonitor(site.code, seed, site=site, drivers=d),
    "manhole-cover": lambda site, seed, d: ManholeCover(site.code, seed, site=site, drivers=d),
    "smart-pole": lambda site, seed, d: SmartPole(site.code, seed, site=site, drivers=d),
    "wastewater-source": lambda site, seed, d: WastewaterSource(site.code, seed, site=site, drivers=d),
    "fluegas-source": lambda site, seed, d: FluegasSource(site.code, seed, site=site, drivers=d),
}


def make_model(site: Site, seed: int, drivers: Drivers = NO_DRIVERS) -> ValueModel:
    """The value model of a site's device model."""
    try:
        factory = MODEL_FACTORIES[site.model_id]
    except KeyError:
        raise ValueError(f"no value model for device model {site.model_id!r}") from None
    return factory(site, seed, drivers)


@dataclass(frozen=True, slots=True)
class CityLayout:
    """Districts, the grid and the low-lying cells, built once per process."""

    districts: tuple[District, ...]
    grid: Grid
    low_lying: frozenset[str]

    def district(self, code: str) -> District:
        """A district by GB/T 2260 code."""
        for d in self.districts:
            if d.code == code:
                return d
        raise KeyError(code)

    def centre(self, code: str) -> tuple[float, float]:
        """A representative point (lon, lat) inside a district."""
        point = self.district(code).geometry.representative_point()
        return float(point.x), float(point.y)


def low_lying_cells(grid: Grid) -> frozenset[str]:
    """Codes of cell pieces clipped by the sea (see the module docstring)."""
    full = grid.spec.cell_deg**2
    return frozenset(code for code, cell in grid.cells.items() if cell.polygon.area < _LOW_LYING_FRACTION * full)


@cache
def city_layout() -> CityLayout:
    """Xiamen's layout (loaded on first use, never at import)."""
    districts = load_districts()
    grid = Grid.build(districts)
    return CityLayout(districts, grid, low_lying_cells(grid))


def _attributes(model_id: str, rng: random.Random) -> dict[str, Any]:
    if model_id == "noise-monitor":
        zones = [z for z, _ in _ZONES]
        weights = [w for _, w in _ZONES]
        return {"zone": rng.choices(zones, weights)[0]}
    if model_id == "manhole-cover":
        return {"depth_m": round(rng.uniform(2.0, 4.0), 2), "warning_level_m": 1.0, "danger_level_m": 1.5}
    if model_id == "water-station":
        return {"waterbody": "river", "target_class": 3}
    return {}


def build_sites(
    counts: Mapping[str, int],
    seed: int,
    *,
    sequence_base: int = 500_000,
    districts: tuple[str, ...] | None = None,
    low_lying_share: float | None = None,
) -> list[Site]:
    """Place ``counts[model_id]`` devices of each model over the city.

    Args:
        counts: Model id → number of devices.
        seed: Placement seed (same seed, same city).
        sequence_base: First 流水号 used in each (district, class).
        districts: Restrict placement to these districts (default: all six).
        low_lying_share: For manhole covers, the share placed in low-lying cells
            (default: wherever they fall).

    Returns:
        The sites, in a stable order; ``tags`` has ``low_lying`` for sites in low-lying cells.
    """
    layout = city_layout()
    rng = random.Random(f"city:{seed}")
    names = districts or tuple(sorted(XIAMEN_DISTRICTS))
    low_by_district: dict[str, list[str]] = {}
    for code in sorted(layout.low_lying):
        low_by_district.setdefault(code[:6], []).append(code)
    sequences: dict[tuple[str, str], int] = {}
    sites: list[Site] = []
    for model_id in sorted(counts):
        for i in range(counts[model_id]):
            district = names[i % len(names)]
            geometry = layout.district(district).geometry
            want_low = model_id == "manhole-cover" and low_lying_share is not None and rng.random() < low_lying_share
            lon, lat = _point_in(geometry, rng, layout, low_by_district.get(district, []) if want_low else [])
            cell = layout.grid.code_in(district, lon, lat)
            class_code = rng.choice(CLASS_CODES[model_id])
            seq = sequences.get((district, class_code), sequence_base)
            sequences[(district, class_code)] = seq + 1
            code = DeviceCode.build(district, class_code, seq).full
            tags = frozenset({"low_lying"}) if cell in layout.low_lying else frozenset()
            sites.append(Site(code, model_id, district, lon, lat, cell, _attributes(model_id, rng), tags))
    return sites


def _point_in(geometry: Any, rng: random.Random, layout: CityLayout, cells: list[str]) -> tuple[float, float]:
    polygon = layout.grid.cell(rng.choice(cells)).polygon if cells else geometry
    west, south, east, north = polygon.bounds
    for _ in range(1000):
        lon, lat = rng.uniform(west, east), rng.uniform(south, north)
        if shapely.contains_xy(polygon, lon, lat):
            return round(lon, 6), round(lat, 6)
    point = polygon.representative_point()
    return float(point.x), float(point.y)
