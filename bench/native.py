"""Load from native MQTT clients: several ``mosquitto_pub -l -q 1`` connections, and ``mosquitto_sub``.

``mosquitto_pub -l`` publishes every line of its standard input on one topic,
but at end of input it disconnects and drops what is still queued or awaiting
its PUBACK. So each connection here is fed through a pipe that stays open
until the connection has received a PUBACK for every line written (counted
from its ``-d`` debug output, ``received PUBACK``); only then is its input
closed. A publisher that stops receiving PUBACKs for ``timeout`` seconds is
stopped and reported short, never waited on forever.

Lines are written paced (``rate`` messages per second over all connections)
or as fast as the pipe takes them (``rate=None``).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from citybrain.harness import MqttEndpoint

__all__ = ["NativeResult", "count_native", "publish_native"]


@dataclass(frozen=True, slots=True)
class NativeResult:
    """What the native publishers did."""

    sent: int
    acked: int
    seconds: float
    connections: int

    @property
    def msg_per_s(self) -> float:
        return self.acked / self.seconds if self.seconds > 0 else 0.0


def _command(name: str) -> list[str]:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (Debian: apt-get install mosquitto-clients)")
    # Its debug lines go to a pipe: line-buffered, so each PUBACK is seen when it comes
    # (fully buffered, the last ones would wait for an exit that waits for them).
    stdbuf = shutil.which("stdbuf")
    return [stdbuf, "-oL", found] if stdbuf else [found]


def _auth(ep: MqttEndpoint) -> list[str]:
    out = []
    if ep.username:
        out += ["-u", ep.username]
    if ep.password:
        out += ["-P", ep.password]
    return out


class _Publisher:
    """One ``mosquitto_pub -l -q 1 -d`` connection and its PUBACK count."""

    def __init__(self, ep: MqttEndpoint, topic: str) -> None:
        self.acked = 0
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [
                *_command("mosquitto_pub"),
                "-h",
                ep.host,
                "-p",
                str(ep.port),
                *_auth(ep),
                "-i",
                f"bench-native-{uuid.uuid4().hex[:8]}",
                "-q",
                "1",
                "-t",
                topic,
                "-l",
                "-d",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if b"received PUBACK" in line:
                with self._changed:
                    self.acked += 1
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_acked(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` PUBACKs are in, or no new one came for ``timeout`` seconds."""
        with self._changed:
            while self.acked < n:
                before = self.acked
                self._changed.wait(timeout)
                if self.acked == before:
                    return False
        return True

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)


def publish_native(
    ep: MqttEndpoint,
    streams: Sequence[tuple[str, Sequence[bytes]]],
    *,
    rate: float | None = None,
    timeout: float = 60.0,
) -> NativeResult:
    """Publish each ``(topic, payloads)`` stream on its own ``mosquitto_pub`` connection, at QoS 1.

    Returns once every payload is acknowledged (or a connection stalled for
    ``timeout`` seconds); ``seconds`` runs from the first line written to the
    last PUBACK. Payloads must not contain a newline.
    """
    pubs = [_Publisher(ep, topic) for topic, _ in streams]
    per_conn = None if rate is None else rate / max(len(streams), 1)
    results: list[bool] = [False] * len(pubs)
    t0 = time.perf_counter()

    def feed(k: int) -> None:
        pub, (_, payloads) = pubs[k], streams[k]
        assert pub.proc.stdin is not None
        start = time.perf_counter()
        try:
            for i, p in enumerate(payloads):
                if b"\n" in p:
                    raise ValueError("a payload for mosquitto_pub -l must not contain a newline")
                pub.proc.stdin.write(p + b"\n")
                if per_conn is not None:
                    # Paced: line i is due at i / per_conn seconds after the start.
                    pub.proc.stdin.flush()
                    ahead = start + (i + 1) / per_conn - time.perf_counter()
                    if ahead > 0:
                        time.sleep(ahead)
            pub.proc.stdin.flush()
            results[k] = pub.wait_acked(len(payloads), timeout)
        except (BrokenPipeError, OSError):
            results[k] = False

    threads = [threading.Thread(target=feed, args=(k,), daemon=True) for k in range(len(pubs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    for pub in pubs:
        pub.close()
    return NativeResult(
        sent=sum(len(p) for _, p in streams),
        acked=sum(p.acked for p in pubs),
        seconds=seconds,
        connections=len(pubs),
    )


def count_native(ep: MqttEndpoint, topic_filter: str, n: int, *, ready: threading.Event, timeout: float = 60.0) -> int:
    """Subscribe with ``mosquitto_sub -q 1`` and count messages until ``n`` arrived (or none for ``timeout`` s).

    Sets ``ready`` once subscribed (the first debug line after SUBACK).
    """
    proc = subprocess.Popen(
        [
            *_command("mosquitto_sub"),
            "-h",
            ep.host,
            "-p",
            str(ep.port),
            *_auth(ep),
            "-i",
            f"bench-native-sub-{uuid.uuid4().hex[:8]}",
            "-q",
            "1",
            "-t",
            topic_filter,
            "-d",
            "-C",
            str(n),
            "-W",
            str(int(timeout)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    got = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"received SUBACK" in line:
            ready.set()
        elif b"received PUBLISH" in line:
            got += 1
    proc.wait()
    ready.set()
    return got
