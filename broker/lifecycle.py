"""Session lifecycle: create, look up, change, end, delete and expire sessions, announcing each.

Every change of a session goes through here: it is rescheduled on the deadline heap, its `meta`
and a `changed` event go out on the data socket, and the state is marked dirty for persistence.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import zmq

from broker.deadlines import Deadlines
from broker.evaluation import EvalSettings, Evaluation
from broker.frames import PacketEncoder
from broker.metrics import ProcessMetrics
from broker.noise import from_saved, parse_noise
from broker.perturb import engine
from broker.perturb.spec import parse_set
from broker.prepare import Preparer
from broker.recording import Recording
from broker.registry import Registry
from broker.session import ENDED, PLAYING, Session, check_speed
from broker.wakegroups import WakeGroups
from protocol.commands import CommandError, ErrorCode
from protocol.config import Config
from protocol.wire import EVENTS_TOPIC, PROTOCOL_VERSION, encode

log = logging.getLogger("broker")


def dataset_meta(rec: Recording) -> dict[str, Any]:
    """The dataset part of every `meta` payload and of the `dataset` command."""
    return {
        "dataset": rec.name,
        "source": rec.path.name,
        "bin_size_ms": rec.bin_ms,
        "frequency_hz": 1000.0 / rec.bin_ms,
        "num_channels": rec.n_units,
        "unit_ids": [int(u) for u in rec.unit_ids.tolist()],
        "regions": rec.regions(),
        "total_packets": rec.n_bins,
        "num_trials": len(rec.trials),
        "duration_seconds": rec.duration_s,
        "start_time": float(rec.t0),
        "has_behavior": bool(rec.has_behavior),
        # NLB's held-in/held-out split of the units (the file's `heldout` column)
        "heldout": [bool(h) for h in rec.heldout.tolist()],
        "heldin_unit_ids": [int(u) for u, h in zip(rec.unit_ids.tolist(), rec.heldout.tolist()) if not h],
        "heldout_unit_ids": [int(u) for u, h in zip(rec.unit_ids.tolist(), rec.heldout.tolist()) if h],
    }


class Sessions:
    """Every session's lifecycle; shares the recording, registry and heap with the loop."""

    def __init__(self, config: Config, recording: Recording, deadlines: Deadlines):
        self.config = config
        self.recording = recording
        self.encoder = PacketEncoder(recording)
        self.registry = Registry(recording, config.max_sessions, config.session_ttl_s,
                                 config.evict_grace_s)
        self.deadlines = deadlines
        self.process = ProcessMetrics()
        self.dataset_meta = dataset_meta(recording)
        self.unit_stats = engine.UnitStats.of(recording.counts, recording.observed)
        # perturbed packets prepared before they are due, in the loop's idle time
        current = lambda s: self.registry.sessions.get(s.code) is s   # noqa: E731
        self.preparer = Preparer(self.encoder, recording.counts, current)
        # sessions consumed mid-playback share the loop's wake-ups (broker.wakegroups)
        self.wake_groups = WakeGroups(config.wake_grid_ms / 1000.0, current)
        self.pub: zmq.Socket | None = None      # the data socket, set once bound
        self.send_batching = False              # the loop batches sends now (heavy load)
        self._recording_bytes: int | None = None
        self.generation = 0                     # bumped by every change a reply over all shows
        self.dirty = False                      # something changed since the last snapshot
        self.touched: dict[str, float] = {}     # code -> last_accessed changed since the snapshot
        self.state_status: Callable[[], dict[str, Any]] = dict   # set by the broker (persistence)
        # the data socket's subscription figures (subscriptions_held, ...; set by broker.subscriptions)
        self.subscription_figures: Callable[[], dict[str, int]] = dict

    def recording_bytes(self) -> int:
        """Bytes of the shared binned arrays and the pre-encoded packet fragments (fixed)."""
        if self._recording_bytes is None:
            self._recording_bytes = self._count_recording_bytes()
        return self._recording_bytes

    def _count_recording_bytes(self) -> int:
        rec = self.recording
        arrays = sum(a.nbytes for a in (rec.counts, rec.observed, rec.trial_index, rec.trial_time_ms,
                                         rec.cursor, rec.velocity, rec.target_id, rec.target_pos,
                                         rec.distance))
        return arrays + sum(map(len, self.encoder.static)) + sum(map(len, self.encoder.spikes))

    # -- scheduling and announcements -------------------------------------------------------------
    def schedule(self, s: Session) -> None:
        """Drop any heap entry of ``s``; push its next deadline if it publishes, or the time it
        ends if it plays unwatched without loop (to announce the end when it happens)."""
        s.gen += 1
        if s.state != PLAYING or s.code not in self.registry.sessions:
            return
        if s.published:
            self.deadlines.push(s)
            self.preparer.want(s)
        elif not s.loop:
            self.deadlines.push_at(s.end_time(), s)

    def on_unwatched_due(self, s: Session, now: float) -> None:
        """An unpublished session's end entry came due: announce the end, or wait on."""
        if s.state == PLAYING:
            s.sync(now)
        if s.state == ENDED:
            self.end(s)
        elif not s.loop:
            self.deadlines.push_at(max(now + 1e-4, s.end_time()), s)

    def refresh_publishing(self, s: Session, now: float) -> None:
        want = self.registry.should_publish(s)
        if want == s.published:
            return
        if want:
            s.sync(now)                        # (an unpublished session's clock, brought to now)
        s.published = want
        if want:
            self.wake_groups.join(s)
        self.schedule(s)

    def view(self, s: Session) -> dict[str, Any]:
        s.sync(time.monotonic())
        return s.to_dict(self.recording.n_bins)

    def publish_meta(self, s: Session) -> None:
        if not s.published:
            return
        view = self.view(s)
        data = dict(self.dataset_meta, labels_withheld=s.withhold_labels, session=view,
                    perturbations=view["perturbations"])
        self.pub.send_multipart([s.topic_meta, encode(
            {"v": PROTOCOL_VERSION, "type": "metadata", "session": s.code, "data": data})])

    def publish_event(self, event: str, s: Session, **extra: Any) -> None:
        self.generation += 1             # every event: replies go stale
        self.pub.send_multipart([EVENTS_TOPIC, encode(
            {"v": PROTOCOL_VERSION, "type": "session_event", "event": event, "at": time.time(),
             "session": self.view(s), **extra})])

    # -- perturbations ----------------------------------------------------------------------------
    def parse_perturbations(self, value: Any):
        """A `perturbations` argument -> a validated set (None for none); CommandError if bad."""
        return parse_set(value, self.recording.bin_ms, self.recording.n_units)

    def set_perturbations(self, s: Session, noise=None, perturbations=None) -> None:
        """Give ``s`` these legacy noise settings and perturbation set (already validated)."""
        s.noise, s.perturbations = noise, perturbations
        legacy = noise.items() if noise is not None else []
        s.perturber = engine.build(s.code, self.unit_stats, self.recording, perturbations,
                                   legacy, noise.seed if noise is not None else 0, s.fault_counts)

    def announce_perturbations(self, s: Session, active: tuple[str, ...], packet_id: int,
                               tick: int, scheduled_at: float) -> None:
        """The set of active perturbations changed at this packet: a `perturbation` event."""
        before = s.last_active
        s.last_active = active
        self.publish_event("perturbation", s, perturbation={
            "active": list(active), "started": [i for i in active if i not in before],
            "ended": [i for i in before if i not in active], "packet_id": packet_id,
            "sequence_number": tick, "scheduled_at": scheduled_at})

    def changed(self, s: Session) -> None:
        """After any change of a session's state: reschedule, tell subscribers, save soon."""
        self.schedule(s)
        self.publish_meta(s)
        self.publish_event("changed", s)
        self.dirty = True

    def end(self, s: Session) -> None:
        """A session without loop played its last bin."""
        s.state = ENDED
        s.gen += 1
        log.info("session %s reached the end (loop off)", s.code)
        self.changed(s)

    # -- create, delete, expire -------------------------------------------------------------------
    def create(self, code: str | None = None, *, speed: float = 1.0, loop: bool = True,
               paused: bool = False, filter: dict | None = None, noise: Any = None,
               perturbations: Any = None, restored: dict[str, Any] | None = None,
               settings: EvalSettings | None = None, lsl: bool | str = False) -> Session:
        """A new session (validated first, then room made by evicting an idle one if needed).

        ``restored`` (from broker.persistence) recreates a saved session: ``clock`` (Session
        clock arguments), ``last_accessed`` and ``info`` (the session's ``restored`` field).
        """
        reg = self.registry
        if code is None:
            code = reg.new_code()
        else:
            reg.check_code(code)
            if code in reg.sessions:
                raise CommandError(ErrorCode.CONFLICT, f"session {code!r} already exists")
        if not check_speed(speed):
            raise CommandError(ErrorCode.OUT_OF_RANGE, f"speed must be in [0.1, 1000], got {speed}")
        playlist = reg.playlist(filter)
        noise_settings = from_saved(noise) if restored is not None else parse_noise(noise)
        extra = restored["clock"] if restored is not None else {}
        pset = self.parse_perturbations(perturbations)
        evicted = reg.make_room()
        if evicted is not None:
            self.forget(evicted, "evicted (least recently used idle session; limit reached)")
        s = Session(code, playlist, self.recording.bin_ms, ordinal=reg.next_ordinal(),
                    now=time.monotonic(), speed=speed, loop=loop, paused=paused,
                    lsl=self._lsl_flag(lsl),
                    settings=settings, **extra)
        s.evaluation = Evaluation(self.recording)
        self.set_perturbations(s, noise_settings, pset)
        if restored is not None:
            s.last_accessed = restored["last_accessed"]
            s.restored = restored["info"]
        s.prefix = self.encoder.session_prefix(code)
        reg.add(s)
        s.published = reg.should_publish(s)
        self.schedule(s)
        self.publish_event("created", s)
        self.publish_meta(s)
        self.dirty = True
        log.info("session %s created%s", code, " (restored)" if restored is not None else "")
        return s

    def _lsl_flag(self, lsl: bool | str) -> bool:
        """``lsl``: mirror the session over LSL; ``"auto"``: only while fewer than
        PHANTOM_LSL_MAX_SESSIONS sessions are (control's default for sessions created over REST)."""
        if lsl == "auto":
            return sum(1 for s in self.registry if s.lsl) < self.config.lsl_max_sessions
        return lsl is True

    def delete(self, code: str, why: str) -> Session:
        s = self.registry.get(code)
        self.forget(s, why)
        return s

    def forget(self, s: Session, why: str) -> None:
        self.registry.sessions.pop(s.code, None)
        s.published = False
        s.gen += 1
        self.publish_event("deleted", s)
        self.dirty = True
        log.info("session %s deleted: %s", s.code, why)

    def touch(self, code: str) -> Session:
        """The session named by a command, brought up to date and marked as used."""
        s = self.registry.get(code)
        s.sync(time.monotonic())
        self.mark_accessed(s)
        return s

    def mark_accessed(self, s: Session) -> None:
        """Refresh ``last_accessed`` (saved with the next alive record, not a whole snapshot)."""
        s.last_accessed = self.touched[s.code] = time.time()

    def cleanup(self) -> list[str]:
        removed = []
        for s in self.registry.expired():
            self.forget(s, f"idle for more than {self.config.session_ttl_s:g} s (TTL)")
            removed.append(s.code)
        return removed
