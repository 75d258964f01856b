"""The zero-setup MQTT broker: amqtt (MQTT 3.1.1), bound to 127.0.0.1.

amqtt's shipped configuration binds 0.0.0.0 and turns on packet logging; this
one binds the given host only and keeps the hot path quiet. Production uses
Mosquitto or EMQX instead (see README and ``citybrain devices mosquitto-files``).

Two modes:

* ``python -m citybrain.mqtt_broker --host 127.0.0.1 --port 1883``: anonymous,
  every client may use every topic (demo and tests; unchanged behaviour).
* with ``--database-url URL`` (and usually ``--service-user NAME:SECRET``):
  ledger authentication. A device logs in with its code as username and the
  secret issued by the ledger; it may publish only under
  ``citybrain/up/{its code}/…`` and subscribe only to ``citybrain/cmd/{its code}``.
  Service accounts (gateway, simulator) may use every topic. Anonymous clients
  are refused unless ``--allow-anonymous`` (development only) is given.

Client ids are bound to identities, as Mosquitto's ``use_username_as_clientid``
does on the device listener: a device's client id is replaced by its code, so a
device can only ever resume or push off its own session, never the gateway's.
A client id held by a session of another identity (a service account's) is
refused. amqtt itself (0.12) looks the session up, resets it and takes it over
*before* it authenticates the client, so :class:`CitybrainBroker` authenticates
first; it also sends retained messages only to the subscriptions they match and
that may receive them (amqtt sent every client, at connect, the retained messages
of every other client's subscriptions).

Credentials come from PostgreSQL into an in-memory cache that a background
task refreshes (changed rows every ``--refresh-s``, everything now and then);
an unknown username is looked up once (and remembered as unknown for a short
while). Hash checks (scrypt) run in a small thread pool, so the event loop
never waits on one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id

from devices.credentials import ServiceUser, parse_service_user, verify_secret
from devices.errors import CredentialError
from devices.lifecycle import ACCEPTING

__all__ = [
    "CitybrainBroker",
    "CredentialStore",
    "LedgerAuthPlugin",
    "LedgerTopicPlugin",
    "broker_config",
    "main",
    "serve",
]

log = logging.getLogger(__name__)

_PREFIX = "citybrain"
_ACCEPTING = tuple(sorted(ACCEPTING))
_SELECT_ALL = "select code, secret_hash from devices where secret_hash is not null and state = any(%s)"
_SELECT_CHANGED = "select code, secret_hash, state from devices where updated_at >= %s"
_SELECT_ONE = "select secret_hash from devices where code = %s and secret_hash is not null and state = any(%s)"


class CredentialStore:
    """Who may log in and what they may touch: devices from the ledger, plus service accounts.

    Args:
        database_url: The ledger's PostgreSQL; None for service accounts only.
        service_users: Platform accounts allowed on every topic.
        allow_anonymous: Let clients without a username in (development only).
        refresh_s: How often changed ledger rows are re-read.
        full_every: Every this many refreshes, reload everything (catches rows a
            long transaction committed with an ``updated_at`` older than the
            incremental window).
        negative_ttl_s: How long an unknown username is remembered as unknown,
            so a client retrying with a bad name cannot hammer the database.
        verify_workers: Threads for hash verification.
    """

    def __init__(
        self,
        database_url: str | None,
        service_users: Sequence[ServiceUser] = (),
        *,
        allow_anonymous: bool = False,
        refresh_s: float = 30.0,
        full_every: int = 20,
        negative_ttl_s: float = 10.0,
        verify_workers: int = 2,
        prefix: str = _PREFIX,
    ) -> None:
        self.database_url = database_url
        self.allow_anonymous = allow_anonymous
        self.refresh_s = refresh_s
        self.full_every = full_every
        self.negative_ttl_s = negative_ttl_s
        self.prefix = prefix
        self._service = {u.name: u.secret for u in service_users}
        self._hashes: dict[str, str] = {}
        self._unknown: dict[str, float] = {}
        self._verify_workers = verify_workers
        self._executor: ThreadPoolExecutor | None = None
        self._pool: Any = None
        self._task: asyncio.Task[None] | None = None
        self._watermark: datetime | None = None

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Open the pool, load every credential, start the refresh task."""
        self._executor = ThreadPoolExecutor(max_workers=self._verify_workers, thread_name_prefix="mqtt-verify")
        if self.database_url is None:
            return
        from psycopg_pool import AsyncConnectionPool

        self._pool = AsyncConnectionPool(self.database_url, min_size=1, max_size=4, open=False)
        await self._pool.open(wait=True, timeout=30)
        await self.reload()
        self._task = asyncio.create_task(self._refresh_loop(), name="credential-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def reload(self) -> None:
        """Replace the cache with every valid credential in the ledger."""
        async with self._pool.connection() as conn:
            now_row = await (await conn.execute("select now()")).fetchone()
            rows = await (await conn.execute(_SELECT_ALL, (list(_ACCEPTING),))).fetchall()
        self._hashes = {code: hashed for code, hashed in rows}
        self._watermark = now_row[0] if now_row else None
        log.info("credential cache: %d devices", len(self._hashes))

    async def refresh(self) -> int:
        """Apply ledger rows changed since the last refresh; returns how many."""
        if self._watermark is None:
            await self.reload()
            return len(self._hashes)
        # updated_at is the writer's transaction start: look back a minute for
        # transactions that were still open at the last refresh.
        since = self._watermark - timedelta(seconds=60)
        async with self._pool.connection() as conn:
            now_row = await (await conn.execute("select now()")).fetchone()
            rows = await (await conn.execute(_SELECT_CHANGED, (since,))).fetchall()
        for code, hashed, state in rows:
            if hashed and state in ACCEPTING:
                self._hashes[code] = hashed
            else:
                self._hashes.pop(code, None)
            self._unknown.pop(code, None)
        self._watermark = now_row[0] if now_row else self._watermark
        return len(rows)

    async def _refresh_loop(self) -> None:
        cycle = 0
        while True:
            await asyncio.sleep(self.refresh_s)
            cycle += 1
            try:
                if cycle % self.full_every == 0:
                    await self.reload()
                else:
                    await self.refresh()
            except Exception as exc:  # keep serving from the cache; retry next cycle
                log.warning("credential refresh failed (%s); serving the cached credentials", exc)

    # -- decisions ------------------------------------------------------------

    def is_service(self, username: str | None) -> bool:
        return username is not None and username in self._service

    def bound_client_id(self, username: str | None) -> str | None:
        """The client id an authenticated client must use: its code for a device, None (its own) otherwise.

        Devices never choose their client id, so no device can resume or push off
        another client's session (the gateway's least of all); service accounts run
        several connections each (gateway replicas, simulators) and keep their own.
        """
        if not username or username in self._service:
            return None
        return username

    async def authenticate(self, username: str | None, password: str | None) -> bool:
        """True if the client may connect."""
        if not username:
            return self.allow_anonymous
        secret = self._service.get(username)
        if secret is not None:
            return hmac.compare_digest((password or "").encode(), secret.encode())
        hashed = self._hashes.get(username)
        if hashed is None:
            hashed = await self._fetch(username)
        if hashed is None or not password:
            return False
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._executor, verify_secret, password, hashed)
        if not ok:
            log.info("mqtt login refused for %s: wrong secret", username)
        return bool(ok)

    async def _fetch(self, username: str) -> str | None:
        if self._pool is None:
            return None
        seen = self._unknown.get(username)
        if seen is not None and time.monotonic() - seen < self.negative_ttl_s:
            return None
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_SELECT_ONE, (username, list(_ACCEPTING)))).fetchone()
        if row is None:
            if len(self._unknown) > 100_000:  # bounded: forget the oldest half
                for key in sorted(self._unknown, key=self._unknown.__getitem__)[:50_000]:
                    del self._unknown[key]
            self._unknown[username] = time.monotonic()
            return None
        self._hashes[username] = row[0]
        return str(row[0])

    def may(self, username: str | None, topic: str, action: str) -> bool:
        """Topic check: ``action`` is ``publish``, ``subscribe`` or ``receive``."""
        if username is None:
            return self.allow_anonymous
        if username in self._service:
            return True
        if username not in self._hashes:
            return False  # revoked, suspended or decommissioned since it connected
        if action == "publish":
            own = f"{self.prefix}/up/{username}/"
            return topic.startswith(own) and len(topic) > len(own)
        return topic == f"{self.prefix}/cmd/{username}"


