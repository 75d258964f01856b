"""WGS84 ⇄ GCJ-02 conversion and a validated :class:`Location`.

Chinese map services (AutoNavi/Gaode, Tencent, Google Maps inside China) and
many domestic devices report GCJ-02 ("Mars") coordinates: WGS84 shifted by a
deliberate, smoothly varying offset of a few hundred metres. The platform
stores and assigns everything in WGS84, so GCJ-02 input is converted at the
boundary with the functions here.

Forward (WGS84 → GCJ-02) is the widely published public algorithm (the one in
eviltransform, coordtransform and many others): with ``x = lon - 105`` and
``y = lat - 35``, two trigonometric polynomials give an offset in pseudo-metres
that is turned into degrees on the Krasovsky 1940 ellipsoid
(``a = 6378245.0`` m, ``e² = 0.00669342162296594323``)::

    dlat = f_lat(x, y) * 180 / (a (1 - e²) / (1 - e² sin²φ)^1.5 * π)
    dlon = f_lon(x, y) * 180 / (a / (1 - e² sin²φ)^0.5 * cos φ * π)
    gcj  = wgs + (dlon, dlat)

Inverse (GCJ-02 → WGS84) has no closed form. The common one-step shortcut
``wgs ≈ gcj - offset(gcj)`` is off by up to ~2 m; here it is a fixed-point
iteration ``w ← w - (forward(w) - gcj)`` starting at ``w = gcj``. The offset's
derivative is ~1e-3 per degree, so each step shrinks the error ~1000×; the
loop stops once the residual is below :data:`INVERSION_TOLERANCE_DEG`
(1e-10°, ~0.01 mm), normally after 3-4 steps. Round trips are therefore exact
to well under 1e-7°.

Outside China no offset is applied, in either direction. "China" is the
public algorithm's bounding rectangle, lon 72.004-137.8347°E and lat
0.8293-55.8271°N (:func:`in_china`). The rectangle is coarse: it also covers
e.g. Seoul and Hanoi, which get shifted although no such offset exists there.
That is the published behaviour, kept so that results match other tools; the
platform only handles Xiamen, far from the edges.

All functions take Python floats (fast scalar path using :mod:`math`) or
array-likes (vectorised with numpy, any shape).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from geo.errors import CoordinateError

__all__ = [
    "CHINA_BBOX",
    "INVERSION_TOLERANCE_DEG",
    "KRASOVSKY_A",
    "KRASOVSKY_EE",
    "Crs",
    "Location",
    "gcj02_to_wgs84",
    "in_china",
    "wgs84_to_gcj02",
]

# Krasovsky 1940 ellipsoid, as used by the public GCJ-02 algorithm.
KRASOVSKY_A = 6378245.0
KRASOVSKY_EE = 0.00669342162296594323

# (min_lon, min_lat, max_lon, max_lat) of the public algorithm's "inside China" test.
CHINA_BBOX: tuple[float, float, float, float] = (72.004, 0.8293, 137.8347, 55.8271)

INVERSION_TOLERANCE_DEG = 1e-10
# Convergence needs 3-4 steps; the cap only matters at the rectangle's edge,
# where the offset switches on and off and the iteration may not settle.
_MAX_ITERATIONS = 20

FloatArray = NDArray[np.float64]


class Crs(enum.StrEnum):
    """Coordinate reference systems a location can be given in."""

    WGS84 = "WGS84"
    GCJ02 = "GCJ02"


def _offset(lon: Any, lat: Any, xp: ModuleType) -> tuple[Any, Any]:
    """GCJ-02 offset (dlon, dlat) in degrees at a WGS84 position.

    ``xp`` is :mod:`math` for scalars or :mod:`numpy` for arrays: both provide
    ``sin``, ``cos``, ``sqrt``, ``fabs`` and ``pi``, so the published formula is
    written once.
    """
    x = lon - 105.0
    y = lat - 35.0
    pi = xp.pi
    common = (20.0 * xp.sin(6.0 * x * pi) + 20.0 * xp.sin(2.0 * x * pi)) * 2.0 / 3.0
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * xp.sqrt(xp.fabs(x))
    dlat = dlat + common
    dlat = dlat + (20.0 * xp.sin(y * pi) + 40.0 * xp.sin(y / 3.0 * pi)) * 2.0 / 3.0
    dlat = dlat + (160.0 * xp.sin(y / 12.0 * pi) + 320.0 * xp.sin(y * pi / 30.0)) * 2.0 / 3.0
    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * xp.sqrt(xp.fabs(x))
    dlon = dlon + common
    dlon = dlon + (20.0 * xp.sin(x * pi) + 40.0 * xp.sin(x / 3.0 * pi)) * 2.0 / 3.0
    dlon = dlon + (150.0 * xp.sin(x / 12.0 * pi) + 300.0 * xp.sin(x / 30.0 * pi)) * 2.0 / 3.0

    rad_lat = lat / 180.0 * pi
    magic = 1.0 - KRASOVSKY_EE * xp.sin(rad_lat) ** 2
    sqrt_magic = xp.sqrt(magic)
    dlat = (dlat * 180.0) / ((KRASOVSKY_A * (1.0 - KRASOVSKY_EE)) / (magic * sqrt_magic) * pi)
    dlon = (dlon * 180.0) / (KRASOVSKY_A / sqrt_magic * xp.cos(rad_lat) * pi)
    return dlon, dlat


@overload
def in_china(lon: float, lat: float) -> bool: ...
@overload
def in_china(lon: ArrayLike, lat: ArrayLike) -> NDArray[np.bool_]: ...
def in_china(lon: ArrayLike, lat: ArrayLike) -> bool | NDArray[np.bool_]:
    """Whether the public GCJ-02 algorithm applies an offset at this position.

    Args:
        lon: Longitude(s) in degrees.
        lat: Latitude(s) in degrees.

    Returns:
        ``True`` inside :data:`CHINA_BBOX` (bounds included); a boolean array
        for array input. NaN is never inside.
    """
    min_lon, min_lat, max_lon, max_lat = CHINA_BBOX
    if isinstance(lon, int | float) and isinstance(lat, int | float):
        return min_lon <= lon <= max_lon and min_lat <= lat <= max_lat
    x_arr, y_arr = _as_arrays(lon, lat)
    return (x_arr >= min_lon) & (x_arr <= max_lon) & (y_arr >= min_lat) & (y_arr <= max_lat)


@overload
def wgs84_to_gcj02(lon: float, lat: float) -> tuple[float, float]: ...
@overload
def wgs84_to_gcj02(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]: ...
def wgs84_to_gcj02(lon: ArrayLike, lat: ArrayLike) -> tuple[float, float] | tuple[FloatArray, FloatArray]:
    """Convert WGS84 to GCJ-02.

    Args:
        lon: WGS84 longitude(s) in degrees.
        lat: WGS84 latitude(s) in degrees.

    Returns:
        ``(lon, lat)`` in GCJ-02: floats for scalar input, float64 arrays of the
        broadcast shape otherwise. Positions outside China (and NaN) are
        returned unchanged.
    """
    if isinstance(lon, int | float) and isinstance(lat, int | float):
        x, y = float(lon), float(lat)
        if not in_china(x, y):
            return x, y
        dlon, dlat = _offset(x, y, math)
        return x + dlon, y + dlat
    x_arr, y_arr = _as_arrays(lon, lat)
    return _forward_array(x_arr, y_arr)


@overload
def gcj02_to_wgs84(lon: float, lat: float) -> tuple[float, float]: ...
@overload
def gcj02_to_wgs84(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]: ...
def gcj02_to_wgs84(lon: ArrayLike, lat: ArrayLike) -> tuple[float, float] | tuple[FloatArray, FloatArray]:
    """Convert GCJ-02 to WGS84 by iterative inversion of :func:`wgs84_to_gcj02`.

    Args:
        lon: GCJ-02 longitude(s) in degrees.
        lat: GCJ-02 latitude(s) in degrees.

    Returns:
        ``(lon, lat)`` in WGS84, such that converting it forward again gives the
        input to within :data:`INVERSION_TOLERANCE_DEG`. Floats for scalar
        input, float64 arrays otherwise. Positions outside China (and NaN) are
        returned unchanged.
    """
    if isinstance(lon, int | float) and isinstance(lat, int | float):
        gx, gy = float(lon), float(lat)
        if not in_china(gx, gy):
            return gx, gy
        wx, wy = gx, gy
        for _ in range(_MAX_ITERATIONS):
            fx, fy = wgs84_to_gcj02(wx, wy)
            rx, ry = fx - gx, fy - gy
            wx, wy = wx - rx, wy - ry
            if abs(rx) < INVERSION_TOLERANCE_DEG and abs(ry) < INVERSION_TOLERANCE_DEG:
                break
        return wx, wy

    gx_arr, gy_arr = _as_arrays(lon, lat)
    shape = gx_arr.shape
    gx_flat, gy_flat = gx_arr.ravel(), gy_arr.ravel()
    wx, wy = gx_flat.copy(), gy_flat.copy()
    # Only positions still moving are recomputed, so a batch costs what its
    # slowest-converging members cost, not 20 full passes.
    active = np.flatnonzero(in_china(gx_flat, gy_flat))
    for _ in range(_MAX_ITERATIONS):
        if active.size == 0:
            break
        fx, fy = _forward_array(wx[active], wy[active])
        rx = fx - gx_flat[active]
        ry = fy - gy_flat[active]
        wx[active] -= rx
        wy[active] -= ry
        moving = (np.abs(rx) >= INVERSION_TOLERANCE_DEG) | (np.abs(ry) >= INVERSION_TOLERANCE_DEG)
        active = active[moving]
    return wx.reshape(shape), wy.reshape(shape)


def _forward_array(lon: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Vectorised forward transform; only in-China elements are touched.

    Computing the offset on the in-China subset only also keeps NaN/inf and
    polar latitudes away from the trigonometry, which would otherwise emit
    numpy RuntimeWarnings.
    """
    out_lon, out_lat = lon.copy(), lat.copy()
    inside = in_china(lon, lat)
    if inside.any():
        dlon, dlat = _offset(lon[inside], lat[inside], np)
        out_lon[inside] += dlon
        out_lat[inside] += dlat
    return out_lon, out_lat


