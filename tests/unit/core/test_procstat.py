"""core.procstat: CPU seconds of a process and of its threads, from /proc."""

from __future__ import annotations

import os
import threading

from prometheus_client import CollectorRegistry

from core.procstat import ThreadCpuCollector, cpu_seconds


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


def test_a_busy_thread_is_counted_under_its_label() -> None:
    stop = threading.Event()
    worker = threading.Thread(target=_spin, args=(stop,), name="spinner")
    worker.start()
    try:
        reg = CollectorRegistry()
        reg.register(ThreadCpuCollector("t", lambda t: "spin" if t.name == "spinner" else "rest"))
        # Wait for readiness (a tick of CPU), not for a fixed time.
        while cpu_seconds(os.getpid(), worker.native_id) < 0.05:
            pass
        spun = reg.get_sample_value("t_thread_cpu_seconds_total", {"thread": "spin"})
        rest = reg.get_sample_value("t_thread_cpu_seconds_total", {"thread": "rest"})
    finally:
        stop.set()
        worker.join()
    assert spun is not None and spun >= 0.05
    assert rest is not None and rest > 0  # this (main) thread spun in the wait loop
    assert cpu_seconds(os.getpid()) >= spun


def test_a_process_that_is_gone_has_no_cpu() -> None:
    assert cpu_seconds(2**22 + 12345) == 0.0
