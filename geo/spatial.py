"""Pure, vectorised spatial helpers on WGS84 lon/lat points.

Nothing here keeps state or does I/O: point sets are plain numpy arrays of
longitudes and latitudes (degrees, WGS84), results are masks or index arrays.
Distances are great-circle distances on a sphere of the IUGG mean Earth
radius, which is within 0.5 % of the ellipsoidal distance and far better than
the district outlines' own precision.

This module imports only :mod:`geo.errors` from the package, so every other
module may use it. GeoJSON writers are in :mod:`geo.geojson`, coarsening to a
grid cell in :mod:`geo.grid`.
"""

from __future__ import annotations

from collections.abc import Set
from typing import overload

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry.base import BaseGeometry

from geo.errors import CoordinateError

__all__ = [
    "EARTH_RADIUS_M",
    "geofence_transitions",
    "haversine_m",
    "k_nearest",
    "points_in_bbox",
    "points_in_polygon",
    "query_points",
]

# IUGG mean Earth radius (R1), metres.
EARTH_RADIUS_M = 6_371_008.8

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


def as_lonlat_arrays(lons: ArrayLike, lats: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Coerce two array-likes to 1-D float64 arrays of equal length.

    Raises:
        CoordinateError: If they are not 1-D or differ in length.
    """
    x = np.asarray(lons, dtype=np.float64)
    y = np.asarray(lats, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise CoordinateError(f"lons and lats must be 1-D arrays of equal length, got shapes {x.shape} and {y.shape}")
    return x, y


# Points per bulk STRtree query: bounds the memory held in shapely Point
# objects (~200 B each), and measured ~25 % faster than one huge query.
_QUERY_CHUNK = 65_536


def query_points(
    tree: shapely.STRtree, lons: ArrayLike, lats: ArrayLike, predicate: str = "intersects"
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Bulk ``STRtree.query`` of many points, in chunks.

    Args:
        tree: A tree over any geometries.
        lons: 1-D longitudes.
        lats: 1-D latitudes, same length.
        predicate: Shapely predicate, evaluated as ``predicate(point, tree geometry)``.

    Returns:
        ``(point_index, tree_index)`` pairs, by ascending point index. Points
        with NaN or infinite coordinates match nothing.
    """
    x, y = as_lonlat_arrays(lons, lats)
    finite = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    point_parts: list[NDArray[np.intp]] = [np.empty(0, dtype=np.intp)]
    tree_parts: list[NDArray[np.intp]] = [np.empty(0, dtype=np.intp)]
    for start in range(0, finite.size, _QUERY_CHUNK):
        rows = finite[start : start + _QUERY_CHUNK]
        point_idx, tree_idx = tree.query(shapely.points(x[rows], y[rows]), predicate=predicate)
        point_parts.append(rows[point_idx])
        tree_parts.append(tree_idx.astype(np.intp))
    return np.concatenate(point_parts), np.concatenate(tree_parts)


@overload
def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float: ...
@overload
def haversine_m(lon1: ArrayLike, lat1: ArrayLike, lon2: ArrayLike, lat2: ArrayLike) -> FloatArray: ...
def haversine_m(lon1: ArrayLike, lat1: ArrayLike, lon2: ArrayLike, lat2: ArrayLike) -> float | FloatArray:
    """Great-circle distance in metres (haversine formula, broadcasting).

    Args:
        lon1: Longitude(s) of the first point(s), degrees.
        lat1: Latitude(s) of the first point(s), degrees.
        lon2: Longitude(s) of the second point(s), degrees.
        lat2: Latitude(s) of the second point(s), degrees.

    Returns:
        A float when all four are scalars, else an array of the broadcast shape.
    """
    phi1 = np.radians(np.asarray(lat1, dtype=np.float64))
    phi2 = np.radians(np.asarray(lat2, dtype=np.float64))
    dphi = phi2 - phi1
    dlam = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    h = np.sin(dphi / 2.0) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlam / 2.0) ** 2
    # Clip: rounding can push h a hair above 1 for antipodal points.
    d = 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
    if d.ndim == 0:
        return float(d)
    return d


