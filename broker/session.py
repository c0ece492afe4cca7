"""One session's playback cursor: its clock (anchor and ticks), playlist, settings and metrics.

Timing model (causal). A playing session has an anchor ``(anchor_mono, anchor_tick, anchor_pos)``
on its playback clock: the bin of tick k (its sequence number), playlist position
``anchor_pos + (k - anchor_tick)`` (modulo the playlist length when looping), starts at
``anchor_mono + (k - anchor_tick) * interval`` and closes one ``interval = bin_s / speed`` later;
a bin is due when it closes, like a live array's. Deadlines are absolute, so nothing drifts; the
anchor moves only on resume, seek, speed, loop and filter changes (the playback clock restarts at
the command, so the first packet is due one interval after it; a loop change keeps the grid).
``next_tick`` is the next tick to play.

A session being published (it has subscribers, or a wildcard subscriber exists) is on the broker's
deadline heap and the scheduler advances ``next_tick``. An unpublished one costs nothing: its
``next_tick`` is brought up to date from the anchor when someone looks (``sync``).
"""
from __future__ import annotations

import bisect
import math
import time
from array import array
from typing import Any

from broker.evaluation import EvalSettings, Evaluation
from broker.metrics import SessionMetrics
from broker.noise import NoiseSettings
from broker.perturb.engine import Perturber
from broker.perturb.spec import PerturbationSet
from broker.perturb.transport import FaultCounts
from protocol.wire import KIND_META, KIND_PACKET, session_topic

PLAYING, PAUSED, ENDED = "playing", "paused", "ended"
MIN_SPEED, MAX_SPEED = 0.1, 1000.0
_GOLDEN = 0.6180339887498949


class Playlist:
    """The packet ids a session plays, in order: every bin, or the bins of the filtered trials."""

    __slots__ = ("ids", "size", "total", "filter")

    def __init__(self, total: int, ids: array | None = None, filter: dict[str, int] | None = None):
        self.total = total                  # bins in the recording
        self.ids = ids
        self.size = len(ids) if ids is not None else total
        self.filter = filter

    def packet_id(self, pos: int) -> int:
        return pos if self.ids is None else self.ids[pos]

    def position_of(self, packet_id: int) -> int:
        """Position of the first playlist bin at or after ``packet_id`` (0 if none: wrap)."""
        if self.ids is None:
            return packet_id
        pos = bisect.bisect_left(self.ids, packet_id)
        return pos if pos < self.size else 0


