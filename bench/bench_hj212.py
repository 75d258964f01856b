"""HJ 212-2017 over TCP: packets/s through the HJ 212 server into Kafka (acknowledged with 9014).

Stations are simulated by asyncio connections that send real-time uploads
(CN 2011, Flag=5 so every packet is answered) and count the 9014 replies; a
reply means the packet's batch was acknowledged by Kafka. Figures are printed;
nothing is asserted. Run: ``python -m bench.bench_hj212 --stations 50 --packets 200``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from citybrain.harness import start_kafka
from citybrain.kafka_compat import install_empty_fetch_backoff
from citybrain.platform import create_topics
from core.topics import KafkaTopics
from devices.code import DeviceCode
from devices.models import shipped_models
from ingest.adapters.hj212.connector import Hj212Metrics, Hj212Server, Hj212ServerConfig, auth_resolver
from ingest.kafka_sink import KafkaSink, KafkaSinkConfig, KafkaSinkMetrics
from simulators.encoders import DEFAULT_PW, hj212_rtd

__all__ = ["count_acks", "main"]


def count_acks(buf: bytes) -> tuple[int, bytes]:
    """Count the 9014 answers among the complete lines of ``buf``.

    Returns:
        (answers in the complete lines, the trailing partial line to keep for the next read).
        A partial line is never counted: it is counted once, when its ``\\r\\n`` arrives.
    """
    *lines, rest = buf.split(b"\r\n")
    return sum(b"CN=9014" in line for line in lines), rest


async def _station(port: int, frames: list[bytes]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    acks = 0

    async def read() -> None:
        nonlocal acks
        buf = b""
        while acks < len(frames):
            chunk = await reader.read(65536)
            if not chunk:
                return
            counted, buf = count_acks(buf + chunk)
            acks += counted

    task = asyncio.create_task(read())
    for f in frames:
        writer.write(f)
    await writer.drain()
    await asyncio.wait_for(task, 120)
    writer.close()
    await writer.wait_closed()
    return acks


async def _run(stations: int, packets: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="citybrain-bench-hj212-"))
    proc, bootstrap = start_kafka(root / "kafka")
    try:
        topics = KafkaTopics("benchhj")
        await asyncio.to_thread(create_topics, bootstrap, topics, 4, [])
        registry = CollectorRegistry()
        sink = KafkaSink(KafkaSinkConfig(bootstrap, topics, 4, source="hj212"), KafkaSinkMetrics(registry))
        await sink.start()
        model = shipped_models().get("air-station")
        codes = [DeviceCode.build("350206", "0308", 900000 + i).full for i in range(stations)]
        server = Hj212Server(
            Hj212ServerConfig(port=0, max_connections_per_address=0),  # every station is on 127.0.0.1
            sink,
            auth_resolver({c: c for c in codes}, {c: DEFAULT_PW for c in codes}),
            Hj212Metrics(registry),
        )
        await server.start()
        base = datetime.now(UTC) - timedelta(hours=1)
        values = {"pm25": 35.0, "pm10": 60.0, "so2": 8.0, "no2": 30.0, "co": 0.6, "o3": 60.0}
        work = [[hj212_rtd(model, c, base + timedelta(seconds=i), values) for i in range(packets)] for c in codes]
        t0 = time.perf_counter()
        acks = await asyncio.gather(*(_station(server.port, frames) for frames in work))
        dt = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # let the server see the stations hang up before it stops
        await server.stop()
        await sink.stop()
        total = sum(acks)
        return {"stations": stations, "packets": total, "seconds": round(dt, 2), "packets_per_s": round(total / dt)}
    finally:
        proc.stop()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print (and return, for ``make bench``'s summary) packets/s through the HJ 212 server into Kafka."""
    parser = argparse.ArgumentParser(prog="bench.bench_hj212", description=__doc__)
    parser.add_argument("--stations", type=int, default=50)
    parser.add_argument("--packets", type=int, default=200, help="per station")
    args = parser.parse_args(argv)
    install_empty_fetch_backoff(0.05)
    res = asyncio.run(_run(args.stations, args.packets))
    print("HJ 212 over TCP → Kafka (each packet answered 9014 after the Kafka ack)")
    print(", ".join(f"{k}={v}" for k, v in res.items()))
    return res


if __name__ == "__main__":
    main()
