"""Perturbed packets prepared before they are due, in the loop's idle time.

A perturbed packet's counts and its msgpack `spikes` fragment cost tens to hundreds of
microseconds (a run of packets computed by the engine, broker.perturb.engine; milliseconds for a
segment's new tables); done at the packet's deadline, that work delays every other session's
packet falling due meanwhile. So the loop prepares them earlier: between deadlines, whenever the
next one leaves room, it tops up each perturbed session's next AHEAD packets (the active ids, and
the spikes fragment or None for the recorded one), sessions in the order they last fell due, in
steps the engine can take one at a time (a segment's tables, a block's draws, a run of packets to
the end of their block of 8, one packet's look-up and encoding: Perturber.work), and starts a step
only if ROOM times its running estimate (CPU time, per kind of step and run length) ends before the
next deadline or held packet. At the deadline a packet prepared for exactly that packet id by the
session's current engine is sent as is; any other (after a seek or a new perturbation set with no
room to prepare it, or when the loop is behind) is computed there, as the engine does on its own.

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
SMOOTHING = 0.25                # weight of the latest step in a kind of step's running estimate
ROOM = 1.5                      # a step starts only if this many times its estimate fits
ENTRY_BYTES = 256               # what one prepared entry holds, about (for memory estimates)
LOW_WATER = AHEAD // 2          # a session is queued again when this few prepared packets are left
SCAN = 4                        # sessions of the queue a turn may work on, first to fourth
OUTLIER = 4.0                   # a step measured slower than this many times its estimate counts as that
RELAX = 1 - 1 / 64              # an estimate too large to fit shrinks by this each time (so that one
                                # slow step, e.g. a page fault, does not keep its kind from running)
# CPU time assumed for a step before one was measured: look-up and encoding, draws, new tables,
# and runs of 1, 2-3, 4-7 and 8 packets (a run is as long as its block allows, see _run_length)
FIRST_ESTIMATES_S = {"lookup": 10e-6, "draws": 40e-6, "build": 3e-3,
                     1: 40e-6, 2: 60e-6, 4: 90e-6, 8: 130e-6}


STEP_NAMES = {Perturber.LOOKUP: "lookup", Perturber.DRAWS: "draws", Perturber.BUILD: "build"}


def run_class(length: int) -> int:
    """The estimate a run of ``length`` packets goes by (1, 2, 4 or 8)."""
    return 8 if length >= 8 else 4 if length >= 4 else 2 if length >= 2 else 1


class Ahead:
    """One session's prepared packets: packet id -> (active ids, spikes fragment or None), all made
    by ``engine``."""

    __slots__ = ("engine", "entries", "queued", "_wanted", "_wanted_key")

    def __init__(self) -> None:
        self.engine: Perturber | None = None
        self.entries: dict[int, tuple[tuple[str, ...], bytes | None]] = {}
        self.queued = False
        self._wanted: list[int] = []
        self._wanted_key: tuple | None = None

    def wanted(self, s: Session) -> list[int]:
        """``upcoming(s, AHEAD)``, computed again only when the session moved on or changed."""
        key = (s.next_tick, s.gen, s.playlist, s.loop)
        if key != self._wanted_key:
            self._wanted, self._wanted_key = upcoming(s, AHEAD), key
        return self._wanted

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
    out = []
    for tick in range(s.next_tick, s.next_tick + count):
        packet_id = s.packet_of(tick)
        if packet_id is None:
            break
        out.append(packet_id)
    return out


class Preparer:
    """The sessions waiting for packets to be prepared, and the work (loop thread only)."""

    def __init__(self, encoder: PacketEncoder, clean, alive: Callable[[Session], bool]):
        self.encoder, self.clean, self.alive = encoder, clean, alive
        self.queue: deque[Session] = deque()
        self.estimate_s = dict(FIRST_ESTIMATES_S)    # CPU time of a step, by kind of step

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

    def played(self, s: Session) -> None:
        """``s`` just played a packet: queue it when its prepared packets run low (at most
        LOW_WATER left, or not the next one), so that each visit tops up several."""
        ahead = s.ahead
        if ahead is None or ahead.engine is not s.perturber or len(ahead.entries) <= LOW_WATER:
            self.want(s)
            return
        following = upcoming(s, 1)
        if following and following[0] not in ahead.entries:
            self.want(s)

    def work(self, until: float, slice_end: float) -> bool:
        """Prepare packets, a step at a time, while a step's estimated cost fits before ``until``
        and the step starts before ``slice_end`` (monotonic). True if it stopped at ``slice_end``
        with work left (the loop serves its sockets and comes back); False if nothing is left or
        no next step fits before ``until``. The session first in the queue goes first; when its
        next step does not fit, the next few (SCAN in all) may take a smaller one meanwhile."""
        queue, least = self.queue, ROOM * self.estimate_s["lookup"]
        i = 0
        while i < len(queue) and i < SCAN:
            now = time.monotonic()
            if now >= slice_end:
                return True
            if until - now < least:                      # not even a look-up fits
                return False
            s = queue[i]
            done = self._top_up(s, until, slice_end)
            if done is None:
                return True
            if done:
                del queue[i]
                if s.ahead is not None:
                    s.ahead.queued = False
            else:
                i += 1
        return False

    def _top_up(self, s: Session, until: float, slice_end: float) -> bool | None:
        """Prepare ``s``'s next packets: True when they are all prepared (or it needs none),
        False when the next step does not fit before ``until``, None at ``slice_end``."""
        ahead, engine, estimate = s.ahead, s.perturber, self.estimate_s
        if (ahead is None or engine is None or s.state != PLAYING or not s.published
                or not self.alive(s)):
            return True
        wanted = ahead.wanted(s)
        if ahead.engine is not engine:
            ahead.engine, ahead.entries = engine, {}
        elif any(p not in wanted for p in ahead.entries):     # no longer coming (a seek)
            ahead.entries = {p: v for p, v in ahead.entries.items() if p in wanted}
        entries = ahead.entries
        for index, missing in enumerate(wanted):
            while missing not in entries:                # the steps of this packet, in turn
                kind = engine.work(missing)
                now = time.monotonic()
                if now >= slice_end:
                    return None
                room = (until - now) / ROOM
                if kind == Perturber.RUN:
                    step = self._run_length(engine, wanted, index, room)
                    if step is None:
                        return False
                    key: object = run_class(step)
                else:
                    key = STEP_NAMES[kind]
                    if estimate[key] > room:
                        estimate[key] *= RELAX
                        return False
                cpu = time.thread_time()
                if kind == Perturber.LOOKUP:
                    counts = engine.counts(missing, self.clean[missing])
                    entries[missing] = (engine.active(missing), None if counts is None
                                        else self.encoder.spikes_fragment(counts))
                elif kind == Perturber.DRAWS:
                    engine.make_draws(missing)
                elif kind == Perturber.RUN:
                    engine.compute_run(missing, step)
                else:
                    engine.segment(missing)
                took = min(time.thread_time() - cpu, OUTLIER * estimate[key])
                estimate[key] += SMOOTHING * (took - estimate[key])
        return True

    def _run_length(self, engine: Perturber, wanted: list[int], index: int, room: float) -> int | None:
        """The run to compute from ``wanted[index]`` if it fits in ``room``: to the end of its
        block of draws (or its segment), beyond the AHEAD packets wanted now when those are in a
        row (the engine keeps the run; they are looked up from it as they come into the window),
        shorter only where the packets wanted stop being in a row. Never cut to fit: a run's fixed
        cost (a cache-cold pass over the segment's tables) makes short runs cost several times
        more per packet, and CPU time is what a loaded broker runs out of."""
        first = wanted[index]
        consecutive = 1
        while index + consecutive < len(wanted) and wanted[index + consecutive] == first + consecutive:
            consecutive += 1
        limit = engine.run_limit(first)
        if index + consecutive < len(wanted):            # a jump (filter, loop wrap) comes first
            limit = min(limit, consecutive)
        if self.estimate_s[run_class(limit)] <= room:
            return limit
        self.estimate_s[run_class(limit)] *= RELAX
        return None
