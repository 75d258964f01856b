"""GeoJSON FeatureCollections of districts, grid cells and points (RFC 7946), for maps.

Pure functions; geometries are written by GEOS (``shapely.to_geojson``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike
from shapely.geometry.base import BaseGeometry

from geo.districts import District
from geo.errors import CoordinateError
from geo.grid import GridCell
from geo.spatial import as_lonlat_arrays

__all__ = ["cells_feature_collection", "districts_feature_collection", "points_feature_collection"]


def _geometry_json(geometry: BaseGeometry) -> dict[str, Any]:
    # to_geojson is GEOS's writer: plain lists, no numpy scalars, RFC 7946 keys.
    result: dict[str, Any] = json.loads(shapely.to_geojson(geometry))
    return result


def _merge(base: dict[str, Any], extra: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if not extra:
        return base
    clash = base.keys() & extra.keys()
    if clash:
        raise ValueError(f"{what}: properties {sorted(clash)} are reserved")
    return {**base, **extra}


def districts_feature_collection(
    districts: Iterable[District], properties: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """GeoJSON FeatureCollection of districts, e.g. for a choropleth.

    Args:
        districts: The districts to include, in output order.
        properties: Extra properties per district code (e.g. ``{"350203":
            {"aqi": 42}}``), merged with ``code``, ``name_zh`` and ``name_en``.

    Returns:
        A JSON-serialisable dict.

    Raises:
        ValueError: If ``properties`` names a district not in ``districts`` (a
            typo would otherwise silently drop data) or reuses a reserved key.
    """
    districts = list(districts)
    extra = properties or {}
    unknown = set(extra) - {d.code for d in districts}
    if unknown:
        raise ValueError(f"properties given for unknown district codes {sorted(unknown)}")
    features = [
        {
            "type": "Feature",
            "id": d.code,
            "properties": _merge(
                {"code": d.code, "name_zh": d.name_zh, "name_en": d.name_en}, extra.get(d.code), d.code
            ),
            "geometry": _geometry_json(d.geometry),
        }
        for d in districts
    ]
    return {"type": "FeatureCollection", "features": features}


def cells_feature_collection(
    cells: Iterable[GridCell], properties: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """GeoJSON FeatureCollection of grid cells (clipped polygons).

    Args:
        cells: Cells to include, e.g. ``grid.cells.values()``.
        properties: Extra properties per cell code, merged with ``code`` and
            ``district_code``.

    Returns:
        A JSON-serialisable dict.
    """
    extra = properties or {}
    features = [
        {
            "type": "Feature",
            "id": c.code,
            "properties": _merge({"code": c.code, "district_code": c.district_code}, extra.get(c.code), c.code),
            "geometry": _geometry_json(c.polygon),
        }
        for c in cells
    ]
    return {"type": "FeatureCollection", "features": features}


def points_feature_collection(
    lons: ArrayLike,
    lats: ArrayLike,
    properties: Sequence[Mapping[str, Any]] | None = None,
    ids: Sequence[str | int] | None = None,
) -> dict[str, Any]:
    """GeoJSON FeatureCollection of points.

    Args:
        lons: Longitudes.
        lats: Latitudes.
        properties: One properties mapping per point, or ``None``.
        ids: One feature id per point, or ``None``.

    Returns:
        A JSON-serialisable dict.

    Raises:
        CoordinateError: On mismatched lengths or non-finite coordinates
            (GeoJSON has no NaN).
    """
    x, y = as_lonlat_arrays(lons, lats)
    for name, seq in (("properties", properties), ("ids", ids)):
        if seq is not None and len(seq) != x.size:
            raise CoordinateError(f"{name} has {len(seq)} entries for {x.size} points")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise CoordinateError("GeoJSON points need finite coordinates")
    features: list[dict[str, Any]] = []
    for i, (px, py) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
        feature: dict[str, Any] = {
            "type": "Feature",
            "properties": dict(properties[i]) if properties is not None else {},
            "geometry": {"type": "Point", "coordinates": [px, py]},
        }
        if ids is not None:
            feature["id"] = ids[i]
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}
