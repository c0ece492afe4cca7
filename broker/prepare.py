"""Perturbed packets prepared before they are due, in the loop's idle time.

A perturbed packet's counts and its msgpack `spikes` fragment cost microseconds to tens of
microseconds (a run of packets computed ahead by the engine, broker.perturb.engine); done at the
packet's deadline, that work delays every other session's packet falling due meanwhile. So the loop
prepares them earlier: between deadlines, whenever the next one leaves room, it tops up each
perturbed session's next AHEAD packets (the active ids, and the spikes fragment or None for the
recorded one), one packet per step, sessions in the order they last fell due, and stops before a
step could make it late for the next deadline or held packet. At the deadline a packet prepared for
exactly that packet id by the session's current engine is sent as is; anything else (a seek, a new
perturbation set, a session with no room to prepare in) is computed there, as before.

What a packet contains depends only on (engine, packet id), so a prepared packet is the packet the
deadline would have computed: a seek, a speed change, a pause, a wrap of the loop or a schedule
boundary changes which packet ids come next, never what a packet id holds; a new set is a new
engine, and entries of the old one are never used. Per session at most AHEAD entries are kept.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

from broker.frames import PacketEncoder
from broker.perturb.draws import PACKET_BLOCK
from broker.perturb.engine import Perturber
from broker.session import PLAYING, Session

AHEAD = PACKET_BLOCK            # packets prepared per session (the engine's longest run)
FIRST_ESTIMATE_S = 0.0003       # the CPU time assumed for a step before any was measured
SMOOTHING = 0.25                # weight of the latest step in a kind of step's running estimate
ROOM = 2.0                      # a step starts only if this many times its estimate fits
ENTRY_BYTES = 256               # what one prepared entry holds, about (for memory estimates)


class Ahead:
    """One session's prepared packets: packet id -> (active ids, spikes fragment or None), all made
    by ``engine``."""

    __slots__ = ("engine", "entries", "queued")

    def __init__(self) -> None:
        self.engine: Perturber | None = None
        self.entries: dict[int, tuple[tuple[str, ...], bytes | None]] = {}
        self.queued = False

    def take(self, engine: Perturber, packet_id: int) -> tuple[tuple[str, ...], bytes | None] | None:
        """The packet prepared for ``packet_id`` by ``engine`` (removed), or None."""
        if self.engine is not engine:
            return None
        return self.entries.pop(packet_id, None)

    def nbytes(self) -> int:
        return len(self.entries) * ENTRY_BYTES


def upcoming(s: Session, count: int) -> list[int]:
    """The packet ids of ticks next_tick .. next_tick+count-1, as the loop will play them (fewer
    when a session without loop ends first)."""
    size, playlist = s.playlist.size, s.playlist
    out = []
    for tick in range(s.next_tick, s.next_tick + count):
        raw = s.raw_position(tick)
        if raw >= size:
            if not s.loop:
                break
            raw %= size
        out.append(playlist.packet_id(raw))
    return out


class Preparer:
    """The sessions waiting for packets to be prepared, and the work (loop thread only)."""

    def __init__(self, encoder: PacketEncoder, clean, alive: Callable[[Session], bool]):
        self.encoder, self.clean, self.alive = encoder, clean, alive
        self.queue: deque[Session] = deque()
        self.estimate_s = [FIRST_ESTIMATE_S] * 3      # CPU time of a step, by Perturber.work kind

    def want(self, s: Session) -> None:
        """``s`` may need packets prepared (it just played one, or it was re-scheduled)."""
        if s.perturber is None:
            s.ahead = None
            return
        ahead = s.ahead
        if ahead is None:
            ahead = s.ahead = Ahead()
        if not ahead.queued:
            ahead.queued = True
            self.queue.append(s)

    def pending(self) -> bool:
        return bool(self.queue)

    def work(self, until: float, slice_end: float) -> bool:
        """Prepare packets, one per step, while a step's estimated cost fits before ``until`` and
        the step starts before ``slice_end`` (monotonic). True if it stopped at ``slice_end`` with
        work left (the loop serves its sockets and comes back); False if nothing is left or the
        next step does not fit before ``until``."""
        queue, estimate = self.queue, self.estimate_s
        while queue:
            s = queue[0]
            ahead, engine = s.ahead, s.perturber
            if (ahead is None or engine is None or s.state != PLAYING or not s.published
                    or not self.alive(s)):
                queue.popleft()
                if ahead is not None:
                    ahead.queued = False
                continue
            if ahead.engine is not engine:
                ahead.engine, ahead.entries = engine, {}
            wanted = upcoming(s, AHEAD)
            entries = ahead.entries
            missing = next((p for p in wanted if p not in entries), None)
            if missing is None:
                queue.popleft()
                ahead.queued = False
                if len(entries) > len(wanted):           # packet ids no longer coming (a seek)
                    keep = set(wanted)
                    ahead.entries = {p: v for p, v in entries.items() if p in keep}
                continue
            kind = engine.work(missing)
            now = time.monotonic()
            if now + ROOM * estimate[kind] > until:
                return False
            if now >= slice_end:
                return True
            if len(entries) >= AHEAD:                    # make room: drop what is not coming
                keep = set(wanted)
                entries = ahead.entries = {p: v for p, v in entries.items() if p in keep}
            cpu = time.thread_time()
            active = engine.active(missing)
            counts = engine.counts(missing, self.clean[missing])
            entries[missing] = (active, None if counts is None else self.encoder.spikes_fragment(counts))
            estimate[kind] += SMOOTHING * (time.thread_time() - cpu - estimate[kind])
        return False
