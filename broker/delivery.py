"""Packets on their way out: sent now, or held by a transport fault (latency, jitter, reordering,
a freeze) until their time, and duplicated when a fault says so.

Held packets wait in a heap ordered by send time; the loop flushes the due ones each turn and
wakes for the earliest. A held packet is re-stamped with its real `sent_at` when it goes (see
broker.frames.restamp). Packets of a session deleted meanwhile are discarded; a pause does not
recall packets already "on the wire".
"""
from __future__ import annotations

import heapq
import itertools
import math
import time
from typing import Callable

import zmq

from broker.frames import restamp
from broker.perturb.transport import Plan
from broker.session import Session
from broker.wallclock import WallClock


class Delivery:
    """Sends packets on the data socket, holding the ones a transport fault delays (loop thread)."""

    def __init__(self, alive: Callable[[Session], bool], wall: WallClock):
        self.pub: zmq.Socket | None = None
        self.alive = alive
        self.wall = wall
        self.held: list[tuple[float, int, Session, bytes, bool, float]] = []
        self._order = itertools.count()

    def send(self, s: Session, payload: bytes, plan: Plan | None, due: float, build_s: float) -> None:
        """Send (or hold) one packet due at ``due`` (monotonic), as ``plan`` says."""
        if plan is None or (plan.delay_s <= 0 and not plan.duplicate):
            self._out(s, payload, due, build_s, restamped=False)
            return
        if plan.delay_s <= 0:
            self._out(s, payload, due, build_s, restamped=False)
        else:
            self._hold(due + plan.delay_s, s, payload, False, build_s)
        if plan.duplicate:
            self._hold(due + plan.delay_s, s, payload, True, build_s)

    def _hold(self, at: float, s: Session, payload: bytes, duplicate: bool, build_s: float) -> None:
        heapq.heappush(self.held, (at, next(self._order), s, payload, duplicate, build_s))

    def _out(self, s: Session, payload: bytes, due: float, build_s: float, restamped: bool,
             duplicate: bool = False) -> None:
        sent = time.monotonic()
        if restamped or duplicate:
            payload = restamp(payload, self.wall.unix(sent), duplicate)
        self.pub.send(s.topic_packet, zmq.SNDMORE)
        self.pub.send(payload)
        if not duplicate:
            s.metrics.record(sent - due, build_s)

    def next_due(self) -> float:
        return self.held[0][0] if self.held else math.inf

    def flush_one(self) -> None:
        """Send the earliest held packet (the loop calls this when it is due)."""
        at, _, s, payload, duplicate, build_s = heapq.heappop(self.held)
        if self.alive(s):
            self._out(s, payload, at, build_s, restamped=True, duplicate=duplicate)

    def __len__(self) -> int:
        return len(self.held)
