"""Area AQI (HJ 633 on the mean concentrations of an area's assessment stations), checked by hand.

The rule (docs/standards.md §3.6): per pollutant, the arithmetic mean over the area's
assessment stations that report it; IAQI by HJ 633 formula (1) on each mean, rounded up;
AQI = the largest IAQI. Not the highest station's AQI, not the mean of station AQIs.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from alerts.errors import IndicatorError
from alerts.indicators.aqi import area_aqi
from citybrain.airquality import CITY, build_report
from devices.models import is_assessment_station, shipped_models
from geo.stats import AirStationValues

# Two national stations of one district, HJ 633-2026 real-time report (1 h values).
STATION_A: dict[str, float] = {"pm25": 30, "pm10": 60, "no2": 30}
STATION_B: dict[str, float] = {"pm25": 60, "pm10": 80, "no2": 50}


def test_area_aqi_is_computed_on_the_mean_concentrations() -> None:
    """Worked by hand, HJ 633-2026 Table 1 (PM2.5 1 h: 0 35 60 115 …; PM10 1 h: 0 50 120 …; NO2 1 h: 0 100 200 …).

    Means: PM2.5 (30 + 60) / 2 = 45; PM10 (60 + 80) / 2 = 70; NO2 (30 + 50) / 2 = 40.

    * IAQI PM2.5 = (100 − 50) / (60 − 35) × (45 − 35) + 50 = 2 × 10 + 50 = 70
    * IAQI PM10  = (100 − 50) / (120 − 50) × (70 − 50) + 50 = 14.29 + 50 = 64.29 → 65 (rounded up)
    * IAQI NO2   = (50 − 0) / (100 − 0) × 40 = 20

    AQI = max = 70, level 2 (良), primary pollutant PM2.5. For comparison, the highest
    station (B: PM2.5 60 → IAQI 100) would say 100, and the mean of the stations' AQIs
    (A: PM2.5 30 → 50/35 × 30 = 42.86 → 43; B: 100) would say 71.5 → 72.
    """
    result = area_aqi([STATION_A, STATION_B])
    assert result is not None
    assert dict(result.iaqi_by_pollutant) == {"no2": 20, "pm10": 65, "pm25": 70}
    assert (result.aqi, result.level, result.category_zh) == (70, 2, "良")
    assert result.primary_pollutants == ("pm25",)


def test_a_station_without_a_pollutant_does_not_count_in_its_mean() -> None:
    """Station C reports only PM2.5 = 45: PM2.5 mean (30 + 60 + 45) / 3 = 45, PM10 mean still (60 + 80) / 2 = 70.

    So the IAQIs are those of the test above: PM2.5 70, PM10 65, NO2 20; AQI 70.
    """
    result = area_aqi([STATION_A, STATION_B, {"pm25": 45}])
    assert result is not None
    assert dict(result.iaqi_by_pollutant) == {"no2": 20, "pm10": 65, "pm25": 70}


def test_means_are_exact() -> None:
    """PM2.5 34.9 and 35.1: mean exactly 35, the IAQI-50 breakpoint, so AQI 50 (优, no primary pollutant), not 51."""
    result = area_aqi([{"pm25": 34.9}, {"pm25": 35.1}])
    assert result is not None
    assert (result.aqi, result.level, result.primary_pollutants) == (50, 1, ())


def test_no_station_gives_no_aqi_and_bad_values_are_refused() -> None:
    assert area_aqi([]) is None
    assert area_aqi([{}, {}]) is None
    with pytest.raises(IndicatorError):
        area_aqi([{"pm25": -1}])


def test_assessment_station_rule() -> None:
    models = shipped_models()
    station, micro = models.get("air-station"), models.get("air-micro")
    assert is_assessment_station({}, station)  # the model's default
    assert not is_assessment_station({}, micro)
    assert is_assessment_station({"station_level": "national"}, station)
    assert is_assessment_station({"station_level": "provincial"}, station)
    assert not is_assessment_station({"station_level": "municipal"}, station)
    assert not is_assessment_station({"assessment": False, "station_level": "national"}, station)  # explicit wins
    assert is_assessment_station({"assessment": "true"}, micro)
    assert not is_assessment_station({}, None)


def _dev(code: str, district: str, model: str, values: dict[str, float]) -> AirStationValues:
    return AirStationValues(code, district, model, {}, values, datetime(2026, 5, 1, tzinfo=UTC))


def test_district_and_city_report_leave_micro_stations_out() -> None:
    """Siming (350203): stations A and B above plus a micro-station at PM2.5 180; Huli (350206): station D.

    * Siming: the micro-station does not count: AQI 70 as above (the old "highest
      device" rule said 215: (300 − 200) / (250 − 150) × (180 − 150) + 200).
    * Huli, D alone (PM2.5 100, PM10 150, NO2 60): IAQI PM2.5 = 50 / 55 × (100 − 60) + 100
      = 136.36 → 137; PM10 = 50 / 130 × (150 − 120) + 100 = 111.54 → 112; NO2 30. AQI 137.
    * City, means over A, B and D: PM2.5 (30 + 60 + 100) / 3 = 63.33 → 50 / 55 × 3.33 + 100
      = 103.03 → 104; PM10 (60 + 80 + 150) / 3 = 96.67 → 50 / 70 × 46.67 + 50 = 83.33 → 84;
      NO2 (30 + 50 + 60) / 3 = 46.67 → 23.33 → 24. City AQI 104 (轻度污染), primary PM2.5.
    """
    stations = [
        _dev("A", "350203", "air-station@1", STATION_A),
        _dev("B", "350203", "air-station@1", STATION_B),
        _dev("M", "350203", "air-micro@1", {"pm25": 180, "pm10": 200}),
        _dev("D", "350206", "air-station@1", {"pm25": 100, "pm10": 150, "no2": 60}),
    ]
    report = build_report(stations, shipped_models(), datetime(2026, 5, 1, tzinfo=UTC))
    siming, huli = report.area("350203"), report.area("350206")
    assert (siming.aqi, siming.stations, siming.micro_stations) == (70, 2, 1)
    assert huli.aqi == 137
    assert huli.result is not None and dict(huli.result.iaqi_by_pollutant) == {"no2": 30, "pm10": 112, "pm25": 137}
    city = report.area(CITY)
    assert (city.aqi, city.stations, city.micro_stations) == (104, 3, 1)
    assert city.result is not None and city.result.category_zh == "轻度污染"
    assert dict(city.result.iaqi_by_pollutant) == {"no2": 24, "pm10": 84, "pm25": 104}
    assert report.area("350211").aqi is None  # no station in Jimei
