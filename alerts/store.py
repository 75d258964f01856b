"""Alert persistence and lifecycle.

* The rule engine's transitions (open, escalate, de-escalate, clear) are
  applied with :meth:`AlertStore.apply` inside the caller's transaction, keyed
  on the deterministic alert id, so a replay changes nothing.
* People act through :meth:`AlertStore.transition`: ack, resolve, re-open,
  assign, comment, shelve (with an expiry and a reason) and unshelve. Every
  change is recorded in ``alert_history``. A shelved alert keeps its state;
  once ``shelved_until`` has passed it is back to normal (reads clear the
  expired shelving first, recorded as an ``unshelve`` by ``system``).
* When ``group_min_devices`` devices of one district raise the same rule within
  its window, they are grouped under one district incident.
* Every change is announced with ``pg_notify('citybrain_alerts', …)`` so each
  API process can feed its Server-Sent Events clients without polling.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from alerts.errors import AlertsError
from core.records import Alert, AlertState, Severity, alert_id

__all__ = ["MAX_SHELVE_S", "NOTIFY_CHANNEL", "SORTS", "AlertNotFound", "AlertStore", "BadTransition", "GroupPolicy"]

NOTIFY_CHANNEL = "citybrain_alerts"


class AlertNotFound(AlertsError, KeyError):
    """No alert with that id."""


class BadTransition(AlertsError, ValueError):
    """The requested lifecycle transition is not allowed from the alert's state."""


# Alerts are listed by these orders; "severity" puts critical first, then the newest.
SORTS = {
    "time": "opened_at desc, id",
    "severity": "severity desc, opened_at desc, id",
}

# The longest an alert may be shelved: a forgotten shelving must not hide a fault for weeks.
MAX_SHELVE_S = 7 * 86400
# Whether an alert's shelving holds now, on the database's clock.
_SHELVED = "coalesce(shelved_until > now(), false) as shelved"

_TRANSITIONS = {
    "ack": ({"open"}, "acknowledged"),
    "resolve": ({"open", "acknowledged"}, "resolved"),
    "reopen": ({"resolved"}, "open"),
}


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """District grouping of one rule: ``min_devices`` within ``window``."""

    min_devices: int
    window: timedelta


def _notify_payload(kind: str, row: dict[str, Any]) -> str:
    doc = {"kind": kind, **{k: _jsonable(v) for k, v in row.items()}}
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    # pg_notify payloads must stay under 8000 bytes; the feed refetches if truncated.
    return text if len(text.encode()) < 7900 else json.dumps({"kind": kind, "id": row.get("id"), "truncated": True})


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat().replace("+00:00", "Z")
    return v


