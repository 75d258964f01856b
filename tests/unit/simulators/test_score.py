"""Scoring a run from what the platform stored: expected quality flags, reports, the CLI edge."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from citybrain import cli
from simulators.scenario import ExpectedAlert, FiredAlert, score
from simulators.score import ScoreReport, StoredValue, expected_quality, quality_score

T = datetime(2026, 9, 15, 12, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 29, tzinfo=UTC)
AIR, WATER = "35020303085000003", "35021103085000001"


def _line(device: str, model: str, ts: datetime, values: dict[str, float], **extra: object) -> str:
    row = {
        "device": device,
        "topic_device": extra.pop("topic_device", device),
        "model": model,
        "protocol": extra.pop("protocol", "json"),
        "event_time": ts.isoformat(),
        "ts": ts.isoformat(),
        "values": values,
        "flags": {},
        "fault": [],
        "corrupt": None,
        "copies": 1,
    }
    row.update(extra)
    return json.dumps(row)


@pytest.fixture
def sent_log(tmp_path: Path) -> Path:
    path = tmp_path / "sent.ndjson"
    lines = [
        _line(AIR, "air-station", T, {"pm25": 30.0, "humidity": 70.0}),
        _line(AIR, "air-station", T + timedelta(minutes=1), {"pm25": 30.0, "humidity": 350.0}, fault=["spike"]),
        _line(AIR, "air-station", T + timedelta(minutes=2), {"pm25": 31.0}, corrupt="malformed"),
        _line(AIR, "air-station", T + timedelta(minutes=3), {"pm25": 31.0}, copies=0, fault=["dropout"]),
        _line(AIR, "air-station", NOW + timedelta(days=30), {"pm25": 32.0}, fault=["clock_skew"]),
        _line(AIR, "air-station", T + timedelta(minutes=5), {"pm25": 33.0}, topic_device="35020303085000009"),
        _line(WATER, "water-station", T, {"ph": 7.2, "do": 8.0}, protocol="hj212", flags={"ph": "M", "do": "D"}),
        json.dumps({"device": AIR, "fault": ["offline"], "event": "connection_lost"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_expected_quality_follows_the_platform_rules(sent_log: Path) -> None:
    got = expected_quality(sent_log, now=NOW)
    assert got[(AIR, "pm25", T)] == ("good", ())
    assert got[(AIR, "humidity", T + timedelta(minutes=1))] == ("suspect", ("range",))
    assert got[(AIR, "pm25", NOW + timedelta(days=30))] == ("suspect", ("future",))
    # Hour data is stored at the start of its hour; the station's own flags decide its quality.
    assert got[(WATER, "ph", T - timedelta(hours=1))] == ("suspect", ("flag:M",))
    assert got[(WATER, "do", T - timedelta(hours=1))] == ("bad", ("flag:D",))
    # Corrupted and withheld records store nothing; an impersonator's values land on its victim.
    assert not {k for k in got if k[2] in (T + timedelta(minutes=2), T + timedelta(minutes=3))}
    assert ("35020303085000009", "pm25", T + timedelta(minutes=5)) in got
    assert len(got) == 8


def test_quality_score_counts_flags_value_by_value(sent_log: Path) -> None:
    expected = expected_quality(sent_log, now=NOW)
    stored = {key: StoredValue(1.0, label, None) for key, (label, _) in expected.items()}
    perfect = quality_score(expected, stored)
    assert (perfect.precision, perfect.recall, perfect.delivery) == (1.0, 1.0, 1.0)
    assert perfect.by_reason == {"flag:D": (1, 1), "flag:M": (1, 1), "future": (1, 1), "range": (1, 1)}
    # The platform misses the range flag, loses one value, and flags a good one.
    stored[(AIR, "humidity", T + timedelta(minutes=1))] = StoredValue(350.0, "good", None)
    del stored[(AIR, "pm25", NOW + timedelta(days=30))]
    stored[(AIR, "pm25", T)] = StoredValue(30.0, "suspect", None)
    worse = quality_score(expected, stored)
    assert worse.recall == pytest.approx(2 / 4) and worse.precision == pytest.approx(2 / 3)
    assert worse.delivery == pytest.approx(7 / 8) and worse.by_reason["range"] == (0, 1)
    assert len(worse.wrong) == 2


def test_report_lines_name_misses_and_unexpected_alerts() -> None:
    expected = [ExpectedAlert("manhole.water_level", "C1", "350203", T, T + timedelta(hours=2))]
    fired = [FiredAlert("air.pm25.high", "A1", "350205", T + timedelta(minutes=m)) for m in range(12)]
    precision, recall, details = score(expected, fired)
    precision_all, _, details_all = score(expected, fired, rules=())
    report = ScoreReport("x", precision, recall, precision_all, fired, expected, details, details_all)
    lines = report.lines()
    assert lines[1].endswith("recall 0.000") and "precision 1.000 (scenario rules), 0.000 (all rules)" in lines[1]
    assert any(line.startswith("  missed: manhole.water_level C1") for line in lines)
    assert lines[-1] == "  … and 2 more: air.pm25.high ×2"


def test_score_needs_a_scenario(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CITYBRAIN_MQTT_URL", "mqtt://127.0.0.1:1")
    assert cli.main(["simulate", "--city", "--score"]) == 2
    assert "--score needs --scenario" in capsys.readouterr().err


def test_registering_needs_the_database() -> None:
    from simulators.runner import SimulateError, SimulateOptions, simulate

    with pytest.raises(SimulateError, match="CITYBRAIN_DATABASE_URL"):
        simulate(SimulateOptions("127.0.0.1", 1, scenario="sewage-discharge", register=True))
