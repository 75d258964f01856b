"""The zero-setup MQTT broker: amqtt (MQTT 3.1.1), bound to 127.0.0.1.

amqtt's shipped configuration binds 0.0.0.0 and turns on packet logging; this
one binds the given host only and keeps the hot path quiet. Production uses
Mosquitto or EMQX instead (see README).

Run as ``python -m citybrain.mqtt_broker --host 127.0.0.1 --port 1883``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

__all__ = ["broker_config", "main", "serve"]

log = logging.getLogger(__name__)


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt configuration for a local, anonymous broker on ``host:port``."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 10000}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


async def serve(host: str, port: int, stop: asyncio.Event) -> None:
    """Run the broker until ``stop`` is set."""
    from amqtt.broker import Broker

    broker = Broker(broker_config(host, port))
    await broker.start()
    log.info("amqtt listening on %s:%d", host, port)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="citybrain.mqtt_broker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
