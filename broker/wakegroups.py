"""Wake-up groups: sessions that gain their first consumer mid-playback share the loop's wake-ups.

At low packet rates the broker's CPU is almost all wake-ups: each costs the loop thread and
libzmq's I/O thread tens of microseconds, against a few for the packet itself (docs/broker.md,
"Wake-up groups"). Twenty consumed sessions whose bins close at twenty different moments of the
25 ms period wake the broker 800 times a second; the same twenty closing their bins at five
shared moments wake it 200 times, and one wake-up sends a group's packets back to back.

When a playing session gains its first consumer (it becomes published) after its current bin
opened at least one bin period ago, nobody has received any of its bins since it was last
watched, so its playback clock may move later without anyone seeing a bin stretched: its open
bin then closes on a point of the broker-wide grid of ``grid_s`` (PHANTOM_WAKE_GRID_MS) shared with
fewer than GROUP_SIZE other sessions of the same bin period, the nearest such point after its
natural close (less than one bin period later). Its later bins then close on that grid point
every period. Nothing else moves a clock: create, resume, seek, speed and filter changes still
start the clock at the command, so their first packet comes one bin period after it; a session
whose period is not a whole number of grid steps, a lock-step session, or one consumed during the
first bin after its clock started keeps its own phase.

Membership is not bookkept on every change: a group's members are checked when another session
asks to join (still the registry's session, published, playing, same period, clock still on that
grid point), so a session paused, re-anchored, unsubscribed or deleted has left its group by
itself. Loop thread only.
"""
from __future__ import annotations

import math
from typing import Callable

from broker.session import PLAYING, Session

GROUP_SIZE = 4          # sessions per grid point: the last of a group is sent about 4 packets' work late
MAX_KEYS = 4096         # beyond this many (period, point) keys, keys with no live member are dropped
_ON_GRID = 1e-6         # in grid steps: how close a clock's anchor must be to a grid point


class WakeGroups:
    def __init__(self, grid_s: float, is_current: Callable[[Session], bool]):
        self.grid_s = grid_s
        self.is_current = is_current            # still the registry's session under its code
        self.members: dict[tuple[int, int], list[Session]] = {}
        self.joined = 0                         # sessions moved onto a grid point (metrics)

    def _points(self, s: Session) -> int:
        """Grid points per bin period of ``s``, 0 if its period is not a whole number of them."""
        if self.grid_s <= 0:
            return 0
        steps = s.interval / self.grid_s
        n = round(steps)
        return n if n >= 1 and abs(steps - n) <= 1e-9 * steps else 0

    def _key(self, s: Session, n: int) -> tuple[int, int] | None:
        """The (period in ns, grid point) ``s``'s bins close on, None when off the grid."""
        steps = s.anchor_mono / self.grid_s
        point = round(steps)
        if abs(steps - point) > _ON_GRID:
            return None
        return round(s.interval * 1e9), point % n

    def _live(self, key: tuple[int, int]) -> list[Session]:
        """The members still on ``key``'s point (the others are dropped)."""
        n = round(key[0] * 1e-9 / self.grid_s)
        alive = [m for m in self.members.get(key, ())
                 if self.is_current(m) and m.published and m.state == PLAYING and not m.lockstep
                 and self._points(m) == n and self._key(m, n) == key]
        if alive:
            self.members[key] = alive
        else:
            self.members.pop(key, None)
        return alive

    def join(self, s: Session) -> float:
        """Move ``s``'s playback clock onto a shared grid point if it may; the seconds it moved
        (0.0 when it keeps its phase). Call after ``s.sync``, before scheduling it."""
        n = self._points(s)
        if (not n or s.state != PLAYING or s.lockstep or s.next_tick <= s.anchor_tick):
            return 0.0
        if len(self.members) > MAX_KEYS:
            for key in list(self.members):
                self._live(key)
        natural = s.deadline(s.next_tick)
        first = math.ceil(natural / self.grid_s - _ON_GRID)
        period_ns = round(s.interval * 1e9)
        for j in range(n):
            point = first + j
            key = (period_ns, point % n)
            if len(self._live(key)) < GROUP_SIZE:
                shift = max(0.0, point * self.grid_s - natural)
                s.anchor_mono += shift
                if self._key(s, n) != key:      # float rounding put it off the point: keep as is
                    s.anchor_mono -= shift
                    return 0.0
                self.members.setdefault(key, []).append(s)
                self.joined += 1
                return shift
        return 0.0
