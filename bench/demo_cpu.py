"""CPU cost of a running ``citybrain demo``: CPU-seconds per wall second of its own processes.

The machine may be shared, so load average and ``top`` say little; this sums the user +
system CPU time of the demo process and every descendant (servers, services, simulator)
over a window, with psutil::

    .venv/bin/python -m bench.demo_cpu <demo-pid> [seconds]

It prints the total and per-process figures (1.0 = one core busy). Not part of
``make bench``: it measures a demo someone started.
"""

from __future__ import annotations

import contextlib
import sys
import time

import psutil


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def measure(pid: int, seconds: float = 60.0) -> tuple[float, dict[str, float]]:
    """CPU-seconds per second of ``pid`` and its descendants over ``seconds``; also per process."""
    procs = _tree(pid)
    before = {}
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            before[p.pid] = (p, _cpu(p))
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    per: dict[str, float] = {}
    for p, c0 in before.values():
        try:
            name = " ".join(p.cmdline()[1:5])[-60:] or p.name()
            per[f"{p.pid} {name}"] = (_cpu(p) - c0) / wall
        except psutil.NoSuchProcess:
            continue
    return sum(per.values()), per


def main() -> None:
    pid = int(sys.argv[1])
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    total, per = measure(pid, seconds)
    for name, v in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"{v:6.3f}  {name}")
    share = total / (psutil.cpu_count() or 1)
    print(f"{total:6.3f}  total CPU-seconds per second over {seconds:.0f} s ({share:.0%} of the machine)")


if __name__ == "__main__":
    main()