class LedgerAuthPlugin(BaseAuthPlugin):
    """amqtt authentication against a :class:`CredentialStore` (passed in the plugin config)."""

    @dataclass
    class Config:
        store: Any = None

    async def authenticate(self, *, session: Any) -> bool | None:
        store: CredentialStore = self.context.config.store
        try:
            return await store.authenticate(session.username, session.password)
        except Exception as exc:  # a ledger outage refuses new logins; it never crashes the broker
            log.error("mqtt login of %s failed: %s", session.username, exc)
            return False


class LedgerTopicPlugin(BaseTopicPlugin):
    """amqtt topic ACL: devices under their own code only; service accounts everywhere."""

    @dataclass
    class Config:
        store: Any = None

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool | None:
        store: CredentialStore = self.context.config.store
        if session is None or not topic or action is None:
            return False
        allowed = store.may(session.username, topic, str(action.value))
        if not allowed:
            log.info("mqtt %s of %s by %s refused", action.value, topic, session.username)
        return allowed


class CitybrainBroker(Broker):
    """amqtt's broker with client ids bound to identities and retained messages kept to their subscribers.

    Overrides three internals of amqtt 0.12 (pinned in pyproject; the broker tests
    fail if a new release changes them):

    * the CONNECT handling authenticates *before* any session is looked up, reset
      or taken over: amqtt let a refused client (wrong secret, anonymous) delete or
      push off the session whose client id it claimed;
    * a device's client id becomes its code (``CredentialStore.bound_client_id``),
      and a client id held by another identity's session is refused;
    * retained messages go to a session only for its own subscriptions and only
      where the topic ACL lets it receive them.

    Args:
        config: amqtt configuration (:func:`broker_config`).
        store: The credential store of ledger authentication; None when anonymous.
    """

    def __init__(self, config: dict[str, Any], *, store: CredentialStore | None = None) -> None:
        super().__init__(config)
        self._store = store
        # Sessions authenticated at CONNECT, by identity (a Session compares by client
        # id): amqtt asks again right after, which would cost a second scrypt check.
        self._authenticated: dict[int, Session] = {}

    async def _authenticate(self, session: Session, listener: Any) -> bool:
        if self._authenticated.pop(id(session), None) is session:
            return True
        return bool(await super()._authenticate(session, listener))

    async def _refuse(self, writer: Any, why: str) -> None:
        connack = ConnackPacket.build(0, NOT_AUTHORIZED)
        with contextlib.suppress(Exception):
            await connack.to_stream(writer)
            await writer.close()
        raise AMQTTError(why)

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        try:
            handler, incoming = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError as exc:
            with contextlib.suppress(Exception):
                await writer.close()
            raise MQTTError(exc) from exc
        except (AMQTTError, NoDataError) as exc:
            raise AMQTTError(exc) from exc
        if not await self._authenticate(incoming, None):
            await self._refuse(writer, f"connection refused for {incoming.username!r} from {remote_address}")
        bound = self._store.bound_client_id(incoming.username) if self._store is not None else None
        if bound is not None and incoming.client_id != bound:
            log.info("client id %r of %s replaced by its own", incoming.client_id, bound)
            incoming.client_id = bound
        held = self._sessions.get(incoming.client_id) if incoming.client_id else None
        if held is not None and held[0].username != incoming.username:
            log.warning("client id %r is held by another identity; %s refused", incoming.client_id, incoming.username)
            await self._refuse(writer, f"client id {incoming.client_id!r} belongs to another identity")
        # From here on as amqtt 0.12 (Broker._initialize_client_session), for an authenticated client.
        session = incoming
        if incoming.clean_session:
            if incoming.client_id:
                await self._delete_session(incoming.client_id)
            else:
                incoming.client_id = gen_client_id()
            incoming.parent = 0
        elif held is not None:
            session = held[0]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "keep_alive", "username", "password"):
                setattr(session, name, getattr(incoming, name))
            session.parent = 1
        else:
            incoming.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        self._authenticated[id(session)] = session
        return handler, session

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt calls this at CONNECT for every filter any client subscribed to:
        # keep to this session's own subscriptions, at the QoS granted to it.
        topic_filter = subscription[0]
        granted = next(
            (q for s, q in self._subscriptions.get(topic_filter, ()) if s.client_id == session.client_id), None
        )
        handler = self._get_handler(session)
        if granted is None or handler is None:
            return
        tasks = []
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                continue
            qos = min(granted, retained.qos if retained.qos is not None else granted)
            tasks.append(asyncio.ensure_future(handler.mqtt_publish(retained.topic, retained.data, qos, retain=True)))
        if tasks:
            await asyncio.wait(tasks)


