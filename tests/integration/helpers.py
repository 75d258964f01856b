"""Helpers for integration tests against real servers."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.security.auth import API_KEY_HEADER, Security, install
from citybrain.security.identities import IdentityStore, NewPrincipal


async def create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def consume(
    bootstrap: str,
    topic: str,
    want: int,
    timeout: float = 20.0,
    predicate: Callable[[ConsumerRecord], bool] | None = None,
) -> list[ConsumerRecord]:
    """Read a topic from the start until ``want`` matching records arrived (or time out)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                out.extend(r for r in recs if predicate is None or predicate(r))
    finally:
        await consumer.stop()
    return out


def mqtt_client(host: str, port: int, client_id: str | None = None, **kw: Any) -> mqtt.Client:
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
        **kw,
    )
    c.connect(host, port, keepalive=30)
    c.loop_start()
    return c


def wait_for(check: Callable[[], bool], timeout: float = 20.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


async def await_for(check: Callable[[], object], timeout: float = 20.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = check()
        if asyncio.iscoroutine(res):
            res = await res
        if res:
            return True
        await asyncio.sleep(interval)
    return False


# --- authentication ------------------------------------------------------------------------------


def secure(app: FastAPI, pool: AsyncConnectionPool) -> Security:
    """Install the security bundle on a test app built from a few route modules (as create_api does)."""
    security = Security.create(pool, CollectorRegistry())
    install(app, security)
    return security


async def api_key(
    pool: AsyncConnectionPool,
    role: str = "admin",
    *,
    districts: tuple[str, ...] = (),
    classes: tuple[str, ...] = (),
    name: str | None = None,
) -> dict[str, str]:
    """Create a service account with one role and grants; return its ``X-Api-Key`` header.

    Usage: ``headers = await api_key(pool, "operator", districts=("350203",))``, then
    ``httpx.AsyncClient(..., headers=headers)`` or per request.
    """
    identities = IdentityStore(pool)
    who = name or f"t-{role}-{uuid.uuid4().hex[:8]}"
    await identities.create(NewPrincipal(who, (role,), "service", districts, classes))
    issued = await identities.create_api_key(who, label="test")
    return {API_KEY_HEADER: issued.key}


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run an app under uvicorn on a free local port (for what ASGITransport cannot do: SSE); yields its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        assert await await_for(lambda: server.started or task.done(), timeout=30), "uvicorn did not start"
        if task.done():
            task.result()  # re-raise the start-up error
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
