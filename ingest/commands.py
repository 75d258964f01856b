"""Downlink commands: validation, the command store, and the dispatcher.

Lifecycle (``docs/commands.md``)::

    queued ──(device online)──▶ sent ──(ack ok)──▶ acked
       │                          ├──(ack not ok / refused)──▶ failed
       │                          └──(no ack within timeout_s)──▶ failed {"error": "timeout"}
       └──(still offline after ttl_s)──▶ expired

Transports:

* MQTT: ``citybrain/cmd/{code}`` with ``{"v":1,"id","name","params"}`` (QoS 1); the
  device answers on ``citybrain/up/{code}/event`` with ``{"v":1,"ack":id,"ok":true}``
  (optionally ``"error"``). A device is online while its retained
  ``citybrain/up/{code}/status`` says ``online``; a device never seen online is offline.
* HJ 212: through the connected station's TCP connection (:class:`Hj212Server`),
  ``set_rtd_interval`` → CN 1062, ``set_time`` → CN 1012; 9011/9012 answers decide.

Validation (:func:`validate_params`) is pure and shared by the HTTP route.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from prometheus_client import CollectorRegistry, Counter
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from citybrain.topics import command_topic
from devices.models import Command
from ingest.errors import CommandError

__all__ = [
    "STATES",
    "CommandDispatcher",
    "CommandMetrics",
    "CommandStore",
    "Hj212Transport",
    "MqttCommandTransport",
    "NewCommand",
    "validate_params",
]

log = logging.getLogger(__name__)

STATES = ("queued", "sent", "acked", "failed", "expired")


# --- validation -------------------------------------------------------------------------------


def validate_params(command: Command | None, name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check a command's parameters against the model's declaration.

    Args:
        command: The model's command of that name, or ``None`` if the model has none.
        name: The requested command name (for the message).
        params: Requested parameters.

    Returns:
        The parameters, ints as ints and floats as floats.

    Raises:
        CommandError: ``unknown_command``, ``unknown_param``, ``missing_param``,
            ``bad_type``, ``below_min``, ``above_max`` or ``bad_enum``.
    """
    if command is None:
        raise CommandError("unknown_command", f"the device's model has no command {name!r}")
    out: dict[str, Any] = {}
    extra = sorted(set(params) - set(command.params))
    if extra:
        raise CommandError("unknown_param", f"{name} takes no parameter {extra[0]!r}")
    for pname, spec in command.params.items():
        if pname not in params:
            if spec.get("required", True):
                raise CommandError("missing_param", f"{name} needs {pname!r}")
            continue
        out[pname] = _check_param(name, pname, spec, params[pname])
    return out


