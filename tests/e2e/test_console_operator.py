"""The operator's console in Chromium: one area AQI everywhere, alerts in Chinese with local time, shelving.

A platform of its own, without the simulator, so that every value is known: the stations
below report fixed concentrations whose area AQIs are worked by hand (the same figures as
tests/unit/alerts/test_area_aqi.py::test_district_and_city_report_leave_micro_stations_out):

* 思明区 (350203): stations A (PM2.5 30, PM10 60, NO2 30) and B (60, 80, 50) → means 45, 70,
  40 → IAQI 70, 65, 20 → AQI **70**; the micro-station at PM2.5 180 does not count.
* 湖里区 (350206): station D (100, 150, 60) → IAQI 137, 112, 30 → AQI **137**.
* City: means over A, B, D: 63.33, 96.67, 46.67 → IAQI 104, 84, 24 → AQI **104**.

Screenshots of the map and of an alert are written to ``docs/img/`` when
``CITYBRAIN_DOCS_SCREENSHOTS=1`` (how the committed ones were made), else to ``test-artifacts/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from citybrain.platform import Platform
from devices.code import DeviceCode
from tests.e2e.helpers import PNG_MAGIC, Console, artifacts, district_points, own_platform, publish, sign_in
from tests.integration.helpers import wait_for

with contextlib.suppress(ImportError):  # a missing Playwright is reported by require_browser
    from playwright.sync_api import Page, expect

pytestmark = pytest.mark.e2e

SIMING, HULI = "350203", "350206"
A = DeviceCode.build(SIMING, "0308", 41).full
B = DeviceCode.build(SIMING, "0308", 42).full
MICRO = DeviceCode.build(SIMING, "0308", 43).full
RULE = "air.micro.pm25.high"  # the micro-station's particulate rule (alerts/data/rules/air.yaml)
D = DeviceCode.build(HULI, "0308", 44).full
VALUES: dict[str, dict[str, float]] = {
    A: {"pm25": 30, "pm10": 60, "no2": 30},
    B: {"pm25": 60, "pm10": 80, "no2": 50},
    MICRO: {"pm25": 180, "pm10": 200},
    D: {"pm25": 100, "pm10": 150, "no2": 60},
}
EXPECTED = {"city": 104, SIMING: 70, HULI: 137}
CREDENTIALS: dict[str, str] = {}
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with own_platform(tmp_path_factory, "operator", devices=0) as p:
        CREDENTIALS["duty1"] = p.add_user("duty1", "operator")[1]
        CREDENTIALS["api_key"] = p.api_key("admin")
        yield p


@pytest.fixture(scope="module")
def api(platform: Platform) -> str:
    return f"http://127.0.0.1:{platform.api_port}"


def _api(api: str, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        f"{api}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"X-Api-Key": CREDENTIALS["api_key"], "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def stations(platform: Platform, api: str) -> dict[str, str]:
    """Register and place the four stations, then each reports its fixed values over MQTT."""
    assert platform.services.database_url and platform.services.mqtt
    points = district_points()
    with psycopg.connect(platform.services.database_url) as conn, conn.cursor() as cur:
        for i, code in enumerate([A, B, MICRO, D]):
            model = "air-micro@1" if code == MICRO else "air-station@1"
            attrs = {} if code == MICRO else {"station_level": "national"}
            lon, lat = points[code[:6]]
            cur.execute(
                "insert into devices (code, alias, model, device_class, name, district, state, attributes, lon, lat,"
                " created_by, updated_by) values (%s, %s, %s, 'air', %s, %s, 'active', %s, %s, %s, 'e2e', 'e2e')",
                (code, code[:16], model, f"站点 {code[-3:]}", code[:6], json.dumps(attrs), lon + 0.01 * i, lat),
            )
    ts = datetime.now(UTC).replace(microsecond=0)
    for code, metrics in VALUES.items():
        publish(platform, code, json.dumps({"v": 1, "ts": ts.isoformat(), "metrics": metrics}).encode())

    def settled() -> bool:
        got = _api(api, "/api/v1/geo/aqi")
        return (got["city"]["aqi"], got["districts"][SIMING]["aqi"], got["districts"][HULI]["aqi"]) == (
            EXPECTED["city"],
            EXPECTED[SIMING],
            EXPECTED[HULI],
        )

    assert wait_for(settled, timeout=60, interval=0.5), f"area AQIs never settled: {_api(api, '/api/v1/geo/aqi')}"
    return {"A": A, "B": B, "MICRO": MICRO, "D": D}


@pytest.fixture
def open_console(open_console: Callable[..., Console], stations: dict[str, str]) -> Callable[[], Console]:
    """Consoles in Chinese, once the stations' values have settled."""
    return lambda: open_console("zh-CN")


def _load(c: Console, api: str) -> None:
    sign_in(c, api, "duty1", CREDENTIALS["duty1"])


def _docs_shot(page: Page, name: str, element: str | None = None) -> Path:
    root = Path(__file__).resolve().parents[2] / "docs" / "img"
    target = root if os.environ.get("CITYBRAIN_DOCS_SCREENSHOTS") == "1" else artifacts()
    target.mkdir(parents=True, exist_ok=True)
    path = target / name
    if element:
        page.locator(element).first.screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=False)
    assert path.read_bytes()[:8] == PNG_MAGIC
    return path


