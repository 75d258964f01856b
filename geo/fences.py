"""Geofences: validation of submitted GeoJSON, and enter/leave events.

Pure functions, no I/O. A fence arrives as GeoJSON (a geometry, or a Feature
inside a FeatureCollection for bulk import), in WGS84 or GCJ-02. It is checked
structurally first, so a client gets a message that names the problem ("ring 0
of polygon 0 has 3 positions; a ring needs at least 4 …") rather than a GEOS
exception; then converted to WGS84; then validated with
:func:`geo.districts.validate_geometry`, which repairs self-intersections with
``make_valid`` and rejects what cannot be repaired. The repair reason is
returned so that the API can tell the client its polygon was changed.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from geo.coords import Crs, gcj02_to_wgs84
from geo.districts import Polygonal, validate_geometry
from geo.errors import GeometryError
from geo.spatial import geofence_transitions

__all__ = [
    "FENCE_ID_RE",
    "MAX_VERTICES",
    "FenceDraft",
    "FenceEvent",
    "FenceKind",
    "ValidFence",
    "fence_events",
    "fence_geometry",
    "fences_from_feature_collection",
    "membership",
    "validate_fence",
]

# Same pattern as the CHECK constraint in citybrain/sql/0500_geofences.sql.
FENCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")

# Bounds the CPU one request can spend in GEOS (validation, make_valid, STRtree);
# a hand-drawn school zone has tens of vertices, a traced river a few thousand.
MAX_VERTICES = 20_000


class FenceKind(enum.StrEnum):
    """What a fence protects; the values are the ``geofences.kind`` CHECK values."""

    SCHOOL_ZONE = "school_zone"
    WATER_SOURCE_PROTECTION = "water_source_protection"
    FLOOD_UNDERPASS = "flood_underpass"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class FenceDraft:
    """A fence as submitted, before geometry validation.

    Attributes:
        id: Fence id, ``[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}``.
        name: Display name, 1-200 characters.
        kind: One of :class:`FenceKind`.
        geometry: GeoJSON Polygon or MultiPolygon, in ``crs``.
        crs: The CRS of ``geometry``.

    Raises:
        GeometryError: On a bad id, name, kind or CRS (the geometry is
            checked by :func:`validate_fence`).
    """

    id: str
    name: str
    kind: FenceKind
    geometry: Mapping[str, Any]
    crs: Crs = Crs.WGS84

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not FENCE_ID_RE.match(self.id):
            raise GeometryError(
                f"fence id {self.id!r} is invalid: 1-64 characters, letters, digits and _.:- , "
                "starting with a letter or digit"
            )
        if not isinstance(self.name, str) or not 1 <= len(self.name.strip()) <= 200:
            raise GeometryError(f"fence {self.id}: name must be 1-200 characters")
        try:
            object.__setattr__(self, "kind", FenceKind(self.kind))
        except ValueError:
            raise GeometryError(
                f"fence {self.id}: unknown kind {self.kind!r}; one of {[k.value for k in FenceKind]}"
            ) from None
        try:
            object.__setattr__(self, "crs", Crs(self.crs))
        except ValueError:
            raise GeometryError(f"fence {self.id}: unknown crs {self.crs!r}; one of {[c.value for c in Crs]}") from None
        if not isinstance(self.geometry, Mapping):
            raise GeometryError(f"fence {self.id}: geometry must be a GeoJSON object")


@dataclass(frozen=True, slots=True)
class ValidFence:
    """A fence ready to store: WGS84 geometry, its GeoJSON and bounding box.

    Attributes:
        draft: What was submitted.
        geometry: Valid (Multi)Polygon in WGS84.
        geojson: ``geometry`` as a GeoJSON dict.
        bbox: ``(min_lon, min_lat, max_lon, max_lat)``.
        repaired: The validity problem that was repaired (e.g.
            ``"Self-intersection[118.1 24.45]"``), or None if it was valid.
    """

    draft: FenceDraft
    geometry: Polygonal
    geojson: dict[str, Any]
    bbox: tuple[float, float, float, float]
    repaired: str | None


def _positions(ring: object, where: str) -> list[tuple[float, float]]:
    if not isinstance(ring, Sequence) or isinstance(ring, str):
        raise GeometryError(f"{where} must be an array of positions")
    out: list[tuple[float, float]] = []
    for i, pos in enumerate(ring):
        if not isinstance(pos, Sequence) or isinstance(pos, str) or len(pos) < 2:
            raise GeometryError(f"{where}, position {i}: expected [lon, lat], got {pos!r}")
        lon, lat = pos[0], pos[1]
        for name, value, limit in (("lon", lon, 180.0), ("lat", lat, 90.0)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise GeometryError(f"{where}, position {i}: {name} must be a number, got {value!r}")
            if not math.isfinite(value) or not -limit <= value <= limit:
                raise GeometryError(f"{where}, position {i}: {name} {value!r} is outside ±{limit:g}°")
        out.append((float(lon), float(lat)))
    if len(out) < 4:
        raise GeometryError(f"{where} has {len(out)} positions; a ring needs at least 4 (3 corners + closing position)")
    if out[0] != out[-1]:
        # RFC 7946 §3.1.6: first and last positions must be equivalent. Rejected
        # rather than closed silently: an open ring usually means a truncated paste.
        raise GeometryError(f"{where} is not closed: first position {out[0]} differs from last {out[-1]}")
    return out


def _polygon(rings: object, where: str) -> Polygon:
    if not isinstance(rings, Sequence) or isinstance(rings, str) or not rings:
        raise GeometryError(f"{where} must be a non-empty array of rings")
    parsed = [_positions(ring, f"{where}, ring {i}") for i, ring in enumerate(rings)]
    return Polygon(parsed[0], parsed[1:])


def fence_geometry(geojson: Mapping[str, Any], *, label: str = "fence") -> Polygonal:
    """Parse a GeoJSON Polygon/MultiPolygon with messages a client can act on.

    Only the structure is checked here (types, nesting, numbers, ranges,
    closed rings of 4+ positions, vertex budget); validity is
    :func:`validate_fence`'s job.

    Args:
        geojson: A GeoJSON geometry object.
        label: What it is, prefixed to messages.

    Returns:
        The shapely geometry, possibly invalid (e.g. a bow-tie).

    Raises:
        GeometryError: With the exact structural problem.
    """
    if not isinstance(geojson, Mapping):
        raise GeometryError(f"{label}: geometry must be a GeoJSON object")
    gtype = geojson.get("type")
    coords = geojson.get("coordinates")
    if gtype == "Polygon":
        geometry: Polygonal = _polygon(coords, f"{label}: polygon")
    elif gtype == "MultiPolygon":
        if not isinstance(coords, Sequence) or isinstance(coords, str) or not coords:
            raise GeometryError(f"{label}: MultiPolygon coordinates must be a non-empty array of polygons")
        geometry = MultiPolygon([_polygon(p, f"{label}: polygon {i}") for i, p in enumerate(coords)])
    else:
        raise GeometryError(f"{label}: geometry type must be Polygon or MultiPolygon, got {gtype!r}")
    vertices = int(shapely.get_num_coordinates(geometry))
    if vertices > MAX_VERTICES:
        raise GeometryError(f"{label}: {vertices} vertices exceed the limit of {MAX_VERTICES}; simplify it first")
    return geometry


def validate_fence(draft: FenceDraft, *, repair: bool = True) -> ValidFence:
    """Check, convert to WGS84 and (if allowed) repair a submitted fence.

    Args:
        draft: The submitted fence.
        repair: Whether an invalid polygon may be fixed with ``make_valid``.

    Returns:
        The fence in WGS84 with its bounding box and repair note.

    Raises:
        GeometryError: On a structural problem, or an invalid polygon that
            may not or cannot be repaired (e.g. all vertices on one line).
    """
    label = f"fence {draft.id}"
    geometry = fence_geometry(draft.geometry, label=label)
    if draft.crs is Crs.GCJ02:
        # Vectorised inverse over every vertex; the offset varies by metres
        # over a fence, so converting vertices (not just a centre) matters.
        geometry = shapely.transform(geometry, _gcj_to_wgs)
    repaired = None if geometry.is_valid else shapely.is_valid_reason(geometry)
    fixed = validate_geometry(geometry, label=label, repair=repair)
    bounds = tuple(float(v) for v in fixed.bounds)
    return ValidFence(
        draft=draft,
        geometry=fixed,
        geojson=json.loads(shapely.to_geojson(fixed)),
        bbox=(bounds[0], bounds[1], bounds[2], bounds[3]),
        repaired=repaired,
    )


def _gcj_to_wgs(xy: np.ndarray) -> np.ndarray:
    lon, lat = gcj02_to_wgs84(xy[:, 0], xy[:, 1])
    return np.column_stack([lon, lat])


def fences_from_feature_collection(
    data: Mapping[str, Any], *, default_kind: FenceKind = FenceKind.OTHER, crs: Crs = Crs.WGS84
) -> tuple[list[FenceDraft], list[str]]:
    """Drafts from a GeoJSON FeatureCollection, for bulk import.

    Each feature's id is ``properties.id`` or the feature's ``id``; ``name``
    defaults to the id; ``kind`` to ``default_kind``; ``crs`` (a property) to
    the ``crs`` argument.

    Args:
        data: The parsed FeatureCollection.
        default_kind: Kind of features that name none.
        crs: CRS of features that name none.

    Returns:
        ``(drafts, errors)``: one message per rejected feature, naming its
        index, so that an import can be refused as a whole with every
        problem listed at once.

    Raises:
        GeometryError: If ``data`` is not a FeatureCollection.
    """
    if not isinstance(data, Mapping) or data.get("type") != "FeatureCollection":
        raise GeometryError("import needs a GeoJSON FeatureCollection")
    features = data.get("features")
    if not isinstance(features, list) or not features:
        raise GeometryError("the FeatureCollection has no features")
    drafts: list[FenceDraft] = []
    errors: list[str] = []
    seen: set[str] = set()
    for n, feature in enumerate(features):
        if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
            errors.append(f"feature #{n}: not a GeoJSON Feature")
            continue
        props = feature.get("properties") or {}
        if not isinstance(props, Mapping):
            errors.append(f"feature #{n}: properties must be an object")
            continue
        fence_id = props.get("id", feature.get("id"))
        try:
            draft = FenceDraft(
                id=str(fence_id) if fence_id is not None else "",
                name=str(props.get("name") or fence_id or ""),
                kind=props.get("kind", default_kind),
                geometry=feature.get("geometry") or {},
                crs=props.get("crs", crs),
            )
        except GeometryError as exc:
            errors.append(f"feature #{n}: {exc}")
            continue
        if draft.id in seen:
            errors.append(f"feature #{n}: duplicate fence id {draft.id!r}")
            continue
        seen.add(draft.id)
        drafts.append(draft)
    return drafts, errors


@dataclass(frozen=True, slots=True)
class FenceEvent:
    """A device entered or left a fence.

    Attributes:
        device_code: The device.
        fence_id: The fence.
        kind: ``"enter"`` or ``"leave"``.
        at: Event time of the position that caused it (debounced tracking,
            :mod:`geo.tracking`: the first position of the confirming streak).
        entered_at: For a leave, when the device had entered (identifies an
            alert opened on entry); None when unknown.
    """

    device_code: str
    fence_id: str
    kind: str
    at: datetime
    entered_at: datetime | None = None


def fence_events(device_code: str, prev: Set[str], now: Set[str], at: datetime) -> list[FenceEvent]:
    """Enter/leave events between two membership snapshots of one device.

    Leaves come before enters (a device crossing from one fence into an
    adjacent one leaves first), each group sorted by fence id, so the output
    is deterministic.

    Args:
        device_code: The device.
        prev: Fences it was in at its previous position (empty if unknown).
        now: Fences it is in now.
        at: Event time of the current position.

    Returns:
        The events, possibly none.
    """
    entered, left = geofence_transitions(prev, now)
    return [FenceEvent(device_code, f, "leave", at) for f in sorted(left)] + [
        FenceEvent(device_code, f, "enter", at) for f in sorted(entered)
    ]


def membership(ids: Iterable[str]) -> tuple[str, ...]:
    """Canonical (sorted, unique) membership, as stored in ``device_fences.fences``."""
    return tuple(sorted(set(ids)))
