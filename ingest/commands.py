"""Downlink commands: validation, the command store, and the dispatcher.

Lifecycle (``docs/commands.md``)::

    queued ──(device online)──▶ sent ──(ack ok)──▶ acked
       ▲ │                        ├──(ack not ok / refused)──▶ failed
       │ │                        └──(no ack within timeout_s, sends left)──┐
       │ │                        └──(no ack, max_attempts sends)──▶ failed {"error": "timeout"}
       │ └──(still not answered after ttl_s)──▶ expired                      │
       └──────(MQTT: device reconnected (live birth), or timeout with sends left)┘

MQTT commands are re-sent, at most ``max_attempts`` sends in all and only within the TTL:
when the device reconnects (a *live* ``online`` birth on its status topic: the device
may have missed a command sent while its old connection was dying) and when no answer
came within ``timeout_s`` (the command or its answer may have been lost). The
command id is the same on every send; devices execute an id once and answer
duplicates again without re-executing (``simulators.fleet``). An answer to an earlier
send is accepted while the command waits to be re-sent.

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
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from prometheus_client import CollectorRegistry, Counter
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from core.topics import command_topic
from devices.models import Command
from ingest.errors import CommandError
from ingest.mqtt_tls import MqttTls

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


#: One history entry, stamped by the database's clock like every other time of a command
#: (``created_at``, ``sent_at``, …): one clock, whatever the dispatcher's host says.
_EVENT = "jsonb_build_array(jsonb_build_object('at', now(), 'state', %s::text, 'detail', %s::text))"


_COLUMNS = (
    "id::text as id, device_code, name, params, transport, state, created_at, sent_at, acked_at,"
    " ttl_s, timeout_s, result, history, attempts, last_sent_at"
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
                f" created_by) values (%s, %s, %s, %s, %s, %s, %s, {_EVENT}, %s) returning {_COLUMNS}",
                (
                    uuid.uuid4(),
                    cmd.device_code,
                    cmd.name,
                    Jsonb(dict(cmd.params)),
                    cmd.transport,
                    cmd.ttl_s,
                    cmd.timeout_s,
                    "queued",
                    "",
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
        stamp = {
            "sent": ", sent_at = coalesce(sent_at, now()), last_sent_at = now(), attempts = attempts + 1",
            "acked": ", acked_at = now()",
        }.get(to_state, "")
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"update commands set state = %s, history = history || {_EVENT},"
                f" result = coalesce(%s, result){stamp} where id = %s and state = %s",
                (to_state, to_state, detail, None if result is None else Jsonb(result), command_id, from_state),
            )
            return cur.rowcount == 1

    async def answer(
        self, command_id: str, ok: bool, result: dict[str, Any], device_code: str | None = None
    ) -> str | None:
        """Record a device's answer: ``sent`` → ``acked`` | ``failed``.

        A command waiting to be re-sent (``queued`` after at least one send) takes the
        answer too: it is the answer to an earlier send of the same id. With
        ``device_code``, only an answer from the command's own device counts.

        Returns:
            The new state, or ``None`` if nothing changed (unknown id, already answered,
            another device's command).
        """
        try:
            key = uuid.UUID(command_id)
        except ValueError:
            return None
        state = "acked" if ok else "failed"
        stamp = ", acked_at = now()" if ok else ""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"update commands set state = %s, history = history || {_EVENT}, result = %s{stamp}"
                " where id = %s and (state = 'sent' or (state = 'queued' and attempts > 0))"
                " and (%s::text is null or device_code = %s)",
                (state, state, "device answered", Jsonb(result), key, device_code, device_code),
            )
            return state if cur.rowcount == 1 else None

    async def requeue_sent(self, device_code: str, birth_age_s: float, max_attempts: int) -> int:
        """Put a reconnected device's unanswered MQTT commands back in the queue.

        Only commands last sent before the birth's receipt, ``birth_age_s`` seconds ago, with
        sends left and within their TTL: one sent after the birth reached the new connection.
        The birth's age, not its time: ``last_sent_at`` is the database's clock, and the
        dispatcher's host clock may disagree with it.

        Returns:
            How many were re-queued.
        """
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"update commands set state = 'queued', history = history || {_EVENT}"
                " where device_code = %s and state = 'sent' and transport = 'mqtt'"
                " and last_sent_at < now() - make_interval(secs => %s) and attempts < %s"
                " and created_at + ttl_s * interval '1 second' > now()",
                ("queued", "device reconnected; sending again", device_code, max(0.0, birth_age_s), max_attempts),
            )
            return cur.rowcount

    async def sweep(self, max_attempts: int = 1) -> tuple[int, int, int]:
        """Expire queued commands past their TTL; re-queue or fail sent ones past their timeout.

        An MQTT command without an answer ``timeout_s`` after its latest send goes back to
        ``queued`` while it has sends left (``attempts < max_attempts``) and TTL; otherwise
        it fails with ``{"error": "timeout"}``. HJ 212 commands are answered (or timed out)
        by the connector and are never re-sent here.

        Returns:
            (expired, re-queued, timed out).
        """
        due = "coalesce(last_sent_at, sent_at) + timeout_s * interval '1 second' <= now()"
        async with self.pool.connection() as conn:
            expired = await conn.execute(
                f"update commands set state = 'expired', history = history || {_EVENT}"
                " where state = 'queued' and created_at + ttl_s * interval '1 second' <= now()",
                ("expired", "not delivered and answered within the TTL"),
            )
            retried = await conn.execute(
                f"update commands set state = 'queued', history = history || {_EVENT}"
                f" where state = 'sent' and transport = 'mqtt' and {due} and attempts < %s"
                f" and created_at + ttl_s * interval '1 second' > now()",
                ("queued", "no answer within timeout; sending again", max_attempts),
            )
            timed_out = await conn.execute(
                f"update commands set state = 'failed', result = %s, history = history || {_EVENT}"
                f" where state = 'sent' and {due}",
                (Jsonb({"error": "timeout"}), "failed", "no answer within timeout"),
            )
        return expired.rowcount, retried.rowcount, timed_out.rowcount


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


#: (command id, ok, result, device code the answer came from or None when the transport vouches for it)
Ack = Callable[[str, bool, dict[str, Any], str | None], Coroutine[Any, Any, None]]
#: (device code, reconnected): a device came online; ``reconnected`` when it is a live birth,
#: not a retained status replayed on (re)subscription.
Online = Callable[[str, bool], None]


class MqttCommandTransport:
    """Commands over MQTT; device presence from retained status, answers from event uplinks.

    Args:
        host: MQTT broker host.
        port: MQTT broker port.
        client_id: MQTT client id (one per dispatcher).
        username: Optional MQTT user.
        password: Optional MQTT password.
        tls: Connect over TLS (as the gateway does), or None for plain MQTT.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        tls: MqttTls | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id or f"citybrain-cmd-{uuid.uuid4().hex[:8]}"
        self._auth = (username, password)
        self._tls = tls
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._online: set[str] = set()
        self._lock = threading.Lock()
        self._on_ack: Ack | None = None
        self._on_online: Online | None = None
        self._connected = threading.Event()
        self._stopping = False

    def bind(self, on_ack: Ack, on_online: Online) -> None:
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
        if self._tls is not None:
            self._tls.apply(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 5)
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
        self._stopping = True
        if self._client is not None:
            self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.error("command transport: MQTT connect refused: %s", reason)
            return
        client.subscribe([("citybrain/up/+/status", 1), ("citybrain/up/+/event", 1)])
        self._connected.set()
        log.info("command transport connected to MQTT %s:%d", self.host, self.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        # Presence is unknown while disconnected; the retained statuses rebuild it on resubscribe,
        # and answers missed meanwhile are recovered by the timeout resend.
        self._connected.clear()
        with self._lock:
            self._online.clear()
        if not self._stopping:
            log.warning("command transport lost MQTT %s:%d (%s); paho reconnects", self.host, self.port, reason)

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
                # The broker flags retained statuses replayed on subscription: only a live
                # birth means the device (re)connected now.
                loop.call_soon_threadsafe(self._on_online, code, not msg.retain)
        elif kind == "event" and "ack" in doc and self._on_ack is not None and loop is not None:
            result = {k: v for k, v in doc.items() if k not in ("v", "ack")}
            ok = doc.get("ok") is True
            asyncio.run_coroutine_threadsafe(self._on_ack(str(doc["ack"]), ok, result, code), loop)

    def online(self, device_code: str) -> bool:
        if not self._connected.is_set():
            return False
        with self._lock:
            return device_code in self._online

    async def send(self, row: Mapping[str, Any]) -> None:
        if self._client is None or not self._connected.is_set():
            raise CommandError("mqtt_unavailable", "not connected to MQTT")
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

    def bind(self, on_ack: Ack, on_online: Online) -> None:
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
                await self._on_ack(str(row["id"]), ok, result, None)

        # The answer takes up to timeout_s; the dispatcher must not wait for it.
        asyncio.get_running_loop().create_task(wait())


# --- dispatcher -------------------------------------------------------------------------------


class CommandMetrics:
    """Dispatcher metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter(
            "citybrain_commands_transitions_total", "Command state changes", ["state"], registry=registry
        )
        self.resends = Counter(
            "citybrain_commands_resends_total",
            "Unanswered commands queued to be sent again",
            ["reason"],  # reconnect | timeout | transport
            registry=registry,
        )
        self.stale_answers = Counter(
            "citybrain_commands_stale_answers_total",
            "Answers that changed nothing (duplicate, unknown id, or another device's command)",
            registry=registry,
        )


class CommandDispatcher:
    """Sends queued commands to online devices and records answers, expiry and timeouts.

    Args:
        store: The command store.
        transports: Transport name (``mqtt``, ``hj212``) → transport.
        metrics: Metrics.
        poll_s: How often queued commands are rechecked (a device coming online also wakes it).
        max_attempts: Sends of an unanswered MQTT command at most (reconnect and timeout resends).
        max_reconnects: Reconnected devices remembered between two passes at most (bounded
            memory in a reconnect storm; beyond it the timeout resend still recovers).
    """

    def __init__(
        self,
        store: CommandStore,
        transports: Mapping[str, MqttCommandTransport | Hj212Transport],
        metrics: CommandMetrics,
        *,
        poll_s: float = 1.0,
        max_attempts: int = 3,
        max_reconnects: int = 100_000,
    ) -> None:
        self._store = store
        self._transports = dict(transports)
        self._metrics = metrics
        self._poll_s = poll_s
        self._max_attempts = max(1, max_attempts)
        self._max_reconnects = max_reconnects
        # device code → when its live birth arrived (time.monotonic()); drained by the next pass
        self._reconnected: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        for transport in self._transports.values():
            transport.bind(self.on_ack, self.on_online)

    def on_online(self, device_code: str, reconnected: bool) -> None:
        """A device came online (on the event loop): send what waits for it, re-send what it may have missed."""
        if reconnected and (device_code in self._reconnected or len(self._reconnected) < self._max_reconnects):
            self._reconnected[device_code] = time.monotonic()
        self._wake.set()

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

    async def on_ack(self, command_id: str, ok: bool, result: dict[str, Any], device_code: str | None = None) -> None:
        """Record a device's answer to a sent command (only its own device's answer counts)."""
        try:
            state = await self._store.answer(command_id, ok, result, device_code)
        except Exception:
            log.exception("command %s from device %s: could not record the answer", command_id, device_code)
            return
        if state is not None:
            self._metrics.transitions.labels(state).inc()
            log.info("command %s to device %s %s: %s", command_id, device_code, state, result)
        else:
            # A duplicate answer to a re-sent command is expected; anything else is worth a look.
            self._metrics.stale_answers.inc()
            log.debug("answer %s from device %s changed nothing", command_id[:64], device_code)

    async def run_once(self) -> None:
        """One pass: expire, re-queue or time out, re-queue for reconnected devices, send."""
        expired, retried, timed_out = await self._store.sweep(self._max_attempts)
        if expired:
            self._metrics.transitions.labels("expired").inc(expired)
        if retried:
            self._metrics.transitions.labels("queued").inc(retried)
            self._metrics.resends.labels("timeout").inc(retried)
            log.info("%d unanswered commands queued to be sent again (timeout)", retried)
        if timed_out:
            self._metrics.transitions.labels("failed").inc(timed_out)
        reconnected, self._reconnected = self._reconnected, {}
        for code, at in reconnected.items():
            n = await self._store.requeue_sent(code, time.monotonic() - at, self._max_attempts)
            if n:
                self._metrics.transitions.labels("queued").inc(n)
                self._metrics.resends.labels("reconnect").inc(n)
                log.info("device %s reconnected: %d unanswered commands queued to be sent again", code, n)
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
                if exc.reason == "mqtt_unavailable" and row["attempts"] + 1 < self._max_attempts:
                    # Our own broker connection blipped: not the device's fault, try again later.
                    if await self._store.transition(row["id"], "sent", "queued", detail=exc.reason):
                        self._metrics.transitions.labels("queued").inc()
                        self._metrics.resends.labels("transport").inc()
                elif await self._store.transition(
                    row["id"], "sent", "failed", detail=exc.reason, result={"error": exc.reason}
                ):
                    self._metrics.transitions.labels("failed").inc()
                log.warning("command %s to device %s not sent: %s", row["id"], row["device_code"], exc)
            else:
                log.info(
                    "command %s (%s) sent to device %s, attempt %d",
                    row["id"],
                    row["name"],
                    row["device_code"],
                    row["attempts"] + 1,
                )

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
