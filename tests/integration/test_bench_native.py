"""The benchmark's native-client load (bench/native.py) on a private Mosquitto: nothing is dropped."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.native import count_native, publish_native
from citybrain.harness import MqttEndpoint, start_mosquitto

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MqttEndpoint]:
    proc, ep = start_mosquitto(tmp_path / "mosquitto", persistence=False)
    try:
        yield ep
    finally:
        proc.stop()


@pytest.mark.parametrize("rate", [None, 2000.0])
def test_every_line_is_acknowledged_and_delivered(broker: MqttEndpoint, rate: float | None) -> None:
    # mosquitto_pub -l drops what is queued when its input ends: the wrapper keeps the
    # pipe open until each connection has a PUBACK for every line.
    streams = [(f"bench/native/{k}", [b'{"k":%d,"i":%d}' % (k, i) for i in range(400)]) for k in range(3)]
    ready = threading.Event()
    got: list[int] = []
    sub = threading.Thread(
        target=lambda: got.append(count_native(broker, "bench/native/#", 1200, ready=ready, timeout=30))
    )
    sub.start()
    assert ready.wait(20)
    result = publish_native(broker, streams, rate=rate, timeout=30)
    sub.join(40)
    assert (result.sent, result.acked, result.connections) == (1200, 1200, 3)
    assert got == [1200]
