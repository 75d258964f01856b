"""/docs and /redoc load every script and style from the API itself (issue 18: offline)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from citybrain.routes import apidocs


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI(docs_url=None, redoc_url=None)
    app.include_router(apidocs.build(None))  # type: ignore[arg-type]  # the context is unused
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_pages_reference_only_local_assets_and_every_one_is_served(client: httpx.AsyncClient, page: str) -> None:
    r = await client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text) + re.findall(r"""url: ?['"]([^'"]+)['"]""", r.text)
    assert urls, r.text
    for url in urls:
        assert not url.startswith(("http://", "https://", "//")), f"{page} loads {url} from outside the API"
        if url.startswith("/docs/assets/"):
            asset = await client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1000, url


async def test_unknown_assets_and_traversal_are_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs/assets/nope.js")).status_code == 404
    assert (await client.get("/docs/assets/..%2Fcore.py")).status_code == 404


async def test_assets_revalidate_with_their_etag(client: httpx.AsyncClient) -> None:
    first = await client.get("/docs/assets/swagger-ui.css")
    again = await client.get("/docs/assets/swagger-ui.css", headers={"if-none-match": first.headers["etag"]})
    assert first.headers["content-type"].startswith("text/css") and again.status_code == 304
