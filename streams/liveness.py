"""Liveness: offline versus connected-but-stale devices, as alerts.

A timer in the stream worker runs :func:`check_liveness`. Two facts feed it,
both written here by the stream worker for every batch:

* ``device_liveness.last_seen`` — receive time of the device's newest reading
  (never the device's own clock), :func:`record_seen`;
* ``device_sessions`` — the device's transport session from its MQTT status
  messages (``citybrain/up/{code}/status``): the birth ``{"state":"online"}``
  and the last will ``{"state":"offline"}`` the broker publishes when the
  connection drops without DISCONNECT, :func:`record_sessions`.

The verdict per device (:func:`judge`, vectorised with
:func:`alerts.anomaly.liveness_many`):

========  ==================================================================
ok        data within ``k`` × the model's cadence (whatever the session says),
          or connected less than ``k`` cadences ago (grace after a reconnect)
stale     the session is up (last status ``online``) but no data for ``k`` ×
          cadence: a hung sensor or firmware — someone must visit; the
          network is fine. Alert ``device.stale``.
offline   the last status is the last will and no data came after it (at
          once, no need to wait ``k`` cadences: the broker already waited
          1.5 × keep-alive), or silent for ``k`` cadences without a session
          (devices with no status topic: HJ 212, NB-IoT). Alert ``device.offline``.
========  ==================================================================

Each alert is opened at the moment the device went stale or offline (last
seen + k × cadence, or the will's receive time), so every worker computes the
same id and a second worker's run changes nothing; it resolves when the
verdict changes. Transitions go through the same store and outbox as rule
alerts. Devices that never sent a reading are not judged (onboarding's concern).

A pollution source with ``operating_hours`` (ledger attribute, Beijing time) is in
outage only when its silence reaches into those hours: a plant shut at night is not
offline. Its ``device.offline`` alert names its discharge permit.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from psycopg_pool import AsyncConnectionPool

from alerts.anomaly import liveness_many
from alerts.build import device_alert
from alerts.indicators.source import in_operating_hours
from alerts.store import AlertStore
from core.records import Alert, AlertState, RawMessage, Severity
from devices.index import DeviceInfo
from devices.models import ModelError, ModelRegistry
from streams.outbox import write_outbox

__all__ = [
    "OFFLINE_RULE",
    "STALE_RULE",
    "DeviceLiveness",
    "LivenessConfig",
    "Verdict",
    "check_liveness",
    "judge",
    "liveness_transitions",
    "offline_transitions",
    "record_seen",
    "record_sessions",
]

log = logging.getLogger(__name__)

OFFLINE_RULE = "device.offline"
STALE_RULE = "device.stale"
_RULES = (OFFLINE_RULE, STALE_RULE)


class Verdict(enum.StrEnum):
    """A device's liveness as the timer judged it."""

    OK = "ok"
    STALE = "stale"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    """``k``: silence threshold in cadences (stale or offline beyond it)."""

    k: float = 5.0


@dataclass(frozen=True, slots=True)
class DeviceLiveness:
    """What the timer knows about one device.

    Attributes:
        code: Device code.
        district: Its district.
        device_class: Its class.
        cadence_s: Its model's reporting interval.
        last_seen: Receive time of its newest reading.
        connected: Its last status message said online (True) or was the
            last will (False); None when it never sent one.
        status_at: Receive time of that status message.
    """

    code: str
    district: str
    device_class: str
    cadence_s: float
    last_seen: datetime
    connected: bool | None = None
    status_at: datetime | None = None
    #: A pollution source's operating hours (``"08:00-18:00"``): silence outside them is no outage.
    operating_hours: str | None = None
    #: The discharge permit of a pollution source, named in its outage alert.
    permit: str | None = None


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


def judge(devices: Sequence[DeviceLiveness], now: datetime, cfg: LivenessConfig) -> list[tuple[Verdict, datetime]]:
    """Pure: each device's verdict and since when it holds (for ok: its last reading)."""
    if not devices:
        return []
    k = cfg.k
    # A device connected after its last reading gets k cadences of grace from the birth message.
    ref = [max(d.last_seen, d.status_at) if d.connected and d.status_at is not None else d.last_seen for d in devices]
    last = np.array([_epoch(t) for t in ref], dtype=np.int64)
    cadence = np.array([d.cadence_s for d in devices], dtype=np.float64)
    connected = np.array([bool(d.connected) for d in devices], dtype=np.bool_)
    codes = liveness_many(last, _epoch(now), cadence, connected, k=k).tolist()
    out: list[tuple[Verdict, datetime]] = []
    for d, r, code in zip(devices, ref, codes, strict=True):
        if d.connected is False and d.status_at is not None and d.status_at >= d.last_seen:
            # The last will and nothing since: offline now, not k cadences later.
            out.append((Verdict.OFFLINE, d.status_at))
        elif code == 1:
            out.append((Verdict.STALE, r + timedelta(seconds=k * d.cadence_s)))
        elif code == 2:
            out.append((Verdict.OFFLINE, r + timedelta(seconds=k * d.cadence_s)))
        else:
            out.append((Verdict.OK, d.last_seen))
    return out


