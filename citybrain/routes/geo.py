"""Map routes under /api/v1/geo: districts, grid, devices, nearest, aggregates, geofences.

Every coordinate in and out is WGS84 lon/lat unless a ``crs`` parameter says
GCJ-02 (input only). Locations of sensitive device classes (gas and power
manhole covers, …; ``sensitive: true`` in ``devices/data/classes.yaml``) are
published at grid-cell resolution unless the request says ``precise=true``,
which needs ``sensitive:read`` (403 without it) and is audited.

Reads need ``geo:read``, fences ``geo:write``. Devices, nearest, within,
districts and aggregates stay within the caller's district and class grants.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import shapely
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from alerts.errors import IndicatorError
from alerts.indicators.aqi import level_for
from citybrain.airquality import area_aqi_report
from citybrain.routes.context import ApiContext
from citybrain.security.auth import record, require
from citybrain.security.identities import Principal
from citybrain.security.scope import Scope
from core.records import METRIC_NAME_PATTERN
from devices.errors import ModelError
from devices.grades import sensitive_class_codes
from devices.models import ModelRegistry, is_assessment_station
from geo import stats
from geo.coords import Crs, gcj02_to_wgs84
from geo.errors import CoordinateError, FenceExistsError, FenceNotFoundError, GeometryError, OutsideCityError
from geo.fences import FenceDraft, FenceKind, fence_geometry, fences_from_feature_collection, validate_fence
from geo.geojson import districts_feature_collection
from geo.service import GeoService
from geo.status import classify

__all__ = ["aqi_properties", "build", "model_cadences", "parse_bbox"]

# Snapshots older than this do not colour the map (a silent station must not
# keep painting its district with last week's AQI).
DEFAULT_MAX_AGE_S = 3 * 3600.0
# Simplification of the whole-city grid: ~50 m, below the 0.01° (~1 km) cell size.
_CITY_GRID_TOLERANCE_DEG = 0.0005
_CITY_GRID_PRECISION_DEG = 1e-5
# How far outside the requested bbox SQL looks, so that devices whose
# published position (GCJ-02 converted, or coarsened by up to one 0.01° cell)
# falls inside are not missed; the exact test runs on published positions.
_BBOX_MARGIN_DEG = 0.02


class FenceIn(BaseModel):
    """A geofence to create."""

    id: str = Field(description="1-64 characters: letters, digits, _.:- ; starts with a letter or digit")
    name: str = Field(description="Display name")
    kind: FenceKind = FenceKind.OTHER
    geometry: dict[str, Any] = Field(description="GeoJSON Polygon or MultiPolygon")
    crs: Crs = Field(Crs.WGS84, description="CRS of the geometry; GCJ-02 is converted, WGS84 is stored")
    created_by: str = Field("api", max_length=100, description="Ignored: the creator is the authenticated principal")


class PolygonQuery(BaseModel):
    """A polygon to search devices in."""

    geometry: dict[str, Any] = Field(description="GeoJSON Polygon or MultiPolygon (WGS84)")
    device_class: str = Field(alias="class")
    precise: bool = False


def model_cadences(models: ModelRegistry) -> dict[str, int]:
    """Reporting cadence per model key as ``devices.model`` may hold it (``id@version`` and bare ``id``)."""
    out = {m.key: m.cadence_s for m in models.all()}
    out.update({m.id: m.cadence_s for m in models.latest()})
    return out


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """Parse ``minlon,minlat,maxlon,maxlat``.

    Raises:
        HTTPException: 422 with what is wrong.
    """
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise HTTPException(422, f"bbox must be 4 numbers minlon,minlat,maxlon,maxlat; got {text!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise HTTPException(422, f"bbox must be 4 finite numbers minlon,minlat,maxlon,maxlat; got {text!r}")
    x0, y0, x1, y1 = values
    if not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
        raise HTTPException(422, f"bbox must satisfy minlon <= maxlon and minlat <= maxlat within ±180/±90; got {text}")
    return x0, y0, x1, y1


def aqi_properties(aqi: float | None) -> dict[str, Any]:
    """``aqi``, ``aqi_level`` and ``aqi_colour`` (HJ 633 Table 2 hex colour), all None without a value."""
    if aqi is None:
        return {"aqi": None, "aqi_level": None, "aqi_colour": None}
    try:
        level = level_for(aqi)
    except IndicatorError:
        return {"aqi": None, "aqi_level": None, "aqi_colour": None}
    return {"aqi": math.ceil(aqi), "aqi_level": level.level, "aqi_colour": level.colour_hex}


def _feature(geometry: Any, properties: dict[str, Any], fid: str) -> dict[str, Any]:
    return {"type": "Feature", "id": fid, "properties": properties, "geometry": geometry}


# Module level: with postponed annotations FastAPI resolves these names in the module's globals.
_Reader = Annotated[Principal, Depends(require("geo:read"))]
_Writer = Annotated[Principal, Depends(require("geo:write"))]


def build(ctx: ApiContext, service: GeoService | None = None) -> APIRouter:
    """Routes under /api/v1/geo.

    Args:
        ctx: Shared dependencies.
        service: The geo service; by default one is built over ``ctx.pool``
            (nothing is loaded until the first request).
    """
    router = APIRouter()
    pool = ctx.pool
    models = ctx.models
    geo = service or GeoService(pool, sensitive_classes=sensitive_class_codes())
    cadences = model_cadences(models)
    grid_cache: dict[str, dict[str, Any]] = {}

    def assessment(attrs: dict[str, Any] | None, model: str) -> bool:
        try:
            found = models.get(model)
        except ModelError:
            found = None
        return is_assessment_station(attrs or {}, found)

    def check_class(device_class: str | None) -> None:
        if device_class is not None and device_class not in models.device_classes():
            raise HTTPException(422, f"unknown device class {device_class!r}; one of {models.device_classes()}")

    def check_precise(principal: Principal, precise: bool) -> None:
        # True positions of gas/power manholes are graded sensitive.
        if precise and not principal.can("sensitive:read"):
            raise HTTPException(403, "precise locations of sensitive devices need sensitive:read")

    async def audit_precise(request: Request, principal: Principal, codes: list[str]) -> None:
        if codes:
            await record(
                request,
                principal,
                "sensitive.read",
                request.url.path,
                {"devices": codes[:200], "count": len(codes), "fields": ["location"]},
            )

    async def visible_codes(principal: Principal, codes: list[str]) -> set[str]:
        scope = Scope.of(principal)
        if scope.unrestricted or not codes:
            return set(codes)
        async with pool.connection() as conn:
            rows = await (
                await conn.execute("select code, district, device_class from devices where code = any(%s)", (codes,))
            ).fetchall()
        return {r[0] for r in rows if scope.allows(r[1], r[2])}

    # -- map layers ---------------------------------------------------------------------

    @router.get("/api/v1/geo/districts", tags=["geo"])
    async def districts(
        principal: _Reader,
        max_age_s: Annotated[
            float, Query(gt=0, le=366 * 86400, description="Ignore snapshots older than this")
        ] = DEFAULT_MAX_AGE_S,
    ) -> dict[str, Any]:
        """The 6 districts with devices, open alerts, HJ 633 area AQI and water compliance.

        ``aqi`` is the district's AQI from its assessment stations' mean
        concentrations (docs/standards.md §3.6), the number the vitals and
        ``/api/v1/geo/aqi`` give.
        """
        async with pool.connection() as conn:
            figures = await stats.district_figures(conn, max_age_s=max_age_s)
            report = await area_aqi_report(conn, models, max_age_s=max_age_s)
        scope = Scope.of(principal)
        dists = [d for d in await geo.districts() if scope.allows_district(d.code)]
        props = {}
        for d in dists:
            f = figures.get(d.code, stats.DistrictFigures())
            props[d.code] = {
                "devices": f.devices,
                "open_alerts": f.open_alerts,
                **aqi_properties(report.area(d.code).aqi),
                "aqi_stations": report.area(d.code).stations,
                "water_ok_share": f.water_ok_share,
            }
        return districts_feature_collection(dists, props)

    @router.get("/api/v1/geo/aqi", tags=["geo"])
    async def area_aqi(
        principal: _Reader,
        max_age_s: Annotated[
            float, Query(gt=0, le=366 * 86400, description="Ignore stations whose latest values are older")
        ] = DEFAULT_MAX_AGE_S,
    ) -> dict[str, Any]:
        """HJ 633 AQI of the city and of each (granted) district from its assessment stations' mean concentrations.

        The rule (docs/standards.md §3.6): per pollutant, the mean over the
        area's assessment stations (national/provincial; micro-stations never
        count), then IAQI and AQI on those means. The header and the map show
        these same numbers.
        """
        async with pool.connection() as conn:
            report = await area_aqi_report(conn, models, max_age_s=max_age_s)
        scope = Scope.of(principal)
        return {
            "as_of": report.as_of.isoformat(),
            "version": report.version,
            "city": report.city.to_json(),
            "districts": {
                code: report.area(code).to_json() for code in sorted(report.districts) if scope.allows_district(code)
            },
        }

    @router.get("/api/v1/geo/grid", tags=["geo"])
    async def grid_cells(
        _: _Reader,
        district: Annotated[str | None, Query(pattern=r"^[0-9]{6}$", description="District code")] = None,
    ) -> dict[str, Any]:
        """Grid cells of one district, or of the whole city (simplified to ~50 m, 1e-5° precision)."""
        key = district or "*"
        cached = grid_cache.get(key)
        if cached is not None:
            return cached
        grid = await geo.grid()
        if district is not None and district not in {d.code for d in grid.districts}:
            raise HTTPException(422, f"unknown district {district!r}; one of {[d.code for d in grid.districts]}")
        features = []
        for cell in grid.cells.values():
            if district is not None and cell.district_code != district:
                continue
            polygon = cell.polygon
            if district is None:
                polygon = shapely.set_precision(
                    shapely.simplify(polygon, _CITY_GRID_TOLERANCE_DEG, preserve_topology=True),
                    _CITY_GRID_PRECISION_DEG,
                )
            features.append(
                _feature(
                    json.loads(shapely.to_geojson(polygon)),
                    {"code": cell.code, "district": cell.district_code},
                    cell.code,
                )
            )
        result = {"type": "FeatureCollection", "features": features}
        grid_cache[key] = result  # the grid never changes within a process
        return result

    @router.get("/api/v1/geo/devices", tags=["geo"])
    async def devices(
        request: Request,
        principal: _Reader,
        bbox: Annotated[str | None, Query(description="minlon,minlat,maxlon,maxlat (WGS84)")] = None,
        class_: Annotated[str | None, Query(alias="class", description="Device class")] = None,
        district: Annotated[str | None, Query(pattern=r"^[0-9]{6}$")] = None,
        precise: Annotated[
            bool, Query(description="True locations of sensitive classes (needs sensitive:read; audited)")
        ] = False,
        limit: Annotated[int, Query(ge=1, le=20000)] = 5000,
    ) -> dict[str, Any]:
        """Device points with status (alerting, fresh, stale, offline, unknown), within the caller's grants."""
        check_class(class_)
        check_precise(principal, precise)
        box = parse_bbox(bbox) if bbox else None
        where = ["d.state <> 'decommissioned'", "d.lon is not null", "d.lat is not null"]
        params: dict[str, Any] = {"limit": limit + 1}
        scope = Scope.of(principal)
        if scope.districts:
            where.append("d.district = any(%(granted_districts)s)")
            params["granted_districts"] = sorted(scope.districts)
        if scope.classes:
            where.append("d.device_class = any(%(granted_classes)s)")
            params["granted_classes"] = sorted(scope.classes)
        if box is not None:
            where.append("point(d.lon, d.lat) <@ box(point(%(x0)s, %(y0)s), point(%(x1)s, %(y1)s))")
            m = _BBOX_MARGIN_DEG
            params.update(x0=box[0] - m, y0=box[1] - m, x1=box[2] + m, y1=box[3] + m)
        if class_ is not None:
            where.append("d.device_class = %(cls)s")
            params["cls"] = class_
        if district is not None:
            where.append("d.district = %(district)s")
            params["district"] = district
        query = (
            "select d.code, d.lon, d.lat, d.crs, d.device_class, d.model, d.district, d.name, d.state, l.last_seen,"
            # Shelved alerts do not make a device "alerting" (stats.counted_alert_sql).
            " exists (select 1 from alerts a where a.device_code = d.code and " + stats.counted_alert_sql("a") + "),"
            " s.connected, s.status_at, d.attributes"
            " from devices d left join device_liveness l on l.code = d.code"
            " left join device_sessions s on s.code = d.code where "
            + " and ".join(where)
            + " order by d.code limit %(limit)s"
        )
        async with pool.connection() as conn:
            rows = await (await conn.execute(query.encode(), params)).fetchall()
        truncated = len(rows) > limit
        rows = rows[:limit]
        lons, lats, masked = await geo.display_points([(r[0], r[1], r[2], r[3]) for r in rows], precise=precise)
        now = ctx.clock()
        features = []
        for i, r in enumerate(rows):
            x, y = float(lons[i]), float(lats[i])
            if box is not None and not (box[0] <= x <= box[2] and box[1] <= y <= box[3]):
                continue  # selected by the margin only, or its published position is elsewhere
            code, _, _, _, device_class, model, dist, name, state, last_seen, alerting, connected, status_at, attrs = r
            status = classify(
                last_seen,
                cadences.get(model),
                alerting=bool(alerting),
                now=now,
                connected=connected,
                status_at=status_at,
            )
            features.append(
                _feature(
                    {"type": "Point", "coordinates": [x, y]},
                    {
                        "code": code,
                        "class": device_class,
                        "model": model,
                        "district": dist,
                        "name": name,
                        "state": state,
                        "last_seen": last_seen.isoformat() if last_seen else None,
                        "status": status.value,
                        "masked": bool(masked[i]),
                        # Air devices: an assessment station (sets its area's AQI) or not (a
                        # micro-station, drawn as its own layer); None for other classes.
                        "assessment": assessment(attrs, model) if device_class == "air" else None,
                    },
                    code,
                )
            )
        if precise:
            await audit_precise(request, principal, [f["id"] for f in features if geo.is_sensitive(str(f["id"]))])
        return {"type": "FeatureCollection", "features": features, "truncated": truncated}

    @router.post("/api/v1/geo/devices/within", tags=["geo"])
    async def devices_within(query: PolygonQuery, request: Request, principal: _Reader) -> dict[str, Any]:
        """Codes of a class's devices inside a polygon (within the caller's grants)."""
        check_class(query.device_class)
        check_precise(principal, query.precise)
        try:
            polygon = fence_geometry(query.geometry, label="query polygon")
        except GeometryError as exc:
            raise HTTPException(422, str(exc)) from exc
        codes = await geo.within(query.device_class, polygon=shapely.make_valid(polygon), precise=query.precise)
        if not Scope.of(principal).allows_class(query.device_class):
            codes = []
        keep = await visible_codes(principal, codes)
        codes = [c for c in codes if c in keep]
        if query.precise:
            await audit_precise(request, principal, [c for c in codes if geo.is_sensitive(c)])
        return {"class": query.device_class, "count": len(codes), "codes": codes}

    @router.get("/api/v1/geo/nearest", tags=["geo"])
    async def nearest(
        request: Request,
        principal: _Reader,
        lon: Annotated[float, Query(ge=-180, le=180)],
        lat: Annotated[float, Query(ge=-90, le=90)],
        class_: Annotated[str, Query(alias="class")],
        k: Annotated[int, Query(ge=1, le=100)] = 5,
        crs: Crs = Crs.WGS84,
        precise: bool = False,
    ) -> dict[str, Any]:
        """The k devices of a class nearest to a point (within the caller's grants), with distance_m."""
        check_class(class_)
        check_precise(principal, precise)
        scope = Scope.of(principal)
        if crs is Crs.GCJ02:
            lon, lat = gcj02_to_wgs84(lon, lat)
        try:
            # A scoped caller may lose some of the k to its grants: ask for more, then keep k.
            wanted = k if scope.unrestricted else min(100, k * 4 + 20)
            found = await geo.nearest(lon, lat, class_, wanted, precise=precise)
        except CoordinateError as exc:
            raise HTTPException(422, str(exc)) from exc
        if not scope.allows_class(class_):
            found = []
        found = [n for n in found if scope.allows_district(n.district)][:k]
        if precise:
            await audit_precise(request, principal, [n.code for n in found if geo.is_sensitive(n.code)])
        features = [
            _feature(
                {"type": "Point", "coordinates": [n.lon, n.lat]},
                {
                    "code": n.code,
                    "class": class_,
                    "district": n.district,
                    "distance_m": round(n.distance_m, 1),
                    "rank": rank,
                    "masked": n.masked,
                },
                n.code,
            )
            for rank, n in enumerate(found, start=1)
        ]
        return {"type": "FeatureCollection", "features": features}

    @router.get("/api/v1/geo/aggregate", tags=["geo"])
    async def aggregate(
        principal: _Reader,
        metric: Annotated[str, Query(pattern=METRIC_NAME_PATTERN)],
        class_: Annotated[str, Query(alias="class")],
        level: Annotated[str, Query(pattern="^(district|grid)$")] = "district",
        max_age_s: Annotated[float, Query(gt=0, le=366 * 86400)] = DEFAULT_MAX_AGE_S,
    ) -> dict[str, Any]:
        """Per district or grid cell: mean/min/max of the latest values, devices, open alerts of the class."""
        check_class(class_)
        known = set(models.metrics_of_class(class_)) | stats.DERIVED_METRICS.get(class_, frozenset())
        if metric not in known:
            raise HTTPException(422, f"metric {metric!r} is not a metric of class {class_!r}; one of {sorted(known)}")
        async with pool.connection() as conn:
            items = await stats.aggregate(conn, level=level, metric=metric, device_class=class_, max_age_s=max_age_s)
        scope = Scope.of(principal)
        # Areas are district codes or grid cells (which start with their district's code).
        items = [i for i in items if scope.allows_class(class_) and scope.allows_district(str(i.get("area", ""))[:6])]
        return {"level": level, "metric": metric, "class": class_, "items": items}

    @router.get("/api/v1/geo/assign", tags=["geo"])
    async def assign(
        _: _Reader, lon: Annotated[float, Query()], lat: Annotated[float, Query()], crs: Crs = Crs.WGS84
    ) -> dict[str, Any]:
        """District, grid cell and geofences of a point; 422 outside the city, naming the nearest district."""
        try:
            a = await geo.assign(lon, lat, crs)
        except (OutsideCityError, CoordinateError) as exc:
            raise HTTPException(422, str(exc)) from exc
        return {
            "district": a.district.code,
            "district_name": a.district.name_zh,
            "grid": a.grid_cell,
            "fences": a.fences,
        }

    # -- geofences ------------------------------------------------------------------------

    @router.post("/api/v1/geo/fences", tags=["geo"], status_code=201)
    async def create_fence(
        request: Request,
        principal: _Writer,
        fence: FenceIn,
        repair: Annotated[bool, Query(description="Fix invalid polygons with make_valid")] = True,
    ) -> dict[str, Any]:
        """Create a geofence; 422 with the reason for an invalid polygon, 409 if the id exists."""
        try:
            valid = validate_fence(
                FenceDraft(fence.id, fence.name, fence.kind, fence.geometry, fence.crs), repair=repair
            )
            await geo.create_fences([valid], created_by=principal.user)
        except GeometryError as exc:
            raise HTTPException(422, str(exc)) from exc
        except FenceExistsError as exc:
            raise HTTPException(409, str(exc)) from exc
        await record(request, principal, "fence.create", f"fence/{fence.id}", {"kind": str(fence.kind.value)})
        stored = await geo.get_fence(fence.id)
        return {**stored, "repaired": valid.repaired}

    @router.post("/api/v1/geo/fences/import", tags=["geo"])
    async def import_fences(
        request: Request,
        principal: _Writer,
        collection: Annotated[dict[str, Any], Body(description="GeoJSON FeatureCollection")],
        kind: FenceKind = FenceKind.OTHER,
        crs: Crs = Crs.WGS84,
        replace: bool = False,
        repair: bool = True,
        created_by: Annotated[
            str, Query(max_length=100, description="Ignored: the creator is the authenticated principal")
        ] = "import",
    ) -> dict[str, Any]:
        """Import fences from a FeatureCollection, all or nothing; 422 lists every bad feature."""
        try:
            drafts, errors = fences_from_feature_collection(collection, default_kind=kind, crs=crs)
        except GeometryError as exc:
            raise HTTPException(422, str(exc)) from exc
        valid = []
        for draft in drafts:
            try:
                valid.append(validate_fence(draft, repair=repair))
            except GeometryError as exc:
                errors.append(str(exc))
        if errors:
            raise HTTPException(
                422, {"message": f"{len(errors)} feature(s) rejected; nothing imported", "errors": errors}
            )
        try:
            await geo.create_fences(valid, created_by=principal.user, replace=replace)
        except GeometryError as exc:
            raise HTTPException(422, str(exc)) from exc
        except FenceExistsError as exc:
            raise HTTPException(409, str(exc)) from exc
        await record(
            request,
            principal,
            "fence.import",
            "fences",
            {"ids": [v.draft.id for v in valid][:200], "count": len(valid), "replace": replace},
        )
        return {
            "imported": len(valid),
            "ids": [v.draft.id for v in valid],
            "repaired": {v.draft.id: v.repaired for v in valid if v.repaired},
        }

    @router.get("/api/v1/geo/fences", tags=["geo"])
    async def list_fences(
        _: _Reader,
        kind: FenceKind | None = None,
        bbox: Annotated[str | None, Query(description="minlon,minlat,maxlon,maxlat")] = None,
    ) -> dict[str, Any]:
        """Geofences as a FeatureCollection."""
        fences = await geo.list_fences(kind=kind, bbox=parse_bbox(bbox) if bbox else None)
        return {
            "type": "FeatureCollection",
            "features": [
                _feature(f["geometry"], {k: v for k, v in f.items() if k != "geometry"}, f["id"]) for f in fences
            ],
        }

    @router.get("/api/v1/geo/fences/{fence_id}", tags=["geo"])
    async def get_fence(fence_id: str, _: _Reader) -> dict[str, Any]:
        """One geofence as a Feature."""
        try:
            f = await geo.get_fence(fence_id)
        except FenceNotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        return _feature(f["geometry"], {k: v for k, v in f.items() if k != "geometry"}, f["id"])

    @router.delete("/api/v1/geo/fences/{fence_id}", tags=["geo"], status_code=204)
    async def delete_fence(fence_id: str, request: Request, principal: _Writer) -> Response:
        """Delete a geofence."""
        try:
            await geo.delete_fence(fence_id)
        except FenceNotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        await record(request, principal, "fence.delete", f"fence/{fence_id}")
        return Response(status_code=204)

    return router
