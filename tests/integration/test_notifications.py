"""Notification webhooks on real PostgreSQL against a real HTTP receiver on 127.0.0.1.

Notifications may not reach loopback by default (SSRF, :class:`alerts.notify.TargetPolicy`):
the kit allowlists 127.0.0.1 explicitly, as ``CITYBRAIN_NOTIFY_ALLOWED_HOSTS`` would; the
target-policy tests at the end use the default policy.

The receiver (aiohttp) checks what a WeCom/DingTalk robot or an SMS gateway would
see: the body, the HMAC signature and its timestamp, DingTalk's URL signature. It
answers 500 first where a test wants a retry. Subscriptions are made through the
API (permissions, masking, audit).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.notify import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Dispatcher,
    NotificationMetrics,
    NotificationStore,
    PolicyResolver,
    RetryPolicy,
    Subscription,
    TargetPolicy,
    WebhookSender,
    verify,
)
from citybrain.routes import notifications as notification_routes
from citybrain.routes.context import ApiContext
from devices.models import ModelRegistry
from tests.integration.helpers import api_key, secure

pytestmark = pytest.mark.integration

SECRET = "s3cret-for-tests"
FAST = RetryPolicy(attempts=3, first_wait_s=0.01, max_wait_s=0.05, timeout_s=5)
#: The receiver's address, allowed explicitly (the default policy refuses loopback).
LOCAL = TargetPolicy.parse("127.0.0.1")


@dataclass
class Receiver:
    """A local webhook target: records requests, fails the first ``fail_first`` with 500."""

    url: str = ""
    fail_first: int = 0
    fail_status: int = 500
    errcode_first: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"body": body, "headers": dict(request.headers), "query": dict(request.query)})
        if len(self.requests) <= self.fail_first:
            return web.Response(status=self.fail_status, text="boom")
        if len(self.requests) <= self.errcode_first:
            return web.json_response({"errcode": 310000, "errmsg": "sign not match"})
        return web.json_response({"errcode": 0, "errmsg": "ok"})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


@dataclass
class Kit:
    store: NotificationStore
    dispatcher: Dispatcher
    registry: CollectorRegistry
    client: httpx.AsyncClient
    admin: dict[str, str]


@asynccontextmanager
async def _kit(pool: AsyncConnectionPool, models: ModelRegistry, targets: TargetPolicy) -> AsyncIterator[Kit]:
    """API and dispatcher with one target policy, as the composition root wires them."""
    registry = CollectorRegistry()
    app = FastAPI()
    secure(app, pool)
    ctx = ApiContext(pool=pool, models=models, registry=CollectorRegistry(), notify_targets=targets)
    app.include_router(notification_routes.build(ctx))
    metrics = NotificationMetrics(registry)
    store = NotificationStore(pool, metrics, lease_s=60)
    admin = await api_key(pool, "admin")
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=PolicyResolver(targets))) as http,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        sender = WebhookSender(http, FAST, metrics, targets=targets)
        yield Kit(store, Dispatcher(store, sender), registry, client, admin)


@pytest.fixture
async def kit(pool: AsyncConnectionPool, models: ModelRegistry) -> AsyncIterator[Kit]:
    async with _kit(pool, models, LOCAL) as k:
        yield k


def _transition(
    kind: str = "open", severity: str = "major", rule: str = "air.pm25_high", district: str = "350203"
) -> dict[str, Any]:
    return {
        "v": 1,
        "id": "a" * 32,
        "rule": rule,
        "device": "35020303080000012",
        "district": district,
        "class": "air",
        "severity": severity,
        "state": "open",
        "opened_at": "2026-11-29T00:00:00Z",
        "cleared_at": None,
        "metric": "pm25",
        "value": 180.0,
        "threshold": 150.0,
        "message": "PM2.5 180 > 150",
        "labels": {},
        "transition": kind,
    }


async def _subscribe(kit: Kit, **fields: Any) -> dict[str, Any]:
    r = await kit.client.post("/api/v1/notifications/subscriptions", json=fields, headers=kit.admin)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _deliver_all(kit: Kit) -> None:
    # Claimed deliveries run as tasks: tick until nothing is due, waiting for each round.
    while await kit.dispatcher.tick():
        await kit.dispatcher.wait()
    await kit.dispatcher.wait()


def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


async def test_signed_json_delivery_retried_after_500_and_a_replay_duplicates_nothing(
    kit: Kit, receiver: Receiver
) -> None:
    receiver.fail_first = 1
    sub = await _subscribe(kit, name="sms", url=receiver.url, rule_pattern="air.*", secret=SECRET, districts=["350203"])
    doc = _transition()
    assert await kit.store.enqueue([doc]) == 1
    await _deliver_all(kit)

    assert len(receiver.requests) == 2  # a 500, then the retry
    first, second = receiver.requests
    assert first["body"] == second["body"]
    body = json.loads(second["body"])
    assert body["transition"] == "open" and body["alert"]["id"] == doc["id"] and body["subscription"] == sub["id"]
    assert "PM2.5 180 > 150" in body["text"] and "2026-11-29 08:00:00" in body["text"]  # Asia/Shanghai
    ts = int(second["headers"][TIMESTAMP_HEADER])
    assert verify(SECRET, ts, second["body"], second["headers"][SIGNATURE_HEADER], now=time.time())
    assert not verify("wrong", ts, second["body"], second["headers"][SIGNATURE_HEADER], now=time.time())
    assert not verify(SECRET, ts, second["body"], second["headers"][SIGNATURE_HEADER], now=ts + 3600)  # replayed late

    log = (
        await kit.client.get(f"/api/v1/notifications/subscriptions/{sub['id']}/deliveries", headers=kit.admin)
    ).json()
    assert len(log) == 1 and log[0]["status"] == "delivered" and log[0]["attempts"] == 2
    assert [(a["attempt"], a["http_status"]) for a in log[0]["attempts_log"]] == [(1, 500), (2, 200)]

    # The outbox republishes, or the consumer re-reads the topic: nothing is sent twice.
    assert await kit.store.enqueue([doc, doc]) == 0
    await _deliver_all(kit)
    assert len(receiver.requests) == 2
    assert _sample(kit.registry, "citybrain_notify_duplicates_total") == 2
    assert _sample(kit.registry, "citybrain_notify_attempts_total", {"outcome": "error"}) == 1
    assert _sample(kit.registry, "citybrain_notify_deliveries_total", {"status": "delivered"}) == 1
    # A new transition of the same alert is a new delivery.
    assert await kit.store.enqueue([_transition("clear")]) == 1


async def test_filters_rule_severity_and_district(kit: Kit, receiver: Receiver) -> None:
    await _subscribe(kit, name="f", url=receiver.url, rule_pattern="air.*", min_severity="major", districts=["350203"])
    assert await kit.store.enqueue([_transition(severity="warning")]) == 0
    assert await kit.store.enqueue([_transition(rule="water.ph_low")]) == 0
    assert await kit.store.enqueue([_transition(district="350206")]) == 0
    assert await kit.store.enqueue([_transition(severity="critical")]) == 1


async def test_dingtalk_markdown_signed_url_and_errcode_retry(kit: Kit, receiver: Receiver) -> None:
    receiver.errcode_first = 1  # the robot answers 200 with errcode 310000 first
    await _subscribe(kit, name="dt", url=receiver.url + "?access_token=tok", format="dingtalk_markdown", secret=SECRET)
    await kit.store.enqueue([_transition()])
    await _deliver_all(kit)
    assert len(receiver.requests) == 2
    req = receiver.requests[-1]
    body = json.loads(req["body"])
    assert body["msgtype"] == "markdown" and body["markdown"]["title"] == "[major] air.pm25_high"
    assert "PM2.5 180 > 150" in body["markdown"]["text"]
    q = req["query"]
    assert q["access_token"] == "tok"
    mac = hmac.new(SECRET.encode(), f"{q['timestamp']}\n{SECRET}".encode(), hashlib.sha256).digest()
    assert q["sign"] == base64.b64encode(mac).decode()


async def test_wecom_text_with_a_template_and_failure_after_bounded_attempts(kit: Kit, receiver: Receiver) -> None:
    receiver.fail_first = 99
    sub = await _subscribe(kit, name="wc", url=receiver.url, format="wecom_text", template="$severity: $rule @ $device")
    await kit.store.enqueue([_transition()])
    await _deliver_all(kit)
    assert len(receiver.requests) == FAST.attempts
    assert json.loads(receiver.requests[0]["body"]) == {
        "msgtype": "text",
        "text": {"content": "major: air.pm25_high @ 35020303080000012"},
    }
    log = (
        await kit.client.get(f"/api/v1/notifications/subscriptions/{sub['id']}/deliveries", headers=kit.admin)
    ).json()
    assert log[0]["status"] == "failed" and log[0]["attempts"] == FAST.attempts
    assert "HTTP 500" in log[0]["last_error"]
    assert _sample(kit.registry, "citybrain_notify_deliveries_total", {"status": "failed"}) == 1


async def test_api_masks_secrets_checks_permissions_scopes_districts_and_audits(
    kit: Kit, pool: AsyncConnectionPool, receiver: Receiver
) -> None:
    sub = await _subscribe(
        kit,
        name="wecom",
        url="https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc123",
        secret=SECRET,
        format="wecom_markdown",
    )
    assert sub["url"] == "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=***"
    assert sub["secret_set"] is True and "secret" not in sub and "abc123" not in json.dumps(sub)
    listed = (await kit.client.get("/api/v1/notifications/subscriptions", headers=kit.admin)).json()
    assert [s["id"] for s in listed] == [sub["id"]] and SECRET not in json.dumps(listed)

    # PATCH without a secret keeps it; the stored URL keeps its real key.
    r = await kit.client.patch(
        f"/api/v1/notifications/subscriptions/{sub['id']}", json={"enabled": False}, headers=kit.admin
    )
    assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["secret_set"] is True
    row = await kit.store.get_subscription(sub["id"])
    assert row is not None and row["secret"] == SECRET and row["url"].endswith("key=abc123")

    bad = await kit.client.post(
        "/api/v1/notifications/subscriptions", json={"name": "x", "url": "ftp://host/x"}, headers=kit.admin
    )
    assert bad.status_code == 422
    bad = await kit.client.post(
        "/api/v1/notifications/subscriptions",
        json={"name": "x", "url": receiver.url, "template": "$nope"},
        headers=kit.admin,
    )
    assert bad.status_code == 422 and "placeholder" in bad.text

    app_key = await api_key(pool, "app")
    assert (await kit.client.get("/api/v1/notifications/subscriptions", headers=app_key)).status_code == 403
    integrator = await api_key(pool, "integrator")
    assert (
        await kit.client.post(
            "/api/v1/notifications/subscriptions", json={"name": "x", "url": receiver.url}, headers=integrator
        )
    ).status_code == 403

    # An operator of 思明区 sees and writes only subscriptions limited to it.
    scoped = await api_key(pool, "operator", districts=("350203",))
    assert (await kit.client.get("/api/v1/notifications/subscriptions", headers=scoped)).json() == []
    assert (await kit.client.get(f"/api/v1/notifications/subscriptions/{sub['id']}", headers=scoped)).status_code == 404
    r = await kit.client.post(
        "/api/v1/notifications/subscriptions", json={"name": "all", "url": receiver.url}, headers=scoped
    )
    assert r.status_code == 403
    r = await kit.client.post(
        "/api/v1/notifications/subscriptions",
        json={"name": "mine", "url": receiver.url, "districts": ["350203"]},
        headers=scoped,
    )
    assert r.status_code == 201

    assert (
        await kit.client.delete(f"/api/v1/notifications/subscriptions/{sub['id']}", headers=kit.admin)
    ).status_code == 204
    async with pool.connection() as conn:
        actions = [
            r[0]
            for r in await (
                await conn.execute("select action from audit_log where action like 'notification.%%' order by seq")
            ).fetchall()
        ]
        details = await (
            await conn.execute("select details::text from audit_log where action = 'notification.create'")
        ).fetchall()
    assert actions == ["notification.create", "notification.update", "notification.create", "notification.delete"]
    assert all("abc123" not in d[0] and SECRET not in d[0] for d in details)


async def test_subscription_edits_reach_the_matcher(kit: Kit, receiver: Receiver) -> None:
    sub = await _subscribe(kit, name="x", url=receiver.url, rule_pattern="water.*")
    assert await kit.store.enqueue([_transition()]) == 0
    r = await kit.client.patch(
        f"/api/v1/notifications/subscriptions/{sub['id']}", json={"rule_pattern": "*"}, headers=kit.admin
    )
    assert r.status_code == 200
    assert await kit.store.enqueue([_transition()]) == 1


@pytest.mark.parametrize(("status", "attempts"), [(404, 1), (400, 1), (429, FAST.attempts), (503, FAST.attempts)])
async def test_a_client_error_is_not_retried_but_throttling_and_server_errors_are(
    kit: Kit, receiver: Receiver, status: int, attempts: int
) -> None:
    receiver.fail_first, receiver.fail_status = 99, status
    sub = await _subscribe(kit, name="x", url=receiver.url)
    await kit.store.enqueue([_transition()])
    await _deliver_all(kit)
    assert len(receiver.requests) == attempts
    log = (
        await kit.client.get(f"/api/v1/notifications/subscriptions/{sub['id']}/deliveries", headers=kit.admin)
    ).json()
    assert log[0]["status"] == "failed" and log[0]["attempts"] == attempts


# -- target policy (SSRF) ---------------------------------------------------------------


async def test_loopback_link_local_and_private_targets_are_refused_on_create_by_default(
    pool: AsyncConnectionPool, models: ModelRegistry, receiver: Receiver
) -> None:
    async with _kit(pool, models, TargetPolicy()) as kit:
        port = receiver.url.split(":")[2].split("/")[0]
        for url, category in [
            (receiver.url, "loopback"),
            (f"http://localhost:{port}/hook", "loopback"),  # a name that resolves to 127.0.0.1
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://10.1.2.3/sms", "private"),
            ("http://[::1]:8080/hook", "loopback"),
            ("http://[fd00::5]/hook", "private"),
            ("http://0.0.0.0:8080/", "unspecified"),
        ]:
            r = await kit.client.post(
                "/api/v1/notifications/subscriptions", json={"name": "x", "url": url}, headers=kit.admin
            )
            assert r.status_code == 422, (url, r.text)
            detail = r.json()["detail"]
            assert f"is a {category} address" in detail and "CITYBRAIN_NOTIFY_ALLOWED_HOSTS" in detail, detail
        # Nor can an existing subscription be pointed there.
        ok = await _subscribe(kit, name="robot", url="https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k")
        r = await kit.client.patch(
            f"/api/v1/notifications/subscriptions/{ok['id']}", json={"url": receiver.url}, headers=kit.admin
        )
        assert r.status_code == 422 and "loopback" in r.json()["detail"]
    assert receiver.requests == []


async def test_a_name_pointing_to_loopback_at_send_time_is_refused_recorded_and_not_retried(
    pool: AsyncConnectionPool, models: ModelRegistry, receiver: Receiver
) -> None:
    """DNS changed after the subscription was made: the worker resolves again and refuses."""
    async with _kit(pool, models, TargetPolicy()) as kit:
        port = receiver.url.split(":")[2].split("/")[0]
        # As if it had been accepted while the name pointed to a public address.
        sub_id = await kit.store.create_subscription(
            Subscription(id=0, name="moved", url=f"http://localhost:{port}/hook", rule_pattern="air.*"), "test"
        )
        assert await kit.store.enqueue([_transition()]) == 1
        await _deliver_all(kit)
        assert receiver.requests == []
        (d,) = (
            await kit.client.get(f"/api/v1/notifications/subscriptions/{sub_id}/deliveries", headers=kit.admin)
        ).json()
        assert d["status"] == "failed" and d["attempts"] == 1, d  # not retried
        assert d["last_error"].startswith("refused: target localhost (") and "loopback" in d["last_error"]
        assert d["attempts_log"][0]["error"] == d["last_error"] and d["attempts_log"][0]["http_status"] is None
        assert _sample(kit.registry, "citybrain_notify_refused_total", {"category": "loopback"}) == 1
        assert _sample(kit.registry, "citybrain_notify_attempts_total", {"outcome": "refused"}) == 1
        assert _sample(kit.registry, "citybrain_notify_deliveries_total", {"status": "failed"}) == 1


async def test_an_allowlisted_local_target_is_accepted_and_delivered(
    pool: AsyncConnectionPool, models: ModelRegistry, receiver: Receiver
) -> None:
    """The city allows its own gateway: by name here, through the connector's resolver too."""
    async with _kit(pool, models, TargetPolicy.parse("localhost")) as kit:
        port = receiver.url.split(":")[2].split("/")[0]
        await _subscribe(kit, name="gateway", url=f"http://localhost:{port}/hook", rule_pattern="air.*")
        assert await kit.store.enqueue([_transition()]) == 1
        await _deliver_all(kit)
    assert len(receiver.requests) == 1