def _check_param(name: str, pname: str, spec: Mapping[str, Any], value: Any) -> Any:
    kind = spec["type"]
    where = f"{name}.{pname}"
    if kind == "bool":
        if not isinstance(value, bool):
            raise CommandError("bad_type", f"{where} must be a boolean")
        return value
    if kind in ("str", "enum"):
        if not isinstance(value, str):
            raise CommandError("bad_type", f"{where} must be a string")
        if kind == "enum" and value not in (spec.get("values") or ()):
            raise CommandError("bad_enum", f"{where} must be one of {spec.get('values')}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError("bad_type", f"{where} must be a number")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise CommandError("bad_type", f"{where} must be an integer")
        value = int(value)
    elif not math.isfinite(value):
        raise CommandError("bad_type", f"{where} must be finite")
    else:
        value = float(value)
    if spec.get("min") is not None and value < spec["min"]:
        raise CommandError("below_min", f"{where}={value} is below {spec['min']}")
    if spec.get("max") is not None and value > spec["max"]:
        raise CommandError("above_max", f"{where}={value} is above {spec['max']}")
    return value


# --- store --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewCommand:
    """A validated command to queue."""

    device_code: str
    name: str
    params: Mapping[str, Any]
    ttl_s: int
    timeout_s: int
    transport: str = "mqtt"
    created_by: str = "api"


def _event(state: str, detail: str = "") -> Jsonb:
    return Jsonb([{"at": datetime.now(UTC).isoformat(), "state": state, "detail": detail}])


_COLUMNS = (
    "id::text as id, device_code, name, params, transport, state, created_at, sent_at, acked_at,"
    " ttl_s, timeout_s, result, history"
)


class CommandStore:
    """The ``commands`` table (``citybrain/sql/0200_commands.sql``) over a pool passed in."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def create(self, cmd: NewCommand) -> dict[str, Any]:
        """Insert a queued command and return its row."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"insert into commands (id, device_code, name, params, transport, ttl_s, timeout_s, history,"
                f" created_by) values (%s, %s, %s, %s, %s, %s, %s, %s, %s) returning {_COLUMNS}",
                (
                    uuid.uuid4(),
                    cmd.device_code,
                    cmd.name,
                    Jsonb(dict(cmd.params)),
                    cmd.transport,
                    cmd.ttl_s,
                    cmd.timeout_s,
                    _event("queued"),
                    cmd.created_by,
                ),
            )
            row = await cur.fetchone()
        assert row is not None
        return row

    async def get(self, command_id: str) -> dict[str, Any] | None:
        """One command, or ``None``."""
        try:
            key = uuid.UUID(command_id)
        except ValueError:
            return None
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"select {_COLUMNS} from commands where id = %s", (key,))
            return await cur.fetchone()

    async def list_for(self, device_code: str, limit: int = 100) -> list[dict[str, Any]]:
        """A device's commands, newest first."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"select {_COLUMNS} from commands where device_code = %s order by created_at desc limit %s",
                (device_code, limit),
            )
            return await cur.fetchall()

    async def queued(self, limit: int = 500) -> list[dict[str, Any]]:
        """Queued commands still within their TTL, oldest first."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"select {_COLUMNS} from commands where state = 'queued'"
                " and created_at + ttl_s * interval '1 second' > now() order by created_at limit %s",
                (limit,),
            )
            return await cur.fetchall()

    async def transition(
        self, command_id: str, from_state: str, to_state: str, *, detail: str = "", result: Any = None
    ) -> bool:
        """Move a command between states if it is still in ``from_state``.

        Returns:
            Whether this call made the transition (a concurrent dispatcher may have).
        """
        stamp = {"sent": ", sent_at = now()", "acked": ", acked_at = now()"}.get(to_state, "")
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"update commands set state = %s, history = history || %s,"
                f" result = coalesce(%s, result){stamp} where id = %s and state = %s",
                (to_state, _event(to_state, detail), None if result is None else Jsonb(result), command_id, from_state),
            )
            return cur.rowcount == 1

    async def sweep(self) -> tuple[int, int]:
        """Expire queued commands past their TTL and fail sent ones past their timeout.

        Returns:
            (expired, timed out).
        """
        async with self.pool.connection() as conn:
            expired = await conn.execute(
                "update commands set state = 'expired', history = history || %s"
                " where state = 'queued' and created_at + ttl_s * interval '1 second' <= now()",
                (_event("expired", "device offline for the whole TTL"),),
            )
            timed_out = await conn.execute(
                "update commands set state = 'failed', result = %s, history = history || %s"
                " where state = 'sent' and sent_at + timeout_s * interval '1 second' <= now()",
                (Jsonb({"error": "timeout"}), _event("failed", "no answer within timeout")),
            )
        return expired.rowcount, timed_out.rowcount


# --- transports ------------------------------------------------------------------------------


class Transport(Protocol):
    """Sends a command; answers come back through the dispatcher's callbacks."""

    def online(self, device_code: str) -> bool:
        """Whether the device can be reached now."""
        ...

    async def send(self, row: Mapping[str, Any]) -> None:
        """Send a queued command (row of the ``commands`` table).

        Raises:
            CommandError: the command could not be sent.
        """
        ...


Ack = Callable[[str, bool, dict[str, Any]], Coroutine[Any, Any, None]]


