"""Pure parts of the audit log: entry validation, canonical form, chain checking."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from citybrain.security.audit import GENESIS_HASH, AuditEntry, AuditRow, canonical, check_chain, row_hash
from citybrain.security.errors import AuditError

T0 = datetime(2026, 11, 29, tzinfo=UTC)


def _chain(n: int) -> list[AuditRow]:
    rows, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        at = T0 + timedelta(seconds=seq)
        details = {"n": seq}
        digest = row_hash(seq, at, "a", "x.y", "", "success", None, details, prev)
        rows.append(AuditRow(seq, at, "a", "x.y", "", "success", None, details, prev, digest))
        prev = digest
    return rows


def test_chain_ok_and_each_kind_of_break() -> None:
    rows = _chain(5)
    report = check_chain(rows, (5, rows[-1].hash))
    assert report.ok and report.rows == 5 and report.head_hash == rows[-1].hash
    edited = [*rows[:2], replace(rows[2], actor="b"), *rows[3:]]
    assert (check_chain(edited).first_bad_seq, check_chain(edited).reason) == (3, "hash_mismatch")
    assert check_chain([*rows[:2], *rows[3:]]).reason == "seq_gap"
    assert check_chain(rows[:4], (5, rows[-1].hash)).reason == "head_mismatch"
    relinked = [*rows[:3], replace(rows[3], prev_hash="f" * 64), rows[4]]
    assert check_chain(relinked).first_bad_seq == 4
    assert "BROKEN at seq 4" in check_chain(relinked).describe()
    assert check_chain([]).ok


def test_canonical_is_stable_across_key_order_and_zones() -> None:
    a = canonical(1, T0, "a", "b", "", "success", None, {"x": 1, "y": [1, 2]}, GENESIS_HASH)
    other_zone = T0.astimezone(UTC).replace(tzinfo=UTC)
    b = canonical(1, other_zone, "a", "b", "", "success", None, {"y": [1, 2], "x": 1}, GENESIS_HASH)
    assert a == b


@pytest.mark.parametrize(
    "kwargs",
    [
        {"actor": ""},
        {"outcome": "maybe"},
        {"ip": "not-an-ip"},
        {"details": {"x": float("nan")}},
        {"details": {"x": object()}},
        {"details": {"x": "\x00"}},
        {"action": "a" * 201},
        {"details": {"x": "a" * 20_000}},
    ],
)
def test_bad_entries_are_refused(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"actor": "a", "action": "b"}
    with pytest.raises(AuditError):
        AuditEntry(**{**base, **kwargs})  # type: ignore[arg-type]


def test_ip_is_normalised() -> None:
    assert AuditEntry("a", "b", ip="2001:DB8::0001").ip == "2001:db8::1"
