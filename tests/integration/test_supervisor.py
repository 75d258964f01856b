"""The platform's supervisor judges services by /healthz, not only by whether they live."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from citybrain.harness import Services, free_port, spawn
from citybrain.platform import Platform
from citybrain.settings import Settings
from tests.integration.helpers import wait_for

# A stand-in service: /healthz answers 200 until the file ``mode`` says "503" or "slow".
SERVICE = textwrap.dedent(
    """
    import http.server, pathlib, sys, time
    mode = pathlib.Path(sys.argv[2])

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            m = mode.read_text().strip() if mode.exists() else "ok"
            if m == "slow":
                time.sleep(5)
            self.send_response(503 if m == "503" else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def _platform(tmp_path: Path, **kw: float) -> tuple[Platform, Path]:
    port = free_port()
    mode = tmp_path / "mode"
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    p = Platform(
        settings=Settings(data_dir=tmp_path),
        services=Services(tmp_path),
        api_port=port,
        **kw,  # type: ignore[arg-type]
    )
    p.processes.append(spawn("api", [sys.executable, str(script), str(port), str(mode)], tmp_path / "api.log"))
    assert wait_for(lambda: p.supervise_once() == [] and p._health["api"].seen_healthy, timeout=20, interval=0.2)
    return p, mode


def test_a_service_whose_healthz_keeps_failing_is_killed_and_restarted(tmp_path: Path) -> None:
    p, mode = _platform(tmp_path, unhealthy_restart_s=1.0)
    try:
        pid = p.process("api").pid
        mode.write_text("503")
        assert wait_for(lambda: "api" in p.supervise_once(), timeout=20, interval=0.3)
        api = p.process("api")
        assert api.restarts == 1 and api.pid != pid and api.alive()
    finally:
        p.stop()


def test_a_slow_but_live_service_is_left_alone(tmp_path: Path) -> None:
    # A saturated service answers late; restarting it would only add load.
    p, mode = _platform(tmp_path, unhealthy_restart_s=1.0)
    try:
        mode.write_text("slow")
        for _ in range(3):  # each check waits 2 s for an answer: ~6 s unanswered, > unhealthy_restart_s
            assert p.supervise_once() == []
        assert p.process("api").restarts == 0
    finally:
        p.stop()


def test_a_dead_service_is_restarted(tmp_path: Path) -> None:
    p, _mode = _platform(tmp_path)
    try:
        p.process("api").kill()
        assert p.supervise_once() == ["api"]
        assert p.process("api").alive()
    finally:
        p.stop()
