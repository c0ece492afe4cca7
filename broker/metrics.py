"""Timing and resource figures: per-session send statistics and process RSS/CPU, all bounded.

Per session, every published packet records two durations:
- lateness (timing error): send time - deadline, the scheduler's error;
- build time (network latency in the seed's terms): from starting to build the packet to ZeroMQ
  accepting it (the hand-off to ZeroMQ's I/O thread; the wire itself is not visible to the broker).
Mean, std and max cover every packet since creation (running sums); p99 covers the last
RING_SIZE packets (a fixed ring), so memory never grows with uptime.
"""
from __future__ import annotations

import math
import os
import resource
import time
from array import array
from typing import Any

import numpy as np

RING_SIZE = 1024


class Stat:
    """Running mean/std/max over everything, p99 over a ring of the most recent values (seconds)."""

    __slots__ = ("count", "total", "squares", "maximum", "ring", "index", "_summary")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.squares = 0.0
        self.maximum = 0.0
        self.ring = array("d")          # grows to RING_SIZE, then wraps
        self.index = 0
        self._summary: dict[str, float] | None = None   # valid while count is unchanged

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.squares += value * value
        if value > self.maximum:
            self.maximum = value
        if len(self.ring) < RING_SIZE:
            self.ring.append(value)
        else:
            self.ring[self.index] = value
            self.index = (self.index + 1) % RING_SIZE

    def nbytes(self) -> int:
        return self.ring.itemsize * len(self.ring)

    def summary_ms(self) -> dict[str, float]:
        """The figures in ms; cached until the next value (a session nobody watches, or a paused
        one, costs a dict copy, not a percentile over its ring)."""
        cached = self._summary
        if cached is None or cached["count"] != self.count:
            cached = self._summary = self._compute_ms()
        return dict(cached)

    def _compute_ms(self) -> dict[str, float]:
        if not self.count:
            return {"mean": 0.0, "std": 0.0, "max": 0.0, "p99": 0.0, "count": 0}
        mean = self.total / self.count
        var = max(0.0, self.squares / self.count - mean * mean)
        k = min(len(self.ring) - 1, math.ceil(0.99 * len(self.ring)) - 1)
        p99 = float(np.partition(np.frombuffer(self.ring, dtype=np.float64), k)[k])
        return {"mean": round(mean * 1e3, 4), "std": round(math.sqrt(var) * 1e3, 4),
                "max": round(self.maximum * 1e3, 4), "p99": round(p99 * 1e3, 4),
                "count": self.count}


class SessionMetrics:
    """Counters and timing of one session's published packets."""

    __slots__ = ("sent", "skipped", "lateness", "build", "computed_ahead", "computed_at_deadline")

    def __init__(self, sent: int = 0, skipped: int = 0) -> None:
        self.sent = sent
        self.skipped = skipped
        # packets built with perturbations on (sent, held or lost to a transport fault), by when
        # their counts were computed: in the loop's idle time before they were due
        # (broker.prepare), or when they fell due
        self.computed_ahead = 0
        self.computed_at_deadline = 0
        self.lateness = Stat()
        self.build = Stat()

    def record(self, lateness_s: float, build_s: float) -> None:
        self.sent += 1
        self.lateness.add(lateness_s)
        self.build.add(build_s)

    def nbytes(self) -> int:
        return self.lateness.nbytes() + self.build.nbytes()


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ProcessMetrics:
    """CPU use over a sliding window of samples taken by the loop's housekeeping (about 1/s)."""

    WINDOW = 10

    def __init__(self) -> None:
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.samples: list[tuple[float, float]] = [(self.started_mono, cpu_seconds())]

    def sample(self) -> None:
        self.samples.append((time.monotonic(), cpu_seconds()))
        del self.samples[:-self.WINDOW]

    def summary(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), cpu_seconds()
        first_t, first_cpu = self.samples[0]
        window = now - first_t
        uptime = now - self.started_mono
        return {
            "pid": os.getpid(),
            "rss_mb": round(rss_bytes() / 1e6, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 2),
            "cpu_seconds": round(cpu, 3),
            "cpu_percent": round(100.0 * (cpu - first_cpu) / window, 2) if window > 0 else 0.0,
            "cpu_window_s": round(window, 2),
            "cpu_percent_since_start": round(100.0 * cpu / uptime, 2) if uptime > 0 else 0.0,
            "uptime_s": round(uptime, 3),
        }
