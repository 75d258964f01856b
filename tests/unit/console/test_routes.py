"""The console router: index, static files, content types, revalidation, no traversal."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources

import httpx
import pytest
from fastapi import FastAPI

from citybrain.console.routes import CONTENT_TYPES, build, load_static


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(build(None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


async def test_index_is_html_with_a_strict_csp(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert b'<script type="module" src="/static/app.js">' in r.content


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("i18n.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
    ],
)
async def test_static_files_have_their_content_type(client: httpx.AsyncClient, name: str, ctype: str) -> None:
    r = await client.get(f"/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"] == ctype
    assert r.headers["cache-control"] == "no-cache"


async def test_etag_revalidation_answers_304(client: httpx.AsyncClient) -> None:
    first = await client.get("/static/app.js")
    etag = first.headers["etag"]
    again = await client.get("/static/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert (await client.get("/static/app.js", headers={"If-None-Match": '"other"'})).status_code == 200


@pytest.mark.parametrize("name", ["nope.js", "..%2Froutes.py", "%2E%2E%2F__init__.py", ".hidden.js", "routes.py"])
async def test_unknown_or_unsafe_names_are_404(client: httpx.AsyncClient, name: str) -> None:
    assert (await client.get(f"/static/{name}")).status_code == 404


def test_every_shipped_file_is_served_and_every_module_import_resolves() -> None:
    files = load_static()
    static = resources.files("citybrain.console").joinpath("static")
    shipped = {e.name for e in static.iterdir() if e.is_file() and not e.name.startswith(".")}
    assert shipped <= set(files) | {"LICENSE"}, "a static file with an unknown extension would not be served"
    for name, f in files.items():
        assert f.content_type == CONTENT_TYPES["." + name.rsplit(".", 1)[1]]
        if name.endswith(".js"):
            for target in re.findall(rb'from "\./([^"]+)"', f.body):
                assert target.decode() in files, f"{name} imports missing ./{target.decode()}"


def test_no_inner_html_in_the_console_scripts() -> None:
    # Untrusted text (alert messages, device names, comments) must never be parsed as HTML.
    for name, f in load_static().items():
        if name.endswith(".js"):
            for bad in (b"innerHTML", b"outerHTML", b"insertAdjacentHTML", b"document.write", b"eval("):
                assert bad not in f.body, f"{name} uses {bad.decode()}"


def test_every_i18n_key_exists_in_both_languages() -> None:
    text = load_static()["i18n.js"].body.decode()
    en, zh = text.split("  zh: {", 1)
    keys_en = set(re.findall(r'^\s+"([a-z_.]+)":', en, re.M))
    keys_zh = set(re.findall(r'^\s+"([a-z_.]+)":', zh, re.M))
    assert keys_en and keys_en == keys_zh, keys_en ^ keys_zh
    used: set[str] = set()
    for f in load_static().values():
        body = f.body.decode()
        used |= set(re.findall(r'\bt\("([a-z_]+\.[a-z_.]+)"', body))
        used |= set(re.findall(r'data-i18n(?:-[a-z]+)?="([a-z_.]+)"', body))
    assert used - keys_en == set(), used - keys_en
