"""The console's map with the demo's whole located city (≥ 2,000 devices), clustered, in Chromium.

The platform registers the ``city`` fleet exactly as ``citybrain demo`` does (bulk import,
district checks) but runs no simulator: the map shows registered devices whatever their
status, and the test stays bounded. Browser set-up as in ``test_console.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from citybrain.platform import Platform
from citybrain.settings import Settings
from tests.e2e.test_console import (
    VIEWPORT,
    _artifacts,
    _chromium,
    _in_ci,
    _launch,
    _require_browser,
)

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - reported by _require_browser
    sync_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.e2e

CITY_MIN_DEVICES = 2000


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, str, str]]:
    data = tmp_path_factory.mktemp("city")
    settings = Settings(
        database_url=None,
        kafka_bootstrap=None,
        mqtt_url=None,
        data_dir=data,
        topic_prefix=f"city{uuid.uuid4().hex[:6]}",
        api_port=0,
        partitions=1,
    )
    p = Platform.from_settings(settings, data_dir=Path(data))
    p.start(simulate=False, fleet="city", progress=False)
    try:
        user, password = p.add_user("mapper", "operator")
        yield p, user, password
    finally:
        p.stop()


def test_the_map_shows_the_whole_city_clustered(city: tuple[Platform, str, str]) -> None:
    platform, user, password = city
    exe = _chromium()
    _require_browser(exe, _in_ci())
    api = f"http://127.0.0.1:{platform.api_port}"
    with sync_playwright() as pw:
        browser = _launch(pw, exe)
        try:
            context = browser.new_context(viewport=VIEWPORT, locale="zh-CN", timezone_id="Asia/Shanghai")
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{api}/", wait_until="domcontentloaded")
            expect(page.locator("#login-view")).to_be_visible(timeout=15_000)
            page.fill('input[name="username"]', user)
            page.fill('input[name="password"]', password)
            page.click("#login-form button[type=submit]")
            expect(page.locator("#app")).to_be_visible(timeout=15_000)
            svg = page.locator("#map")
            # Every located device is on the map: loaded, and drawn as a marker or inside a cluster.
            page.wait_for_function(
                f"() => Number(document.querySelector('#map')?.dataset.shownDevices || 0) >= {CITY_MIN_DEVICES}",
                timeout=30_000,
            )
            counts = page.eval_on_selector_all(".device-cluster", "els => els.map(e => Number(e.dataset.count))")
            singles = page.locator(".device-marker").count()
            assert sum(counts) + singles >= CITY_MIN_DEVICES, (sum(counts), singles)
            # Zoomed out, the city is clusters, not thousands of overlapping dots.
            assert len(counts) >= 6 and singles < len(counts) * 10, (len(counts), singles)
            assert max(counts) > 10
            page.screenshot(path=str(_artifacts() / "console-map-city.png"))
            # Clicking a cluster zooms in; the devices are still all there, in smaller groups.
            page.locator(".device-cluster").first.dispatch_event("click")
            page.wait_for_function(
                "n => Number(document.querySelector('#map').dataset.clusters) !== n", arg=len(counts), timeout=10_000
            )
            after = page.eval_on_selector_all(".device-cluster", "els => els.map(e => Number(e.dataset.count))")
            assert sum(after) + page.locator(".device-marker").count() >= CITY_MIN_DEVICES
            assert svg.get_attribute("data-shown-devices") is not None
            assert errors == []
        finally:
            browser.close()
