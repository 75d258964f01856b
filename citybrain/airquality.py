"""Area AQI: the one computation behind the vitals header, the map and ``/api/v1/geo/aqi``.

A district's (and the city's) AQI is computed by
:func:`alerts.indicators.aqi.area_aqi` from the mean concentrations of the
area's assessment stations (docs/standards.md §3.6): the stations
:func:`devices.models.is_assessment_station` accepts, with a snapshot fresher
than ``max_age_s``. Micro-stations are read too, but only counted; they are
shown as their own map layer and never set an area's AQI. Every caller builds
its figures from one :class:`AreaAqiReport`, so the header, the map and the API
cannot disagree for the same data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from alerts.errors import IndicatorError
from alerts.indicators.aqi import DEFAULT_VERSION, AqiResult, area_aqi
from devices.code import XIAMEN_DISTRICTS
from devices.errors import ModelError
from devices.models import DeviceModel, ModelRegistry, is_assessment_station
from geo.stats import AirStationValues, air_station_values

__all__ = ["CITY", "AreaAqi", "AreaAqiReport", "area_aqi_report", "build_report"]

CITY = "city"
"""The area key of the whole city (all six districts)."""


@dataclass(frozen=True, slots=True)
class AreaAqi:
    """One area's AQI and what it was computed from.

    Attributes:
        area: ``"city"`` or a district code.
        stations: Assessment stations whose values counted.
        micro_stations: Fresh air devices in the area that are not assessment
            stations (shown, never counted).
        result: The HJ 633 result on the stations' mean concentrations, or
            None when no assessment station had a value.
        means: Pollutant → mean concentration over the stations reporting it.
    """

    area: str
    stations: int = 0
    micro_stations: int = 0
    result: AqiResult | None = None
    means: Mapping[str, float] = field(default_factory=dict)

    @property
    def aqi(self) -> int | None:
        """The area AQI, or None without data."""
        return None if self.result is None else self.result.aqi

    def to_json(self) -> dict[str, Any]:
        """The API form: ``aqi``, ``aqi_level``, ``aqi_colour`` and the details."""
        r = self.result
        return {
            "area": self.area,
            "aqi": None if r is None else r.aqi,
            "aqi_level": None if r is None else r.level,
            "aqi_colour": None if r is None else r.colour_hex,
            "category_zh": None if r is None else r.category_zh,
            "category_en": None if r is None else r.category_en,
            "primary_pollutants": [] if r is None else list(r.primary_pollutants),
            "iaqi": {} if r is None else dict(r.iaqi_by_pollutant),
            "means": {k: round(v, 3) for k, v in self.means.items()},
            "stations": self.stations,
            "micro_stations": self.micro_stations,
        }


@dataclass(frozen=True, slots=True)
class AreaAqiReport:
    """The city's and every district's AQI at one moment."""

    as_of: datetime
    version: str
    city: AreaAqi
    districts: Mapping[str, AreaAqi]

    def area(self, code: str) -> AreaAqi:
        """A district's figures (empty for a district without stations), or the city's for ``"city"``."""
        if code == CITY:
            return self.city
        return self.districts.get(code, AreaAqi(code))


def _model(models: ModelRegistry, key: str) -> DeviceModel | None:
    try:
        return models.get(key)
    except ModelError:
        return None


def _area(area: str, stations: list[AirStationValues], models: ModelRegistry, version: str) -> AreaAqi:
    assessed = [s for s in stations if is_assessment_station(s.attributes, _model(models, s.model))]
    counted = [s for s in assessed if s.values]
    try:
        result = area_aqi([s.values for s in counted], version=version)
    except IndicatorError:
        result = None
    means: dict[str, float] = {}
    for pollutant in {p for s in counted for p in s.values}:
        vals = [s.values[pollutant] for s in counted if pollutant in s.values]
        means[pollutant] = sum(vals) / len(vals)
    return AreaAqi(
        area=area,
        stations=len(counted),
        micro_stations=len(stations) - len(assessed),
        result=result,
        means=dict(sorted(means.items())),
    )


def build_report(
    stations: list[AirStationValues], models: ModelRegistry, as_of: datetime, version: str = DEFAULT_VERSION
) -> AreaAqiReport:
    """Area AQIs from air devices' latest values (pure; :func:`area_aqi_report` reads them)."""
    in_city = [s for s in stations if s.district in XIAMEN_DISTRICTS]
    districts = {
        code: _area(code, [s for s in in_city if s.district == code], models, version) for code in XIAMEN_DISTRICTS
    }
    return AreaAqiReport(
        as_of=as_of,
        version=version,
        city=_area(CITY, in_city, models, version),
        districts=districts,
    )


async def area_aqi_report(
    conn: AsyncConnection[Any], models: ModelRegistry, *, max_age_s: float, version: str = DEFAULT_VERSION
) -> AreaAqiReport:
    """The area AQI report from the database now.

    Args:
        conn: An open connection.
        models: The model registry (for the ``assessment`` default).
        max_age_s: Stations whose snapshot is older do not count.
        version: AQI version (``HJ633-2026`` by default).
    """
    row = await (await conn.execute("select now()")).fetchone()
    assert row is not None
    stations = await air_station_values(conn, max_age_s=max_age_s)
    return build_report(stations, models, row[0], version)
