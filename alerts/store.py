"""Alert persistence and lifecycle: upsert from the rule engine, ack/resolve/comment from people.

Every transition is recorded in ``alert_history``. Upserts are keyed on the
deterministic alert id, so a replayed evaluation changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from alerts.errors import AlertsError
from citybrain.records import Alert, AlertState, Severity

__all__ = ["AlertNotFound", "AlertStore", "BadTransition"]


class AlertNotFound(AlertsError, KeyError):
    """No alert with that id."""


class BadTransition(AlertsError, ValueError):
    """The requested lifecycle transition is not allowed from the alert's state."""


_TRANSITIONS = {
    "ack": ({"open"}, "acknowledged"),
    "resolve": ({"open", "acknowledged"}, "resolved"),
}


class AlertStore:
    """Alerts in PostgreSQL over a pool passed in."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def upsert_changed(self, alerts: Iterable[Alert]) -> set[str]:
        """Insert new alerts and apply clears; idempotent on alert id.

        Returns:
            ``id + state`` of each alert whose row actually changed, so the
            caller publishes a transition once even when a batch is replayed.
        """
        rows = list(alerts)
        changed: set[str] = set()
        if not rows:
            return changed
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            for a in rows:
                if a.state is AlertState.OPEN:
                    await cur.execute(
                        "insert into alerts (id, rule, device_code, district, device_class, severity, state,"
                        " opened_at, metric, value, threshold, message, labels)"
                        " values (%s,%s,%s,%s,%s,%s,'open',%s,%s,%s,%s,%s,%s) on conflict (id) do nothing"
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
                        ),
                    )
                    if await cur.fetchone():
                        changed.add(a.id + a.state.value)
                        await cur.execute(
                            "insert into alert_history (alert_id, action, actor, comment)"
                            " values (%s, 'open', 'rules', %s)",
                            (a.id, a.message),
                        )
                else:
                    await cur.execute(
                        "update alerts set state = 'resolved', cleared_at = %s, updated_at = now()"
                        " where id = %s and state <> 'resolved' returning id",
                        (a.cleared_at, a.id),
                    )
                    if await cur.fetchone():
                        changed.add(a.id + a.state.value)
                        await cur.execute(
                            "insert into alert_history (alert_id, action, actor, comment)"
                            " values (%s,'auto-resolve','rules','condition cleared')",
                            (a.id,),
                        )
        return changed

    async def list(
        self,
        *,
        state: str | None = None,
        severity: str | None = None,
        district: str | None = None,
        device: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[object] = []
        if state:
            where.append("state = %s")
            args.append(state)
        if severity:
            where.append("severity >= %s")
            args.append(int(Severity.parse(severity)))
        if district:
            where.append("district = %s")
            args.append(district)
        if device:
            where.append("device_code = %s")
            args.append(device)
        if since:
            where.append("opened_at >= %s")
            args.append(since)
        clause = (" where " + " and ".join(where)) if where else ""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "select * from alerts" + clause + " order by opened_at desc, id limit %s offset %s",
                (*args, limit, offset),
            )
            rows = await cur.fetchall()
        return [_public(r) for r in rows]

    async def get(self, alert_id: str) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("select * from alerts where id = %s", (alert_id,))
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

    async def transition(self, alert_id: str, action: str, actor: str, comment: str = "") -> dict[str, Any]:
        """Apply ``ack``, ``resolve`` or ``comment`` (which changes no state)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("select state from alerts where id = %s for update", (alert_id,))
            row = await cur.fetchone()
            if row is None:
                raise AlertNotFound(alert_id)
            if action != "comment":
                allowed, target = _TRANSITIONS[action]
                if row["state"] not in allowed:
                    raise BadTransition(f"cannot {action} an alert that is {row['state']}")
                await cur.execute("update alerts set state = %s, updated_at = now() where id = %s", (target, alert_id))
            await cur.execute(
                "insert into alert_history (alert_id, action, actor, comment) values (%s,%s,%s,%s)",
                (alert_id, action, actor, comment),
            )
        return await self.get(alert_id)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["severity"] = Severity(row["severity"]).label
    row["device"] = row.pop("device_code")
    return row
