"""The platform's supervisor judges services by /healthz, not only by whether they live."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

from citybrain.harness import Services, free_port, spawn
from citybrain.platform import Platform, _armed
from citybrain.settings import Settings
from tests.integration.helpers import wait_for

# A stand-in service: /healthz answers 200 until the file ``mode`` says "503" or "slow".
SERVICE = textwrap.dedent(
    """
    import http.server, pathlib, signal, sys, time
    mode = pathlib.Path(sys.argv[2])
    if "--standby" in sys.argv:  # as `citybrain worker --standby`: wait to be promoted
        import socket
        r, w = socket.socketpair()
        w.setblocking(False)
        for s in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(s, lambda *_: None)
        signal.set_wakeup_fd(w.fileno())
        if r.recv(1)[0] != signal.SIGUSR1:
            sys.exit(0)

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


def _platform(tmp_path: Path, name: str = "api", **kw: float) -> tuple[Platform, Path]:
    port = free_port()
    mode = tmp_path / "mode"
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    p = Platform(
        settings=Settings(data_dir=tmp_path),
        services=Services(tmp_path),
        **{f"{name}_port": port},  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    argv = [sys.executable, str(script), str(port), str(mode)]
    p.processes.append(spawn(name, argv, tmp_path / f"{name}.log"))
    assert wait_for(lambda: p.supervise_once() == [] and p._health[name].seen_healthy, timeout=20, interval=0.2)
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


def test_a_dead_worker_is_replaced_by_its_warm_standby(tmp_path: Path) -> None:
    """The supervisor keeps a standby worker (imported, waiting) and promotes it: no start-up to wait for."""
    p, _mode = _platform(tmp_path, "worker")
    try:
        # Started once the worker is healthy; promotable once it blocks the promotion signal.
        assert wait_for(lambda: p.supervise_once() == [] and p._standby is not None and _armed(p._standby.pid))
        assert p._standby is not None
        standby = p._standby.pid
        dead = p.process("worker").pid
        p.process("worker").kill()
        assert p.supervise_once() == ["worker"]
        worker = p.process("worker")
        assert worker.pid == standby and worker.alive() and worker.restarts == 1
        assert worker.log_path.name == "worker.standby.log"
        # The promoted standby serves /healthz; then a new standby waits, logging to the other file.
        assert wait_for(lambda: p.supervise_once() == [] and p._health["worker"].seen_healthy, interval=0.2)
        assert wait_for(lambda: p.supervise_once() == [] and p._standby is not None and _armed(p._standby.pid))
        assert p._standby is not None and p._standby.pid not in (standby, dead)
        assert p._standby.log_path.name == "worker.log"
    finally:
        p.stop()
    assert p._standby is None


def _catches(pid: int, sig: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        return any(line.startswith("SigCgt:") and int(line.split()[1], 16) >> (sig - 1) & 1 for line in f)


def test_the_worker_standby_waits_and_leaves_on_a_stop_signal(tmp_path: Path) -> None:
    """``citybrain worker --standby`` builds everything without connecting, then waits for SIGUSR1."""
    env = dict(os.environ)
    # Nothing listens there: a standby must not connect anywhere while it waits.
    env.update(
        CITYBRAIN_KAFKA_BOOTSTRAP="127.0.0.1:1",
        CITYBRAIN_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        CITYBRAIN_DATA_DIR=str(tmp_path),
    )
    argv = [sys.executable, "-m", "citybrain.cli", "worker", "--web-port", str(free_port()), "--standby"]
    proc = spawn("worker (standby)", argv, tmp_path / "standby.log", env=env)
    try:
        # Waiting once it catches SIGUSR1 (it only blocks it while importing).
        assert wait_for(lambda: _catches(proc.pid, signal.SIGUSR1) or not proc.alive(), timeout=90), proc.log_tail()
        assert proc.alive(), proc.log_tail()
        os.kill(proc.pid, signal.SIGTERM)
        assert wait_for(lambda: not proc.alive(), timeout=60), proc.log_tail()
        assert proc.proc.returncode == 0, proc.log_tail()
    finally:
        proc.stop()
