"""Xiamen's districts: loading, validation and point-in-district lookup.

The outlines ship as package data (``geo/data/xiamen_districts.geojson``): a
hand-digitised approximation, ~1-2 km precision, WGS84 lon/lat. See the file's
``metadata`` member; it is not a legal boundary.

Validation is strict at load time so nothing downstream has to cope with bad
geometry: every district must be a non-empty (Multi)Polygon with finite
coordinates; an invalid one is repaired with :func:`shapely.make_valid` when
that leaves an area to keep, and rejected with :class:`GeometryError`
otherwise. Districts must not overlap, so a point can only be claimed by two
districts when it lies on their shared boundary; :class:`DistrictIndex` then
picks the lowest code, deterministically.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeAlias

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.errors import GEOSException
from shapely.geometry import MultiPolygon, Point, Polygon, shape
from shapely.geometry.base import BaseGeometry

from geo.errors import DistrictDataError, GeometryError, OutsideCityError
from geo.spatial import haversine_m, query_points

__all__ = [
    "DEFAULT_RESOURCE",
    "District",
    "DistrictIndex",
    "districts_from_geojson",
    "load_districts",
    "polygonal_part",
    "validate_fences",
    "validate_geometry",
]

logger = logging.getLogger(__name__)

DEFAULT_RESOURCE = "xiamen_districts.geojson"

_CODE_RE = re.compile(r"^[0-9]{6}$")

# Two districts may touch along a shared boundary but not overlap. Shared
# vertices are copied exactly in the data, so any real overlap is a data
# error; the tolerance (deg², ~10 m²) only absorbs GEOS rounding.
_OVERLAP_TOLERANCE_DEG2 = 1e-9

Polygonal: TypeAlias = Polygon | MultiPolygon


@dataclass(frozen=True, slots=True)
class District:
    """A county-level district.

    Attributes:
        code: GB/T 2260 six-digit code, e.g. ``"350203"``.
        name_zh: Chinese name, e.g. ``"思明区"``.
        name_en: English name, e.g. ``"Siming District"``.
        geometry: Valid, non-empty (Multi)Polygon in WGS84 lon/lat.
    """

    code: str
    name_zh: str
    name_en: str
    geometry: Polygonal

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not _CODE_RE.match(self.code):
            raise DistrictDataError(f"district code must be 6 digits, got {self.code!r}")
        if not self.name_zh or not self.name_en:
            raise DistrictDataError(f"district {self.code}: name_zh and name_en are required")
        if not isinstance(self.geometry, Polygon | MultiPolygon) or not self.geometry.is_valid:
            # Construct through validate_geometry() to get repair and messages.
            raise GeometryError(f"district {self.code}: geometry must be a valid Polygon or MultiPolygon")


def validate_geometry(geometry: BaseGeometry, *, label: str, repair: bool = True) -> Polygonal:
    """Check a polygonal geometry, repairing it if allowed.

    Args:
        geometry: The geometry to check.
        label: What it is, for messages (e.g. ``"district 350203"``).
        repair: Whether an invalid polygon may be fixed with
            :func:`shapely.make_valid` (e.g. a bow-tie becomes two triangles).

    Returns:
        The geometry itself when valid, else its repaired polygonal part.

    Raises:
        GeometryError: If it is not a (Multi)Polygon, is empty, has non-finite
            coordinates, or is invalid and either ``repair`` is False or the
            repair leaves no area (e.g. all vertices on one line).
    """
    if not isinstance(geometry, Polygon | MultiPolygon):
        raise GeometryError(f"{label}: expected a Polygon or MultiPolygon, got {geometry.geom_type}")
    if geometry.is_empty:
        raise GeometryError(f"{label}: geometry is empty")
    if not np.isfinite(shapely.get_coordinates(geometry)).all():
        raise GeometryError(f"{label}: geometry has non-finite coordinates")
    if geometry.is_valid:
        return geometry
    reason = shapely.is_valid_reason(geometry)
    if not repair:
        raise GeometryError(f"{label}: invalid polygon ({reason}) and repair is disabled")
    fixed = polygonal_part(shapely.make_valid(geometry))
    if fixed is None or fixed.area <= 0.0:
        raise GeometryError(f"{label}: invalid polygon ({reason}); make_valid left no area to keep")
    logger.warning("%s: repaired invalid polygon (%s) with make_valid", label, reason)
    return fixed


def polygonal_part(geometry: BaseGeometry) -> Polygonal | None:
    """The polygons of a geometry, dropping lines and points.

    ``make_valid`` and overlay operations can return a GeometryCollection
    mixing polygons with collapsed edges; only the area is of interest.

    Returns:
        A Polygon, a MultiPolygon, or None when there is no polygon at all.
    """
    if isinstance(geometry, Polygon | MultiPolygon):
        return None if geometry.is_empty else geometry
    polygons: list[Polygon] = []
    for part in shapely.get_parts(geometry):
        if isinstance(part, Polygon) and not part.is_empty:
            polygons.append(part)
        elif isinstance(part, MultiPolygon):
            polygons.extend(shapely.get_parts(part))
    if not polygons:
        return None
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)


def districts_from_geojson(data: Mapping[str, Any], *, repair: bool = True) -> tuple[District, ...]:
    """Build districts from a GeoJSON FeatureCollection.

    Each feature needs ``properties.code``, ``name_zh`` and ``name_en`` and a
    Polygon or MultiPolygon geometry in WGS84 lon/lat.

    Args:
        data: The parsed GeoJSON.
        repair: Passed to :func:`validate_geometry`.

    Returns:
        The districts sorted by code.

    Raises:
        DistrictDataError: On a malformed collection, a missing property, a
            duplicate code, or two districts that overlap.
        GeometryError: On a geometry that is invalid and cannot be repaired.
    """
    if data.get("type") != "FeatureCollection" or not isinstance(data.get("features"), list):
        raise DistrictDataError("district data must be a GeoJSON FeatureCollection with a features list")
    districts: dict[str, District] = {}
    for n, feature in enumerate(data["features"]):
        props = feature.get("properties") if isinstance(feature, Mapping) else None
        if not isinstance(props, Mapping):
            raise DistrictDataError(f"feature #{n}: missing properties")
        missing = [key for key in ("code", "name_zh", "name_en") if not props.get(key)]
        if missing:
            raise DistrictDataError(f"feature #{n}: missing properties {missing}")
        code = str(props["code"])
        label = f"district {code} ({props['name_zh']})"
        if code in districts:
            raise DistrictDataError(f"{label}: duplicate district code")
        try:
            geometry = shape(feature["geometry"])
        except (KeyError, TypeError, ValueError, AttributeError, GEOSException) as exc:
            raise GeometryError(f"{label}: unreadable geometry: {exc}") from exc
        districts[code] = District(
            code=code,
            name_zh=str(props["name_zh"]),
            name_en=str(props["name_en"]),
            geometry=validate_geometry(geometry, label=label, repair=repair),
        )
    result = tuple(districts[code] for code in sorted(districts))
    _check_no_overlap(result)
    return result


def _check_no_overlap(districts: Sequence[District]) -> None:
    for a, b in itertools.combinations(districts, 2):
        if not a.geometry.intersects(b.geometry):
            continue
        overlap = a.geometry.intersection(b.geometry).area
        if overlap > _OVERLAP_TOLERANCE_DEG2:
            raise DistrictDataError(
                f"districts {a.code} and {b.code} overlap by {overlap:.3g} deg²; "
                "adjacent districts must share boundary vertices exactly"
            )


def load_districts(resource: str = DEFAULT_RESOURCE, *, repair: bool = True) -> tuple[District, ...]:
    """Load districts from a GeoJSON file shipped in ``geo/data``.

    Reads the file on every call (a few kB); callers keep the result.

    Args:
        resource: File name inside the ``geo.data`` package data.
        repair: Passed to :func:`validate_geometry`.

    Returns:
        The districts sorted by code.

    Raises:
        DistrictDataError: If the file is missing, not JSON, or malformed.
        GeometryError: On a geometry that cannot be repaired.
    """
    try:
        text = resources.files("geo").joinpath("data", resource).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise DistrictDataError(f"cannot read district data {resource!r}: {exc}") from exc
    return districts_from_geojson(data, repair=repair)


class DistrictIndex:
    """Which district contains a point, for one point or millions.

    Backed by a shapely STRtree over the district geometries. A point on a
    boundary shared by several districts goes to the lowest code, so results
    never depend on tree or input order.

    Args:
        districts: Non-overlapping districts with unique codes.

    Raises:
        DistrictDataError: On duplicate codes or no districts at all.
    """

    def __init__(self, districts: Iterable[District]) -> None:
        ordered = tuple(sorted(districts, key=lambda d: d.code))
        if not ordered:
            raise DistrictDataError("a district index needs at least one district")
        codes = [d.code for d in ordered]
        if len(set(codes)) != len(codes):
            raise DistrictDataError(f"duplicate district codes in {codes}")
        self._districts = ordered
        geometries = np.array([d.geometry for d in ordered], dtype=object)
        # Sorted by code, so "lowest tree index" is "lowest code".
        self._tree = shapely.STRtree(geometries)

    @property
    def districts(self) -> tuple[District, ...]:
        """The districts, sorted by code; :meth:`locate_many` indexes into this."""
        return self._districts

    def locate(self, lon: float, lat: float) -> District | None:
        """The district containing a WGS84 point (boundary included), or None."""
        hits = self._tree.query(Point(lon, lat), predicate="intersects")
        if hits.size == 0:
            return None
        return self._districts[int(hits.min())]

    def locate_many(self, lons: ArrayLike, lats: ArrayLike) -> NDArray[np.intp]:
        """Index into :attr:`districts` for each point, -1 when outside.

        One bulk ``STRtree.query(points, predicate="intersects")``; points with
        NaN or infinite coordinates are reported as outside.

        Args:
            lons: 1-D WGS84 longitudes.
            lats: 1-D WGS84 latitudes, same length.

        Returns:
            An intp array of district indices (-1: outside every district).
        """
        point_idx, tree_idx = query_points(self._tree, lons, lats)
        # Boundary points hit two districts; keep the lowest index (= code).
        # ufunc.at is unbuffered, so repeated point indices are all applied.
        n = len(self._districts)
        best = np.full(np.shape(lons)[0], n, dtype=np.intp)
        np.minimum.at(best, point_idx, tree_idx)
        best[best == n] = -1
        return best

    def query_intersecting(self, geometries: NDArray[np.object_]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """Pairs ``(geometry index, district index)`` that intersect (bulk STRtree)."""
        geom_idx, district_idx = self._tree.query(geometries, predicate="intersects")
        return geom_idx, district_idx

    def nearest(self, lon: float, lat: float) -> tuple[District, float]:
        """The district nearest to a point and the distance to it in metres.

        Distances are found in a local equirectangular frame (longitude scaled
        by cos(lat)) and measured with the haversine formula, accurate to well
        under 1 % at city scale. Zero when the point is inside.
        """
        scale = math.cos(math.radians(lat))
        best: tuple[District, float] | None = None
        for district in self._districts:
            local = shapely.transform(district.geometry, lambda xy: xy * (scale, 1.0))
            line = shapely.shortest_line(Point(lon * scale, lat), local)
            (_, _), (near_x, near_y) = line.coords
            metres = haversine_m(lon, lat, near_x / scale, near_y)
            if best is None or metres < best[1]:
                best = (district, metres)
        assert best is not None  # the constructor refuses an empty index
        return best

    def outside_error(self, lon: float, lat: float) -> OutsideCityError:
        """An :class:`OutsideCityError` naming the point and nearest district."""
        district, metres = self.nearest(lon, lat)
        return OutsideCityError(
            f"point (lon={lon:.6f}, lat={lat:.6f}) is outside every district; nearest is "
            f"{district.name_zh} {district.name_en} ({district.code}) at {metres / 1000:.2f} km"
        )


def validate_fences(fences: Iterable[tuple[str, BaseGeometry]]) -> tuple[list[str], list[Polygonal]]:
    """Fence ids and their checked (repaired if needed) geometries, in order.

    Raises:
        ValueError: An empty or duplicate fence id.
        GeometryError: A fence that cannot be repaired.
    """
    ids: list[str] = []
    seen: set[str] = set()
    geometries: list[Polygonal] = []
    for fence_id, geometry in fences:
        if not isinstance(fence_id, str) or not fence_id:
            raise ValueError(f"fence ids must be non-empty strings, got {fence_id!r}")
        if fence_id in seen:
            raise ValueError(f"duplicate fence id {fence_id!r}")
        seen.add(fence_id)
        ids.append(fence_id)
        geometries.append(validate_geometry(geometry, label=f"geofence {fence_id!r}"))
    return ids, geometries
