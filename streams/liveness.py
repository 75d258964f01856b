"""Offline detection: devices silent for longer than ``k`` × their model's cadence.

A timer in the stream worker runs :func:`check_liveness`. Liveness is judged
on receive time (``device_liveness.last_seen``), never on the device's own
clock, and with the vectorised :func:`alerts.anomaly.liveness_many`. An
offline device gets one ``device.offline`` alert, opened at the moment it went
silent (last seen + k × cadence, so every worker computes the same id and a
second worker's run changes nothing); it resolves when data flows again.
Transitions go through the same store and outbox as rule alerts.

Connected-but-stale (a session that is up while data stopped) is kept apart
from offline by the ``connected`` input; the MQTT status topic will feed it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from psycopg_pool import AsyncConnectionPool

from alerts.anomaly import liveness_many
from alerts.store import AlertStore
from citybrain.records import Alert, AlertState, Severity, alert_id
from devices.models import ModelError, ModelRegistry

__all__ = ["OFFLINE_RULE", "LivenessConfig", "check_liveness", "offline_transitions"]

log = logging.getLogger(__name__)

OFFLINE_RULE = "device.offline"


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    """``k``: silence threshold in cadences (offline beyond it)."""

    k: float = 5.0


@dataclass(frozen=True, slots=True)
class _Device:
    code: str
    district: str
    device_class: str
    cadence_s: float
    last_seen: datetime


def offline_transitions(
    devices: list[_Device], open_offline: Mapping[str, datetime], now: datetime, cfg: LivenessConfig
) -> list[tuple[str, Alert]]:
    """Pure: which offline alerts to open and which to clear."""
    if not devices:
        return []
    epoch = datetime(1970, 1, 1, tzinfo=now.tzinfo)
    last = np.array([int((d.last_seen - epoch).total_seconds()) for d in devices], dtype=np.int64)
    cadence = np.array([d.cadence_s for d in devices], dtype=np.float64)
    codes = liveness_many(last, int((now - epoch).total_seconds()), cadence, False, k=cfg.k)
    out: list[tuple[str, Alert]] = []
    for d, status in zip(devices, codes.tolist(), strict=True):
        offline = status != 0  # 0 is "ok" in LIVENESS_CODES; never-seen devices are not listed here
        went_silent = d.last_seen + timedelta(seconds=cfg.k * d.cadence_s)
        if offline and d.code not in open_offline:
            out.append(("open", _alert(d, went_silent, AlertState.OPEN, None)))
        elif not offline and d.code in open_offline:
            out.append(("clear", _alert(d, open_offline[d.code], AlertState.RESOLVED, d.last_seen)))
    return out


def _alert(d: _Device, opened_at: datetime, state: AlertState, cleared: datetime | None) -> Alert:
    return Alert(
        id=alert_id(d.code, OFFLINE_RULE, opened_at),
        rule=OFFLINE_RULE,
        device_code=d.code,
        district=d.district,
        severity=Severity.WARNING,
        state=state,
        opened_at=opened_at,
        metric=None,
        value=None,
        threshold=None,
        message=f"no data since {d.last_seen.isoformat()} (expected every {d.cadence_s:g} s)",
        cleared_at=cleared,
        device_class=d.device_class,
        labels=(("detector", "silence"),),
    )


async def check_liveness(
    pool: AsyncConnectionPool, models: ModelRegistry, store: AlertStore, now: datetime, cfg: LivenessConfig
) -> list[tuple[str, Alert]]:
    """One run: classify active devices, apply offline alert transitions, return those that changed."""
    async with pool.connection() as conn, conn.transaction():
        rows = await (
            await conn.execute(
                "select d.code, d.district, d.device_class, d.model, l.last_seen from devices d"
                " join device_liveness l on l.code = d.code where d.state = 'active'"
            )
        ).fetchall()
        open_rows = await (
            await conn.execute(
                "select device_code, opened_at from alerts where rule = %s and state <> 'resolved'", (OFFLINE_RULE,)
            )
        ).fetchall()
        devices = []
        for code, district, device_class, model_key, last_seen in rows:
            try:
                cadence = models.get(model_key).cadence_s
            except ModelError:
                continue
            devices.append(_Device(code, district, device_class, float(cadence), last_seen))
        transitions = offline_transitions(devices, {r[0]: r[1] for r in open_rows}, now, cfg)
        if not transitions:
            return []
        changed = await store.apply(conn, transitions)
        if changed:
            from psycopg.types.json import Jsonb

            outbox = []
            for kind, alert in changed:
                doc = alert.to_json()
                doc["transition"] = kind
                outbox.append((alert.device_code, Jsonb(doc)))
            async with conn.cursor() as cur:
                await cur.executemany("insert into alert_outbox (key, payload) values (%s, %s)", outbox)
    for kind, alert in changed:
        log.info("%s %s: device %s district %s", OFFLINE_RULE, kind, alert.device_code, alert.district)
    return changed