def liveness_transitions(
    devices: Sequence[DeviceLiveness],
    open_alerts: Mapping[tuple[str, str], datetime],
    now: datetime,
    cfg: LivenessConfig,
) -> list[tuple[str, Alert]]:
    """Pure: which ``device.stale`` / ``device.offline`` alerts to open and which to clear.

    Args:
        devices: Devices to judge.
        open_alerts: ``(code, rule) → opened_at`` of the liveness alerts not resolved.
        now: Time of the check.
        cfg: Threshold.
    """
    out: list[tuple[str, Alert]] = []
    for d, (verdict, since) in zip(devices, judge(devices, now, cfg), strict=True):
        for rule, wanted in ((STALE_RULE, Verdict.STALE), (OFFLINE_RULE, Verdict.OFFLINE)):
            opened = open_alerts.get((d.code, rule))
            if verdict is wanted and opened is None:
                if rule == OFFLINE_RULE and not _operating(d, now):
                    continue  # a source that is shut outside its operating hours is not in outage
                out.append(("open", _alert(d, rule, since, AlertState.OPEN, None, now, cfg)))
            elif verdict is not wanted and opened is not None:
                # Cleared when the device came back (its newest reading or session), or now.
                back = max(d.last_seen, d.status_at or d.last_seen)
                cleared = back if back >= opened else now
                out.append(("clear", _alert(d, rule, opened, AlertState.RESOLVED, cleared, now, cfg)))
    return out


def _operating(d: DeviceLiveness, now: datetime) -> bool:
    if not d.operating_hours:
        return True
    try:
        return in_operating_hours(d.operating_hours, now.timestamp())
    except ValueError:
        log.warning("device %s: bad operating_hours %r; judged as always operating", d.code, d.operating_hours)
        return True


def offline_transitions(
    devices: list[DeviceLiveness], open_offline: Mapping[str, datetime], now: datetime, cfg: LivenessConfig
) -> list[tuple[str, Alert]]:
    """Offline alerts only (the first version's API): :func:`liveness_transitions` without stale ones."""
    opened = {(code, OFFLINE_RULE): t for code, t in open_offline.items()}
    return [(k, a) for k, a in liveness_transitions(devices, opened, now, cfg) if a.rule == OFFLINE_RULE]


def _alert(
    d: DeviceLiveness,
    rule: str,
    opened_at: datetime,
    state: AlertState,
    cleared: datetime | None,
    now: datetime,
    cfg: LivenessConfig,
) -> Alert:
    age = max(0.0, (now - d.last_seen).total_seconds())
    if rule == STALE_RULE:
        message = f"connected but no data since {d.last_seen.isoformat()} (expected every {d.cadence_s:g} s)"
    elif d.connected is False and d.status_at is not None and d.status_at >= d.last_seen:
        message = f"connection lost at {d.status_at.isoformat()} (last will); last data {d.last_seen.isoformat()}"
    else:
        message = f"no data since {d.last_seen.isoformat()} (expected every {d.cadence_s:g} s)"
    if rule == OFFLINE_RULE and d.permit:
        hours = d.operating_hours or "00:00-24:00"
        message = f"permit {d.permit}: source stopped sending during its operating hours {hours}; {message}"
    return device_alert(
        rule,
        d.code,
        d.district,
        d.device_class,
        Severity.WARNING,
        opened_at,
        state=state,
        message=message,
        cleared_at=cleared,
        labels=(
            ("detector", "silence"),
            ("detail", "stale" if rule == STALE_RULE else "offline"),
            ("baseline", f"{d.cadence_s:g}"),
            ("score", f"{age / d.cadence_s:.3g}"),
            ("threshold", f"{cfg.k:g}"),
            ("window_start", d.last_seen.isoformat().replace("+00:00", "Z")),
            ("window_end", now.isoformat().replace("+00:00", "Z")),
        ),
    )


