"""The operations console in a real browser (Debian's Chromium driven by Playwright) against the whole platform.

Chromium is ``/usr/bin/chromium`` (``apt-get install chromium``) or ``$CITYBRAIN_CHROMIUM``;
Playwright's own browser download is never used. With ``CI=true`` a missing browser
or Playwright is a failure, not a skip. Screenshots go to ``test-artifacts/``
(``$CITYBRAIN_TEST_ARTIFACTS`` overrides).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest

from citybrain.platform import Platform, demo_device_codes
from citybrain.settings import Settings
from citybrain.topics import uplink_topic
from devices.code import DeviceCode
from tests.integration.helpers import mqtt_client, wait_for

try:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        ConsoleMessage,
        Page,
        Playwright,
        Route,
        ViewportSize,
        expect,
        sync_playwright,
    )
except ImportError:  # pragma: no cover - reported by the browser fixture
    sync_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
VIEWPORT: ViewportSize = {"width": 1600, "height": 1000}
N_DEVICES = 6
# An air station no simulator drives: its alert stays open until someone acts on it.
EXTRA = DeviceCode.build("350203", "0308", 90).full
# Endpoints the console probes that may legitimately answer 404 (not deployed yet, or no data yet);
# Chromium logs such responses as console errors ("Failed to load resource"), which are not app errors.
OPTIONAL_404 = re.compile(r"/api/v1/(session|devices/[0-9A-Z]+/(commands|latest))(\?.*)?$")


def _artifacts() -> Path:
    root = Path(os.environ.get("CITYBRAIN_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _chromium() -> str:
    path = os.environ.get("CITYBRAIN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _session_cookie(api: str, username: str, password: str) -> str:
    """A real session for ``username`` (POST /api/v1/session), as its cookie value."""
    req = urllib.request.Request(
        f"{api}/api/v1/session",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        cookie = r.headers["Set-Cookie"]
    match = re.match(r"citybrain_session=([^;]+)", cookie)
    assert match, cookie
    return match.group(1)


def _district_points() -> dict[str, tuple[float, float]]:
    text = resources.files("geo").joinpath("data/xiamen_districts.geojson").read_text(encoding="utf-8")
    return {f["properties"]["code"]: tuple(f["properties"]["label_point"]) for f in json.loads(text)["features"]}


def _place_devices(database_url: str) -> dict[str, tuple[float, float, str]]:
    """Give the demo stations a location (the demo registers none) and register the extra station."""
    points = _district_points()
    placed: dict[str, tuple[float, float, str]] = {}
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "insert into devices (code, alias, model, device_class, name, district, state, created_by, updated_by)"
            " values (%s, %s, 'air-station@1', 'air', %s, %s, 'registered', 'e2e', 'e2e')"
            " on conflict (code) do nothing",
            (EXTRA, EXTRA[:16], "Console test station <b>&amp;</b>", EXTRA[:6]),
        )
        for i, code in enumerate([*demo_device_codes(N_DEVICES), EXTRA]):
            lon, lat = points[code[:6]]
            lon, lat = lon + 0.012 * (i // 6) - 0.006, lat + 0.008 * (i // 6) - 0.004
            cur.execute("update devices set lon = %s, lat = %s where code = %s returning name", (lon, lat, code))
            row = cur.fetchone()
            placed[code] = (lon, lat, row[0] if row else "")
    return placed


CREDENTIALS: dict[str, str] = {}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    data = tmp_path_factory.mktemp("console")
    settings = Settings(
        database_url=None,
        kafka_bootstrap=None,
        mqtt_url=None,
        data_dir=data,
        topic_prefix=f"ui{uuid.uuid4().hex[:6]}",
        api_port=0,
        partitions=2,
        demo_interval_s=2.0,
    )
    p = Platform.from_settings(settings, data_dir=Path(data))
    p.start(simulate=True, devices=N_DEVICES, progress=False)
    try:
        # A duty officer account, created as an operator would (the password is printed once).
        out = subprocess.run(
            [sys.executable, "-m", "citybrain.cli", "users", "add", "duty1", "--role", "operator"],
            env=p.env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        CREDENTIALS["duty1"] = out.strip().splitlines()[-1].rsplit(": ", 1)[1]
        # For the test's own API calls (the browser signs in as duty1).
        CREDENTIALS["api_key"] = p.api_key("admin")
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def api(platform: Platform) -> str:
    url = f"http://127.0.0.1:{platform.api_port}"
    assert _status(f"{url}/") == 200, (
        "the console is not served at / : add citybrain.console.routes to citybrain.api.ROUTE_MODULES"
    )
    return url


@pytest.fixture(scope="module")
def placed(platform: Platform, api: str) -> dict[str, tuple[float, float, str]]:
    assert platform.services.database_url
    return _place_devices(platform.services.database_url)


@pytest.fixture(scope="module")
def browser(placed: dict[str, tuple[float, float, str]]) -> Iterator[Browser]:
    # Depends on the platform (through placed): Playwright's sync API runs an event loop in this
    # thread, so the platform (which uses asyncio.run) must be up before it starts and stop after it.
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    exe = _chromium()
    problem = None
    if sync_playwright is None:
        problem = "Playwright for Python is not installed (pip install playwright; never `playwright install`)"
    elif not Path(exe).exists():
        problem = f"Chromium not found at {exe} (apt-get install -y chromium, or set CITYBRAIN_CHROMIUM)"
    if problem:
        if ci:
            pytest.fail(f"console e2e tests need a browser in CI: {problem}", pytrace=False)
        pytest.skip(problem)
    with sync_playwright() as pw:
        b = _launch(pw, exe)
        try:
            yield b
        finally:
            b.close()


def _launch(pw: Playwright, exe: str) -> Browser:
    return pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)


@dataclass
class Console:
    """One officer's console: a browser context and page, with the console errors it logged."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)

    def assert_no_errors(self) -> None:
        assert self.errors == [], "console errors:\n" + "\n".join(self.errors)


