"""Fuzz target of the NB-IoT push codec (ingest.adapters.nbiot): only its DecodeError may escape.

The codec is the pure part of the webhook (the route is HTTP and a ledger
lookup); the route turns DecodeError into a 400 with a dead-letter, anything
else would be a 500.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.adapters import nbiot
from ingest.errors import DecodeError
from tests.fuzz.strategies import FUZZ, json_values

pytestmark = pytest.mark.timeout(600)

RX = datetime(2026, 11, 29, tzinfo=UTC)

_data = st.dictionaries(
    st.sampled_from(["tilt", "battery", "rawData", "APPdata", "frame", "payload", "x"]),
    json_values | st.sampled_from(["0a0b", "AQID", "zz", ""]) | st.fixed_dictionaries({"value": json_values}),
    max_size=5,
)
_service = st.fixed_dictionaries(
    {"serviceId": json_values, "data": _data | json_values},
    optional={"eventTime": st.sampled_from(["20261129T080000Z", "2026", "99999999T999999Z"]) | json_values},
)
_oceanconnect = st.fixed_dictionaries(
    {
        "notifyType": st.sampled_from(["deviceDataChanged", "deviceDatasChanged", "deviceAdded"]) | json_values,
        "deviceId": st.sampled_from(["35020303080000012", "", "x" * 70]) | json_values,
    },
    optional={"service": _service | json_values, "services": st.lists(_service | json_values, max_size=4)},
)
_ctwing = st.fixed_dictionaries(
    {
        "messageType": st.sampled_from(["dataReport", "eventReport"]) | json_values,
        "deviceId": st.sampled_from(["35020303080000012", ""]) | json_values,
        "payload": _data | json_values,
    },
    optional={"timestamp": st.integers(-(2**70), 2**70) | json_values, "serviceId": json_values},
)


@FUZZ
@given(st.sampled_from(nbiot.PLATFORMS), _oceanconnect | _ctwing | st.dictionaries(st.text(max_size=10), json_values))
def test_webhook_body_parser(platform: str, doc: dict[str, Any]) -> None:
    try:
        push = nbiot.decode(platform, json.dumps(doc).encode(), RX)
        for m in push.messages if push else ():
            assert isinstance(m.payload, bytes) and m.format in ("json", "binary")
    except DecodeError as exc:
        assert exc.reason in {"bad_body", "bad_frame_encoding"}
