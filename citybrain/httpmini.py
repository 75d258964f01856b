"""A minimal asyncio HTTP endpoint for /metrics and /healthz.

Services that are not web apps (the gateway) still need a Prometheus scrape
target and a liveness probe; this serves both without another dependency and
without a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["MetricsServer"]

log = logging.getLogger(__name__)


class MetricsServer:
    """Serves ``GET /metrics`` from a registry and ``GET /healthz`` from a callback."""

    def __init__(self, registry: CollectorRegistry, healthy: Callable[[], bool], host: str, port: int) -> None:
        self._registry = registry
        self._healthy = healthy
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while True:  # drain headers
                h = await asyncio.wait_for(reader.readline(), 5)
                if h in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else "/"
            if path.startswith("/metrics"):
                body = generate_latest(self._registry)
                status, ctype = "200 OK", CONTENT_TYPE_LATEST
            elif path.startswith("/healthz"):
                ok = self._healthy()
                body = b'{"status":"ok"}' if ok else b'{"status":"unhealthy"}'
                status, ctype = ("200 OK" if ok else "503 Service Unavailable"), "application/json"
            else:
                body, status, ctype = b"not found", "404 Not Found", "text/plain"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
