"""HJ 212 station passwords in the ledger: provisioning and loading (I/O beside the pure codec).

A station's PW is provisioned like a credential (``citybrain devices credentials
rotate CODE --hj212``) and stored only as a scrypt hash in ``devices.hj212_pw_hash``
(:func:`devices.credentials.hash_station_password`). The connector gets the
hashes through :func:`refresh_directory`, which reloads the edge's
:class:`~ingest.adapters.hj212.directory.StationDirectory` in place, and checks a
frame's PW against them (:class:`~ingest.adapters.hj212.connector.Hj212Server`).
"""

from __future__ import annotations

import logging
from typing import Any

from devices.credentials import hash_station_password, new_station_password
from devices.errors import TransitionError, UnknownDeviceError
from devices.ledger import Ledger
from devices.lifecycle import ACCEPTING
from ingest.adapters.hj212.directory import StationDirectory, mn_map

__all__ = ["load_pw_hashes", "refresh_directory", "revoke_pw", "set_pw"]

log = logging.getLogger(__name__)

_SELECT = "select code, hj212_pw_hash from devices where hj212_pw_hash is not null and state = any(%s)"


async def load_pw_hashes(conn: Any) -> dict[str, str]:
    """Device code → PW hash of every device that may report (registered or active).

    Args:
        conn: An open ``psycopg.AsyncConnection``.
    """
    cur = await conn.execute(_SELECT, (sorted(ACCEPTING),))
    return {code: hashed for code, hashed in await cur.fetchall()}


async def refresh_directory(directory: StationDirectory, ledger: Ledger) -> None:
    """Reload the MN map and the PW hashes from the ledger into ``directory``, in place.

    Both are read before anything is swapped, so a failed read (raised to the
    caller) leaves the directory as it was.

    Args:
        directory: The directory the HJ 212 server resolves through.
        ledger: The device ledger (MNs come from its index, PW hashes from its pool).
    """
    devices = await ledger.load_index()
    async with ledger.pool.connection() as conn:
        hashes = await load_pw_hashes(conn)
    directory.replace(mn_map(devices), hashes)


def set_pw(conn: Any, code: str, pw: str | None, *, actor: str) -> str:
    """Provision a station's PW (a new random one when ``pw`` is None); returns it in clear, once.

    Recording an existing PW (``pw`` given) is the usual case: stations in the
    field already have one configured in their data logger.

    Args:
        conn: An open synchronous ``psycopg.Connection`` (committed by the caller's block).
        code: The full 17-character device code.
        pw: The PW, 1-6 letters or digits; None generates one.
        actor: Recorded as ``updated_by``.

    Raises:
        CredentialError: ``pw`` cannot stand in an HJ 212 frame.
        UnknownDeviceError: no such device.
        TransitionError: the device is decommissioned.
    """
    pw = pw if pw is not None else new_station_password()
    hashed = hash_station_password(pw)
    row = conn.execute(
        "update devices set hj212_pw_hash = %s, updated_at = now(), updated_by = %s"
        " where code = %s and state <> 'decommissioned' returning code",
        (hashed, actor, code),
    ).fetchone()
    if row is None:
        if conn.execute("select 1 from devices where code = %s", (code,)).fetchone() is None:
            raise UnknownDeviceError(code)
        raise TransitionError(f"device {code} is decommissioned: it gets no HJ 212 PW")
    log.info("device %s: HJ 212 PW provisioned by %s", code, actor)
    return pw


def revoke_pw(conn: Any, code: str, *, actor: str) -> None:
    """Remove a station's PW: with PW checking on, its frames are refused from the next refresh."""
    row = conn.execute(
        "update devices set hj212_pw_hash = null, updated_at = now(), updated_by = %s where code = %s returning code",
        (actor, code),
    ).fetchone()
    if row is None:
        raise UnknownDeviceError(code)
    log.info("device %s: HJ 212 PW revoked by %s", code, actor)
