"""The console's map with the demo's whole located city (≥ 2,000 devices), clustered, in Chromium.

The platform registers the ``city`` fleet exactly as ``citybrain demo`` does (bulk import,
district checks) but runs no simulator: the map shows registered devices whatever their
status, and the test stays bounded. Browser set-up in ``helpers.py`` and ``conftest.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from citybrain.platform import Platform
from tests.e2e.helpers import Console, artifacts, own_platform

with contextlib.suppress(ImportError):  # a missing Playwright is reported by require_browser
    from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

CITY_MIN_DEVICES = 2000


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, str, str]]:
    with own_platform(tmp_path_factory, "city", fleet="city", partitions=1) as p:
        user, password = p.add_user("mapper", "operator")
        yield p, user, password


@pytest.fixture(scope="module")
def api(city: tuple[Platform, str, str]) -> str:
    return f"http://127.0.0.1:{city[0].api_port}"


def test_the_map_shows_the_whole_city_clustered(
    city: tuple[Platform, str, str], api: str, open_console: Callable[..., Console]
) -> None:
    _, user, password = city
    c = open_console("zh-CN")
    page = c.page
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
    page.screenshot(path=str(artifacts() / "console-map-city.png"))
    # Clicking a cluster zooms in; the devices are still all there, in smaller groups.
    page.locator(".device-cluster").first.dispatch_event("click")
    page.wait_for_function(
        "n => Number(document.querySelector('#map').dataset.clusters) !== n", arg=len(counts), timeout=10_000
    )
    after = page.eval_on_selector_all(".device-cluster", "els => els.map(e => Number(e.dataset.count))")
    assert sum(after) + page.locator(".device-marker").count() >= CITY_MIN_DEVICES
    assert svg.get_attribute("data-shown-devices") is not None
    # No uncaught script error (this test does not judge the console's log lines).
    assert [e for e in c.errors if e.startswith("uncaught:")] == []