def points_in_bbox(lons: ArrayLike, lats: ArrayLike, bbox: tuple[float, float, float, float]) -> BoolArray:
    """Mask of points inside a lon/lat box, edges included.

    Args:
        lons: Point longitudes.
        lats: Point latitudes.
        bbox: ``(min_lon, min_lat, max_lon, max_lat)``; boxes crossing the
            antimeridian are not supported.

    Returns:
        Boolean mask, True where the point is inside. NaN is never inside.

    Raises:
        CoordinateError: If the box is inverted or the arrays mismatch.
    """
    min_lon, min_lat, max_lon, max_lat = bbox
    if not (min_lon <= max_lon and min_lat <= max_lat):
        raise CoordinateError(f"bbox must be (min_lon, min_lat, max_lon, max_lat), got {bbox}")
    x, y = as_lonlat_arrays(lons, lats)
    return (x >= min_lon) & (x <= max_lon) & (y >= min_lat) & (y <= max_lat)


def points_in_polygon(lons: ArrayLike, lats: ArrayLike, polygon: BaseGeometry) -> BoolArray:
    """Mask of points inside a (multi)polygon, boundary included.

    A cheap bbox test discards most points first, so only candidates pay for
    the exact point-in-polygon test.

    Args:
        lons: Point longitudes.
        lats: Point latitudes.
        polygon: Any shapely geometry in lon/lat; typically a Polygon.

    Returns:
        Boolean mask, True where the point intersects the geometry.
    """
    x, y = as_lonlat_arrays(lons, lats)
    min_lon, min_lat, max_lon, max_lat = polygon.bounds
    mask = points_in_bbox(x, y, (min_lon, min_lat, max_lon, max_lat))
    candidates = np.flatnonzero(mask)
    if candidates.size:
        mask[candidates] = shapely.intersects_xy(polygon, x[candidates], y[candidates])
    return mask


def k_nearest(lons: ArrayLike, lats: ArrayLike, lon: float, lat: float, k: int) -> tuple[NDArray[np.intp], FloatArray]:
    """The ``k`` points nearest to ``(lon, lat)`` by great-circle distance.

    Exact brute force with ``argpartition``: O(n) per query, ~30 ms for a
    million points, with no index to build or keep in sync.

    Args:
        lons: Candidate longitudes.
        lats: Candidate latitudes.
        lon: Query longitude.
        lat: Query latitude.
        k: How many neighbours; fewer are returned if there are fewer points.

    Returns:
        ``(indices, distances_m)``, nearest first; equal distances are ordered
        by index so the result is deterministic. Points with NaN coordinates
        are never returned.

    Raises:
        ValueError: If ``k`` is negative.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    x, y = as_lonlat_arrays(lons, lats)
    dist = haversine_m(x, y, lon, lat)
    valid = np.flatnonzero(~np.isnan(dist))
    dist_valid = dist[valid]
    k = min(k, valid.size)
    if k == 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float64)
    if k < valid.size:
        # Partition to the k-th distance, then keep everything up to it so
        # ties at the cut are resolved by index rather than by partition order.
        kth = np.partition(dist_valid, k - 1)[k - 1]
        keep = np.flatnonzero(dist_valid <= kth)
    else:
        keep = np.arange(valid.size)
    order = np.lexsort((valid[keep], dist_valid[keep]))[:k]
    chosen = keep[order]
    return valid[chosen].astype(np.intp), dist_valid[chosen]


def geofence_transitions(prev: Set[str], now: Set[str]) -> tuple[frozenset[str], frozenset[str]]:
    """Fences entered and left between two membership snapshots.

    Args:
        prev: Fence ids the object was in before.
        now: Fence ids it is in now.

    Returns:
        ``(entered, left)``.
    """
    return frozenset(now - prev), frozenset(prev - now)