def broker_config(host: str, port: int, store: CredentialStore | None = None) -> dict[str, Any]:
    """amqtt configuration on ``host:port``: anonymous, or ledger auth with ``store``."""
    listeners = {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 10000}}
    if store is None:
        return {
            "listeners": listeners,
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    return {
        "listeners": listeners,
        "plugins": {
            "citybrain.mqtt_broker.LedgerAuthPlugin": {"store": store},
            "citybrain.mqtt_broker.LedgerTopicPlugin": {"store": store},
        },
    }


async def serve(host: str, port: int, stop: asyncio.Event, store: CredentialStore | None = None) -> None:
    """Run the broker until ``stop`` is set (with ledger auth when ``store`` is given)."""
    if store is not None:
        await store.start()
    try:
        broker = CitybrainBroker(broker_config(host, port, store), store=store)
        await broker.start()
        log.info("amqtt listening on %s:%d (%s)", host, port, "ledger auth" if store else "anonymous")
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await broker.shutdown()
    finally:
        if store is not None:
            await store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="citybrain.mqtt_broker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--database-url", default=None, help="ledger PostgreSQL: turns on device authentication")
    parser.add_argument(
        "--service-user",
        action="append",
        default=[],
        metavar="NAME:SECRET",
        help="platform account allowed on every topic (repeatable); turns on authentication",
    )
    parser.add_argument(
        "--allow-anonymous", action="store_true", help="with authentication on, still let anonymous clients in (dev)"
    )
    parser.add_argument("--refresh-s", type=float, default=30.0, help="credential cache refresh interval")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = None
    if args.database_url or args.service_user:
        try:
            users = [parse_service_user(s) for s in args.service_user]
        except CredentialError as exc:
            parser.error(str(exc))
        store = CredentialStore(
            args.database_url, users, allow_anonymous=args.allow_anonymous, refresh_s=args.refresh_s
        )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, stop, store)

    asyncio.run(run())


if __name__ == "__main__":
    main()
