"""`citybrain demo` as a user runs it: up, answering /healthz, and gone after Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from citybrain.harness import mosquitto_binary

pytestmark = pytest.mark.e2e


def test_demo_answers_healthz_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    assert mosquitto_binary() is not None, "mosquitto must be installed (.ci/run installs it)"
    env = dict(os.environ, CITYBRAIN_DATA_DIR=str(tmp_path / "var"), CITYBRAIN_TOPIC_PREFIX="democmd")
    proc = subprocess.Popen(
        [sys.executable, "-m", "citybrain.cli", "demo", "--port", "0", "--devices", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        out = "".join(lines)
        assert "Press Ctrl-C" in out, out[-3000:]
        api = re.search(r"console / API\s+(http://\S+)/", out)
        assert api, out
        with urllib.request.urlopen(f"{api.group(1)}/healthz", timeout=5) as r:
            assert r.status == 200
        assert re.search(r"console login\s+\S+ / \S+", out)
        # Mosquitto is installed here (and in CI): the demo runs on it, not on the development broker.
        assert re.search(r"MQTT\s+mqtt://\S+\s+\(mosquitto\)", out), out
        assert "amqtt" not in out
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 6
        # Ctrl-C, pressed twice, and a SIGTERM on top: the demo still stops cleanly.
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
            proc.send_signal(sig)
            time.sleep(0.05)
        rest, _ = proc.communicate(timeout=90)
        assert "stopped." in rest, rest[-2000:]
        _, alive = psutil.wait_procs(children, timeout=20)
        assert alive == [], [p.pid for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