def test_header_map_and_api_agree_on_area_aqi(open_console: Callable[[], Console], api: str) -> None:
    c = open_console()
    _load(c, api)
    page = c.page
    aqi = _api(api, "/api/v1/geo/aqi")
    assert aqi["city"]["stations"] == 3 and aqi["city"]["micro_stations"] == 1
    # Header (vitals).
    expect(page.locator("#vitals .aqi-city")).to_have_text(str(EXPECTED["city"]), timeout=20_000)
    for district in (SIMING, HULI):
        chip = page.locator(f'#vitals .aqi-district[data-district="{district}"]')
        expect(chip).to_have_text(re.compile(rf"\s{EXPECTED[district]}$"), timeout=20_000)
        assert aqi["districts"][district]["aqi"] == EXPECTED[district]
    # Map: the district labels carry the same AQI (AQI shading).
    labels = page.locator("#map .layer-labels text")
    expect(labels.filter(has_text="思明区")).to_have_text(f"思明区 {EXPECTED[SIMING]}", timeout=20_000)
    expect(labels.filter(has_text="湖里区")).to_have_text(f"湖里区 {EXPECTED[HULI]}")
    vitals = _api(api, "/api/v1/vitals")
    assert vitals["aqi"]["city"] == aqi["city"]["aqi"]
    assert {k: v for k, v in vitals["aqi"]["districts"].items() if v is not None} == {
        k: d["aqi"] for k, d in aqi["districts"].items() if d["aqi"] is not None
    }
    # The micro-station is on the map, in its own layer.
    expect(page.locator(f'#map .layer-micro .device-marker[data-code="{MICRO}"]')).to_have_count(1, timeout=20_000)
    expect(page.locator(f'#map .layer-devices .device-marker[data-code="{A}"]')).to_have_count(1)
    _docs_shot(page, "console-map.png")
    c.assert_no_errors()


def test_scenario_alert_is_in_chinese_with_local_time_and_critical_first(
    open_console: Callable[[], Console], api: str
) -> None:
    """The micro-station's PM2.5 180 (twice the limit: at once) opens its rule (critical); Huli's 100 a major one."""
    assert wait_for(
        lambda: any(a["rule"] == RULE for a in _api(api, f"/api/v1/alerts?device={MICRO}")["items"]),
        timeout=60,
        interval=0.5,
    ), "the scenario alert never opened"
    alert = next(a for a in _api(api, f"/api/v1/alerts?device={MICRO}")["items"] if a["rule"] == RULE)
    local = datetime.fromisoformat(alert["opened_at"]).astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
    c = open_console()
    _load(c, api)
    row = c.page.locator(f'#feed li.alert[data-device="{MICRO}"][data-rule="{RULE}"]')
    expect(row).to_have_count(1, timeout=30_000)
    msg = row.locator(".alert-msg")
    expect(msg).to_have_text(alert["texts"]["zh-CN"]["text"])
    text = msg.inner_text()
    assert text.startswith("微站颗粒物浓度超标：PM2.5 180 µg/m³，阈值 75 µg/m³") and f"{local} 起" in text
    assert RULE not in text and not re.search(r"\d{2}:\d{2}:\d{2}Z", text)
    expect(row.locator(".sev")).to_have_text("紧急")
    # Severity order (the default): no critical alert below a less severe one.
    expect(c.page.locator(f'#feed li.alert[data-device="{D}"]').first).to_be_attached(timeout=30_000)
    ranks = {"info": 0, "warning": 1, "major": 2, "critical": 3}
    order = [ranks[s] for s in c.page.locator("#feed li.alert").evaluate_all("els => els.map(e => e.dataset.severity)")]
    assert order == sorted(order, reverse=True), order
    _docs_shot(c.page, "console-alert.png", element=f'#feed li.alert[data-device="{MICRO}"]')
    c.assert_no_errors()


def test_shelving_hides_the_alert_until_unshelved(open_console: Callable[[], Console], api: str) -> None:
    c = open_console()
    _load(c, api)
    page = c.page
    row = page.locator(f'#feed li.alert[data-device="{D}"]').first
    expect(row).to_be_visible(timeout=30_000)
    alert_id = row.get_attribute("data-id")
    row.locator(".act-shelve").click()
    row.locator(".shelve-duration").select_option(str(4 * 3600))
    row.locator(".shelve-reason").fill("现场核查中")
    row.locator(".shelve-form button[type=submit]").click()
    # Shelved: gone from the active feed, listed under 已搁置 with its expiry and reason.
    expect(page.locator(f'#feed li.alert[data-id="{alert_id}"]')).to_have_count(0, timeout=10_000)
    page.select_option("#f-state", "shelved")
    shelved = page.locator(f'#feed li.alert[data-id="{alert_id}"]')
    expect(shelved).to_have_attribute("data-shelved", "true")
    expect(shelved.locator(".alert-shelved")).to_contain_text("已搁置至")
    expect(shelved.locator(".alert-shelved")).to_contain_text("现场核查中")
    got = _api(api, f"/api/v1/alerts/{alert_id}")
    assert got["shelved"] is True and got["shelved_reason"] == "现场核查中" and got["shelved_by"] == "duty1"
    hours = (datetime.fromisoformat(got["shelved_until"]) - datetime.now(UTC)).total_seconds() / 3600
    assert 3.9 < hours <= 4.0
    assert got["history"][-1]["action"] == "shelve"
    # Unshelve: back in the active feed.
    shelved.locator(".act-unshelve").click()
    page.select_option("#f-state", "active")
    expect(page.locator(f'#feed li.alert[data-id="{alert_id}"]')).to_have_attribute(
        "data-shelved", "false", timeout=10_000
    )
    assert _api(api, f"/api/v1/alerts/{alert_id}")["shelved"] is False
    c.assert_no_errors()
