"""Score a simulated run against what the platform stored in PostgreSQL.

Two questions, both answered from the database directly (not the HTTP API, so
scoring needs no credentials beyond the database URL the settings give):

* **Alerts**: which alerts did the platform open for the run's devices, and how
  do they compare with the scenario's ground truth? :func:`score_platform`
  reads ``alerts`` and scores them with :func:`simulators.scenario.score`:
  precision within the scenario's rules, precision over every alert of the
  run's devices (faults raise alerts the scenario did not ask for), recall.
* **Quality flags**: did injected faults show up in the stored readings'
  quality? :func:`expected_quality` predicts, from the fleet's sent log, the
  quality the platform must store for every value it received (``suspect`` for
  a value outside the model's physical range, for a future wire timestamp under
  clock skew, or for an HJ 212 data flag such as M/C; ``bad`` for the fault
  flags D/F), and :func:`quality_score` compares that with
  :func:`stored_values`.

Devices must be in the ledger before they report (the stream worker rejects
unknown codes): :func:`register_sites` imports a scenario's sites in bulk
through the production importer (:func:`devices.importer.import_rows`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from core.records import Quality
from core.tables import class_table
from devices.importer import ImportReport, import_rows
from devices.models import ModelRegistry, shipped_models
from ingest.adapters.hj212.codec import FLAG_QUALITY
from ingest.adapters.hj212.passwords import set_pw
from simulators.base import Site
from simulators.encoders import DEFAULT_PW
from simulators.scenario import ExpectedAlert, FiredAlert, Scenario, score

__all__ = [
    "QualityScore",
    "ScoreReport",
    "StoredValue",
    "expected_quality",
    "fired_alerts",
    "quality_score",
    "register_sites",
    "score_platform",
    "stored_values",
    "wait_settled",
]

#: The stream worker's default ``max_future_skew``: event times further ahead are flagged.
DEFAULT_MAX_FUTURE_SKEW = timedelta(minutes=5)
_QUALITY = ("good", "suspect", "bad")
#: The worker evaluates rules just after committing a batch's rows: wait this long for them.
_RULES_GRACE_S = 1.5
#: Listed unexpected alerts in a report, at most.
_MAX_LISTED = 10

#: (device code on the wire, metric, stored event time)
Key = tuple[str, str, datetime]


@dataclass(frozen=True, slots=True)
class StoredValue:
    """One metric value of a stored wide row."""

    value: float
    quality: str
    flag: str | None


def register_sites(
    conn: psycopg.Connection,
    sites: Sequence[Site],
    models: ModelRegistry | None = None,
    *,
    actor: str = "simulator",
    hj212_codes: Iterable[str] = (),
    hj212_pw: str = DEFAULT_PW,
) -> ImportReport:
    """Put simulated sites into the ledger (idempotent: a re-run reports them unchanged).

    Args:
        conn: A connection not in autocommit mode (the import is one transaction).
        sites: The sites, e.g. :meth:`Scenario.sites`.
        models: Device models (default: the shipped ones).
        actor: Recorded as the creator.
        hj212_codes: Stations that will report over HJ 212 TCP: their PW is provisioned
            (the edge refuses stations without one). The edge re-reads MNs and PWs every
            30 s, so it knows them only after its next refresh (or a restart).
        hj212_pw: The PW the simulated stations send.

    Returns:
        The importer's report; rows it refused are in ``issues``.
    """
    rows: list[tuple[int, Mapping[str, Any]]] = [
        (
            i + 1,
            {
                "code": s.code,
                "model": s.model_id,
                "name": f"simulated {s.model_id} {s.code[-7:]}",
                "lon": s.lon,
                "lat": s.lat,
                "grid": s.cell,
                "attributes": dict(s.attributes),
            },
        )
        for i, s in enumerate(sites)
    ]
    report = import_rows(conn, rows, models or shipped_models(), actor=actor)
    with conn.transaction():
        for code in sorted(set(hj212_codes)):
            set_pw(conn, code, hj212_pw, actor=actor)
    return report


def fired_alerts(conn: psycopg.Connection, codes: Iterable[str], *, since: datetime | None = None) -> list[FiredAlert]:
    """Alerts the platform opened for these devices (at or after ``since``), oldest first, any state."""
    rows = conn.execute(
        "select rule, device_code, district, opened_at from alerts"
        " where device_code = any(%s) and opened_at >= %s order by opened_at",
        (sorted(set(codes)), since or datetime(1970, 1, 1, tzinfo=UTC)),
    ).fetchall()
    return [FiredAlert(r[0], r[1], r[2], r[3]) for r in rows]


def _classes(conn: psycopg.Connection, codes: Sequence[str]) -> list[str]:
    rows = conn.execute(
        "select distinct device_class from devices where code = any(%s) order by 1", (list(codes),)
    ).fetchall()
    return [r[0] for r in rows]


def stored_values(
    conn: psycopg.Connection, codes: Iterable[str], models: ModelRegistry | None = None
) -> dict[Key, StoredValue]:
    """Every stored metric value of these devices with its quality label and raw flag.

    A wide row's ``flags`` holds ``suspect``/``bad`` (optionally ``:<HJ 212 flag>``) for
    each metric that is not good; metrics it does not name are good.
    """
    models = models or shipped_models()
    wanted = sorted(set(codes))
    out: dict[Key, StoredValue] = {}
    for device_class in _classes(conn, wanted):
        metrics = models.metrics_of_class(device_class)
        table = class_table(device_class)
        present = {
            r[0]
            for r in conn.execute(
                "select column_name from information_schema.columns where table_name = %s", (table,)
            ).fetchall()
        }
        cols = [m for m in metrics if m in present]
        query = sql.SQL("select device_code, ts, flags, {} from {} where device_code = any(%s)").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(table)
        )
        for code, ts, raw_flags, *values in conn.execute(query, (wanted,)).fetchall():
            flags = raw_flags or {}
            for metric, value in zip(cols, values, strict=True):
                if value is None:
                    continue
                label, _, flag = str(flags.get(metric, "good")).partition(":")
                out[(code, metric, ts)] = StoredValue(float(value), label, flag or None)
    return out


def _stored_time(row: Mapping[str, Any]) -> datetime:
    ts = datetime.fromisoformat(row["ts"]).astimezone(UTC)
    if row.get("protocol") == "hj212" and row.get("model") == "water-station":
        # Hour data (CN 2061) is stamped with the start of its hour (HJ 212 DataTime).
        ts -= timedelta(hours=1)
    return ts


def expected_quality(
    sent_log: Path,
    models: ModelRegistry | None = None,
    *,
    now: datetime | None = None,
    max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW,
) -> dict[Key, tuple[str, tuple[str, ...]]]:
    """The quality the platform must store for each value the fleet delivered, and why.

    Records a fault withheld (dropout, offline) or damaged (malformed, bad CRC) are left
    out: nothing of them may be stored. Keys use the code on the wire (an impersonating
    device's values are stored under its victim) and the time the platform stores.

    Args:
        sent_log: The fleet's NDJSON sent log.
        models: Device models (default: the shipped ones).
        now: When the platform received the data (default: now); a wire time more than
            ``max_future_skew`` after it is flagged.
        max_future_skew: The stream worker's setting.

    Returns:
        Key → (``good`` | ``suspect`` | ``bad``, reasons such as ``range``, ``flag:M``, ``future``).
    """
    models = models or shipped_models()
    horizon = (now or datetime.now(UTC)) + max_future_skew
    out: dict[Key, tuple[str, tuple[str, ...]]] = {}
    with sent_log.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if "values" not in row or not row.get("copies") or row.get("corrupt") or "model" not in row:
                continue
            model = models.get(row["model"])
            ts = _stored_time(row)
            flags: Mapping[str, str] = row.get("flags") or {}
            for metric, value in row["values"].items():
                spec = model.metrics.get(metric)
                if spec is None:
                    continue
                rank, reasons = 0, []
                if metric in flags:
                    # An unknown letter is suspect, as the platform's HJ 212 codec treats it.
                    rank = _QUALITY.index(FLAG_QUALITY.get(flags[metric], Quality.SUSPECT).value)
                    reasons.append(f"flag:{flags[metric]}")
                elif not spec.in_range(float(value)):
                    rank, reasons = 1, ["range"]
                if ts > horizon:
                    rank = max(rank, 1)
                    reasons.append("future")
                out[(row["topic_device"], metric, ts)] = (_QUALITY[rank], tuple(reasons))
    return out


@dataclass(slots=True)
class QualityScore:
    """How well stored quality flags reflect the injected faults.

    Attributes:
        delivered: Values the fleet delivered intact (expected to be stored).
        stored: Of those, values found in the store.
        flagged_expected: Delivered values that must not be ``good``.
        flagged_stored: Stored values (of the delivered keys) that are not ``good``.
        hits: Values flagged as expected (same label).
        by_reason: Reason → (values flagged right, values with that reason).
        wrong: Up to 20 mismatches: key, expected label, stored label.
    """

    delivered: int = 0
    stored: int = 0
    flagged_expected: int = 0
    flagged_stored: int = 0
    hits: int = 0
    by_reason: dict[str, tuple[int, int]] = field(default_factory=dict)
    wrong: list[tuple[Key, str, str]] = field(default_factory=list)

    @property
    def precision(self) -> float:
        """Share of stored non-good flags the faults explain."""
        return self.hits / self.flagged_stored if self.flagged_stored else 1.0

    @property
    def recall(self) -> float:
        """Share of values faults should have flagged that are flagged."""
        return self.hits / self.flagged_expected if self.flagged_expected else 1.0

    @property
    def delivery(self) -> float:
        """Share of delivered values that are stored."""
        return self.stored / self.delivered if self.delivered else 1.0


def quality_score(
    expected: Mapping[Key, tuple[str, tuple[str, ...]]], stored: Mapping[Key, StoredValue]
) -> QualityScore:
    """Compare predicted and stored quality labels, value by value."""
    out = QualityScore(delivered=len(expected))
    totals: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for key, (label, reasons) in expected.items():
        got = stored.get(key)
        flagged = label != "good"
        out.flagged_expected += flagged
        for reason in reasons:
            totals[reason] += 1
        if got is None:
            continue
        out.stored += 1
        out.flagged_stored += got.quality != "good"
        if flagged and got.quality == label:
            out.hits += 1
            for reason in reasons:
                hits[reason] += 1
        if got.quality != label and len(out.wrong) < 20:
            out.wrong.append((key, label, got.quality))
    out.by_reason = {r: (hits[r], n) for r, n in sorted(totals.items())}
    return out


def _stored_rows(conn: psycopg.Connection, codes: Sequence[str], since: datetime) -> int:
    total = 0
    for device_class in _classes(conn, codes):
        row = conn.execute(
            sql.SQL("select count(*) from {} where device_code = any(%s) and ts >= %s").format(
                sql.Identifier(class_table(device_class))
            ),
            (list(codes), since),
        ).fetchone()
        total += int(row[0]) if row else 0
    return total


def wait_settled(
    database_url: str,
    codes: Iterable[str],
    *,
    expected_rows: int | None = None,
    since: datetime | None = None,
    timeout: float = 60.0,
    quiet_s: float = 5.0,
) -> int:
    """Wait until the platform has stored a run's data; returns the stored row count.

    Done when ``expected_rows`` rows of these devices are stored, or when the count has
    not changed for ``quiet_s`` seconds since the first row arrived (the pipeline
    drained; before the first row the worker may simply not have started on the run), or
    at ``timeout``. Only rows with an event time at or after ``since`` count (the same
    codes may hold an earlier run's rows). Rules are evaluated right after the rows are
    committed, so a short grace follows before the alerts are read.
    """
    wanted = sorted(set(codes))
    floor = since or datetime(1970, 1, 1, tzinfo=UTC)
    deadline = time.monotonic() + timeout
    last, changed = -1, time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            count = _stored_rows(conn, wanted, floor)
            now = time.monotonic()
            if count != last:
                last, changed = count, now
            drained = count > 0 and now - changed >= quiet_s
            if expected_rows is not None and count >= expected_rows:
                time.sleep(_RULES_GRACE_S)
                return count
            if drained or now >= deadline:
                return count
            time.sleep(0.5)


@dataclass(slots=True)
class ScoreReport:
    """Precision and recall of one scenario run on the platform.

    Attributes:
        scenario: Scenario id.
        precision: Within the scenario's rules (:func:`simulators.scenario.score`).
        recall: Share of expected alerts that fired in their window.
        precision_all: Over every alert of the run's devices, any rule.
        fired: Alerts the platform opened for the run's devices.
        expected: The ground truth.
        details: ``score``'s details (true/false positives, missed).
        details_all: The same over every rule.
        quality: Quality-flag score, when a sent log was given.
    """

    scenario: str
    precision: float
    recall: float
    precision_all: float
    fired: list[FiredAlert]
    expected: list[ExpectedAlert]
    details: dict[str, Any]
    details_all: dict[str, Any]
    quality: QualityScore | None = None

    def lines(self) -> list[str]:
        """A human-readable summary, one line per item."""
        out = [
            f"scenario {self.scenario}: {len(self.fired)} alerts fired, {len(self.expected)} expected",
            f"  precision {self.precision:.3f} (scenario rules), {self.precision_all:.3f} (all rules);"
            f" recall {self.recall:.3f}",
        ]
        out += [f"  missed: {e.rule} {e.device or e.district} {e.start:%m-%d %H:%M}" for e in self.details["missed"]]
        unexpected = self.details_all["false_positives"]
        out += [f"  unexpected: {a.rule} {a.device} at {a.opened_at:%m-%d %H:%M}" for a in unexpected[:_MAX_LISTED]]
        if len(unexpected) > _MAX_LISTED:
            by_rule = Counter(a.rule for a in unexpected[_MAX_LISTED:])
            out.append(
                f"  … and {len(unexpected) - _MAX_LISTED} more: " + ", ".join(f"{r} ×{n}" for r, n in by_rule.items())
            )
        q = self.quality
        if q is not None:
            out.append(
                f"  quality flags: precision {q.precision:.3f}, recall {q.recall:.3f}"
                f" ({q.hits}/{q.flagged_expected} flagged values; delivery {q.delivery:.3f})"
            )
            out += [f"    {reason}: {hit}/{n}" for reason, (hit, n) in q.by_reason.items()]
        return out


def score_platform(
    scenario: Scenario,
    database_url: str,
    *,
    codes: Iterable[str] | None = None,
    sent_log: Path | None = None,
    received_at: datetime | None = None,
    models: ModelRegistry | None = None,
) -> ScoreReport:
    """Read the alerts (and stored quality) of a run from PostgreSQL and score them.

    Args:
        scenario: The scenario that ran.
        database_url: The platform's database.
        codes: The run's devices (default: the scenario's sites); other devices' alerts
            are not the run's and are ignored.
        sent_log: The fleet's sent log, to score quality flags as well.
        received_at: When the platform received the data (for the future-skew horizon).
        models: Device models (default: the shipped ones).
    """
    models = models or shipped_models()
    wanted = sorted(set(codes) if codes is not None else {s.code for s in scenario.sites()})
    expected = scenario.expected()
    with psycopg.connect(database_url, autocommit=True) as conn:
        # From the scenario's start: the same codes may have alerted in an earlier run.
        fired = fired_alerts(conn, wanted, since=scenario.start)
        stored = stored_values(conn, wanted, models) if sent_log is not None else {}
    precision, recall, details = score(expected, fired)
    precision_all, _, details_all = score(expected, fired, rules=())
    quality = None
    if sent_log is not None:
        quality = quality_score(expected_quality(sent_log, models, now=received_at), stored)
    return ScoreReport(scenario.id, precision, recall, precision_all, fired, expected, details, details_all, quality)