def _as_arrays(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    x, y = np.broadcast_arrays(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
    return x, y


@dataclass(frozen=True, slots=True)
class Location:
    """A validated longitude/latitude pair with its coordinate system.

    Attributes:
        lon: Longitude in degrees, -180..180.
        lat: Latitude in degrees, -90..90.
        crs: The system the numbers are in; a :class:`Crs` or its string
            value (``"WGS84"``, ``"GCJ02"``).

    Raises:
        CoordinateError: On a non-numeric, non-finite or out-of-range
            coordinate, or an unknown CRS.
    """

    lon: float
    lat: float
    crs: Crs = Crs.WGS84

    def __post_init__(self) -> None:
        lon = _checked("lon", self.lon, 180.0)
        lat = _checked("lat", self.lat, 90.0)
        try:
            crs = Crs(self.crs)
        except ValueError as exc:
            raise CoordinateError(f"unknown crs {self.crs!r}; expected one of {[c.value for c in Crs]}") from exc
        # Frozen dataclass: normalise (int → float, str → Crs) via object.__setattr__.
        object.__setattr__(self, "lon", lon)
        object.__setattr__(self, "lat", lat)
        object.__setattr__(self, "crs", crs)

    def to_wgs84(self) -> Location:
        """This location in WGS84 (itself if already WGS84)."""
        if self.crs is Crs.WGS84:
            return self
        lon, lat = gcj02_to_wgs84(self.lon, self.lat)
        return Location(lon, lat, Crs.WGS84)

    def to_gcj02(self) -> Location:
        """This location in GCJ-02 (itself if already GCJ-02)."""
        if self.crs is Crs.GCJ02:
            return self
        lon, lat = wgs84_to_gcj02(self.lon, self.lat)
        return Location(lon, lat, Crs.GCJ02)


def _checked(name: str, value: object, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise CoordinateError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise CoordinateError(f"{name} must be finite, got {number!r}")
    if not -limit <= number <= limit:
        raise CoordinateError(f"{name} must be within ±{limit:g}°, got {number!r}")
    return number
