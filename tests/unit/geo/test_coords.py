"""WGS84 ⇄ GCJ-02 conversion and Location."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.coords import CHINA_BBOX, Crs, Location, gcj02_to_wgs84, in_china, wgs84_to_gcj02
from geo.errors import CoordinateError
from geo.spatial import haversine_m

# (wgs lon, wgs lat, gcj lon, gcj lat): the reference vectors published with
# eviltransform (Shanghai, Shenzhen, Beijing) and reproduced by its ports.
REFERENCE = [
    (121.5272106, 31.1774276, 121.531541859215, 31.17530398364597),
    (113.912316, 22.543847, 113.9171764808363, 22.540796131694766),
    (116.377817, 39.911954, 116.38404722455657, 39.91334545536069),
]

# Mainland China's own extent, well inside the algorithm's rectangle.
CHINA_LON = (73.66, 135.05)
CHINA_LAT = (3.86, 53.55)


@pytest.mark.parametrize(("wlon", "wlat", "glon", "glat"), REFERENCE)
def test_reference_vectors(wlon: float, wlat: float, glon: float, glat: float) -> None:
    assert wgs84_to_gcj02(wlon, wlat) == pytest.approx((glon, glat), abs=1e-12)
    assert gcj02_to_wgs84(glon, glat) == pytest.approx((wlon, wlat), abs=1e-9)


def test_round_trip_across_xiamen_arrays() -> None:
    lons, lats = np.meshgrid(np.linspace(117.86, 118.44, 60), np.linspace(24.38, 24.91, 50))
    glon, glat = wgs84_to_gcj02(lons, lats)
    assert glon.shape == lons.shape
    back_lon, back_lat = gcj02_to_wgs84(glon, glat)
    assert np.abs(back_lon - lons).max() < 1e-7
    assert np.abs(back_lat - lats).max() < 1e-7
    # And the other way: WGS84 found from GCJ-02 maps forward onto it.
    wlon, wlat = gcj02_to_wgs84(lons, lats)
    fwd_lon, fwd_lat = wgs84_to_gcj02(wlon, wlat)
    assert np.abs(fwd_lon - lons).max() < 1e-9 and np.abs(fwd_lat - lats).max() < 1e-9


def test_xiamen_offset_is_a_few_hundred_metres() -> None:
    glon, glat = wgs84_to_gcj02(118.10, 24.46)
    assert 400 < haversine_m(118.10, 24.46, glon, glat) < 700
    assert glon > 118.10 and glat < 24.46  # shifted east and south in Xiamen


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(
    lon=st.floats(*CHINA_LON, allow_nan=False),
    lat=st.floats(*CHINA_LAT, allow_nan=False),
)
def test_round_trip_property_over_china(lon: float, lat: float) -> None:
    glon, glat = wgs84_to_gcj02(lon, lat)
    wlon, wlat = gcj02_to_wgs84(glon, glat)
    assert abs(wlon - lon) < 1e-7 and abs(wlat - lat) < 1e-7
    # The array path computes exactly what the scalar path does.
    alon, alat = gcj02_to_wgs84(np.array([glon]), np.array([glat]))
    assert (alon[0], alat[0]) == pytest.approx((wlon, wlat), abs=1e-12)


@pytest.mark.parametrize(
    ("lon", "lat"),
    [(-0.1276, 51.5072), (139.6917, 35.6895), (151.2093, -33.8688), (0.0, 0.0), (-180.0, 90.0)],
)
def test_no_offset_outside_china(lon: float, lat: float) -> None:
    assert not in_china(lon, lat)
    assert wgs84_to_gcj02(lon, lat) == (lon, lat)
    assert gcj02_to_wgs84(lon, lat) == (lon, lat)


def test_arrays_mix_inside_outside_and_nan_without_warnings() -> None:
    lons = np.array([118.1, -0.1276, math.nan, math.inf])
    lats = np.array([24.46, 51.5072, 24.46, 24.46])
    glon, glat = wgs84_to_gcj02(lons, lats)
    assert glon[0] != 118.1
    assert glon[1] == -0.1276 and glat[1] == 51.5072
    assert math.isnan(glon[2]) and glon[3] == math.inf
    wlon, _ = gcj02_to_wgs84(glon, glat)
    assert wlon[0] == pytest.approx(118.1, abs=1e-9) and math.isnan(wlon[2])


def test_in_china_bounds() -> None:
    min_lon, min_lat, max_lon, max_lat = CHINA_BBOX
    assert in_china(min_lon, min_lat) and in_china(max_lon, max_lat)
    assert not in_china(min_lon - 1e-9, 30.0)
    assert in_china(np.array([118.0, 140.0]), np.array([24.0, 24.0])).tolist() == [True, False]


class TestLocation:
    def test_gcj_location_converts_to_wgs84(self) -> None:
        glon, glat = wgs84_to_gcj02(118.10, 24.46)
        wgs = Location(glon, glat, Crs.GCJ02).to_wgs84()
        assert wgs.crs is Crs.WGS84
        assert (wgs.lon, wgs.lat) == pytest.approx((118.10, 24.46), abs=1e-9)
        assert wgs.to_gcj02().lon == pytest.approx(glon, abs=1e-12)

    def test_crs_given_as_string_is_coerced(self) -> None:
        # Records decoded from JSON carry the CRS as its string value.
        assert Location(118.0, 24.0, "GCJ02").crs is Crs.GCJ02  # type: ignore[arg-type]

    def test_same_crs_returns_itself(self) -> None:
        loc = Location(118, 24)
        assert loc.to_wgs84() is loc
        assert isinstance(loc.lon, float) and loc.crs is Crs.WGS84

    @pytest.mark.parametrize(
        ("lon", "lat", "crs", "message"),
        [
            (math.nan, 24.0, "WGS84", "lon must be finite"),
            (118.0, math.inf, "WGS84", "lat must be finite"),
            (181.0, 24.0, "WGS84", r"lon must be within ±180°"),
            (118.0, -90.5, "WGS84", r"lat must be within ±90°"),
            (True, 24.0, "WGS84", "lon must be a number, got bool"),
            ("118", 24.0, "WGS84", "lon must be a number, got str"),
            (118.0, 24.0, "BD09", "unknown crs 'BD09'"),
        ],
    )
    def test_rejects_bad_input(self, lon: object, lat: object, crs: str, message: str) -> None:
        with pytest.raises(CoordinateError, match=message):
            Location(lon, lat, crs)  # type: ignore[arg-type]

    def test_is_frozen(self) -> None:
        loc = Location(118.0, 24.0)
        with pytest.raises(AttributeError):
            loc.lon = 1.0  # type: ignore[misc]