class Session:
    """An isolated playback cursor over the shared recording (owned by the broker loop thread)."""

    def __init__(self, code: str, playlist: Playlist, bin_ms: int, *, ordinal: int, now: float,
                 speed: float = 1.0, loop: bool = True, paused: bool = False,
                 noise: NoiseSettings | None = None, created_at: float | None = None,
                 next_tick: int = 0, position: int = 0, ended: bool = False,
                 sent: int = 0, skipped: int = 0, settings: EvalSettings | None = None,
                 stagger: bool = False, lsl: bool = False):
        self.code = code
        self.lsl = lsl                      # mirrored as LSL outlets by the LSL bridge
        self.playlist = playlist
        self.bin_s = bin_ms / 1000.0
        self.speed = float(speed)
        self.interval = self.bin_s / self.speed
        self.loop = loop
        self.noise = noise
        self.perturbations: PerturbationSet | None = None    # the schedule (broker.perturb.spec)
        self.perturber: Perturber | None = None              # built from noise + perturbations
        self.fault_counts = FaultCounts()                    # what its transport faults did
        self.last_active: tuple[str, ...] = ()               # ids active at the last packet sent
        self.ahead = None                    # packets prepared before they are due (broker.prepare)
        self.state = ENDED if ended else (PAUSED if paused else PLAYING)
        self.created_at = created_at if created_at is not None else time.time()
        self.last_accessed = time.time()
        self.subscribers = 0
        self.published = False
        self.gen = 0                        # bumped on every re-anchor: stale heap entries die
        self.phase = (ordinal * _GOLDEN) % 1.0  # staggers sessions across the bin period
        self.metrics = SessionMetrics(sent, skipped)
        self.settings = settings or EvalSettings()
        self.withhold_labels = self.settings.withhold_labels
        self.lockstep = self.settings.lockstep
        self.lockstep_timeout_s = self.settings.lockstep_timeout_ms / 1000.0
        self.lockstep_waiting = False       # the last bin sent awaits its first answer
        self.evaluation: Evaluation | None = None   # set by the broker (it knows the recording)
        self.topic_packet = session_topic(code, KIND_PACKET)
        self.topic_meta = session_topic(code, KIND_META)
        self.prefix = b""                   # set by the broker (PacketEncoder.session_prefix)
        self.restored: dict[str, Any] | None = None  # how a restart resumed it (persistence)
        self.next_tick = next_tick
        self.anchor_tick = next_tick
        self.anchor_pos = position
        # a new session's clock starts now; a restored one is staggered by its phase, so that
        # sessions restored together do not all close their bins at once
        self.anchor_mono = now + (self.phase * self.interval if stagger else 0.0)

    # -- clock ------------------------------------------------------------------------------------
    def deadline(self, tick: int) -> float:
        """When tick's bin closes on the monotonic clock (it is due then, not before)."""
        return self.anchor_mono + (tick - self.anchor_tick + 1) * self.interval

    def end_time(self) -> float:
        """When the last bin closes without loop (a hair after, so ``sync`` sees it closed)."""
        last = self.anchor_tick + max(0, self.playlist.size - self.anchor_pos) - 1
        return self.deadline(last) + 1e-6

    def raw_position(self, tick: int) -> int:
        """Playlist position of ``tick`` before wrapping (>= size means past the end)."""
        return self.anchor_pos + (tick - self.anchor_tick)

    def packet_of(self, tick: int) -> int | None:
        """The packet id ``tick`` plays (wrapped with loop), None past the end without loop."""
        raw = self.raw_position(tick)
        size = self.playlist.size
        if raw >= size:
            if not self.loop:
                return None
            raw %= size
        return self.playlist.packet_id(raw)

    def position(self) -> int:
        """Playlist position of the next packet (size when ended)."""
        if self.state == ENDED:
            return self.playlist.size
        raw = self.raw_position(self.next_tick)
        return raw % self.playlist.size if self.loop else min(raw, self.playlist.size)

    def sync(self, now: float) -> None:
        """Bring an unpublished playing session's next_tick up to now (bins closed are played)."""
        if self.state != PLAYING or self.published or now < self.anchor_mono or self.lockstep:
            return                          # (a lock-step session only moves when answered)
        closed = int((now - self.anchor_mono) / self.interval)
        self.next_tick = max(self.next_tick, self.anchor_tick + closed)
        if not self.loop and self.raw_position(self.next_tick) >= self.playlist.size:
            self.next_tick = self.anchor_tick + max(0, self.playlist.size - self.anchor_pos)
            self.state = ENDED

    def reanchor(self, now: float, position: int | None = None, keep_grid: bool = False) -> None:
        """Start counting again from next_tick at ``position`` (default: where it is now).

        keep_grid keeps the next deadline where it was (a loop change while playing); otherwise
        the playback clock restarts now and the next bin closes one interval from now.
        """
        pos = self.position() if position is None else position
        next_start = self.deadline(self.next_tick) - self.interval
        self.lockstep_waiting = False
        self.anchor_tick = self.next_tick
        self.anchor_pos = pos
        if keep_grid and self.state == PLAYING and next_start >= now - self.interval:
            self.anchor_mono = next_start
        else:
            self.anchor_mono = now
        self.gen += 1

    # -- lock-step --------------------------------------------------------------------------------
    def hold(self, now: float) -> None:
        """After a lock-step bin was sent: the next one is due only at the timeout (or sooner,
        on an answer: ``release``)."""
        self.anchor_mono = now + self.lockstep_timeout_s - self._ticks_to_next_due()
        self.lockstep_waiting = True

    def _ticks_to_next_due(self) -> float:
        """From the anchor to the next tick's due time (its bin's close)."""
        return (self.next_tick - self.anchor_tick + 1) * self.interval

    def release(self, now: float) -> None:
        """The awaited bin was answered: the next one is due now."""
        self.anchor_mono = now - self._ticks_to_next_due()
        self.lockstep_waiting = False
        self.gen += 1

    # -- commands (the broker syncs before and schedules after) ---------------------------------
    def pause(self, now: float) -> None:
        if self.state == PLAYING:
            self.reanchor(now)
            self.state = PAUSED
            self.gen += 1

    def resume(self, now: float) -> None:
        if self.state == ENDED:
            self.state = PLAYING
            self.reanchor(now, position=0)
        elif self.state == PAUSED:
            self.state = PLAYING
            self.reanchor(now)

    def seek(self, now: float, packet_id: int) -> None:
        pos = self.playlist.position_of(packet_id)
        if self.state == ENDED:
            self.state = PLAYING
        self.reanchor(now, position=pos)

    def set_speed(self, now: float, speed: float) -> None:
        pos = self.position()
        self.speed = float(speed)
        self.interval = self.bin_s / self.speed
        self.reanchor(now, position=pos)

    def set_loop(self, now: float, loop: bool) -> None:
        pos = self.position()
        self.loop = loop
        if loop and self.state == ENDED:
            self.state = PLAYING
            pos = 0
        self.reanchor(now, position=pos, keep_grid=True)

    def set_playlist(self, now: float, playlist: Playlist) -> None:
        """New filter: a filter starts at its first bin; clearing one continues from here."""
        current = self.current_packet()
        self.playlist = playlist
        pos = 0 if playlist.filter else playlist.position_of(min(current, playlist.size - 1))
        if self.state == ENDED:
            self.state = PLAYING
        self.reanchor(now, position=pos)

    # -- views ------------------------------------------------------------------------------------
    def current_packet(self) -> int:
        pos = self.position()
        if pos >= self.playlist.size:
            return self.playlist.packet_id(self.playlist.size - 1) + 1
        return self.playlist.packet_id(pos)

    def memory_bytes(self) -> int:
        """Estimated bytes held by this session alone (the recording is shared, counted once)."""
        own_playlist = 0 if self.playlist.ids is None else self.playlist.ids.itemsize * self.playlist.size
        scored = self.evaluation.nbytes() if self.evaluation is not None else 0
        engine = self.perturber.nbytes() if self.perturber else 0
        prepared = self.ahead.nbytes() if self.ahead is not None else 0
        return (2048 + len(self.prefix) + self.metrics.nbytes() + own_playlist + scored + engine
                + prepared)

    def to_dict(self, total_packets: int) -> dict[str, Any]:
        current = self.current_packet()
        return {
            "code": self.code,
            "created_at": self.created_at,
            "last_accessed": self.last_accessed,
            "state": self.state,
            "current_packet": current,
            "total_packets": total_packets,
            "playlist_packets": self.playlist.size,
            "playlist_position": self.position(),
            "sequence_number": self.next_tick,
            "speed": self.speed,
            "loop": self.loop,
            "filter": dict(self.playlist.filter) if self.playlist.filter else None,
            "noise": self.noise.to_dict() if self.noise else None,
            "perturbations": self.perturbations_dict(),
            "subscribers": self.subscribers,
            "elapsed_seconds": round(current * self.bin_s, 6),
            "packets_sent": self.metrics.sent,
            "packets_skipped": self.metrics.skipped,
            **self.settings.to_dict(),
            "lsl": self.lsl,
            "restored": self.restored,
        }

    def perturbations_dict(self) -> dict[str, Any]:
        """The schedule and what is active at the current packet (ids, incl. legacy-noise/-drift)."""
        base = self.perturbations.to_dict() if self.perturbations else {"seed": None, "items": []}
        packet = min(self.current_packet(), self.playlist.total - 1)
        base["active"] = list(self.perturber.active(packet)) if self.perturber else []
        return base

    def saved(self, wall_offset: float) -> dict[str, Any]:
        """What survives a restart (see broker.state): settings, counters and the playback clock.

        A playing session is saved as its anchor (``anchor_wall`` = the anchor in Unix seconds,
        ``wall_offset`` being time.time() - time.monotonic()), from which its position and tick at
        any later time follow; a paused or ended one as its position and next tick.
        """
        playing = self.state == PLAYING
        return {
            "code": self.code, "created_at": self.created_at, "last_accessed": self.last_accessed,
            "state": self.state, "current_packet": self.current_packet(),
            "next_tick": self.next_tick, "speed": self.speed, "loop": self.loop,
            "anchor_wall": (self.anchor_mono if playing else time.monotonic()) + wall_offset,
            "anchor_tick": self.anchor_tick if playing else self.next_tick,
            "anchor_pos": self.anchor_pos if playing else min(self.position(), self.playlist.size - 1),
            "filter": self.playlist.filter, "noise": self.noise.to_dict() if self.noise else None,
            "perturbations": self.perturbations.to_dict() if self.perturbations else None,
            "packets_sent": self.metrics.sent, "packets_skipped": self.metrics.skipped,
            "lsl": self.lsl,
            "evaluation": self.settings.to_dict(),
        }


def check_speed(speed: float) -> bool:
    return not math.isnan(speed) and MIN_SPEED <= speed <= MAX_SPEED
