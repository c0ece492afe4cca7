"""The deadline heap: which published, playing session plays its next tick when, and when an
unpublished session without loop reaches its end (so that its end is announced on time).

Entries are ``(deadline, order, generation, session)``; a session re-anchored, paused or
unpublished bumps its generation, so its older entries are stale and dropped when they surface.
"""
from __future__ import annotations

import heapq
import itertools
import math

from broker.session import Session


class Deadlines:
    """A min-heap of session deadlines on the monotonic clock (loop thread only)."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, Session]] = []
        self._counter = itertools.count()

    def push(self, session: Session) -> None:
        """The session's next tick, due when its bin closes."""
        self.push_at(session.deadline(session.next_tick), session)

    def push_at(self, when: float, session: Session) -> None:
        heapq.heappush(self.heap, (when, next(self._counter), session.gen, session))

    def next_deadline(self) -> float:
        """The earliest live deadline (stale entries are dropped on the way), inf if none."""
        heap = self.heap
        while heap and heap[0][2] != heap[0][3].gen:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def pop(self) -> Session | None:
        """Remove the earliest entry; its session if the entry is live, None if it was stale."""
        _, _, gen, session = heapq.heappop(self.heap)
        return session if gen == session.gen else None

    def due(self, now: float) -> bool:
        return bool(self.heap) and self.heap[0][0] <= now

    def __len__(self) -> int:
        return len(self.heap)
