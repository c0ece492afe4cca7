"""Unix time for the broker's monotonic instants: one offset, measured once a second.

Packets carry `scheduled_at` and `sent_at` in Unix seconds (docs/protocol.md). Reading
``time.time()`` beside ``time.monotonic()`` for every packet would put the gap between the two
reads (and any preemption between them) into every stamp; instead the loop converts its monotonic
instants with one offset, ``time.time() - time.monotonic()``, measured at start and at every
housekeeping (about 1 s) from the tightest of a few bracketed reads. Consecutive stamps then keep
the exact spacing of the monotonic deadlines, ``sent_at - scheduled_at`` is exactly the monotonic
lateness, and a step or slew of the wall clock (NTP) shows within a second.
"""
from __future__ import annotations

import time

READS = 5


def measure() -> float:
    """``time.time() - time.monotonic()`` from the tightest of READS bracketed reads."""
    best_gap, best = float("inf"), 0.0
    for _ in range(READS):
        before = time.monotonic()
        wall = time.time()
        after = time.monotonic()
        if after - before < best_gap:
            best_gap, best = after - before, wall - (before + after) / 2
    return best


class WallClock:
    """The current offset (loop thread only): ``unix(mono)`` is that instant in Unix seconds."""

    def __init__(self) -> None:
        self.offset = measure()

    def refresh(self) -> None:
        self.offset = measure()

    def unix(self, mono: float) -> float:
        return mono + self.offset

    def now(self) -> float:
        return time.monotonic() + self.offset
