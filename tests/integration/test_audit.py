"""Audit log, identities, sessions and require() on real PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import psycopg
import pytest
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.routes.context import ApiContext
from citybrain.security import routes as security_routes
from citybrain.security.audit import AuditLog, verify, verify_async
from citybrain.security.auth import API_KEY_HEADER, CSRF_HEADER, SESSION_COOKIE, Security, install, require
from citybrain.security.cli import cmd_audit_verify, cmd_users_add
from citybrain.security.errors import AuditError, IdentityError
from citybrain.security.identities import IdentityStore, NewPrincipal, Principal
from citybrain.security.ratelimit import BucketSpec, LoginLimiter
from citybrain.settings import Settings
from devices.credentials import ScryptParams
from devices.models import ModelRegistry

pytestmark = pytest.mark.integration

CHEAP = ScryptParams(ln=4, r=8, p=1)  # tests only: the real cost is PASSWORD_SCRYPT


async def test_entries_verify_ok_and_tamper_is_detected(pool: AsyncConnectionPool, database_url: str) -> None:
    log = AuditLog(pool)
    for i in range(10):
        await log.record(
            f"user{i % 3}",
            "alert.ack",
            f"alert/{i}",
            "success",
            "10.0.0.7",
            {"i": i, "big": 1e20, "small": 1.5e-7, "text": "思明区", "nested": {"b": [1, 2.5, None], "a": True}},
        )
    with psycopg.connect(database_url) as conn:
        report = verify(conn)
    assert report.ok and report.rows == 10, report.describe()
    async with pool.connection() as aconn:
        assert (await verify_async(aconn)).ok

    # Append-only for everybody the triggers apply to.
    with psycopg.connect(database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("update audit_log set details = '{}' where seq = 4")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from audit_log where seq = 4")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("truncate audit_log")
        # A superuser can switch the trigger off; the hash chain still tells.
        conn.execute("alter table audit_log disable trigger audit_log_no_update")
        conn.execute("""update audit_log set details = details || '{"i": 99}' where seq = 6""")
        conn.execute("alter table audit_log enable trigger audit_log_no_update")
        report = verify(conn)
    assert not report.ok
    assert report.first_bad_seq == 6 and report.reason == "hash_mismatch"

    settings = Settings(database_url=database_url)
    assert cmd_audit_verify(argparse.Namespace(), settings) == 1


async def test_deleted_row_and_cut_tail_are_detected(pool: AsyncConnectionPool, database_url: str) -> None:
    log = AuditLog(pool)
    for i in range(5):
        await log.record("ops", "device.update", f"device/{i}")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("alter table audit_log disable trigger audit_log_no_update")
        conn.execute("delete from audit_log where seq = 5")
        conn.execute("alter table audit_log enable trigger audit_log_no_update")
        tail = verify(conn)
        conn.execute("alter table audit_log disable trigger audit_log_no_update")
        conn.execute("delete from audit_log where seq = 2")
        conn.execute("alter table audit_log enable trigger audit_log_no_update")
        gap = verify(conn)
    assert (tail.ok, tail.reason, tail.first_bad_seq) == (False, "head_mismatch", 5)
    assert (gap.ok, gap.reason, gap.first_bad_seq) == (False, "seq_gap", 2)


async def test_concurrent_writers_keep_one_chain(pool: AsyncConnectionPool, database_url: str) -> None:
    log = AuditLog(pool)
    rows = await asyncio.gather(*(log.record(f"w{i % 7}", "reading.export", f"r/{i}") for i in range(60)))
    assert sorted(r.seq for r in rows) == list(range(1, 61))
    with psycopg.connect(database_url) as conn:
        report = verify(conn)
    assert report.ok and report.rows == 60, report.describe()


async def test_query_filters_and_pages(pool: AsyncConnectionPool) -> None:
    log = AuditLog(pool)
    for i in range(7):
        await log.record("alice" if i % 2 else "bob", "session.login" if i < 4 else "alert.ack")
    assert [r.seq for r in await log.query(actor="alice")] == [6, 4, 2]
    assert [r.seq for r in await log.query(action="session.*")] == [4, 3, 2, 1]
    page = await log.query(limit=3)
    assert [r.seq for r in page] == [7, 6, 5]
    assert [r.seq for r in await log.query(limit=3, before_seq=page[-1].seq)] == [4, 3, 2]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await log.query(since=future) == []
    with pytest.raises(AuditError):
        await log.record("x", "y", outcome="maybe")


@pytest.fixture
async def security(pool: AsyncConnectionPool) -> Security:
    identities = IdentityStore(pool, password_params=CHEAP)
    limiter = LoginLimiter(per_user=BucketSpec(3, 1 / 3600), per_ip=BucketSpec(100, 1 / 3600), clock=lambda: 0.0)
    sec = Security.create(pool, CollectorRegistry(), identities=identities, limiter=limiter)
    await identities.create(NewPrincipal("olga", ("operator",), districts=("350203",)), "correct horse battery")
    await identities.create(NewPrincipal("audra", ("auditor",)), "auditor password 1")
    return sec


@pytest.fixture
async def client(
    security: Security, pool: AsyncConnectionPool, models: ModelRegistry
) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install(app, security)
    app.include_router(
        security_routes.build(ApiContext(pool=pool, models=models, registry=CollectorRegistry()), security)
    )

    @app.post("/act")
    async def act(principal: Annotated[Principal, Depends(require("alerts:act"))]) -> dict[str, Any]:
        return {"user": principal.user, "via": principal.via, "districts": sorted(principal.districts)}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://t") as c:
        yield c


async def test_session_login_csrf_logout_and_audit(
    client: httpx.AsyncClient, security: Security, database_url: str
) -> None:
    assert (await client.get("/api/v1/session")).status_code == 401
    assert (await client.post("/act")).status_code == 401

    r = await client.post("/api/v1/session", json={"username": "olga", "password": "correct horse battery"})
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    csrf = r.json()["csrf_token"]
    assert r.json()["principal"]["roles"] == ["operator"]

    who = await client.get("/api/v1/session")
    assert who.status_code == 200 and who.json()["principal"]["via"] == "session"
    assert who.json()["csrf_token"] == csrf  # a reloaded console gets it back
    # Cookie + unsafe method: the CSRF token is required.
    assert (await client.post("/act")).status_code == 403
    assert (await client.post("/act", headers={CSRF_HEADER: "0" * 64})).status_code == 403
    ok = await client.post("/act", headers={CSRF_HEADER: csrf})
    assert ok.json() == {"user": "olga", "via": "session", "districts": ["350203"]}
    # An operator is not an auditor.
    assert (await client.get("/api/v1/audit")).status_code == 403

    assert (await client.delete("/api/v1/session")).status_code == 403
    assert (await client.delete("/api/v1/session", headers={CSRF_HEADER: csrf})).status_code == 204
    assert SESSION_COOKIE not in client.cookies
    assert (await client.get("/api/v1/session")).status_code == 401

    r = await client.post("/api/v1/session", json={"username": "audra", "password": "auditor password 1"})
    page = (await client.get("/api/v1/audit", params={"action": "session.*", "limit": 2})).json()
    assert [(i["actor"], i["action"]) for i in page["items"]] == [
        ("audra", "session.login"),
        ("olga", "session.logout"),
    ]
    rest = (await client.get("/api/v1/audit", params={"before_seq": page["next_before_seq"]})).json()
    # The operator's refused GET /api/v1/audit is in the trail too.
    assert [(i["actor"], i["action"], i["outcome"]) for i in rest["items"]] == [
        ("olga", "authz.deny", "denied"),
        ("olga", "session.login", "success"),
    ]
    assert rest["items"][0]["resource"] == "GET /api/v1/audit"
    assert rest["items"][0]["details"] == {"permission": "audit:read"}
    assert rest["items"][1]["ip"] == "127.0.0.1"
    with psycopg.connect(database_url) as conn:
        assert verify(conn).ok


async def test_failed_logins_are_throttled_and_audited(client: httpx.AsyncClient, security: Security) -> None:
    bad = {"username": "olga", "password": "wrong password!"}
    for _ in range(3):
        assert (await client.post("/api/v1/session", json=bad)).status_code == 401
    r = await client.post("/api/v1/session", json=bad)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    # Even the right password waits: the bucket is per username.
    right = {"username": "olga", "password": "correct horse battery"}
    assert (await client.post("/api/v1/session", json=right)).status_code == 429
    # An unknown user costs a bucket too, but a different one.
    assert (await client.post("/api/v1/session", json={"username": "mallory", "password": "x"})).status_code == 401
    assert security.metrics.logins.labels("throttled")._value.get() == 2
    assert security.metrics.logins.labels("bad_credentials")._value.get() == 4
    assert security.metrics.throttled.labels("user")._value.get() == 2
    outcomes = [(r.actor, r.outcome) for r in await security.audit.query(action="session.login")]
    assert outcomes == [("mallory", "failure")] + [("olga", "throttled")] * 2 + [("olga", "failure")] * 3


async def test_api_key_and_jwt(client: httpx.AsyncClient, security: Security) -> None:
    ids = security.identities
    await ids.create(NewPrincipal("svc-alerts", ("operator",), kind="service"))
    issued = await ids.create_api_key("svc-alerts", label="test")
    assert issued.key.startswith(f"cbk_{issued.prefix}_")

    r = await client.post("/act", headers={API_KEY_HEADER: issued.key})
    assert r.status_code == 200 and r.json()["via"] == "api_key"  # no CSRF for API keys
    # Change the last character (to another one: the key may already end in "A").
    tampered = issued.key[:-1] + ("B" if issued.key.endswith("A") else "A")
    assert (await client.post("/act", headers={API_KEY_HEADER: tampered})).status_code == 401

    tok = await client.post("/api/v1/token", headers={API_KEY_HEADER: issued.key})
    assert tok.status_code == 200, tok.text
    jwt = tok.json()["access_token"]
    bearer = {"Authorization": f"Bearer {jwt}"}
    assert (await client.post("/act", headers=bearer)).json()["via"] == "jwt"
    assert (await client.post("/api/v1/token", headers=bearer)).status_code == 403

    # Rotation: the old key still verifies its tokens; new tokens use the new kid.
    await ids.rotate_signing_key()
    await security.auth.ring(refresh=True)
    assert (await client.post("/act", headers=bearer)).status_code == 200
    jwt2 = (await client.post("/api/v1/token", headers={API_KEY_HEADER: issued.key})).json()["access_token"]
    assert jwt2.split(".")[0] != jwt.split(".")[0]

    assert await ids.revoke_api_key(issued.prefix)
    assert (await client.post("/act", headers={API_KEY_HEADER: issued.key})).status_code == 401
    await ids.set_disabled("svc-alerts", True)
    assert (await client.post("/act", headers=bearer)).status_code == 401
    assert (await client.post("/act", headers={"Authorization": "Basic abc"})).status_code == 401


async def test_identity_validation(security: Security) -> None:
    with pytest.raises(IdentityError):
        NewPrincipal("x", ("root",))
    with pytest.raises(IdentityError):
        NewPrincipal("x", ("operator",), districts=("3502",))
    with pytest.raises(IdentityError):
        await security.identities.create(NewPrincipal("olga", ("operator",)))
    with pytest.raises(IdentityError):
        await security.identities.create(NewPrincipal("short", ("operator",)), "short")


def test_cli_users_add_prints_password_once(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(
        name="ops1", role=["operator"], district=["350203,350206"], device_class=["air"], topic=[], service=False
    )
    assert cmd_users_add(args, Settings(database_url=database_url)) == 0
    out = capsys.readouterr().out
    password = out.strip().splitlines()[-1].rsplit(" ", 1)[1]
    assert len(password) >= 20
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select roles, districts, password_hash from principals where name = 'ops1'").fetchone()
        assert row is not None and row[0] == ["operator"] and row[1] == ["350203", "350206"]
        assert password not in row[2]
        assert conn.execute("select action from audit_log").fetchall() == [("user.create",)]
    assert cmd_audit_verify(argparse.Namespace(), Settings(database_url=database_url)) == 0
    assert "OK: 1 audit rows" in capsys.readouterr().out