async def check_liveness(
    pool: AsyncConnectionPool, models: ModelRegistry, store: AlertStore, now: datetime, cfg: LivenessConfig
) -> list[tuple[str, Alert]]:
    """One run: judge active devices, apply stale/offline alert transitions, return those that changed."""
    async with pool.connection() as conn, conn.transaction():
        rows = await (
            await conn.execute(
                "select d.code, d.district, d.device_class, d.model, l.last_seen, s.connected, s.status_at,"
                " d.attributes->>'operating_hours',"
                " (select min(p.permit_no) from permit_limits p where p.device_code = d.code)"
                " from devices d join device_liveness l on l.code = d.code"
                " left join device_sessions s on s.code = d.code where d.state = 'active'"
            )
        ).fetchall()
        open_rows = await (
            await conn.execute(
                "select device_code, rule, opened_at from alerts where rule = any(%s) and state <> 'resolved'",
                (list(_RULES),),
            )
        ).fetchall()
        cadences: dict[str, float | None] = {}
        devices = []
        for code, district, device_class, model_key, last_seen, connected, status_at, hours, permit in rows:
            if model_key not in cadences:
                try:
                    cadences[model_key] = float(models.get(model_key).cadence_s)
                except ModelError:
                    cadences[model_key] = None
            cadence = cadences[model_key]
            if cadence is None:
                continue
            devices.append(
                DeviceLiveness(code, district, device_class, cadence, last_seen, connected, status_at, hours, permit)
            )
        transitions = liveness_transitions(devices, {(r[0], r[1]): r[2] for r in open_rows}, now, cfg)
        if not transitions:
            return []
        changed = await store.apply(conn, transitions)
        await write_outbox(conn, changed)
    for kind, alert in changed:
        log.info("%s %s: device %s district %s", alert.rule, kind, alert.device_code, alert.district)
    return changed


async def record_seen(pool: AsyncConnectionPool, seen: Mapping[str, tuple[datetime, datetime]]) -> None:
    """Move devices' last receive and event times forward (``code → (received_at, event_time)``).

    ``greatest`` keeps the newest of what is stored and what arrived, so a late
    or replayed batch never moves a device back in time.
    """
    codes = sorted(seen)
    async with pool.connection() as conn:
        # One statement over arrays (a city batch has a device per message), in code order.
        await conn.execute(
            "insert into device_liveness (code, last_seen, last_event_time)"
            " select * from unnest(%b::text[], %b::timestamptz[], %b::timestamptz[])"
            " on conflict (code) do update set last_seen = greatest(device_liveness.last_seen, excluded.last_seen),"
            " last_event_time = greatest(device_liveness.last_event_time, excluded.last_event_time)",
            (codes, [seen[c][0] for c in codes], [seen[c][1] for c in codes]),
        )


async def record_sessions(pool: AsyncConnectionPool, status: Sequence[tuple[RawMessage, DeviceInfo]]) -> None:
    """Store devices' MQTT session state from their status messages (birth and last will).

    Only a change of state moves ``status_at``: a broker re-delivering the
    retained status to a restarted gateway must not look like a reconnect.
    """
    latest: dict[str, tuple[bool, datetime]] = {}
    for raw, dev in status:
        if not raw.topic.endswith("/status"):
            continue  # command acknowledgements travel with status; the dispatcher handles them
        try:
            state = json.loads(raw.payload)["state"] if raw.payload else None
        except (ValueError, KeyError, TypeError):
            state = None
        if state not in ("online", "offline"):
            if raw.payload:
                log.warning("device %s topic %s: status without a valid state ignored", dev.code, raw.topic)
            continue
        prev = latest.get(dev.code)
        if prev is None or raw.received_at >= prev[1]:
            latest[dev.code] = (state == "online", raw.received_at)
    if not latest:
        return
    async with pool.connection() as conn, conn.cursor() as cur:
        await cur.executemany(
            "insert into device_sessions (code, connected, status_at) values (%s, %s, %s)"
            " on conflict (code) do update set connected = excluded.connected,"
            " status_at = excluded.status_at, updated_at = now()"
            " where device_sessions.connected <> excluded.connected"
            " and device_sessions.status_at < excluded.status_at",
            [(code, up, at) for code, (up, at) in sorted(latest.items())],
        )
    for code, (up, _) in sorted(latest.items()):
        log.info("device %s session %s", code, "online" if up else "offline")