class MqttCommandTransport:
    """Commands over MQTT; device presence from retained status, answers from event uplinks.

    Args:
        host: MQTT broker host.
        port: MQTT broker port.
        client_id: MQTT client id (one per dispatcher).
        username: Optional MQTT user.
        password: Optional MQTT password.
    """

    def __init__(
        self, host: str, port: int, *, client_id: str = "", username: str | None = None, password: str | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id or f"citybrain-cmd-{uuid.uuid4().hex[:8]}"
        self._auth = (username, password)
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._online: set[str] = set()
        self._lock = threading.Lock()
        self._on_ack: Ack | None = None
        self._on_online: Callable[[], None] | None = None
        self._connected = threading.Event()

    def bind(self, on_ack: Ack, on_online: Callable[[], None]) -> None:
        """Set the dispatcher's callbacks (called on the event loop)."""
        self._on_ack = on_ack
        self._on_online = on_online

    async def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe to status and event uplinks."""
        self._loop = asyncio.get_running_loop()
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
        )
        if self._auth[0]:
            client.username_pw_set(*self._auth)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self._client = client
        try:
            client.connect_async(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise CommandError("mqtt_unavailable", f"{self.host}:{self.port}: {exc}") from exc
        client.loop_start()
        if not await asyncio.to_thread(self._connected.wait, timeout):
            raise CommandError("mqtt_unavailable", f"no MQTT connection to {self.host}:{self.port}")

    async def stop(self) -> None:
        """Disconnect."""
        if self._client is not None:
            self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.error("command transport: MQTT connect refused: %s", reason)
            return
        client.subscribe([("citybrain/up/+/status", 1), ("citybrain/up/+/event", 1)])
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 4:
            return
        code, kind = parts[2], parts[3]
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        loop = self._loop
        if kind == "status":
            with self._lock:
                if doc.get("state") == "online":
                    self._online.add(code)
                else:
                    self._online.discard(code)
            if doc.get("state") == "online" and self._on_online is not None and loop is not None:
                loop.call_soon_threadsafe(self._on_online)
        elif kind == "event" and "ack" in doc and self._on_ack is not None and loop is not None:
            result = {k: v for k, v in doc.items() if k not in ("v", "ack")}
            ok = doc.get("ok") is True
            asyncio.run_coroutine_threadsafe(self._on_ack(str(doc["ack"]), ok, result), loop)

    def online(self, device_code: str) -> bool:
        with self._lock:
            return device_code in self._online

    async def send(self, row: Mapping[str, Any]) -> None:
        if self._client is None:
            raise CommandError("mqtt_unavailable", "transport not started")
        body = json.dumps({"v": 1, "id": row["id"], "name": row["name"], "params": row["params"]})
        info = self._client.publish(command_topic(row["device_code"]), body, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise CommandError("mqtt_unavailable", mqtt.error_string(info.rc))


class _Hj212Like(Protocol):
    def connected(self, mn: str) -> bool: ...

    async def set_rtd_interval(self, mn: str, seconds: int, *, timeout: float = 30.0) -> Any: ...

    async def set_time(self, mn: str, when: datetime | None = None, *, timeout: float = 30.0) -> Any: ...


class Hj212Transport:
    """Commands to HJ 212 stations through the connector; answers arrive in the same call.

    Args:
        server: The running :class:`~ingest.adapters.hj212.connector.Hj212Server`.
        mn_of: Device code → MN (``mn`` attribute, or the code itself).
    """

    def __init__(self, server: _Hj212Like, mn_of: Callable[[str], str]) -> None:
        self._server = server
        self._mn_of = mn_of
        self._on_ack: Ack | None = None

    def bind(self, on_ack: Ack, on_online: Callable[[], None]) -> None:
        """Set the dispatcher's answer callback."""
        self._on_ack = on_ack

    def online(self, device_code: str) -> bool:
        return self._server.connected(self._mn_of(device_code))

    async def send(self, row: Mapping[str, Any]) -> None:
        mn = self._mn_of(row["device_code"])
        name, params = row["name"], row["params"]
        timeout = float(row["timeout_s"])
        if name == "set_rtd_interval":
            call = self._server.set_rtd_interval(mn, int(params["seconds"]), timeout=timeout)
        elif name == "set_time":
            call = self._server.set_time(mn, timeout=timeout)
        else:
            raise CommandError("unsupported", f"HJ 212 has no mapping for command {name!r}")

        async def wait() -> None:
            try:
                reply = await call
            except CommandError as exc:
                result: dict[str, Any] = {"error": exc.reason}
                ok = False
            else:
                result = {"qn": reply.qn, "qn_rtn": reply.qn_rtn, "exe_rtn": reply.exe_rtn}
                ok = reply.ok
            if self._on_ack is not None:
                await self._on_ack(str(row["id"]), ok, result)

        # The answer takes up to timeout_s; the dispatcher must not wait for it.
        asyncio.get_running_loop().create_task(wait())


# --- dispatcher -------------------------------------------------------------------------------


class CommandMetrics:
    """Dispatcher metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter(
            "citybrain_commands_transitions_total", "Command state changes", ["state"], registry=registry
        )


class CommandDispatcher:
    """Sends queued commands to online devices and records answers, expiry and timeouts.

    Args:
        store: The command store.
        transports: Transport name (``mqtt``, ``hj212``) → transport.
        metrics: Metrics.
        poll_s: How often queued commands are rechecked (a device coming online also wakes it).
    """

    def __init__(
        self,
        store: CommandStore,
        transports: Mapping[str, MqttCommandTransport | Hj212Transport],
        metrics: CommandMetrics,
        *,
        poll_s: float = 1.0,
    ) -> None:
        self._store = store
        self._transports = dict(transports)
        self._metrics = metrics
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        for transport in self._transports.values():
            transport.bind(self.on_ack, self._wake.set)

    def wake(self) -> None:
        """Recheck queued commands now (e.g. after a new command was created)."""
        self._wake.set()

    async def start(self) -> None:
        """Start the dispatch loop."""
        self._task = asyncio.create_task(self._run(), name="command-dispatcher")

    async def stop(self) -> None:
        """Stop the dispatch loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def on_ack(self, command_id: str, ok: bool, result: dict[str, Any]) -> None:
        """Record a device's answer to a sent command."""
        state = "acked" if ok else "failed"
        try:
            changed = await self._store.transition(command_id, "sent", state, detail="device answered", result=result)
        except Exception:
            log.exception("command %s: could not record the answer", command_id)
            return
        if changed:
            self._metrics.transitions.labels(state).inc()
            log.info("command %s %s: %s", command_id, state, result)

    async def run_once(self) -> None:
        """One pass: expire, time out, send what can be sent."""
        expired, timed_out = await self._store.sweep()
        if expired:
            self._metrics.transitions.labels("expired").inc(expired)
        if timed_out:
            self._metrics.transitions.labels("failed").inc(timed_out)
        for row in await self._store.queued():
            transport = self._transports.get(row["transport"])
            if transport is None or not transport.online(row["device_code"]):
                continue
            # Mark sent first: an answer can arrive before publish() returns.
            if not await self._store.transition(row["id"], "queued", "sent", detail=row["transport"]):
                continue
            self._metrics.transitions.labels("sent").inc()
            try:
                await transport.send(row)
            except CommandError as exc:
                if await self._store.transition(
                    row["id"], "sent", "failed", detail=exc.reason, result={"error": exc.reason}
                ):
                    self._metrics.transitions.labels("failed").inc()
                log.warning("command %s to %s failed: %s", row["id"], row["device_code"], exc)
            else:
                log.info("command %s (%s) sent to %s", row["id"], row["name"], row["device_code"])

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                # A database blip must not end the dispatcher; the next pass retries.
                log.exception("command dispatch pass failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