@pytest.fixture
def open_console(browser: Browser, api: str) -> Iterator[Callable[..., Console]]:
    opened: list[Console] = []

    def open_(locale: str = "en-US", session_401: bool = False) -> Console:
        context = browser.new_context(viewport=VIEWPORT, locale=locale, timezone_id="Asia/Shanghai")
        page = context.new_page()
        c = Console(context, page)

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type != "error":
                return
            url = msg.location.get("url", "") if msg.location else ""
            if msg.text.startswith("Failed to load resource") and OPTIONAL_404.search(url) and "404" in msg.text:
                return
            # The first GET /api/v1/session of a signed-out console answers 401 by design.
            if msg.text.startswith("Failed to load resource") and url.endswith("/api/v1/session") and "401" in msg.text:
                return
            c.errors.append(f"{msg.text} @ {url}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: c.errors.append(f"uncaught: {exc}"))
        opened.append(c)
        return c

    yield open_
    for c in opened:
        c.context.close()


def _shot(page: Page, name: str) -> Path:
    path = _artifacts() / name
    page.screenshot(path=str(path), full_page=False)
    return path


def _load(c: Console, api: str) -> None:
    c.page.goto(f"{api}/", wait_until="domcontentloaded")
    login = c.page.locator("#login-view")
    expect(c.page.locator("#login-view:visible, #app:visible").first).to_be_visible(timeout=15_000)
    if login.is_visible():
        c.page.fill('input[name="username"]', "duty1")
        c.page.fill('input[name="password"]', CREDENTIALS["duty1"])
        c.page.click("#login-form button[type=submit]")
    expect(c.page.locator("#app")).to_be_visible(timeout=15_000)
    expect(c.page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)


def test_console_loads_with_map_devices_and_vital_signs(open_console: Callable[..., Console], api: str) -> None:
    c = open_console()
    _load(c, api)
    page = c.page
    expect(page.locator("#map path.district")).to_have_count(6, timeout=15_000)
    expect(page.locator("#map .layer-labels text")).to_have_count(6)
    markers = page.locator("#map .device-marker")
    expect(markers).to_have_count(N_DEVICES + 1, timeout=15_000)
    for code in demo_device_codes(N_DEVICES):
        expect(page.locator(f'#map .device-marker[data-code="{code}"]')).to_have_count(1)
    # Every device is drawn inside the map's viewBox.
    inside = page.evaluate(
        """() => { const vb = document.querySelector('#map').viewBox.baseVal;
           return [...document.querySelectorAll('#map circle.device')].every(c =>
             c.cx.baseVal.value >= vb.x && c.cx.baseVal.value <= vb.x + vb.width &&
             c.cy.baseVal.value >= vb.y && c.cy.baseVal.value <= vb.y + vb.height); }"""
    )
    assert inside
    # District fills are HJ 633 colours in AQI mode.
    fills = set(page.locator("#map path.district").evaluate_all("els => els.map(e => e.getAttribute('fill'))"))
    hj633 = {"#00E400", "#FFFF00", "#FF7E00", "#FF0000", "#99004C", "#7E0023", "#d5dbe3"}
    assert fills and {f.upper() if f.startswith("#") and f != "#d5dbe3" else f for f in fills} <= {
        h.upper() if h != "#d5dbe3" else h for h in hj633
    }
    # Vital signs: city AQI with per-district chips, devices, ingest.
    expect(page.locator('#vitals [data-vital="aqi"] .aqi-city')).to_be_visible(timeout=15_000)
    expect(page.locator("#vitals .aqi-district")).to_have_count(6)
    expect(page.locator('#vitals [data-vital="devices"]')).to_be_visible()
    expect(page.locator('#vitals [data-vital="ingest"]')).to_be_visible()
    # Legend lists every device status; the shading selector switches the legend.
    expect(page.locator("#legend [data-status]")).to_have_count(5)
    page.select_option("#shade", "water")
    expect(page.locator("#legend .legend-title").nth(1)).to_have_text("Water class share")
    page.select_option("#shade", "aqi")
    page.check("#grid-toggle")
    _shot(page, "console-overview.png")
    c.assert_no_errors()


def test_alert_reaches_every_console_and_ack_in_one_updates_the_other(
    open_console: Callable[..., Console], api: str, platform: Platform
) -> None:
    a, b = open_console(), open_console()
    _load(a, api)
    _load(b, api)
    mqtt = platform.services.mqtt
    assert mqtt is not None
    dev = mqtt_client(mqtt.host, mqtt.port)
    try:
        ts = datetime.now(UTC).replace(microsecond=0)
        payload = {"v": 1, "ts": ts.isoformat(), "metrics": {"pm25": 230.0, "pm10": 300}}
        dev.publish(uplink_topic(EXTRA), json.dumps(payload), qos=1).wait_for_publish(5)
    finally:
        dev.loop_stop()
        dev.disconnect()

    row_a = a.page.locator(f'#feed li.alert[data-device="{EXTRA}"]')
    row_b = b.page.locator(f'#feed li.alert[data-device="{EXTRA}"]')
    expect(row_a).to_have_count(1, timeout=30_000)
    expect(row_b).to_have_count(1, timeout=10_000)
    expect(row_a).to_have_attribute("data-severity", "critical")
    expect(row_a).to_have_attribute("data-state", "open")
    # A critical alert flashes (and would beep if the sound were on).
    expect(a.page.locator("body")).to_have_attribute("data-last-flash", re.compile(r"^[0-9a-f]+$"))
    # The device name is shown as text, never interpreted as HTML.
    expect(row_a.locator(".device-link")).to_have_text("Console test station <b>&amp;</b>", timeout=35_000)
    expect(a.page.locator(f'#map .device-marker[data-code="{EXTRA}"]')).to_have_attribute("data-status", "alerting")
    _shot(a.page, "console-alert.png")

    row_a.locator(".act-ack").click()
    expect(row_b).to_have_attribute("data-state", "acknowledged", timeout=10_000)
    expect(row_b.locator(".act-ack")).to_be_hidden()
    row_a.locator(".act-comment").click()
    row_a.locator(".comment-input").fill("crew dispatched <script>alert(1)</script>")
    row_a.locator(".comment-form button[type=submit]").click()
    expect(row_b.locator(".alert-last")).to_contain_text("crew dispatched <script>alert(1)</script>", timeout=10_000)
    # Filters: a district that has no alert hides the row; "all" shows it again.
    b.page.select_option("#f-district", "350213")
    expect(row_b).to_have_count(0)
    # Other rules (anomaly detection on the simulated stations) may raise alerts there; whatever is
    # listed must be of that district, and the "no alerts" note shows only for an empty list.
    others = b.page.locator("#feed li.alert").evaluate_all("els => els.map(e => e.dataset.device)")
    assert all(code.startswith("350213") for code in others), others
    if not others:
        expect(b.page.locator("#feed-empty")).to_be_visible()
    b.page.select_option("#f-district", "")
    expect(row_b).to_have_count(1)
    _shot(b.page, "console-ack-seen-by-other-console.png")

    row_b.locator(".act-resolve").click()
    expect(row_a).to_have_count(0, timeout=10_000)  # the default view shows active alerts only
    a.page.select_option("#f-state", "all")
    expect(row_a).to_have_attribute("data-state", "resolved", timeout=10_000)
    a.assert_no_errors()
    b.assert_no_errors()


def test_device_detail_shows_24h_charts_alerts_and_commands(open_console: Callable[..., Console], api: str) -> None:
    c = open_console()
    _load(c, api)
    page = c.page
    code = demo_device_codes(1)[0]
    # The simulator reports every 2 s; make sure a few readings exist before opening the detail.
    key = {"X-Api-Key": CREDENTIALS["api_key"]}
    assert wait_for(lambda: _status(f"{api}/api/v1/devices/{code}/latest", key) == 200, 30), (
        "no readings from simulator"
    )
    marker = page.locator(f'#map .device-marker[data-code="{code}"]')
    expect(marker).to_have_count(1, timeout=15_000)
    marker.locator("circle.device").click()
    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    expect(detail.locator('[data-field="code"]')).to_have_text(code)
    expect(detail.locator('[data-field="model"]')).to_contain_text("air-station@1")
    line = detail.locator('figure[data-metric="pm25"] svg.chart path.line')
    expect(line).to_have_count(1, timeout=15_000)
    points = int(line.get_attribute("data-points") or 0)
    d = line.get_attribute("d") or ""
    assert points >= 2 and d.count("L") >= 1, (points, d)
    expect(detail.locator(".mini-alerts li")).not_to_have_count(0)
    form = detail.locator('form.cmd-form[data-command="set_interval"]')
    expect(form).to_have_count(1)
    form.locator('input[name="seconds"]').fill("60")
    form.locator("button[type=submit]").click()
    status = form.locator(".cmd-status")
    expect(status).not_to_have_text(re.compile(r"^(|Loading…)$"), timeout=10_000)
    _shot(page, "console-device-detail.png")
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()
    c.assert_no_errors()


def test_language_switch_is_remembered(open_console: Callable[..., Console], api: str) -> None:
    c = open_console(locale="en-US")
    _load(c, api)
    page = c.page
    expect(page.locator("#feed-title")).to_have_text("Live alerts")
    page.click("#lang-toggle")
    expect(page.locator("#feed-title")).to_have_text("实时告警")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    page.reload()
    expect(page.locator("#feed-title")).to_have_text("实时告警", timeout=15_000)
    expect(page.locator("#map path.district")).to_have_count(6, timeout=15_000)
    expect(page.locator("#map .layer-labels text").first).to_contain_text("区")
    _shot(page, "console-zh.png")
    c.assert_no_errors()


def test_login_hook_shows_only_the_login_form_when_the_session_is_401(
    open_console: Callable[..., Console], api: str
) -> None:
    c = open_console(session_401=True)
    signed_in = {"yes": False}
    posted: list[dict[str, Any]] = []

    def session(route: Route) -> None:
        req = route.request
        if req.method == "POST":
            posted.append(json.loads(req.post_data or "{}"))
            signed_in["yes"] = True
            route.fulfill(status=200, content_type="application/json", body='{"username": "duty1"}')
        elif signed_in["yes"]:
            route.fulfill(status=200, content_type="application/json", body='{"username": "duty1"}')
        else:
            route.fulfill(status=401, content_type="application/json", body='{"detail": "sign in"}')

    c.context.route(re.compile(r".*/api/v1/session$"), session)
    # The mocked login sets no cookie; a real session cookie lets the console's data calls through
    # (they need a principal), while /api/v1/session itself stays mocked.
    c.context.add_cookies(
        [{"name": "citybrain_session", "value": _session_cookie(api, "duty1", CREDENTIALS["duty1"]), "url": api}]
    )
    page = c.page
    page.goto(f"{api}/")
    expect(page.locator("#login-view")).to_be_visible(timeout=10_000)
    expect(page.locator("#app")).to_be_hidden()
    _shot(page, "console-login.png")
    page.fill('input[name="username"]', "duty1")
    page.fill('input[name="password"]', "secret")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#app")).to_be_visible(timeout=10_000)
    assert posted == [{"username": "duty1", "password": "secret"}]
    assert page.evaluate("() => window.citybrainConsole.actor") == "duty1"
    c.assert_no_errors()
