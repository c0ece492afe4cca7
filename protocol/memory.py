"""Giving the memory of freed messages back to the system, so a process's RSS follows what it holds.

The broker and the WebSocket bridge handle tens of thousands of messages a second, each a block of
about 1 KB from glibc's malloc. Backlogs come and go: a broker's queue for a subscriber that falls
behind (up to PHANTOM_PUB_QUEUE_PACKETS messages), a bridge's per-client buffers. When a backlog
drains, its blocks are freed, but glibc keeps their pages: they lie between blocks still in use,
and its automatic trimming only shortens the top of each heap (the bridge's many threads spread
over up to eight heaps per core). The RSS would then stay at the largest backlog ever held and
creep up whenever a longer stall sets a new record, though nothing is held.

``malloc_trim(0)`` returns every whole free page of every heap to the kernel. A daemon thread
(``malloc-trim``) calls it every TRIM_S seconds through ctypes, which releases the GIL: the process
goes on meanwhile, and a thread waits only if it needs a block from the heap being trimmed, for
at most the trim's duration. Elsewhere than glibc there is no such call and nothing is done.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)

TRIM_S = 5.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class Trimmer:
    """The thread that calls ``malloc_trim(0)`` every ``interval_s``; ``trims`` counts the calls."""

    def __init__(self, interval_s: float = TRIM_S):
        self.interval_s = interval_s
        self.trims = 0
        self._trim = _malloc_trim()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)

    @property
    def available(self) -> bool:
        return self._trim is not None

    def start(self) -> "Trimmer":
        if self._trim is None:
            log.info("malloc_trim is not available (not glibc): freed memory is returned when "
                     "the allocator decides")
        else:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval_s + 1)

    def _run(self) -> None:
        assert self._trim is not None
        while not self._stop.wait(self.interval_s):
            self._trim(0)
            self.trims += 1
