"""Compatibility shims for Kafka-protocol brokers (noida-db) that differ from Apache Kafka.

**Empty fetches.**
A Kafka broker holds an empty fetch for up to ``fetch.max.wait.ms``; some
Kafka-protocol brokers (noida-db, used for dev, tests and the demo) answer at
once. aiokafka then re-fetches in a tight loop and an idle consumer burns a
whole core (measured: 55 % CPU for one idle consumer). The shim makes an
empty fetch that came back early wait a short, fixed backoff before the next
one. Against a real Kafka it never triggers, because the broker itself waits.

It is installed explicitly at the process edge (CLI, tests), never at import.

**Dead group members.** Apache Kafka evicts a consumer-group member whose
heartbeats stop after its session timeout. noida-db never does: a consumer
killed with ``-9`` stays a member, every rebalance waits for it, and its
successor never gets partitions. :func:`evict_dead_members` sends the
LeaveGroup the dead process could not send. Platform processes name their
Kafka clients with :func:`process_client_id` (their pid at the end), so the
supervisor knows exactly which members belonged to a process it saw die.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

__all__ = ["evict_dead_members", "install_empty_fetch_backoff", "process_client_id"]

log = logging.getLogger(__name__)

_installed: dict[str, float] = {}


def install_empty_fetch_backoff(backoff_s: float = 0.05) -> None:
    """Patch aiokafka's fetcher once; later calls only change the backoff."""
    if backoff_s <= 0:
        return
    _installed["backoff"] = backoff_s
    if "patched" in _installed:
        return
    from aiokafka.consumer.fetcher import Fetcher

    original = Fetcher._proc_fetch_request

    async def _proc_fetch_request(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
        t0 = time.monotonic()
        has_data = await original(self, assignment, node_id, request)
        if not has_data:
            wait = _installed["backoff"] - (time.monotonic() - t0)
            if wait > 0:
                try:
                    await asyncio.sleep(wait)
                except asyncio.CancelledError:
                    # aiokafka cancels and awaits pending fetches on close;
                    # the original coroutine returns normally then, so do we.
                    return has_data
        return has_data

    Fetcher._proc_fetch_request = _proc_fetch_request
    _installed["patched"] = 1.0


def process_client_id(role: str, pid: int | None = None) -> str:
    """The Kafka client id of a platform process: ``citybrain-<role>-<pid>``.

    The pid lets :func:`evict_dead_members` find the group members of a process
    that died without leaving its groups.
    """
    return f"citybrain-{role}-{os.getpid() if pid is None else pid}"


async def _evict(bootstrap: str, pid: int, timeout_s: float) -> list[tuple[str, str]]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.group import LeaveGroupRequest

    suffix = f"-{pid}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    evicted: list[tuple[str, str]] = []
    try:
        await client.bootstrap()
        groups = [g for g, _kind in await admin.list_consumer_groups()]
        if not groups:
            return evicted
        for name in groups:
            # One group per request: noida-db garbles a DescribeGroups answer for several.
            for resp in await admin.describe_consumer_groups([name]):
                for group in resp.groups:
                    members = group[5]
                    dead = [m[0] for m in members if str(m[1]).endswith(suffix)]
                    if not dead:
                        continue
                    node = await client.coordinator_lookup(0, name)
                    for member_id in dead:
                        await client.send(node, LeaveGroupRequest(name, member_id))
                        evicted.append((name, member_id))
    finally:
        await client.close()
        await admin.close()
    return evicted


def evict_dead_members(bootstrap: str, pid: int, timeout_s: float = 10.0) -> list[tuple[str, str]] | None:
    """Remove from every consumer group the members of a dead process (LeaveGroup on its behalf).

    Args:
        bootstrap: Kafka bootstrap servers.
        pid: The dead process's pid, the suffix of its :func:`process_client_id`.
        timeout_s: Bound on each request.

    Returns:
        The ``(group, member id)`` pairs evicted; empty when the broker had already
        expired them (Apache Kafka does after the session timeout); None when the
        broker could not be asked (it is down: try again later). Errors are logged,
        not raised: a supervisor must go on restarting the process.
    """
    from aiokafka.errors import KafkaError

    try:
        evicted = asyncio.run(asyncio.wait_for(_evict(bootstrap, pid, timeout_s), timeout_s * 3))
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("could not evict the Kafka group members of dead process %d (yet): %s", pid, exc)
        return None
    for group, member in evicted:
        log.warning("evicted member %s of dead process %d from consumer group %s", member, pid, group)
    return evicted


async def _rewind(bootstrap: str, group: str, topics: list[str], since_ms: int) -> dict[str, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps:
            return {}
        consumer.assign(tps)
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        ends = await consumer.end_offsets(tps)
        offsets = {}
        for tp in tps:
            at = found.get(tp)
            committed = await consumer.committed(tp)
            target = at.offset if at is not None else ends[tp]
            if committed is not None:
                target = min(target, committed)
            offsets[tp] = OffsetAndMetadata(target, "")
        await consumer.commit(offsets)
        return {f"{tp.topic}[{tp.partition}]": om.offset for tp, om in offsets.items()}
    finally:
        await consumer.stop()


def rewind_group(
    bootstrap: str, group: str, topics: list[str], since_ms: int, timeout_s: float = 30.0
) -> dict[str, int]:
    """Move an (empty) consumer group back to the first records written at or after ``since_ms``.

    After a broker lost the tail of its log (noida-db killed with ``-9``), records written
    after its restart take offsets the group had already passed, and a consumer resuming
    at its position skips them. Rewinding to a time before the crash makes it read them;
    what it reads twice is merged idempotently. Never moves a group forward.

    Returns:
        ``topic[partition]`` → the committed offset.
    """
    return asyncio.run(asyncio.wait_for(_rewind(bootstrap, group, topics, since_ms), timeout_s))
