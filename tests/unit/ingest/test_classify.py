import pytest

from ingest.gateway import classify

CODE = "35020603080000017"


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (f"citybrain/up/{CODE}/telemetry", b"{}", ""),
        (f"citybrain/up/{CODE}/status", b"", ""),
        (f"citybrain/up/{CODE}/telemetry", b"", "empty"),
        ("citybrain/up/35020603080000019/telemetry", b"{}", "bad_code"),
        ("citybrain/up/nonsense/telemetry", b"{}", "bad_code"),
        (f"citybrain/up/{CODE}/weird", b"{}", "bad_topic"),
        (f"citybrain/up/{CODE}/telemetry", b"x" * 2000, "too_large"),
    ],
)
def test_classify(topic: str, payload: bytes, reason: str) -> None:
    code, got, detail = classify(topic, payload, 1024)
    assert got == reason
    assert (code == CODE) == (reason == "")
    if reason:
        assert detail
