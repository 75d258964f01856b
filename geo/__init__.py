"""The pure spatial layer: districts, city grid, coordinates and assignment.

Everything is in WGS84 lon/lat (EPSG:4326) unless a :class:`Crs` says
otherwise. Typical use::

    from geo import Assigner, Grid, load_districts

    districts = load_districts()
    grid = Grid.build(districts, cell_deg=0.01)
    assigner = Assigner(districts, grid, fences=[("school-1", polygon)])
    assigner.assign(118.10, 24.46)  # Assignment(district=思明区, grid_cell=..., fences=())

Importing this package is cheap: the submodules (and numpy/shapely with them)
load on first use of a name below, and no data is read until
:func:`load_districts` is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from geo.errors import (
    CoordinateError,
    DistrictDataError,
    FenceExistsError,
    FenceNotFoundError,
    GeoError,
    GeometryError,
    GridError,
    OutsideCityError,
)

if TYPE_CHECKING:
    from geo.assign import Assigner, Assignment, BulkAssignment, FenceHits
    from geo.coords import Crs, Location, gcj02_to_wgs84, in_china, wgs84_to_gcj02
    from geo.districts import (
        District,
        DistrictIndex,
        districts_from_geojson,
        load_districts,
        validate_geometry,
    )
    from geo.geojson import cells_feature_collection, districts_feature_collection, points_feature_collection
    from geo.grid import Grid, GridCell, GridSpec, coarsen_to_cell
    from geo.spatial import (
        geofence_transitions,
        haversine_m,
        k_nearest,
        points_in_bbox,
        points_in_polygon,
        query_points,
    )

__all__ = [
    "Assigner",
    "Assignment",
    "BulkAssignment",
    "CoordinateError",
    "Crs",
    "District",
    "DistrictDataError",
    "DistrictIndex",
    "FenceExistsError",
    "FenceHits",
    "FenceNotFoundError",
    "GeoError",
    "GeometryError",
    "Grid",
    "GridCell",
    "GridError",
    "GridSpec",
    "Location",
    "OutsideCityError",
    "cells_feature_collection",
    "coarsen_to_cell",
    "districts_feature_collection",
    "districts_from_geojson",
    "gcj02_to_wgs84",
    "geofence_transitions",
    "haversine_m",
    "in_china",
    "k_nearest",
    "load_districts",
    "points_feature_collection",
    "points_in_bbox",
    "points_in_polygon",
    "query_points",
    "validate_geometry",
    "wgs84_to_gcj02",
]

# Where each lazily exported name lives.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("Assigner", "Assignment", "BulkAssignment", "FenceHits"), "geo.assign"),
    **dict.fromkeys(("Crs", "Location", "gcj02_to_wgs84", "in_china", "wgs84_to_gcj02"), "geo.coords"),
    **dict.fromkeys(
        ("District", "DistrictIndex", "districts_from_geojson", "load_districts", "validate_geometry"),
        "geo.districts",
    ),
    **dict.fromkeys(("Grid", "GridCell", "GridSpec", "coarsen_to_cell"), "geo.grid"),
    **dict.fromkeys(
        ("cells_feature_collection", "districts_feature_collection", "points_feature_collection"), "geo.geojson"
    ),
    **dict.fromkeys(
        (
            "geofence_transitions",
            "haversine_m",
            "k_nearest",
            "points_in_bbox",
            "points_in_polygon",
            "query_points",
        ),
        "geo.spatial",
    ),
}


def __getattr__(name: str) -> Any:
    """Import a submodule on first access to one of its exported names (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
