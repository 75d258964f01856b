"""CPU time of processes and of a process's own threads, from Linux ``/proc``.

Benchmarks size work by CPU-seconds per message, and the gateway shows how its CPU
splits between paho's network thread and its own asyncio loop (issue 17: "where
paho's own time ends and ours begins"). Elsewhere than Linux the figures are 0
and the collector yields nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ThreadCpuCollector", "cpu_seconds"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a live process, or of one of its threads (0 when gone)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # Fields after the command: state is [0], so utime/stime (14th/15th overall) are [11]/[12].
    return (int(fields[11]) + int(fields[12])) / _TICK


class ThreadCpuCollector(Collector):
    """``{prefix}_thread_cpu_seconds_total{thread}``: CPU seconds of this process's threads.

    Args:
        prefix: Metric name prefix (``citybrain_gateway``).
        label: The ``thread`` label of a Python thread; threads of one label are summed,
            which keeps the label set small (name threads by role, not by instance).
    """

    def __init__(self, prefix: str, label: Callable[[threading.Thread], str]) -> None:
        self._name = f"{prefix}_thread_cpu_seconds"
        self._label = label

    def collect(self) -> Iterator[CounterMetricFamily]:
        """Read each live thread's CPU seconds (called on every scrape)."""
        sums: dict[str, float] = {}
        pid = os.getpid()
        for t in threading.enumerate():
            if t.native_id is None:
                continue
            label = self._label(t)
            sums[label] = sums.get(label, 0.0) + cpu_seconds(pid, t.native_id)
        family = CounterMetricFamily(self._name, "CPU seconds used by this process's threads", labels=["thread"])
        for label, seconds in sorted(sums.items()):
            family.add_metric([label], seconds)
        yield family
