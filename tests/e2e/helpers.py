"""What the e2e modules share: a platform of their own, and the console in Chromium.

Chromium is ``/usr/bin/chromium`` (``apt-get install chromium``) or ``$CITYBRAIN_CHROMIUM``;
Playwright's own browser download is never used. With ``CI=true`` a missing browser
or Playwright is a failure, not a skip. Screenshots go to ``test-artifacts/``
(``$CITYBRAIN_TEST_ARTIFACTS`` overrides). The fixtures built on these are in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from citybrain.platform import Platform
from citybrain.settings import Settings
from core.topics import UplinkKind, uplink_topic
from tests.integration.helpers import mqtt_client

with contextlib.suppress(ImportError):  # a missing Playwright is reported by require_browser
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, ViewportSize, expect

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
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Endpoints the console probes that may legitimately answer 404 (not deployed yet, or no data yet);
# Chromium logs such responses as console errors ("Failed to load resource"), which are not app errors.
OPTIONAL_404 = re.compile(r"/api/v1/(session|devices/[0-9A-Z]+/(commands|latest))(\?.*)?$")


@contextmanager
def own_platform(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    *,
    simulate: bool = False,
    devices: int | None = None,
    fleet: str | None = None,
    **settings: Any,
) -> Iterator[Platform]:
    """A whole platform with servers of its own (data dir ``name``, a unique topic prefix), stopped after.

    ``settings`` are :class:`Settings` fields (``partitions`` defaults to 2); the rest are
    :meth:`Platform.start`'s.
    """
    data = tmp_path_factory.mktemp(name)
    prefix = re.sub(r"[^a-z0-9]", "", name.lower())[:6]
    s = Settings(
        database_url=None,
        kafka_bootstrap=None,
        mqtt_url=None,
        data_dir=data,
        topic_prefix=f"{prefix}{uuid.uuid4().hex[:6]}",
        api_port=0,
        **{"partitions": 2, **settings},
    )
    p = Platform.from_settings(s, data_dir=Path(data))
    p.start(simulate=simulate, devices=devices, fleet=fleet, progress=False)
    try:
        yield p
    finally:
        p.stop()


def district_points() -> dict[str, tuple[float, float]]:
    """Each Xiamen district's label point (lon, lat), by district code."""
    text = resources.files("geo").joinpath("data/xiamen_districts.geojson").read_text(encoding="utf-8")
    return {f["properties"]["code"]: tuple(f["properties"]["label_point"]) for f in json.loads(text)["features"]}


def publish(platform: Platform, code: str, *payloads: bytes, kind: UplinkKind = "telemetry") -> None:
    """Publish each payload on the device's uplink topic (QoS 1), as the device would."""
    mqtt = platform.services.mqtt
    assert mqtt is not None
    dev = mqtt_client(mqtt.host, mqtt.port)
    try:
        for payload in payloads:
            dev.publish(uplink_topic(code, kind), payload, qos=1).wait_for_publish(5)
    finally:
        dev.loop_stop()
        dev.disconnect()


def artifacts() -> Path:
    root = Path(os.environ.get("CITYBRAIN_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")
    root.mkdir(parents=True, exist_ok=True)
    return root


def chromium() -> str:
    return os.environ.get("CITYBRAIN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _browser_problem(exe: str) -> str | None:
    """Why the browser tests cannot run, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright; never `playwright install`)"
    if not Path(exe).exists():
        return f"Chromium not found at {exe} (apt-get install -y chromium, or set CITYBRAIN_CHROMIUM)"
    return None


def require_browser(exe: str, ci: bool) -> None:
    """Fail in CI, skip elsewhere, when the browser is missing."""
    problem = _browser_problem(exe)
    if problem:
        if ci:
            pytest.fail(f"console e2e tests need a browser in CI: {problem}", pytrace=False)
        pytest.skip(problem)


def launch(pw: Playwright, exe: str) -> Browser:
    return pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)


@dataclass
class Console:
    """One officer's console: a browser context and page, with the console errors it logged."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)

    def assert_no_errors(self, *, expected: re.Pattern[str] | None = None) -> None:
        """No console errors but the expected ones (e.g. the browser's log line of a refused call)."""
        errors = [e for e in self.errors if expected is None or not expected.search(e)]
        assert errors == [], "console errors:\n" + "\n".join(errors)


def benign(msg: ConsoleMessage) -> bool:
    """A console error that is no app error: a probe's 404, or a signed-out console's 401 on its session."""
    url = msg.location.get("url", "") if msg.location else ""
    if not msg.text.startswith("Failed to load resource"):
        return False
    # The first GET /api/v1/session of a signed-out console answers 401 by design.
    return bool(OPTIONAL_404.search(url) and "404" in msg.text) or (
        url.endswith("/api/v1/session") and "401" in msg.text
    )


def new_console(browser: Browser, locale: str = "en-US") -> Console:
    """A new context and page (Shanghai time) that records every console error but the benign ones."""
    context = browser.new_context(viewport=VIEWPORT, locale=locale, timezone_id="Asia/Shanghai")
    page = context.new_page()
    c = Console(context, page)

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error" and not benign(msg):
            url = msg.location.get("url", "") if msg.location else ""
            c.errors.append(f"{msg.text} @ {url}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: c.errors.append(f"uncaught: {exc}"))
    return c


def sign_in(c: Console, api: str, user: str, password: str, hash_: str = "", *, live: bool = True) -> None:
    """Open the console (at ``hash_``), sign in through its form unless already signed in, and wait for the app.

    With ``live`` also wait until the live alert feed is connected.
    """
    c.page.goto(f"{api}/{hash_}", wait_until="domcontentloaded")
    expect(c.page.locator("#login-view:visible, #app:visible").first).to_be_visible(timeout=15_000)
    if c.page.locator("#login-view").is_visible():
        c.page.fill('input[name="username"]', user)
        c.page.fill('input[name="password"]', password)
        c.page.click("#login-form button[type=submit]")
    expect(c.page.locator("#app")).to_be_visible(timeout=15_000)
    if live:
        expect(c.page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)


def shot(page: Page, name: str) -> Path:
    """A screenshot of the page in the artifacts folder (checked to be a PNG)."""
    path = artifacts() / name
    page.screenshot(path=str(path), full_page=False)
    with path.open("rb") as f:
        assert f.read(8) == PNG_MAGIC, f"{path} is not a PNG"
    return path
