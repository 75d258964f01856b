"""The operations console in a real browser (Debian's Chromium driven by Playwright) against the whole platform.

Browser set-up (which Chromium, CI's rule for a missing one, screenshots) is in ``helpers.py``
and ``conftest.py`` beside this module.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest

from citybrain.platform import Platform, demo_device_codes
from devices.code import DeviceCode
from tests.e2e.helpers import Console, district_points, own_platform, publish, require_browser, shot, sign_in
from tests.integration.helpers import wait_for

with contextlib.suppress(ImportError):  # a missing Playwright is reported by require_browser
    from playwright.sync_api import Route, expect

pytestmark = pytest.mark.e2e

N_DEVICES = 6
# Air stations no simulator drives: their alerts stay open until someone acts on them.
EXTRA = DeviceCode.build("350203", "0308", 90).full
SCOPED_IN = DeviceCode.build("350203", "0308", 91).full  # 思明区: seen by the scoped operator
SCOPED_OUT = DeviceCode.build("350206", "0308", 91).full  # 湖里区: never seen by them
READ_ONLY_DEV = DeviceCode.build("350205", "0308", 91).full  # for the read-only roles
INCIDENT_DEVS = [DeviceCode.build("350212", "0308", 91 + i).full for i in range(5)]  # one district incident
EXTRAS = [EXTRA, SCOPED_IN, SCOPED_OUT, READ_ONLY_DEV, *INCIDENT_DEVS]
SCOPED_DISTRICT = "350203"
# map.js STATUS_COLOURS
STATUS_COLOURS = {
    "fresh": "#1f9d55",
    "stale": "#e0a800",
    "offline": "#6b7280",
    "alerting": "#d62728",
    "unknown": "#a0aec0",
}


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


def _place_devices(database_url: str) -> dict[str, tuple[float, float, str]]:
    """Give the demo stations a location (the demo registers none) and register the extra stations."""
    points = district_points()
    placed: dict[str, tuple[float, float, str]] = {}
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        for code in EXTRAS:
            name = "Console test station <b>&amp;</b>" if code == EXTRA else f"Console test station {code[10:16]}"
            cur.execute(
                "insert into devices (code, alias, model, device_class, name, district, state, created_by, updated_by)"
                " values (%s, %s, 'air-station@1', 'air', %s, %s, 'registered', 'e2e', 'e2e')"
                " on conflict (code) do nothing",
                (code, code[:16], name, code[:6]),
            )
        for code in [*demo_device_codes(N_DEVICES), *EXTRAS]:
            lon, lat = points[code[:6]]
            # Demo stations just south-west of their district's label point, the extras north-east of it.
            k = int(code[10:16]) % 10 if code in EXTRAS else -1
            lon, lat = (lon - 0.006, lat - 0.004) if k < 0 else (lon + 0.003 * (k % 4), lat + 0.004 + 0.003 * (k // 4))
            cur.execute("update devices set lon = %s, lat = %s where code = %s returning name", (lon, lat, code))
            row = cur.fetchone()
            placed[code] = (lon, lat, row[0] if row else "")
    return placed


CREDENTIALS: dict[str, str] = {}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with own_platform(tmp_path_factory, "console", simulate=True, devices=N_DEVICES, demo_interval_s=2.0) as p:
        # A duty officer account, created as an operator would (the password is printed once).
        CREDENTIALS["duty1"] = p.add_user("duty1", "operator")[1]
        # For the test's own API calls (the browser signs in as duty1).
        CREDENTIALS["api_key"] = p.api_key("admin")
        yield p


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


@pytest.fixture
def open_console(
    open_console: Callable[..., Console], placed: dict[str, tuple[float, float, str]]
) -> Callable[..., Console]:
    """Consoles open on a map whose stations are placed (the tests click their markers)."""
    return open_console


def _load(c: Console, api: str, user: str = "duty1") -> None:
    sign_in(c, api, user, CREDENTIALS[user])


def _raise_alerts(platform: Platform, codes: list[str]) -> None:
    """A simulated fault: each station reports PM2.5 of 230 µg/m³ (a critical alert) over MQTT."""
    ts = datetime.now(UTC).replace(microsecond=0)
    payload = json.dumps({"v": 1, "ts": ts.isoformat(), "metrics": {"pm25": 230.0, "pm10": 300}}).encode()
    for code in codes:
        publish(platform, code, payload)


def _api_json(api: str, path: str) -> Any:
    req = urllib.request.Request(f"{api}{path}", headers={"X-Api-Key": CREDENTIALS["api_key"]})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def _active_alerts(api: str, device: str) -> list[dict[str, Any]]:
    return [
        a for a in _api_json(api, f"/api/v1/alerts?state=active&device={device}")["items"] if a["state"] != "resolved"
    ]


def test_console_loads_with_map_devices_and_vital_signs(
    open_console: Callable[..., Console], api: str, placed: dict[str, tuple[float, float, str]]
) -> None:
    c = open_console()
    _load(c, api)
    page = c.page
    # Signed in as a city-wide operator: who and what scope show in the header.
    expect(page.locator("#whoami")).to_have_text("duty1 · operator · All districts")
    expect(page.locator("#whoami")).to_have_attribute("data-scope", "all")
    expect(page.locator("#feed-readonly")).to_be_hidden()
    expect(page.locator("#map path.district")).to_have_count(6, timeout=15_000)
    expect(page.locator("#map .layer-labels text")).to_have_count(6)
    markers = page.locator("#map .device-marker")
    expect(markers).to_have_count(len(placed), timeout=15_000)
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
    # Devices are coloured by status (fresh, stale, offline, alerting, unknown): the simulated
    # stations report every 2 s, so they are fresh (or alerting, if a rule fired on one); the
    # extra stations have never reported.
    for code in demo_device_codes(N_DEVICES):
        expect(page.locator(f'#map .device-marker[data-code="{code}"]')).to_have_attribute(
            "data-status", re.compile("^(fresh|alerting)$"), timeout=15_000
        )
    expect(page.locator(f'#map .device-marker[data-code="{SCOPED_OUT}"]')).to_have_attribute(
        "data-status", re.compile("^(unknown|offline)$")
    )
    colours = page.locator("#map .device-marker").evaluate_all(
        "els => els.map(g => [g.dataset.status, g.querySelector('circle.device').getAttribute('fill')])"
    )
    assert colours and all(STATUS_COLOURS[status] == fill for status, fill in colours), colours
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
    expect(page.locator('#vitals [data-vital="devices"]')).to_have_attribute("data-scope", "city")
    # The vital signs are live: a newer /api/v1/vitals answer is drawn (polled every 10 s).
    generated = page.locator("#vitals").get_attribute("data-generated")
    assert generated
    expect(page.locator("#vitals")).not_to_have_attribute("data-generated", generated, timeout=20_000)
    # Legend lists every device status; the shading selector switches the legend.
    expect(page.locator("#legend [data-status]")).to_have_count(5)
    page.select_option("#shade", "water")
    expect(page.locator("#legend .legend-title").nth(1)).to_have_text("Water class share")
    page.select_option("#shade", "alerts")
    expect(page.locator("#legend .legend-title").nth(1)).to_have_text("Open alerts")
    page.select_option("#shade", "aqi")
    page.check("#grid-toggle")
    expect(page.locator("#map path.cell").first).to_be_attached(timeout=15_000)
    shot(page, "console-overview.png")
    c.assert_no_errors()


def test_alert_reaches_every_console_and_ack_in_one_updates_the_other(
    open_console: Callable[..., Console], api: str, platform: Platform
) -> None:
    a, b = open_console(), open_console()
    _load(a, api)
    _load(b, api)
    # Sound is off by default (browsers allow audio only after a click); console a turns it on.
    sound = a.page.locator("#sound-toggle")
    expect(sound).to_have_attribute("aria-pressed", "false")
    sound.click()
    expect(sound).to_have_attribute("aria-pressed", "true")
    expect(sound).to_have_text("Sound on")
    _raise_alerts(platform, [EXTRA])

    row_a = a.page.locator(f'#feed li.alert[data-device="{EXTRA}"]')
    row_b = b.page.locator(f'#feed li.alert[data-device="{EXTRA}"]')
    expect(row_a).to_have_count(1, timeout=30_000)
    expect(row_b).to_have_count(1, timeout=10_000)
    expect(row_a).to_have_attribute("data-severity", "critical")
    expect(row_a).to_have_attribute("data-state", "open")
    # A critical alert flashes in both consoles, and beeps only where the sound is on.
    expect(a.page.locator("body")).to_have_attribute("data-last-flash", re.compile(r"^[0-9a-f]+$"))
    expect(b.page.locator("body")).to_have_attribute("data-last-flash", re.compile(r"^[0-9a-f]+$"))
    assert a.page.evaluate("() => window.citybrainConsole.beeps") >= 1
    assert b.page.evaluate("() => window.citybrainConsole.beeps") == 0
    # The vital signs count it (an event triggers a refresh 1.5 s later).
    expect(a.page.locator('#vitals .sev-count[data-severity="critical"]')).to_have_attribute(
        "data-n", re.compile(r"^[1-9][0-9]*$"), timeout=15_000
    )
    # The device name is shown as text, never interpreted as HTML.
    expect(row_a.locator(".device-link")).to_have_text("Console test station <b>&amp;</b>", timeout=35_000)
    expect(a.page.locator(f'#map .device-marker[data-code="{EXTRA}"]')).to_have_attribute("data-status", "alerting")
    shot(a.page, "console-alert.png")

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
    shot(b.page, "console-ack-seen-by-other-console.png")

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
    shot(page, "console-device-detail.png")
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
    shot(page, "console-zh.png")
    c.assert_no_errors()


def test_login_hook_shows_only_the_login_form_when_the_session_is_401(
    open_console: Callable[..., Console], api: str
) -> None:
    c = open_console()
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
    shot(page, "console-login.png")
    page.fill('input[name="username"]', "duty1")
    page.fill('input[name="password"]', "secret")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#app")).to_be_visible(timeout=10_000)
    assert posted == [{"username": "duty1", "password": "secret"}]
    assert page.evaluate("() => window.citybrainConsole.actor") == "duty1"
    c.assert_no_errors()


def test_district_scoped_operator_sees_and_acts_only_on_its_district(
    open_console: Callable[..., Console], api: str, platform: Platform, placed: dict[str, tuple[float, float, str]]
) -> None:
    user, password = platform.add_user("duty2", "operator", districts=(SCOPED_DISTRICT,))
    CREDENTIALS[user] = password
    c = open_console()
    page = c.page
    api_calls: list[str] = []
    page.on("request", lambda r: api_calls.append(r.url) if "/api/" in r.url else None)
    # Without a session the console shows the login form and asks the API for nothing but the session.
    page.goto(f"{api}/", wait_until="domcontentloaded")
    expect(page.locator("#login-view")).to_be_visible(timeout=15_000)
    expect(page.locator("#app")).to_be_hidden()
    assert api_calls and all(u.endswith("/api/v1/session") for u in api_calls), api_calls
    _load(c, api, user)

    # Who is signed in, and their scope.
    expect(page.locator("#whoami")).to_have_text(f"{user} · operator · Siming", timeout=15_000)
    expect(page.locator("#whoami")).to_have_attribute("data-scope", SCOPED_DISTRICT)
    # The map is their district (the API returns only granted districts) and its devices only.
    expect(page.locator("#map path.district")).to_have_count(1, timeout=15_000)
    expect(page.locator("#map path.district")).to_have_attribute("data-code", SCOPED_DISTRICT)
    mine = sorted(code for code in placed if code.startswith(SCOPED_DISTRICT))
    assert SCOPED_IN in mine and len(mine) < len(placed)
    markers = page.locator("#map .device-marker")
    expect(markers).to_have_count(len(mine), timeout=15_000)
    assert sorted(markers.evaluate_all("els => els.map(e => e.dataset.code)")) == mine
    # The district filter offers only their district; vital signs per district are theirs.
    options = page.locator("#f-district option").evaluate_all("els => els.map(e => e.value)")
    assert options == ["", SCOPED_DISTRICT], options
    expect(page.locator("#vitals .aqi-district")).to_have_count(1, timeout=15_000)
    expect(page.locator("#vitals .aqi-district")).to_have_attribute("data-district", SCOPED_DISTRICT)
    for vital in ("devices", "alerts", "manhole", "water"):
        expect(page.locator(f'#vitals [data-vital="{vital}"]')).to_have_attribute("data-scope", "granted")
    expect(page.locator('#vitals [data-vital="devices"] .tile-scope')).to_have_text("Siming")
    # Its simulated station reports, so it counts as online (even while alerting).
    expect(page.locator('#vitals [data-vital="devices"] .dot-label[data-status="fresh"]')).to_have_text(
        re.compile(r"^[1-9]\d* online$"), timeout=15_000
    )
    expect(page.locator('#vitals [data-vital="noise"]')).to_have_attribute("data-scope", "city")
    # Grid cells: those of the district only.
    page.check("#grid-toggle")
    cells = page.locator("#map path.cell title")
    expect(cells.first).to_be_attached(timeout=15_000)
    assert all(code.startswith(SCOPED_DISTRICT) for code in cells.evaluate_all("els => els.map(e => e.textContent)"))

    # A fault in their district and one in 湖里区: only the first reaches their feed.
    _raise_alerts(platform, [SCOPED_IN, SCOPED_OUT])
    row = page.locator(f'#feed li.alert[data-device="{SCOPED_IN}"]')
    expect(row).to_have_count(1, timeout=30_000)
    assert wait_for(lambda: bool(_active_alerts(api, SCOPED_OUT)), 30), "the out-of-district fault raised no alert"
    page.wait_for_timeout(2_000)  # time for a wrongly delivered SSE event to show
    expect(page.locator(f'#feed li.alert[data-device="{SCOPED_OUT}"]')).to_have_count(0)
    page.select_option("#f-state", "all")
    shown = page.locator("#feed li.alert").evaluate_all("els => els.map(e => e.dataset.device)")
    assert shown and all(code.startswith(SCOPED_DISTRICT) for code in shown), shown
    held = page.evaluate("() => [...window.citybrainConsole.alerts.values()].map(a => a.district)")
    assert held and set(held) == {SCOPED_DISTRICT}, held
    incidents = page.locator("#incidents li.incident").evaluate_all("els => els.map(e => e.dataset.district)")
    assert all(d == SCOPED_DISTRICT for d in incidents), incidents
    page.select_option("#f-state", "active")
    expect(page.locator('#vitals [data-vital="alerts"] .sev-count[data-severity="critical"]')).to_have_attribute(
        "data-n", re.compile(r"^[1-9][0-9]*$"), timeout=15_000
    )

    # They may act on their district's alerts…
    expect(row.locator(".act-ack")).to_be_enabled()
    row.locator(".act-ack").click()
    expect(row).to_have_attribute("data-state", "acknowledged", timeout=10_000)
    expect(row.locator(".alert-error")).to_be_hidden()
    shot(page, "console-scoped-operator.png")
    c.assert_no_errors()

    # …and on no other: the API answers 404 for an alert outside the grant, as for an unknown one.
    out_id = _active_alerts(api, SCOPED_OUT)[0]["id"]
    cookie = _session_cookie(api, user, password)
    who = urllib.request.Request(f"{api}/api/v1/session", headers={"Cookie": f"citybrain_session={cookie}"})
    with urllib.request.urlopen(who, timeout=5) as r:
        csrf = json.loads(r.read())["csrf_token"]
    ack = urllib.request.Request(
        f"{api}/api/v1/alerts/{out_id}/ack",
        data=b'{"comment": ""}',
        headers={"Content-Type": "application/json", "Cookie": f"citybrain_session={cookie}", "X-CSRF-Token": csrf},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(ack, timeout=5)
    assert refused.value.code == 404
    assert _active_alerts(api, SCOPED_OUT)[0]["state"] == "open"

    # Sign out: back to the login form.
    page.click("#logout")
    expect(page.locator("#login-view")).to_be_visible(timeout=15_000)
    expect(page.locator("#app")).to_be_hidden()


def test_district_incident_groups_many_device_alerts(
    open_console: Callable[..., Console], api: str, platform: Platform
) -> None:
    c = open_console()
    _load(c, api)
    page = c.page
    _raise_alerts(platform, INCIDENT_DEVS)
    incident = page.locator('#incidents li.incident[data-district="350212"]')
    expect(incident.first).to_be_visible(timeout=30_000)
    expect(incident.first.locator(".incident-district")).to_have_text("Tong'an")
    expect(incident.first.locator(".incident-devices")).to_have_text(re.compile(r"^([5-9]|\d{2,}) devices$"))
    expect(page.locator("#incidents-empty")).to_be_hidden()
    expect(page.locator("#incident-count")).not_to_have_text("0")
    # The member alerts are in the feed too.
    for code in INCIDENT_DEVS:
        expect(page.locator(f'#feed li.alert[data-device="{code}"]')).to_have_count(1, timeout=15_000)
    shot(page, "console-incident.png")
    c.assert_no_errors()


@pytest.mark.parametrize("role", ["auditor", "app"])
def test_roles_without_alerts_act_get_a_read_only_console(
    open_console: Callable[..., Console], api: str, platform: Platform, role: str
) -> None:
    user, password = platform.add_user(f"ro-{role}", role)
    CREDENTIALS[user] = password
    _raise_alerts(platform, [READ_ONLY_DEV])
    c = open_console()
    _load(c, api, user)
    page = c.page
    expect(page.locator("#whoami")).to_have_text(f"{user} · {role} · All districts")
    expect(page.locator("#feed-readonly")).to_be_visible()
    row = page.locator(f'#feed li.alert[data-device="{READ_ONLY_DEV}"]')
    expect(row).to_have_count(1, timeout=30_000)
    for action in ("ack", "resolve", "comment"):
        button = row.locator(f".act-{action}")
        expect(button).to_be_disabled()
        expect(button).to_have_attribute("title", re.compile("cannot acknowledge, resolve or comment"))
    # Device detail: the model's commands are shown, but cannot be sent.
    page.locator(f'#map .device-marker[data-code="{READ_ONLY_DEV}"] circle.device').click()
    form = page.locator('#detail form.cmd-form[data-command="set_interval"]')
    expect(form).to_have_count(1, timeout=15_000)
    expect(form.locator("button[type=submit]")).to_be_disabled()
    expect(page.locator("#detail .commands .perm-note")).to_be_visible()
    shot(page, f"console-read-only-{role}.png")
    c.assert_no_errors()


def test_a_403_disables_the_action_with_a_message_and_no_uncaught_error(
    open_console: Callable[..., Console], api: str, platform: Platform
) -> None:
    """The console believes the user may act (a role revoked while it was open); the API says 403."""
    user, password = platform.add_user("ro-revoked", "auditor")
    CREDENTIALS[user] = password
    _raise_alerts(platform, [READ_ONLY_DEV])
    c = open_console()

    def as_operator(route: Route) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        response = route.fetch()
        body = response.json() if response.status == 200 else None
        if body is None:
            route.fulfill(response=response)
            return
        body["principal"]["roles"] = ["operator"]
        route.fulfill(response=response, json=body)

    c.context.route(re.compile(r".*/api/v1/session$"), as_operator)
    _load(c, api, user)
    page = c.page
    expect(page.locator("#whoami")).to_have_text(f"{user} · operator · All districts")
    expect(page.locator("#feed-readonly")).to_be_hidden()
    row = page.locator(f'#feed li.alert[data-device="{READ_ONLY_DEV}"]')
    expect(row).to_have_count(1, timeout=30_000)
    row.locator(".act-ack").click()
    expect(row.locator(".alert-error")).to_contain_text("Not permitted", timeout=10_000)
    expect(row.locator(".act-ack")).to_be_disabled()
    expect(row.locator(".act-resolve")).to_be_disabled()
    expect(page.locator("#feed-readonly")).to_be_visible()
    # The same for a command.
    page.locator(f'#map .device-marker[data-code="{READ_ONLY_DEV}"] circle.device').click()
    form = page.locator('#detail form.cmd-form[data-command="set_interval"]')
    expect(form).to_have_count(1, timeout=15_000)
    form.locator('input[name="seconds"]').fill("60")
    form.locator("button[type=submit]").click()
    expect(form.locator(".cmd-status")).to_contain_text("Not permitted", timeout=10_000)
    expect(form.locator("button[type=submit]")).to_be_disabled()
    expect(page.locator("#detail .commands .perm-note")).to_be_visible()
    assert _active_alerts(api, READ_ONLY_DEV)[0]["state"] == "open"
    shot(page, "console-permission-refused.png")
    # Chromium logs each refused call as "Failed to load resource: … 403"; nothing else may appear.
    refused = re.compile(r"status of 403 .*@ .*/api/v1/(alerts/[^/]+/ack|devices/[0-9A-Z]+/commands)$")
    c.assert_no_errors(expected=refused)
    assert any(refused.search(e) for e in c.errors), c.errors


def test_permission_table_of_the_console_matches_the_platform() -> None:
    from citybrain.security.identities import PERMISSIONS

    static = resources.files("citybrain.console").joinpath("static")
    text = static.joinpath("access.js").read_text(encoding="utf-8")
    table = re.search(r"ROLE_PERMISSIONS = (\{.*?\});", text, re.S)
    assert table, "access.js has no ROLE_PERMISSIONS table"
    console = json.loads(re.sub(r",\s*}", "}", table.group(1)))
    assert console, "empty ROLE_PERMISSIONS"
    for permission, roles in console.items():
        assert set(roles) == set(PERMISSIONS[permission]), permission
    # Every permission the console checks with can() is in the table.
    used = set(re.findall(r'\bcan\("([a-z]+:[a-z]+)"\)', static.joinpath("app.js").read_text(encoding="utf-8")))
    assert used and used <= set(console), used - set(console)


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-chromium")
    with pytest.raises(pytest.fail.Exception, match="need a browser in CI"):
        require_browser(missing, ci=True)
    with pytest.raises(pytest.skip.Exception):
        require_browser(missing, ci=False)


SOURCE_CAPPED = DeviceCode.build("350205", "0310", 95).full
SOURCE_BARE = DeviceCode.build("350205", "0310", 96).full


def test_sources_layer_shows_permit_status_and_today_load_per_district(
    open_console: Callable[..., Console], api: str, platform: Platform
) -> None:
    """Two plating outlets in Haicang: one over its daily COD cap today, one without a permit."""
    db = platform.services.database_url
    assert db
    lon, lat = district_points()["350205"]
    now = datetime.now(UTC)
    with psycopg.connect(db) as conn, conn.cursor() as cur:
        for i, code in enumerate((SOURCE_CAPPED, SOURCE_BARE)):
            cur.execute(
                "insert into devices (code, model, device_class, name, district, lon, lat, state,"
                " created_by, updated_by) values (%s, 'wastewater-source@1', 'wastewater', %s, '350205', %s, %s,"
                " 'active', 'e2e', 'e2e')"
                " on conflict (code) do nothing",
                (code, f"Plating outlet {i + 1}", lon - 0.01 * (i + 1), lat + 0.01),
            )
        cur.execute(
            "insert into permits (permit_no, holder, valid_from, valid_to) values ('E2E0001P', 'Plating Co.',"
            " '2026-01-01', '2099-12-31') on conflict do nothing"
        )
        cur.execute(
            "insert into permit_limits (permit_no, device_code, metric, unit, clause, day_cap_kg)"
            " values ('E2E0001P', %s, 'cod', 'mg/L', 'permit load cap', 20) on conflict do nothing",
            (SOURCE_CAPPED,),
        )
        # Today's running COD sum as the rule engine keeps it: 25 kg, over the 20 kg cap.
        snapshot = {"cod_load_day_kg": [25.0, now.timestamp(), None, None]}
        cur.execute(
            "insert into rule_state (device_code, snapshot) values (%s, %s)"
            " on conflict (device_code) do update set snapshot = excluded.snapshot",
            (SOURCE_CAPPED, json.dumps(snapshot)),
        )
    c = open_console()
    _load(c, api)
    page = c.page
    expect(page.locator("#sources-view")).to_be_hidden()
    page.check("#sources-toggle")
    expect(page.locator(f'rect.source-marker[data-code="{SOURCE_CAPPED}"]')).to_have_attribute(
        "data-status", "over_cap", timeout=15_000
    )
    expect(page.locator(f'rect.source-marker[data-code="{SOURCE_BARE}"]')).to_have_attribute("data-status", "no_permit")
    title = page.locator(f'rect.source-marker[data-code="{SOURCE_CAPPED}"] title')
    expect(title).to_contain_text("E2E0001P")
    expect(title).to_contain_text("cod 25.00/20 kg")
    row = page.locator('#sources-table tbody tr[data-district="350205"]')
    expect(row.locator("td")).to_have_text(["Haicang", "2", "1", "0", "1"])
    expect(page.locator('#legend .legend-item[data-source="over_cap"]')).to_be_visible()
    shot(page, "console-sources.png")
    c.assert_no_errors()
