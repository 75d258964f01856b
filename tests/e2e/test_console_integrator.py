"""The integrator's side of the console in Chromium, against the whole platform.

* The per-device debug view shows a message the platform dead-lettered: a malformed
  payload published over MQTT through the real gateway and stream worker, with its reason.
* A notification subscription made in the console delivers a real alert, signed, to a
  local receiver (a WeCom-style robot on 127.0.0.1).

Browser set-up and helpers are in ``helpers.py`` and ``conftest.py``; this module runs its own
platform so that its subscriptions and dead letters do not touch the other tests'.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest

from alerts.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from citybrain.platform import Platform
from devices.code import DeviceCode
from tests.e2e.helpers import Console, own_platform, publish, shot, sign_in
from tests.integration.helpers import wait_for

with contextlib.suppress(ImportError):  # a missing Playwright is reported by require_browser
    from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

N_DEVICES = 2
ALERTING = DeviceCode.build("350206", "0308", 95).full  # an air station no simulator drives
# Another station no simulator drives: its recent-message ring holds only what the test sends,
# so a slow machine cannot push the rejected message out of it before the console shows it.
DEBUGGED = DeviceCode.build("350206", "0308", 96).full
SECRET = "e2e-robot-secret"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
USERS: dict[str, str] = {}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    # The robot below listens on 127.0.0.1, which notifications may not reach by default (SSRF).
    with own_platform(
        tmp_path_factory,
        "integrator",
        simulate=True,
        devices=N_DEVICES,
        partitions=1,
        demo_interval_s=2.0,
        notify_allowed_hosts="127.0.0.1",
    ) as p:
        for name, role in (("integ1", "integrator"), ("duty2", "operator")):
            USERS[name] = p.add_user(name, role)[1]
        USERS["api_key"] = p.api_key("admin")
        assert p.services.database_url
        with psycopg.connect(p.services.database_url) as conn:
            conn.execute(
                "insert into devices (code, alias, model, device_class, name, district, state, created_by, updated_by)"
                " values (%s, %s, 'air-station@1', 'air', 'Robot test station', %s, 'registered', 'e2e', 'e2e')",
                (ALERTING, ALERTING[:16], ALERTING[:6]),
            )
            conn.execute(
                "insert into devices (code, alias, model, device_class, name, district, state, created_by, updated_by)"
                " values (%s, %s, 'air-station@1', 'air', 'Debugged station', %s, 'registered', 'e2e', 'e2e')",
                (DEBUGGED, DEBUGGED[:16], DEBUGGED[:6]),
            )
        yield p


@pytest.fixture(scope="module")
def api(platform: Platform) -> str:
    return f"http://127.0.0.1:{platform.api_port}"


@pytest.fixture
def console(open_console: Callable[..., Console]) -> Console:
    return open_console()


def _sign_in(c: Console, api: str, user: str, hash_: str = "") -> None:
    sign_in(c, api, user, USERS[user], hash_, live=False)


def _api_json(api: str, path: str) -> Any:
    req = urllib.request.Request(f"{api}{path}", headers={"X-Api-Key": USERS["api_key"]})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def test_debug_view_shows_a_dead_lettered_message_with_its_reason(
    console: Console, api: str, platform: Platform
) -> None:
    code = DEBUGGED
    now = datetime.now(UTC).isoformat().encode()
    debug: dict[str, Any] = {}

    def seen(check: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
        def probe() -> bool:
            debug.clear()
            debug.update(_api_json(api, f"/api/v1/devices/{code}/debug"))
            return check(debug)

        return probe

    # Opening the view captures the device's raw messages from then on (on demand): the
    # workers pick the capture up within 2 s, so the device keeps sending, as a device
    # being brought up does, until one of its messages is in the view.
    assert _api_json(api, f"/api/v1/devices/{code}/debug")["capture"]["until"]
    publish(platform, code, b'{"v":1,"state":"online"}', kind="status")
    good = seen(lambda d: any(m["readings"] for m in d["messages"]))

    def sent_and_seen() -> bool:
        # The same event time each time: the store keeps one row (idempotent writes).
        publish(platform, code, b'{"v":1,"ts":"' + now + b'","metrics":{"pm25":12.5}}')
        return good()

    # The ring keeps each device's newest message of a batch: the good reading must land first.
    assert wait_for(sent_and_seen, 45, interval=0.5), debug
    # Then a firmware bug: a truncated JSON body on the device's own telemetry topic.
    publish(platform, code, b'{"v":1,"ts":"' + now + b'","metrics":{"pm25":')
    dead_lettered = seen(
        lambda d: bool(d["dead_letters"]) and any(m["rejected"] for m in d["messages"]) and d["session"] is not None
    )
    assert wait_for(dead_lettered, 45), debug
    reason = debug["dead_letters"][0]["reason"]
    assert reason and debug["dead_letters"][0]["source"] == "stream-worker"
    assert debug["session"] is not None and debug["device"]["code"] == code

    _sign_in(console, api, "integ1", f"#debug/{code}")
    page = console.page
    view = page.locator("#debug")
    expect(view).to_be_visible(timeout=15_000)
    expect(view.locator("#debug-title")).to_contain_text(code)
    dead = view.locator("tr.debug-dead").first
    expect(dead).to_have_attribute("data-reason", reason, timeout=15_000)
    expect(dead).to_contain_text(reason)
    expect(dead.locator(".payload")).to_contain_text('"metrics":{"pm25":')
    expect(view.locator("tr.debug-msg.rejected").first).to_contain_text(reason)
    # The good reading shows what it was decoded to (the birth message is listed as accepted too).
    expect(view.locator("tr.debug-msg:not(.rejected)").filter(has_text="pm25=").first).to_be_visible()
    expect(view.locator(".debug-session")).to_contain_text("connected")
    expect(view.locator(".debug-capture")).to_be_visible()  # until when raw messages are captured
    path = shot(page, "console-debug-view.png")
    if os.environ.get("CITYBRAIN_DOCS_SCREENSHOTS") == "1":  # how the committed one is made; else docs/ stays
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / "console-debug-view.png")
    # From the device panel too: the button opens the same view.
    view.locator("#debug-close").click()
    expect(view).to_be_hidden()
    console.assert_no_errors()


class _Robot(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[bytes, dict[str, str]]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).received.append((body, dict(self.headers.items())))
        answer = b'{"errcode":0,"errmsg":"ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def robot() -> Iterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    _Robot.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Robot)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cgi-bin/webhook/send?key=robotkey", _Robot.received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_subscription_made_in_the_console_delivers_a_signed_alert(
    console: Console,
    api: str,
    platform: Platform,
    robot: tuple[str, list[tuple[bytes, dict[str, str]]]],
) -> None:
    url, received = robot
    _sign_in(console, api, "duty2")
    page = console.page
    page.locator("#notify-toggle").click()
    panel = page.locator("#notify")
    expect(panel).to_be_visible()
    form = panel.locator("#notify-form")
    form.locator('input[name="name"]').fill("Duty robot")
    form.locator('input[name="url"]').fill(url)
    form.locator('select[name="format"]').select_option("wecom_markdown")
    form.locator('input[name="rule_pattern"]').fill("air.*")
    form.locator('select[name="min_severity"]').select_option("major")
    form.locator('input[name="districts"]').fill("350206")
    form.locator('input[name="secret"]').fill(SECRET)
    form.locator("button[type=submit]").click()
    sub = panel.locator("li.notify-sub").filter(has_text="Duty robot")
    expect(sub).to_have_count(1, timeout=10_000)
    expect(sub).to_contain_text("key=***")  # the robot key is never shown back
    assert "robotkey" not in panel.inner_text()

    # A critical PM2.5 reading in 湖里区 opens an alert; the worker matches it against the subscription.
    payload = {"v": 1, "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "metrics": {"pm25": 230.0}}
    publish(platform, ALERTING, json.dumps(payload).encode())
    assert wait_for(lambda: bool(received), 45), "no notification reached the robot"
    body, headers = received[0]
    doc = json.loads(body)
    assert doc["msgtype"] == "markdown" and ALERTING in doc["markdown"]["content"]
    assert "air." in doc["markdown"]["content"]
    assert verify(SECRET, int(headers[TIMESTAMP_HEADER]), body, headers[SIGNATURE_HEADER], now=time.time())

    # The delivery log in the console says delivered.
    page.locator("#notify-close").click()
    page.locator("#notify-toggle").click()
    expect(panel.locator("li.notify-sub li.delivery[data-status=delivered]").first).to_be_visible(timeout=15_000)
    console.assert_no_errors()
