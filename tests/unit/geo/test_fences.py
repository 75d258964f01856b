"""Geofence validation messages, GCJ-02 conversion, import parsing and enter/leave events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from shapely.geometry import Point

from geo.coords import Crs, wgs84_to_gcj02
from geo.errors import GeometryError
from geo.fences import (
    FenceDraft,
    FenceKind,
    fence_events,
    fences_from_feature_collection,
    membership,
    validate_fence,
)

SQUARE = [[118.09, 24.43], [118.11, 24.43], [118.11, 24.45], [118.09, 24.45], [118.09, 24.43]]
T = datetime(2026, 11, 29, tzinfo=UTC)


def draft(coords: object, gtype: str = "Polygon", **kw: Any) -> FenceDraft:
    return FenceDraft(
        id=str(kw.pop("id", "f1")),
        name=str(kw.pop("name", "F1")),
        kind=kw.pop("kind", FenceKind.SCHOOL_ZONE),
        geometry={"type": gtype, "coordinates": coords},
        **kw,
    )


def test_valid_square_is_kept_with_bbox() -> None:
    fence = validate_fence(draft([SQUARE]))
    assert fence.repaired is None
    assert fence.bbox == pytest.approx((118.09, 24.43, 118.11, 24.45))
    assert fence.geojson["type"] == "Polygon"


def test_bow_tie_is_repaired_and_reason_reported() -> None:
    bow = [[118.09, 24.43], [118.11, 24.45], [118.11, 24.43], [118.09, 24.45], [118.09, 24.43]]
    fence = validate_fence(draft([bow]))
    assert fence.repaired is not None and fence.repaired.startswith("Self-intersection")
    assert fence.geometry.is_valid and fence.geometry.area > 0
    with pytest.raises(GeometryError, match=r"invalid polygon \(Self-intersection.*repair is disabled"):
        validate_fence(draft([bow]), repair=False)


@pytest.mark.parametrize(
    ("geometry", "message"),
    [
        ({"type": "Point", "coordinates": [118.1, 24.4]}, "must be Polygon or MultiPolygon, got 'Point'"),
        ({"type": "Polygon", "coordinates": [SQUARE[:3]]}, "ring 0 has 3 positions; a ring needs at least 4"),
        ({"type": "Polygon", "coordinates": [SQUARE[:4]]}, "ring 0 is not closed"),
        ({"type": "Polygon", "coordinates": [[[118.1, 95.0], *SQUARE[1:4], [118.1, 95.0]]]}, "lat 95.0 is outside"),
        ({"type": "Polygon", "coordinates": [[["a", 24.4], *SQUARE[1:]]]}, "lon must be a number"),
        ({"type": "Polygon", "coordinates": []}, "non-empty array of rings"),
        (
            {"type": "Polygon", "coordinates": [[[118.0, 24.4], [118.1, 24.4], [118.2, 24.4], [118.0, 24.4]]]},
            "make_valid left no area",
        ),
    ],
)
def test_bad_geometry_messages(geometry: dict[str, object], message: str) -> None:
    with pytest.raises(GeometryError, match=message) as info:
        validate_fence(FenceDraft("f1", "F1", FenceKind.OTHER, geometry))
    assert str(info.value).startswith("fence f1:")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"id": "bad id!"}, "fence id 'bad id!' is invalid"),
        ({"name": " "}, "name must be 1-200"),
        ({"kind": "playground"}, "unknown kind 'playground'"),
        ({"crs": "BD09"}, "unknown crs 'BD09'"),
    ],
)
def test_bad_draft_messages(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(GeometryError, match=message):
        draft([SQUARE], **kw)


def test_gcj02_input_is_stored_in_wgs84() -> None:
    gcj = [list(wgs84_to_gcj02(x, y)) for x, y in SQUARE]
    fence = validate_fence(draft([gcj], crs=Crs.GCJ02))
    assert fence.bbox == pytest.approx((118.09, 24.43, 118.11, 24.45), abs=1e-7)
    # The GCJ offset in Xiamen is hundreds of metres: the raw input would be visibly off.
    assert not Point(118.0901, 24.4301).within(validate_fence(draft([gcj])).geometry)


def test_feature_collection_lists_every_bad_feature() -> None:
    fc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "a",
                "properties": {"name": "A"},
                "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
            },
            {
                "type": "Feature",
                "properties": {"id": "b", "kind": "flood_underpass"},
                "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
            },
            {"type": "Feature", "properties": {"id": "a"}, "geometry": {"type": "Polygon", "coordinates": [SQUARE]}},
            {"type": "Feature", "properties": {"id": "c", "kind": "zoo"}, "geometry": None},
            {"type": "Point"},
        ],
    }
    drafts, errors = fences_from_feature_collection(fc, default_kind=FenceKind.SCHOOL_ZONE)
    assert [(d.id, d.name, d.kind) for d in drafts] == [
        ("a", "A", FenceKind.SCHOOL_ZONE),
        ("b", "b", FenceKind.FLOOD_UNDERPASS),
    ]
    assert errors == [
        "feature #2: duplicate fence id 'a'",
        "feature #3: fence c: unknown kind 'zoo'; one of "
        "['school_zone', 'water_source_protection', 'flood_underpass', 'other']",
        "feature #4: not a GeoJSON Feature",
    ]
    with pytest.raises(GeometryError, match="FeatureCollection"):
        fences_from_feature_collection({"type": "Feature"})


def test_fence_events_leave_before_enter_sorted() -> None:
    events = fence_events("D1", {"b", "a", "keep"}, {"keep", "z", "c"}, T)
    assert [(e.kind, e.fence_id) for e in events] == [("leave", "a"), ("leave", "b"), ("enter", "c"), ("enter", "z")]
    assert all(e.device_code == "D1" and e.at == T for e in events)
    assert fence_events("D1", {"x"}, {"x"}, T) == []
    assert fence_events("D1", set(), set(), T) == []


def test_membership_is_canonical() -> None:
    assert membership(["b", "a", "b"]) == ("a", "b")
