"""NB-IoT push codec (ingest.adapters.nbiot) on byte fixtures: pure, bytes in, push out."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.records import Transport
from ingest.adapters import nbiot
from ingest.adapters.manhole import decode as decode_frame
from ingest.errors import DecodeError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
RX = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
CODE = "35020301010000072"


def _fixture(name: str) -> bytes:
    return (FIXTURES / "nbiot" / name).read_bytes()


def test_oceanconnect_services_become_canonical_json_and_binary_frames() -> None:
    push = nbiot.decode("oceanconnect", _fixture("oceanconnect_datas_changed.json"), RX)
    assert push is not None and push.device_id == "oc-8f2a"
    js, frame = push.messages
    assert (js.service_id, js.format, frame.service_id, frame.format) == ("Cover", "json", "Frame", "binary")
    # Strings are platform bookkeeping, not measurements; the event time is the service's.
    assert json.loads(js.payload) == {
        "v": 1,
        "ts": "2025-11-29T00:01:00+00:00",
        "metrics": {"tilt": 3.5, "battery": 90, "depth": {"value": 1.2, "unit": "m"}},
    }
    assert frame.payload == bytes.fromhex("a1b2c3")
    raws = nbiot.raw_messages(push, "oceanconnect", CODE, RX)
    assert [(r.topic, r.transport, r.device_code, r.received_at) for r in raws] == [
        ("webhook/oceanconnect", Transport.WEBHOOK, CODE, RX)
    ] * 2
    assert raws[0].meta == (("device_id", "oc-8f2a"), ("format", "json"), ("service", "Cover"))


def test_ctwing_base64_frame_and_ignored_notifications() -> None:
    push = nbiot.decode("ctwing", _fixture("ctwing_data_report.json"), RX)
    assert push is not None and push.device_id == "ctwing-dev-0001"
    (msg,) = push.messages
    assert (msg.format, msg.payload, msg.service_id) == ("binary", bytes.fromhex("a1b2c3"), "1")
    assert nbiot.decode("ctwing", _fixture("ctwing_online.json"), RX) is None


def test_a_real_manhole_frame_passes_through_unaltered() -> None:
    frame = (FIXTURES / "manhole" / "alarm_lid_open.bin").read_bytes()
    body = json.dumps({"messageType": "dataReport", "deviceId": CODE, "payload": {"frame": frame.hex()}}).encode()
    push = nbiot.decode("ctwing", body, RX)
    assert push is not None
    assert decode_frame(push.messages[0].payload).counter == 43


@pytest.mark.parametrize(
    ("platform", "body", "reason"),
    [
        ("oceanconnect", b"{not json", "bad_json"),
        ("oceanconnect", b"[1, 2]", "bad_json"),
        ("oceanconnect", b'{"notifyType":"deviceDatasChanged","deviceId":"d","services":{}}', "bad_body"),
        ("oceanconnect", b'{"notifyType":"deviceDataChanged","deviceId":"d","service":{"x":1}}', "bad_body"),
        ("ctwing", b'{"messageType":"dataReport","payload":{"t":1}}', "bad_body"),
        ("ctwing", b'{"messageType":"dataReport","deviceId":"d","payload":{"note":"x"}}', "bad_body"),
        ("ctwing", b'{"messageType":"dataReport","deviceId":"d","payload":{"rawData":"%%%"}}', "bad_frame_encoding"),
        (
            "oceanconnect",
            b'{"notifyType":"deviceDataChanged","deviceId":"d","service":{"data":{"t":1},"eventTime":"2025"}}',
            "bad_body",
        ),
    ],
)
def test_bad_bodies_raise_decode_error_with_a_reason(platform: str, body: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        nbiot.decode(platform, body, RX)
    assert err.value.reason == reason


def test_an_empty_services_list_is_an_empty_push() -> None:
    body = b'{"notifyType":"deviceDatasChanged","deviceId":"d","services":[]}'
    assert nbiot.decode("oceanconnect", body, RX) == nbiot.Push("d", ())


def test_unknown_platform_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="unknown platform"):
        nbiot.decode("lora", b"{}", RX)
