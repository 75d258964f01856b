"""A real Prometheus scrapes a gateway-like /metrics endpoint and answers a PromQL query.

Uses Debian's ``prometheus`` binary (package ``prometheus``): skipped locally when it is
missing, a failure under CI (env ``CI`` set).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from citybrain.httpmini import MetricsServer

pytestmark = pytest.mark.integration


def _prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path:
        return path
    msg = "`prometheus` is not installed (Debian: apt-get install -y prometheus)"
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI must install it (.ci/run)")
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body: dict[str, object] = json.loads(resp.read())
            return body
    except (urllib.error.URLError, OSError, ValueError):
        return None


async def _query(base: str, promql: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = await asyncio.to_thread(_get_json, url)
    if not body or body.get("status") != "success":
        return []
    data = body["data"]
    assert isinstance(data, dict)
    result: list[dict[str, object]] = data["result"]
    return result


def _value(sample: dict[str, object]) -> float:
    value = sample["value"]
    assert isinstance(value, list)
    return float(value[1])


@pytest.fixture
async def metrics_endpoint() -> AsyncIterator[tuple[MetricsServer, Counter]]:
    registry = CollectorRegistry()
    forwarded = Counter(
        "citybrain_gateway_messages_forwarded_total", "Messages acknowledged by Kafka", registry=registry
    )
    server = MetricsServer(registry, lambda: True, "127.0.0.1", 0)
    await server.start()
    try:
        yield server, forwarded
    finally:
        await server.stop()


async def test_prometheus_scrapes_the_gateway_metrics(
    metrics_endpoint: tuple[MetricsServer, Counter], tmp_path: Path
) -> None:
    exe = _prometheus_binary()
    server, forwarded = metrics_endpoint
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: citybrain-gateway\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{server.port}']\n",
        encoding="utf-8",
    )
    log_path = tmp_path / "prometheus.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            exe,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 45
        raw: list[dict[str, object]] = []
        rate: list[dict[str, object]] = []
        while loop.time() < deadline and not rate:
            assert proc.returncode is None, f"prometheus exited:\n{log_path.read_text(errors='replace')}"
            forwarded.inc(100)  # a steadily growing counter, as a busy gateway's
            raw = raw or await _query(base, 'citybrain_gateway_messages_forwarded_total{job="citybrain-gateway"}')
            if raw:
                rate = [
                    r
                    for r in await _query(base, "rate(citybrain_gateway_messages_forwarded_total[5s])")
                    if _value(r) > 0
                ]
            await asyncio.sleep(0.5)
        assert raw, f"no sample of the counter in Prometheus:\n{log_path.read_text(errors='replace')}"
        assert _value(raw[0]) > 0
        assert rate, "rate() never returned a positive value"
        up = await _query(base, 'up{job="citybrain-gateway"}')
        assert up and _value(up[0]) == 1
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)
