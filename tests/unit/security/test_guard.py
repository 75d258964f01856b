"""The API edge (citybrain.security.guard) on a small app: body bounds, NUL refusal, short 422s."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Header, Query
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from citybrain.security.guard import ECHO_CHARS, EdgeLimits, install_guard, short

JSON = {"content-type": "application/json"}
LIMITS = EdgeLimits(max_body_bytes=64 * 1024, anonymous_max_body_bytes=2048, raw_body_prefixes=("/raw/",))


class Login(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


def _app(registry: CollectorRegistry) -> FastAPI:
    app = FastAPI()
    install_guard(app, LIMITS, registry)

    @app.post("/login")
    async def login(body: Login) -> dict[str, str]:
        return {"user": body.username}

    @app.get("/items/{name}")
    async def item(name: str, q: Annotated[str | None, Query()] = None, x_tag: Annotated[str, Header()] = "") -> dict:
        return {"name": name, "q": q, "tag": x_tag}

    @app.post("/raw/push")
    async def raw(body: dict[str, object]) -> dict[str, int]:
        return {"keys": len(body)}

    return app


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, CollectorRegistry]]:
    registry = CollectorRegistry()
    transport = httpx.ASGITransport(app=_app(registry), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c, registry


def _rejected(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("citybrain_api_rejected_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize(
    ("url", "headers", "loc"),
    [
        ("/items/a%00b", {}, ["path"]),
        ("/items/a?q=%00", {}, ["query", "q"]),
        ("/items/a?q=ok&other=x%00", {}, ["query", "other"]),
        ("/items/a", {"x-tag": "a\x00b"}, ["header", "x-tag"]),
    ],
)
async def test_nul_in_path_query_or_header_is_a_422(
    client: tuple[httpx.AsyncClient, CollectorRegistry], url: str, headers: dict[str, str], loc: list[str]
) -> None:
    c, registry = client
    r = await c.get(url, headers=headers)
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == loc and err["type"] == "string_unstorable"
    assert _rejected(registry, "nul") == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"username": "a\\u0000", "password": "p"}',
        b'{"username": "a", "password": "p", "extra": {"k\\u0000": 1}}',
        b'{"username": "a", "password": "p", "list": ["x", "\\ud800"]}',
        b'{"username": "a\x00", "password": "p"}',
    ],
)
async def test_nul_or_lone_surrogate_in_a_json_body_is_a_422(
    client: tuple[httpx.AsyncClient, CollectorRegistry], body: bytes
) -> None:
    c, _ = client
    r = await c.post("/login", content=body, headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["type"] == "string_unstorable"


async def test_an_escaped_backslash_is_not_a_nul(client: tuple[httpx.AsyncClient, CollectorRegistry]) -> None:
    c, _ = client
    # The characters backslash, "u0000": a legal string, not a NUL.
    r = await c.post("/login", content=b'{"username": "a\\\\u0000", "password": "p"}', headers=JSON)
    assert r.status_code == 200 and r.json() == {"user": "a\\u0000"}


async def test_raw_body_routes_are_not_scanned(client: tuple[httpx.AsyncClient, CollectorRegistry]) -> None:
    c, _ = client
    r = await c.post("/raw/push", content=b'{"a\\u0000": 1}', headers={"x-api-key": "k", **JSON})
    assert r.status_code == 200, r.text


async def test_bodies_are_bounded_small_without_credentials_larger_with(
    client: tuple[httpx.AsyncClient, CollectorRegistry],
) -> None:
    c, registry = client
    big = {"username": "u" * 4000, "password": "p"}
    r = await c.post("/login", json=big)
    assert r.status_code == 413
    # Without Content-Length (chunked): counted as it arrives.

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    r = await c.post("/login", content=chunks())
    assert r.status_code == 413
    # Declared too large: refused before the body is read.
    r = await c.post("/login", content=b"{}", headers={"content-length": str(10**9)})
    assert r.status_code == 413
    assert _rejected(registry, "body_too_large") == 3
    # A credential (any; it is checked later) raises the bound; the model then refuses the length.
    r = await c.post("/login", json=big, headers={"x-api-key": "cbk_x"})
    assert r.status_code == 422
    r = await c.post("/login", json={"username": "u", "password": "p" * 100_000}, headers={"x-api-key": "cbk_x"})
    assert r.status_code == 413


async def test_validation_errors_echo_only_a_short_prefix(
    client: tuple[httpx.AsyncClient, CollectorRegistry],
) -> None:
    c, registry = client
    r = await c.post("/login", json={"username": "u" * 1500, "password": "p"})
    assert r.status_code == 422
    assert len(r.content) < 600, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "username"]
    assert err["input"].startswith("u" * ECHO_CHARS) and "(1500 characters)" in err["input"]
    assert _rejected(registry, "validation") == 1
    # A missing field: FastAPI's input is the whole body object; only its shape is said.
    r = await c.post("/login", json={"password": "p", "pad": "x" * 1500})
    assert r.json()["detail"][0]["input"] == "<object with 2 keys>"


def test_short_escapes_and_cuts() -> None:
    assert short("a\x00\x1b") == "a\\x00\\x1b"
    assert short(7) == 7 and short(None) is None
    assert short("x" * 100).endswith("… (100 characters)")
    assert short([1, 2]) == "<array of 2 items>"