class AlertStore:
    """Alerts in PostgreSQL over a pool passed in."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    # -- from the rule engine -----------------------------------------------

    async def apply(
        self,
        conn: psycopg.AsyncConnection,
        transitions: Sequence[tuple[str, Alert]],
        groups: dict[str, GroupPolicy] | None = None,
    ) -> list[tuple[str, Alert]]:
        """Apply engine transitions in the caller's transaction.

        Args:
            conn: A connection inside a transaction.
            transitions: ``(kind, alert)`` with kind open/escalate/deescalate/clear.
            groups: Rule id → grouping policy for district incidents.

        Returns:
            The transitions that changed a row (to publish), plus incident
            transitions as alerts on the synthetic device = district code.
        """
        changed: list[tuple[str, Alert]] = []
        touched: set[tuple[str, str]] = set()
        async with conn.cursor() as cur:
            for kind, a in transitions:
                if kind == "open":
                    await cur.execute(
                        "insert into alerts (id, rule, device_code, district, device_class, severity, state,"
                        " opened_at, metric, value, threshold, message, labels, flapping)"
                        " values (%s,%s,%s,%s,%s,%s,'open',%s,%s,%s,%s,%s,%s,%s) on conflict (id) do nothing"
                        " returning id",
                        (
                            a.id,
                            a.rule,
                            a.device_code,
                            a.district,
                            a.device_class,
                            int(a.severity),
                            a.opened_at,
                            a.metric,
                            a.value,
                            a.threshold,
                            a.message,
                            Jsonb(dict(a.labels)),
                            dict(a.labels).get("flapping") == "true",
                        ),
                    )
                    action, comment = "open", a.message
                elif kind in ("escalate", "deescalate"):
                    await cur.execute(
                        "update alerts set severity = %s, value = %s, message = %s, updated_at = now()"
                        " where id = %s and state <> 'resolved' and severity <> %s returning id",
                        (int(a.severity), a.value, a.message, a.id, int(a.severity)),
                    )
                    action, comment = kind, f"severity {a.severity.label}: {a.message}"
                else:
                    await cur.execute(
                        "update alerts set state = 'resolved', cleared_at = %s, updated_at = now()"
                        " where id = %s and state <> 'resolved' returning id",
                        (a.cleared_at, a.id),
                    )
                    action, comment = "auto-resolve", "condition cleared"
                if await cur.fetchone() is None:
                    continue  # a replay: nothing changed, nothing to publish
                await cur.execute(
                    "insert into alert_history (alert_id, action, actor, comment) values (%s, %s, 'rules', %s)",
                    (a.id, action, comment),
                )
                await cur.execute("select pg_notify(%s, %s)", (NOTIFY_CHANNEL, _notify_payload(kind, a.to_json())))
                changed.append((kind, a))
                touched.add((a.district, a.rule))
        if groups:
            for district, rule in sorted(touched):
                policy = groups.get(rule)
                if policy is not None:
                    changed += await self._group(conn, district, rule, policy)
        return changed

    async def _group(
        self, conn: psycopg.AsyncConnection, district: str, rule: str, policy: GroupPolicy
    ) -> list[tuple[str, Alert]]:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "select id, state, opened_at, severity from incidents where district = %s and rule = %s"
            " and state <> 'resolved' for update",
            (district, rule),
        )
        incident = await cur.fetchone()
        await cur.execute(
            "select count(distinct device_code) as n, min(opened_at) as first, max(severity) as sev,"
            " max(opened_at) as last from alerts where district = %s and rule = %s and state <> 'resolved'",
            (district, rule),
        )
        agg = await cur.fetchone()
        assert agg is not None
        n = int(agg["n"])
        out: list[tuple[str, Alert]] = []
        if incident is None:
            if n < policy.min_devices or agg["last"] - agg["first"] > policy.window:
                return out
            iid = alert_id(district, f"{rule}#incident", agg["first"])
            await cur.execute(
                "insert into incidents (id, rule, district, severity, opened_at, device_count)"
                " values (%s, %s, %s, %s, %s, %s) on conflict do nothing",
                (iid, rule, district, agg["sev"], agg["first"], n),
            )
            await cur.execute(
                "update alerts set incident_id = %s where district = %s and rule = %s and state <> 'resolved'",
                (iid, district, rule),
            )
            out.append(("open", _incident_alert(iid, rule, district, agg["sev"], agg["first"], n, AlertState.OPEN)))
        else:
            iid = incident["id"]
            await cur.execute(
                "update alerts set incident_id = %s where district = %s and rule = %s and state <> 'resolved'"
                " and incident_id is null",
                (iid, district, rule),
            )
            if n == 0:
                await cur.execute(
                    "update incidents set state = 'resolved', resolved_at = now(), updated_at = now() where id = %s",
                    (iid,),
                )
                out.append(
                    (
                        "clear",
                        _incident_alert(
                            iid, rule, district, incident["severity"], incident["opened_at"], 0, AlertState.RESOLVED
                        ),
                    )
                )
            else:
                await cur.execute(
                    "update incidents set device_count = %s, severity = greatest(severity, %s), updated_at = now()"
                    " where id = %s",
                    (n, agg["sev"], iid),
                )
        for kind, a in out:
            await cur.execute("select pg_notify(%s, %s)", (NOTIFY_CHANNEL, _notify_payload(kind, a.to_json())))
        return out

    # -- queries ----------------------------------------------------------------

    async def query(
        self,
        *,
        state: str | None = None,
        severity: str | None = None,
        district: str | None = None,
        districts: Iterable[str] | None = None,
        device: str | None = None,
        device_class: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
        shelved: bool | None = None,
        sort: str = "time",
    ) -> list[dict[str, Any]]:
        """Alerts, filtered, newest first (``sort="time"``) or most severe first (``"severity"``).

        ``shelved`` True/False keeps only alerts that are / are not shelved now.
        """
        if sort not in SORTS:
            raise AlertsError(f"sort must be one of {sorted(SORTS)}, not {sort!r}")
        await self.expire_shelving()
        where, args = _state_filter(state)
        if shelved is True:
            where.append("shelved_until > now()")
        elif shelved is False:
            where.append("shelved_until is null")
        if severity:
            where.append("severity >= %s")
            args.append(int(Severity.parse(severity)))
        if district:
            where.append("district = %s")
            args.append(district)
        if districts is not None:
            where.append("district = any(%s)")
            args.append(list(districts))
        if device:
            where.append("device_code = %s")
            args.append(device)
        if device_class:
            where.append("device_class = %s")
            args.append(device_class)
        if since:
            where.append("opened_at >= %s")
            args.append(since)
        if until:
            where.append("opened_at < %s")
            args.append(until)
        clause = (" where " + " and ".join(where)) if where else ""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "select *, " + _SHELVED + " from alerts" + clause + " order by " + SORTS[sort] + " limit %s offset %s",
                (*args, limit, offset),
            )
            rows = await cur.fetchall()
        return [_public(r) for r in rows]

    async def get(self, alert_id: str) -> dict[str, Any]:
        """One alert with its history."""
        await self.expire_shelving()
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("select *, " + _SHELVED + " from alerts where id = %s", (alert_id,))
            row = await cur.fetchone()
            if row is None:
                raise AlertNotFound(alert_id)
            await cur.execute(
                "select at, action, actor, comment from alert_history where alert_id = %s order by at", (alert_id,)
            )
            hist = await cur.fetchall()
        out = _public(row)
        out["history"] = hist
        return out

    async def incidents(self, *, state: str | None = None, district: str | None = None) -> list[dict[str, Any]]:
        where, args = _state_filter(state)
        if district:
            where.append("district = %s")
            args.append(district)
        clause = (" where " + " and ".join(where)) if where else ""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("select * from incidents" + clause + " order by opened_at desc limit 500", args)
            rows = await cur.fetchall()
        for r in rows:
            r["severity"] = Severity(r["severity"]).label
        return rows

    async def open_counts(self) -> dict[str, int]:
        """Open (not resolved) alerts per severity label."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute("select severity, count(*) from alerts where state <> 'resolved' group by 1")
            ).fetchall()
        return {Severity(s).label: int(n) for s, n in rows}

    async def expire_shelving(self) -> list[str]:
        """Return alerts whose shelving has expired to normal; their ids.

        Each is recorded (``unshelve`` by ``system``) and announced, so every
        console shows it again.
        """
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "update alerts set shelved_until = null, shelved_reason = null, shelved_by = null, updated_at = now()"
                " where shelved_until is not null and shelved_until <= now() returning *"
            )
            rows = await cur.fetchall()
            for row in rows:
                await cur.execute(
                    "insert into alert_history (alert_id, action, actor, comment)"
                    " values (%s, 'unshelve', 'system', 'shelving expired')",
                    (row["id"],),
                )
                payload = _public({**row, "shelved": False})
                payload.update(actor="system", comment="shelving expired")
                await cur.execute("select pg_notify(%s, %s)", (NOTIFY_CHANNEL, _notify_payload("unshelve", payload)))
        return [r["id"] for r in rows]

    # -- people -----------------------------------------------------------------

    async def transition(
        self,
        alert_id: str,
        action: str,
        actor: str,
        comment: str = "",
        assignee: str | None = None,
        *,
        shelve_until: datetime | None = None,
        shelve_for_s: int | None = None,
    ) -> dict[str, Any]:
        """Apply ``ack``, ``resolve``, ``reopen``, ``assign``, ``comment``, ``shelve`` or ``unshelve``.

        ``shelve`` needs an expiry, ``shelve_until`` or ``shelve_for_s`` from
        the database's now (in the future, at most :data:`MAX_SHELVE_S`), and a
        reason in ``comment``; it is refused for a resolved alert. Shelving keeps the
        state; ``unshelve`` (or the expiry) returns the alert to normal.
        """
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "select state, shelved_until, shelved_until > now() as shelved from alerts where id = %s for update",
                (alert_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise AlertNotFound(alert_id)
            if action == "shelve":
                if row["state"] == "resolved":
                    raise BadTransition("cannot shelve an alert that is resolved")
                if (shelve_until is None) == (shelve_for_s is None) or not comment.strip():
                    raise BadTransition("shelving needs one expiry (a time or a duration) and a reason")
                # Expiry and checks on the database's clock, like every other alert time.
                await cur.execute(
                    "select coalesce(%s::timestamptz, now() + make_interval(secs => %s)) as until, now() as now",
                    (shelve_until, shelve_for_s),
                )
                when = await cur.fetchone()
                assert when is not None
                until = when["until"]
                if until <= when["now"]:
                    raise BadTransition("the shelving expiry must be in the future")
                if (until - when["now"]).total_seconds() > MAX_SHELVE_S:
                    raise BadTransition(f"an alert may be shelved for at most {MAX_SHELVE_S // 86400} days")
                await cur.execute(
                    "update alerts set shelved_until = %s, shelved_reason = %s, shelved_by = %s, updated_at = now()"
                    " where id = %s",
                    (until, comment, actor, alert_id),
                )
                comment = f"until {until.isoformat()}: {comment}"
            elif action == "unshelve":
                if not row["shelved"]:
                    raise BadTransition("the alert is not shelved")
                await cur.execute(
                    "update alerts set shelved_until = null, shelved_reason = null, shelved_by = null,"
                    " updated_at = now() where id = %s",
                    (alert_id,),
                )
            elif action in _TRANSITIONS:
                allowed, target = _TRANSITIONS[action]
                if row["state"] not in allowed:
                    raise BadTransition(f"cannot {action} an alert that is {row['state']}")
                await cur.execute(
                    "update alerts set state = %s, updated_at = now(),"
                    " reopened = reopened + case when %s = 'reopen' then 1 else 0 end where id = %s",
                    (target, action, alert_id),
                )
            elif action == "assign":
                await cur.execute(
                    "update alerts set assignee = %s, updated_at = now() where id = %s", (assignee, alert_id)
                )
                comment = comment or f"assigned to {assignee}"
            elif action != "comment":
                raise BadTransition(f"unknown action {action!r}")
            await cur.execute(
                "insert into alert_history (alert_id, action, actor, comment) values (%s,%s,%s,%s)",
                (alert_id, action, actor, comment),
            )
            await cur.execute("select *, " + _SHELVED + " from alerts where id = %s", (alert_id,))
            after = await cur.fetchone()
            assert after is not None
            payload = _public(dict(after))
            payload["actor"] = actor
            payload["comment"] = comment
            await cur.execute("select pg_notify(%s, %s)", (NOTIFY_CHANNEL, _notify_payload(action, payload)))
        return await self.get(alert_id)


def _state_filter(state: str | None) -> tuple[list[str], list[object]]:
    """WHERE terms for a lifecycle state; ``active`` means not resolved."""
    if state == "active":
        return ["state <> 'resolved'"], []
    if state:
        return ["state = %s"], [state]
    return [], []


def _incident_alert(
    iid: str, rule: str, district: str, severity: int, opened_at: datetime, n: int, state: AlertState
) -> Alert:
    return Alert(
        id=iid,
        rule=f"{rule}#incident",
        device_code=district,
        district=district,
        severity=Severity(int(severity)),
        state=state,
        opened_at=opened_at,
        message=f"{n} devices in district {district} raised {rule}" if n else f"incident {rule} over",
        device_class="district",
        labels=(("kind", "incident"), ("devices", str(n)), ("rule", rule)),
    )


def _public(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["severity"] = Severity(row["severity"]).label
    row["device"] = row.pop("device_code")
    # "shelved": whether the shelving holds now (by the database's clock, _SHELVED);
    # an expired one is cleared on the next read (AlertStore.expire_shelving).
    row["shelved"] = bool(row.get("shelved", False))
    return row
