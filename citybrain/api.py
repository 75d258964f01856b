"""The HTTP API (FastAPI). OpenAPI is served at /docs and /openapi.json.

Built by :func:`create_api` from typed arguments; the database pool opens in
the app's lifespan, never at import.

Every route declares its access rule (``require(permission)`` or
``public(reason)``, :mod:`citybrain.security.auth`); :func:`create_api` refuses
to build an app with a route that declares none, and copies each permission
into the OpenAPI document as ``x-citybrain-permission``. The endpoint × role
table is in docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from psycopg_pool import AsyncConnectionPool

from alerts.feed import AlertFeed, FeedMetrics
from alerts.notify import TargetPolicy
from alerts.store import AlertStore
from citybrain.console import routes as console_routes
from citybrain.routes import alerts as alert_routes
from citybrain.routes import apidocs as apidocs_routes
from citybrain.routes import commands as command_routes
from citybrain.routes import debug as debug_routes
from citybrain.routes import devices as device_routes
from citybrain.routes import geo as geo_routes
from citybrain.routes import ledger as ledger_routes
from citybrain.routes import notifications as notification_routes
from citybrain.routes import readings as reading_routes
from citybrain.routes import schemas as schema_routes
from citybrain.routes import sources as source_routes
from citybrain.routes import stats as stats_routes
from citybrain.routes import vitals as vitals_routes
from citybrain.routes import webhook as webhook_routes
from citybrain.routes.context import ApiContext
from citybrain.security import routes as security_routes
from citybrain.security.auth import Security, public
from citybrain.security.auth import install as install_security
from citybrain.security.guard import EdgeLimits, install_guard
from citybrain.security.policy import annotate_openapi, undeclared_routes
from core.records import Severity
from core.retry import retrying
from devices.models import ModelRegistry
from ingest.errors import IngestError
from ingest.kafka_sink import KafkaSink, KafkaSinkConfig, KafkaSinkMetrics

__all__ = ["ROUTE_MODULES", "create_api"]

# Each module exposes build(ctx) -> APIRouter. Add new areas here (one line each).
ROUTE_MODULES = [
    device_routes,
    ledger_routes,
    reading_routes,
    stats_routes,
    source_routes,
    alert_routes,
    command_routes,
    geo_routes,
    vitals_routes,
    schema_routes,
    console_routes,
    apidocs_routes,
    notification_routes,
    debug_routes,
]

log = logging.getLogger(__name__)

# The webhook reads its body raw and dead-letters what it cannot use: no body scan at the edge.
WEBHOOK_PREFIX = "/api/v1/ingest/webhook/"


def create_api(
    database_url: str,
    models: ModelRegistry,
    registry: CollectorRegistry,
    *,
    ingest: KafkaSinkConfig | None = None,
    webhook_token: str = "",
    webhook_max_body_bytes: int = 65536,
    max_future_skew: timedelta = timedelta(minutes=5),
    limits: EdgeLimits | None = None,
    notify_targets: TargetPolicy | None = None,
    pool_max_lifetime_s: float = 600.0,
) -> FastAPI:
    """Build the API app; the pool (and the webhook's Kafka sink) open in the lifespan.

    Args:
        database_url: PostgreSQL URL.
        models: Device models.
        registry: Prometheus registry for every metric of this process.
        ingest: Kafka sink settings for the NB-IoT webhook; ``None`` leaves it unmounted.
        webhook_token: Shared token the platforms must send (empty: every push is refused, 503).
        webhook_max_body_bytes: Largest accepted webhook body.
        max_future_skew: Readings dated further ahead are kept out of "latest".
        limits: Body bounds of every request (:mod:`citybrain.security.guard`); default bounds if ``None``.
        notify_targets: Where notification subscriptions may point (default: public addresses only).
        pool_max_lifetime_s: Pooled connections are replaced after this long (a backend's caches
            grow with every partition it touches and are freed only when it ends).
    """
    pool = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=8,
        max_lifetime=pool_max_lifetime_s,
        open=False,
        check=AsyncConnectionPool.check_connection,
    )
    feed = AlertFeed(database_url, FeedMetrics(registry))
    open_alerts = Gauge("citybrain_alerts_open", "Alerts not resolved, by severity", ["severity"], registry=registry)
    alert_store = AlertStore(pool)

    async def _gauges() -> None:
        # Open alerts by severity, refreshed in the background (a scrape must not query the database).
        while True:
            try:
                counts = await alert_store.open_counts()
                for sev in Severity:
                    open_alerts.labels(sev.label).set(counts.get(sev.label, 0))
            except Exception as exc:
                log.warning("could not refresh open-alert gauges: %s", exc)
            await asyncio.sleep(10)

    requests = Counter(
        "citybrain_api_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry
    )

    async def _connect_sink(sink: KafkaSink) -> None:
        # In the background: reads and the console must not wait for Kafka; until the sink
        # is up the webhook answers 503 and the platforms retry.
        retry = retrying(IngestError, what="webhook sink", log=log, wait_s=1.0, max_wait_s=30.0, level=logging.WARNING)
        await retry(sink.start)
        log.info("webhook sink connected to Kafka at %s", sink.cfg.kafka_bootstrap)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=30)
        connecting = asyncio.create_task(_connect_sink(sink), name="webhook-sink") if sink is not None else None
        await feed.start()
        gauges = asyncio.create_task(_gauges(), name="api-gauges")
        try:
            yield
        finally:
            gauges.cancel()
            await feed.stop()
            if connecting is not None:
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connecting
            if sink is not None:
                await sink.stop()
            await pool.close()

    app = FastAPI(
        title="citybrain API",
        version="1",
        description="City IoT sensing hub: devices, readings, alerts.",
        lifespan=lifespan,
        # Served from local files by citybrain.routes.apidocs (FastAPI's use a CDN).
        docs_url=None,
        redoc_url=None,
    )
    # First, so that every middleware added after it (the request counter) sees its refusals.
    limits = limits or EdgeLimits()
    install_guard(app, replace(limits, raw_body_prefixes=(*limits.raw_body_prefixes, WEBHOOK_PREFIX)), registry)
    from geo.assign import Assigner
    from geo.districts import load_districts
    from geo.grid import Grid

    districts = load_districts()
    ctx = ApiContext(
        pool=pool,
        models=models,
        registry=registry,
        alert_feed=feed,
        assigner=Assigner(districts, Grid.build(districts)),
        max_future_skew=max_future_skew,
        notify_targets=notify_targets if notify_targets is not None else TargetPolicy(),
    )
    for module in ROUTE_MODULES:
        app.include_router(module.build(ctx))
    security = Security.create(pool, registry)
    install_security(app, security)
    app.include_router(security_routes.build(ctx, security))
    sink = KafkaSink(ingest, KafkaSinkMetrics(registry)) if ingest is not None else None
    if sink is not None:
        if not webhook_token:
            log.warning("CITYBRAIN_WEBHOOK_TOKEN is not set: the NB-IoT webhook refuses every push (503)")
        deps = webhook_routes.WebhookDeps(sink, webhook_token, webhook_max_body_bytes, ready=sink.healthy)
        app.include_router(webhook_routes.build(ctx, deps))

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        requests.labels(request.method, path, str(response.status_code)).inc()
        return response

    @app.get("/healthz", tags=["ops"], dependencies=[Depends(public("liveness probe; no data"))])
    async def healthz() -> dict[str, str]:
        try:
            async with pool.connection(timeout=2) as conn:
                await conn.execute("select 1")
        except Exception as exc:
            raise HTTPException(503, f"database unavailable: {exc}") from exc
        return {"status": "ok"}

    # Open for the scraper: bind the API to an internal interface (docs/security.md).
    @app.get(
        "/metrics",
        tags=["ops"],
        include_in_schema=False,
        dependencies=[Depends(public("Prometheus scrape; bind to an internal interface"))],
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    annotate_openapi(app)
    missing = undeclared_routes(app)
    if missing:
        # A route without require() or public() would be open by accident: refuse to start.
        raise RuntimeError(f"routes without an access rule: {', '.join(missing)}")
    return app
