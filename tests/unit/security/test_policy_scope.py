"""Route rules read from the app, district/class scope, and masking by grade (no database)."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI

from citybrain.security.auth import public, require
from citybrain.security.identities import PERMISSIONS, Principal
from citybrain.security.policy import annotate_openapi, markdown_table, route_rules, undeclared_routes
from citybrain.security.scope import Masker, Scope, can_read
from devices.code import DeviceCode
from devices.grades import coarsen
from devices.models import ModelRegistry

_Reader = Annotated[Principal, Depends(require("devices:read"))]


def _app(*, forget: bool = False) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None)  # as create_api: the docs pages are routes of their own
    router = APIRouter()

    @router.get("/read")
    async def read(_: _Reader) -> dict[str, str]:
        return {}

    @router.post("/write", dependencies=[Depends(require("devices:write"))])
    async def write() -> dict[str, str]:
        return {}

    @router.get("/open", dependencies=[Depends(public("a probe"))])
    async def open_() -> dict[str, str]:
        return {}

    if forget:

        @router.get("/oops")
        async def oops() -> dict[str, str]:
            return {}

    app.include_router(router)
    return app


def test_rules_are_read_from_the_routes() -> None:
    rules = {(r.method, r.path): r for r in route_rules(_app())}
    assert rules[("GET", "/read")].permission == "devices:read"
    assert rules[("POST", "/write")].permission == "devices:write"
    assert rules[("GET", "/open")].permission is None and rules[("GET", "/open")].reason == "a probe"
    assert ("GET", "/openapi.json") in rules
    write = rules[("POST", "/write")]
    assert [write.allows(role) for role in ("admin", "integrator", "operator", "app", "auditor")] == [
        True,
        True,
        False,
        False,
        False,
    ]
    table = markdown_table(rules.values())
    assert "| POST | `/write` | `devices:write` | ✓ | ✓ |  |  |  |" in table
    assert "| GET | `/open` | public: a probe |" in table


def test_a_route_without_a_rule_is_caught() -> None:
    app = _app(forget=True)
    assert undeclared_routes(app) == ["GET /oops"]
    with pytest.raises(ValueError, match="GET /oops"):
        route_rules(app)


def test_permissions_reach_the_openapi_document() -> None:
    app = _app()
    annotate_openapi(app)
    paths = app.openapi()["paths"]
    assert paths["/read"]["get"]["x-citybrain-permission"] == "devices:read"
    assert paths["/open"]["get"]["x-citybrain-permission"] == "public"


def test_unknown_permission_fails_at_build_time() -> None:
    with pytest.raises(KeyError):
        require("devices:reed")


def test_grade_permissions() -> None:
    assert PERMISSIONS["sensitive:read"] == frozenset({"admin"})
    assert "app" not in PERMISSIONS["internal:read"] and "operator" in PERMISSIONS["internal:read"]
    app, op, admin = (Principal(n, frozenset({n})) for n in ("app", "operator", "admin"))
    assert can_read(app, "public") and not can_read(app, "internal")
    assert can_read(op, "internal") and not can_read(op, "sensitive")
    assert can_read(admin, "sensitive") and not can_read(op, "secret-ish")  # unknown grade: as sensitive


def test_scope() -> None:
    everything = Scope()
    assert everything.unrestricted and everything.allows("350206", "air")
    assert everything.districts_for(None) is None and everything.districts_for("350206") == ["350206"]
    siming = Scope(frozenset({"350203"}), frozenset({"air", "water"}))
    assert siming.allows("350203", "air") and not siming.allows("350206", "air")
    assert not siming.allows("350203", "manhole") and not siming.allows(None, "air")
    assert siming.districts_for(None) == ["350203"] and siming.districts_for("350206") == []
    assert siming.classes_for(None) == ["air", "water"] and siming.classes_for("noise") == []
    rows = [{"district": "350203", "device_class": "air"}, {"district": "350206", "device_class": "air"}]
    assert siming.visible_rows(rows) == rows[:1]


def test_masking_by_grade(models: ModelRegistry) -> None:
    masker = Masker(models)
    gas = DeviceCode.build("350203", "0111", 3).full
    row = {
        "code": gas,
        "model": "manhole-cover@1",
        "lon": 118.1012,
        "lat": 24.4567,
        "crs": "WGS84",
        "contact": "13800138000",
        "owner_unit": "Xiamen Gas",
        "serial": None,
        "attributes": {"owner_contact": "13900139000", "depth_m": 2.0},
    }
    app = Principal("a", frozenset({"app"}))
    shown, revealed = masker.device(row, app)
    assert revealed == [] and shown["contact"] == "*******8000" and shown["owner_unit"] is None
    assert shown["attributes"] == {"owner_contact": "*******9000", "depth_m": 2.0}
    assert (shown["lon"], shown["lat"]) == coarsen(118.1012, 24.4567) != (118.1012, 24.4567)
    assert row["contact"] == "13800138000"  # the input is not modified
    operator = Principal("o", frozenset({"operator"}))
    shown, revealed = masker.device(row, operator)
    assert shown["owner_unit"] == "Xiamen Gas" and shown["masked"] == [
        "contact",
        "attributes.owner_contact",
        "location",
    ]
    shown, revealed = masker.device(row, Principal("r", frozenset({"admin"})))
    assert shown == row | {"masked": []} and revealed == ["contact", "attributes.owner_contact", "location"]
    # A GCJ-02 position is converted before it is coarsened.
    gcj = masker.device(row | {"crs": "GCJ02"}, app)[0]
    assert gcj["crs"] == "WGS84" and abs(gcj["lon"] - 118.1012) < 0.02
    assert masker.metric_grade("manhole-cover@1", "rssi") == "internal"
    assert masker.metric_grade("manhole-cover@1", "tilt") == "public"
    assert masker.class_metric_grade("manhole", "rssi") == "internal"
