"""Pure parts of the notification webhooks: matching, rendering per target, signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from typing import Any

import pytest

from alerts.notify import (
    NotifyError,
    RetryPolicy,
    Subscription,
    dingtalk_signed_url,
    matches,
    render,
    sign,
    signature_headers,
    verify,
)
from core.records import Severity

ALERT: dict[str, Any] = {
    "id": "f" * 32,
    "rule": "air.pm25.high",
    "device": "35020303080000012",
    "district": "350203",
    "class": "air",
    "severity": "major",
    "state": "open",
    "opened_at": "2026-11-29T00:00:00Z",
    "cleared_at": None,
    "metric": "pm25",
    "value": 180.0,
    "threshold": 150.0,
    "message": "PM2.5 180 > 150",
    "labels": {},
}


def _sub(**kw: Any) -> Subscription:
    return Subscription(**{"id": 7, "name": "t", "url": "https://example.test/hook", **kw})


@pytest.mark.parametrize(
    ("kw", "alert", "want"),
    [
        ({}, {}, True),
        ({"rule_pattern": "air.*"}, {}, True),
        ({"rule_pattern": "water.*"}, {}, False),
        ({"min_severity": Severity.CRITICAL}, {}, False),
        ({"min_severity": Severity.MAJOR}, {"severity": "critical"}, True),
        ({"districts": ("350206",)}, {}, False),
        ({"districts": ("350203", "350206")}, {}, True),
        ({"enabled": False}, {}, False),
        ({}, {"severity": "bogus"}, False),
    ],
)
def test_matches_rule_glob_severity_and_districts(kw: dict[str, Any], alert: dict[str, Any], want: bool) -> None:
    assert matches(_sub(**kw), {**ALERT, **alert}) is want


def test_bodies_per_target_format() -> None:
    wecom = json.loads(render(_sub(format="wecom_markdown"), ALERT, "open"))
    assert wecom["msgtype"] == "markdown" and set(wecom["markdown"]) == {"content"}
    assert "2026-11-29 08:00:00" in wecom["markdown"]["content"]  # Asia/Shanghai
    assert "告警" in wecom["markdown"]["content"]
    wecom_text = json.loads(render(_sub(format="wecom_text"), ALERT, "clear"))
    assert wecom_text["msgtype"] == "text" and "恢复" in wecom_text["text"]["content"]
    ding = json.loads(render(_sub(format="dingtalk_markdown"), ALERT, "escalate"))
    assert ding["msgtype"] == "markdown" and ding["markdown"]["title"] == "[major] air.pm25.high"
    sms = json.loads(render(_sub(format="json", template="$device $message"), ALERT, "open"))
    assert sms == {"subscription": 7, "transition": "open", "text": "35020303080000012 PM2.5 180 > 150", "alert": ALERT}


def test_templates_substitute_only_known_names_and_cannot_reach_attributes() -> None:
    with pytest.raises(NotifyError, match="placeholder"):
        _sub(template="$nope")
    with pytest.raises(NotifyError, match="placeholder"):
        _sub(template="${rule.__class__}")
    body = json.loads(render(_sub(format="wecom_text", template="$$5 for $rule"), ALERT, "open"))
    assert body["text"]["content"] == "$5 for air.pm25.high"


def test_long_content_is_cut_for_the_robots() -> None:
    body = json.loads(render(_sub(format="wecom_text"), {**ALERT, "message": "x" * 10_000}, "open"))
    assert len(body["text"]["content"]) == 2000


@pytest.mark.parametrize("kw", [{"url": "ftp://h/x"}, {"format": "slack"}, {"districts": ("3502",)}])
def test_bad_subscriptions_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(NotifyError):
        _sub(**kw)


def test_signature_covers_timestamp_and_body_and_expires() -> None:
    body = b'{"a":1}'
    sig = sign("k", 1_700_000_000, body)
    want = hmac.new(b"k", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert sig == f"sha256={want}"
    assert verify("k", 1_700_000_000, body, sig, now=1_700_000_100)
    assert not verify("k", 1_700_000_000, body + b" ", sig, now=1_700_000_100)
    assert not verify("k", 1_700_000_001, body, sig, now=1_700_000_100)
    assert not verify("k", 1_700_000_000, body, sig, now=1_700_000_000 + 301)  # a replay, too late
    headers = signature_headers("k", 1_700_000_000, body, "7:a:open:major")
    assert headers["X-Citybrain-Signature"] == sig and headers["X-Citybrain-Delivery"] == "7:a:open:major"
    assert "X-Citybrain-Signature" not in signature_headers("", 1, body, "x")  # no secret, no signature


def test_dingtalk_url_signature() -> None:
    # DingTalk: sign = urlencode(base64(HmacSHA256(key=secret, msg=timestamp + "\n" + secret))).
    url = dingtalk_signed_url("https://oapi.dingtalk.com/robot/send?access_token=T", "SECabc", 1_577_836_800_000)
    parts = urllib.parse.urlsplit(url)
    q = dict(urllib.parse.parse_qsl(parts.query))
    assert q["access_token"] == "T" and q["timestamp"] == "1577836800000"
    mac = hmac.new(b"SECabc", b"1577836800000\nSECabc", hashlib.sha256).digest()
    assert q["sign"] == base64.b64encode(mac).decode()
    assert "+" not in parts.query and "/" not in parts.query.split("sign=")[1]  # URL-encoded


def test_the_worst_case_of_a_retry_policy_bounds_the_claim() -> None:
    # 5 attempts of at most 10 s, waits 2, 4, 8, 16 s.
    assert RetryPolicy(attempts=5, first_wait_s=2, max_wait_s=120, timeout_s=10).worst_case_s == 80
    # Waits stop doubling at max_wait_s.
    assert RetryPolicy(attempts=4, first_wait_s=50, max_wait_s=60, timeout_s=1).worst_case_s == 4 + 50 + 60 + 60
    with pytest.raises(NotifyError):
        RetryPolicy(attempts=0)
