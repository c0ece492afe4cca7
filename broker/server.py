"""The broker loop: one thread, one zmq poll over the XPUB data and REP command sockets, and a
heap of session deadlines.

Each turn of the loop: publish every packet that is due (bounded per turn so commands stay
responsive), then wait for the earliest of the next deadline, a socket event or housekeeping.
zmq's poll timeout is whole milliseconds, so the loop polls for the whole milliseconds (minus a
margin for the kernel's wake-up slack) and sleeps the sub-millisecond rest: no busy spin.

Frames handled here (protocol/ defines their bytes):
- XPUB in:  ``b"\\x01" + prefix`` (subscribe) / ``b"\\x00" + prefix`` (unsubscribe), one per
  subscription change thanks to XPUB_VERBOSER;
- XPUB out: ``[session/<code>/packet, data]``, ``[session/<code>/meta, metadata]``,
  ``[events/session, session_event]``;
- REP: one request frame in, one reply frame out.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from typing import Any

import zmq

from broker import state as state_file
from broker.frames import PacketEncoder
from broker.metrics import ProcessMetrics
from broker.handlers import HANDLERS
from broker.noise import from_saved, parse_noise
from broker.recording import Recording
from broker.registry import Registry
from broker.session import ENDED, PAUSED, PLAYING, Playlist, Session, check_speed
from protocol.commands import CommandError, ErrorCode, encode_error, encode_ok, parse_request
from protocol.config import Config
from protocol.wire import EVENTS_TOPIC, PROTOCOL_VERSION, SESSION_PREFIX, encode, session_of_subscription

log = logging.getLogger("broker")

PUB_SNDHWM = 20_000          # per subscriber; a whole replay's burst fits (about 12 MB at most)
MAX_MESSAGE_BYTES = 16 << 20  # larger frames drop the connection; up to here they get an error reply
FIRE_BUDGET = 2000            # packets per loop turn before serving sockets again
SOCKET_BUDGET = 500           # socket messages per loop turn
POLL_MARGIN_S = 0.0003        # epoll may wake this late; the precise sleep covers the rest
HOUSEKEEPING_S = 1.0
SAVE_COALESCE_S = 0.2         # a change is saved within this long
SAVE_PERIOD_S = 2.0           # positions of playing sessions are saved this often
SNAPSHOT_CHUNK = 50           # sessions serialised per loop turn (about 0.2 ms), between packets


def is_wildcard(prefix: bytes) -> bool:
    """A subscription matching many sessions' topics without naming one (``""``, ``session/``)."""
    if SESSION_PREFIX.startswith(prefix):
        return True
    # ``session/ab`` (no slash after the code yet) matches every session whose code starts so
    return prefix.startswith(SESSION_PREFIX) and b"/" not in prefix[len(SESSION_PREFIX):]


def _restored_fields(saved: dict[str, Any], playlist: Playlist) -> dict[str, Any]:
    """Session constructor arguments from a state-file entry (clamped to this recording)."""
    current = min(max(0, int(saved.get("current_packet", 0))), playlist.total - 1)
    return dict(created_at=float(saved.get("created_at", time.time())),
                next_tick=max(0, int(saved.get("sequence_number", 0))),
                position=playlist.position_of(current),
                ended=saved.get("state") == ENDED,
                sent=int(saved.get("packets_sent", 0)),
                skipped=int(saved.get("packets_skipped", 0)))


class Broker:
    """Owns the recording, every session, and both sockets (all used from the loop thread only)."""

    def __init__(self, config: Config, recording: Recording, context: zmq.Context | None = None):
        self.config = config
        self.recording = recording
        self.encoder = PacketEncoder(recording)
        self.registry = Registry(recording, config.max_sessions, config.session_ttl_s)
        self.late_skip = config.late_skip_ms / 1000.0
        self.state_path = state_file.state_path(config.state_path)
        self.process = ProcessMetrics()
        self.dataset_meta = self._dataset_meta()
        self.context = context or zmq.Context.instance()
        self.pub: zmq.Socket | None = None
        self.rep: zmq.Socket | None = None
        self.heap: list[tuple[float, int, int, Session]] = []
        self._counter = itertools.count()
        self.wall_offset = time.time() - time.monotonic()
        self.stopping = False
        self.dirty = False
        self._last_save = 0.0
        self.writer: state_file.StateWriter | None = None
        self._snapshot_job: tuple[Any, list[str]] | None = None
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_S

    # -- set-up -----------------------------------------------------------------------------------
    def _dataset_meta(self) -> dict[str, Any]:
        rec = self.recording
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
        }

    def recording_bytes(self) -> int:
        """Bytes of the shared binned arrays and the pre-encoded packet fragments."""
        rec = self.recording
        arrays = sum(a.nbytes for a in (rec.counts, rec.observed, rec.trial_index, rec.trial_time_ms,
                                         rec.cursor, rec.velocity, rec.target_id, rec.target_pos,
                                         rec.distance))
        return arrays + sum(map(len, self.encoder.static)) + sum(map(len, self.encoder.spikes))

    def bind(self) -> tuple[str, str]:
        """Bind both sockets; returns the real endpoints. zmq.ZMQError if an endpoint is taken."""
        pub = self.context.socket(zmq.XPUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.XPUB_VERBOSER, 1)
        pub.setsockopt(zmq.SNDHWM, PUB_SNDHWM)
        rep = self.context.socket(zmq.REP)
        rep.setsockopt(zmq.LINGER, 0)
        rep.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.pub, self.rep = pub, rep
        pub.bind(self.config.pub_endpoint)
        rep.bind(self.config.control_endpoint)
        return (pub.getsockopt(zmq.LAST_ENDPOINT).decode(),
                rep.getsockopt(zmq.LAST_ENDPOINT).decode())

    def close(self) -> None:
        for sock in (self.pub, self.rep):
            if sock is not None:
                sock.close(linger=0)
        self.pub = self.rep = None

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.rep, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        while not self.stopping:
            self._fire_due()
            now = time.monotonic()
            wake = min(self._next_deadline(), self._next_housekeeping, now + 0.1)
            if self._snapshot_job is not None:
                wake = now                     # keep turning until the snapshot is complete
            wait_ms = int((wake - now - POLL_MARGIN_S) * 1000)
            events = dict(poller.poll(max(0, wait_ms)))
            if self.rep in events:
                self._serve_requests()
            if self.pub in events:
                self._serve_subscriptions()
            if not events:
                rest = self._next_deadline() - time.monotonic()
                if 0 < rest <= 0.002:
                    time.sleep(rest)
            now = time.monotonic()
            if now >= self._next_housekeeping:
                self._housekeeping(now)
            if self._snapshot_job is not None:
                self._advance_snapshot()
            elif self.dirty and now - self._last_save >= SAVE_COALESCE_S:
                self.save_state()

    def _next_deadline(self) -> float:
        heap = self.heap
        while heap and heap[0][2] != heap[0][3].gen:
            heapq.heappop(heap)        # stale: the session was re-anchored, paused or unpublished
        return heap[0][0] if heap else math.inf

    def _fire_due(self) -> None:
        heap = self.heap
        now = time.monotonic()
        for _ in range(FIRE_BUDGET):
            if not heap or heap[0][0] > now:
                return
            _, _, gen, session = heapq.heappop(heap)
            if gen == session.gen and session.state == PLAYING and session.published:
                self._fire(session, now)
            now = time.monotonic()

    def _push(self, session: Session) -> None:
        heapq.heappush(self.heap, (session.deadline(session.next_tick), next(self._counter),
                                   session.gen, session))

    def _fire(self, s: Session, now: float) -> None:
        """Play tick ``s.next_tick``: send it, or skip every tick that is too late to be useful."""
        tick = s.next_tick
        size = s.playlist.size
        deadline = s.anchor_mono + (tick - s.anchor_tick) * s.interval
        if now - deadline > self.late_skip:
            first_ok = s.anchor_tick + math.ceil((now - self.late_skip - s.anchor_mono) / s.interval)
            first_ok = max(first_ok, tick + 1)
            if not s.loop:
                first_ok = min(first_ok, s.anchor_tick + max(0, size - s.anchor_pos))
            s.metrics.skipped += first_ok - tick
            s.next_tick = first_ok
            if not s.loop and s.raw_position(first_ok) >= size:
                self._end(s)
            else:
                self._push(s)
            return
        raw = s.anchor_pos + tick - s.anchor_tick
        if raw >= size:
            if not s.loop:
                self._end(s)
                return
            raw %= size
        packet_id = s.playlist.packet_id(raw)
        began = time.monotonic()
        spikes = None
        if s.noise is not None and s.noise.active:
            counts = s.noise.apply(self.recording.counts[packet_id], packet_id, s.bin_s)
            spikes = self.encoder.spikes_fragment(counts)
        sent = time.monotonic()
        payload = self.encoder.packet(s.prefix, packet_id, tick, spikes,
                                      self.wall_offset + deadline, self.wall_offset + sent)
        self.pub.send(s.topic_packet, zmq.SNDMORE)
        self.pub.send(payload)
        s.metrics.record(sent - deadline, time.monotonic() - began)
        s.next_tick = tick + 1
        if not s.loop and raw + 1 >= size:
            self._end(s)
        else:
            self._push(s)

    def _end(self, s: Session) -> None:
        s.state = ENDED
        s.gen += 1
        log.info("session %s reached the end (loop off)", s.code)
        self.changed(s)

    # -- scheduling and announcements -------------------------------------------------------------
    def schedule(self, s: Session) -> None:
        """Drop any heap entry of ``s`` and push its next deadline if it should play now."""
        s.gen += 1
        if s.published and s.state == PLAYING and s.code in self.registry.sessions:
            self._push(s)

    def refresh_publishing(self, s: Session, now: float) -> None:
        want = self.registry.should_publish(s)
        if want == s.published:
            return
        if want:
            s.sync(now)
        s.published = want
        self.schedule(s)

    def view(self, s: Session) -> dict[str, Any]:
        s.sync(time.monotonic())
        return s.to_dict(self.recording.n_bins)

    def publish_meta(self, s: Session) -> None:
        if not s.published:
            return
        data = dict(self.dataset_meta, session=self.view(s))
        self.pub.send_multipart([s.topic_meta, encode(
            {"v": PROTOCOL_VERSION, "type": "metadata", "session": s.code, "data": data})])

    def publish_event(self, event: str, s: Session) -> None:
        self.pub.send_multipart([EVENTS_TOPIC, encode(
            {"v": PROTOCOL_VERSION, "type": "session_event", "event": event, "at": time.time(),
             "session": self.view(s)})])

    def changed(self, s: Session) -> None:
        """After any change of a session's state: reschedule, tell subscribers, save soon."""
        self.schedule(s)
        self.publish_meta(s)
        self.publish_event("changed", s)
        self.dirty = True

    # -- session lifecycle ------------------------------------------------------------------------
    def create_session(self, code: str | None = None, *, speed: float = 1.0, loop: bool = True,
                       paused: bool = False, filter: dict | None = None, noise: Any = None,
                       restored: dict[str, Any] | None = None) -> Session:
        """A new session (validated first, then room made by evicting an idle one if needed)."""
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
        settings = from_saved(noise) if restored is not None else parse_noise(noise)
        evicted = reg.make_room()
        if evicted is not None:
            self._forget(evicted, "evicted (least recently used idle session; limit reached)")
        extra = _restored_fields(restored, playlist) if restored is not None else {}
        s = Session(code, playlist, self.recording.bin_ms, ordinal=reg.next_ordinal(),
                    now=time.monotonic(), speed=speed, loop=loop, paused=paused, noise=settings,
                    **extra)
        if restored is not None:
            s.last_accessed = float(restored.get("last_accessed", s.last_accessed))
        s.prefix = self.encoder.session_prefix(code)
        reg.add(s)
        s.published = reg.should_publish(s)
        self.schedule(s)
        self.publish_event("created", s)
        self.publish_meta(s)
        self.dirty = True
        log.info("session %s created%s", code, " (restored)" if restored is not None else "")
        return s

    def delete_session(self, code: str, why: str) -> Session:
        s = self.registry.get(code)
        self._forget(s, why)
        return s

    def _forget(self, s: Session, why: str) -> None:
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
        s.last_accessed = time.time()
        return s

    def cleanup(self) -> list[str]:
        removed = []
        for s in self.registry.expired():
            self._forget(s, f"idle for more than {self.config.session_ttl_s:g} s (TTL)")
            removed.append(s.code)
        return removed

    # -- sockets ----------------------------------------------------------------------------------
    def _serve_requests(self) -> None:
        for _ in range(SOCKET_BUDGET):
            try:
                frames = self.rep.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.rep.send(self.handle_request(frames))

    def handle_request(self, frames: list[bytes]) -> bytes:
        """One reply for one request, whatever the request is; never raises."""
        name = "?"
        try:
            if len(frames) != 1:
                raise CommandError(ErrorCode.BAD_REQUEST,
                                   f"a request is one frame, got {len(frames)}")
            command, args = parse_request(frames[0])
            name = command.name
            return encode_ok(HANDLERS[name](self, args))
        except CommandError as exc:
            return encode_error(exc.code, exc.message)
        except Exception as exc:  # a bug: report it, keep serving
            log.exception("internal error in command %s", name)
            return encode_error(ErrorCode.INTERNAL, f"{name}: {type(exc).__name__}: {exc}"[:500])

    def _serve_subscriptions(self) -> None:
        for _ in range(SOCKET_BUDGET):
            try:
                frame = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.on_subscription(frame)
            except Exception:
                log.exception("internal error handling subscription %r", frame[:80])

    def on_subscription(self, frame: bytes) -> None:
        if not frame or frame[0] not in (0, 1):
            return
        delta = 1 if frame[0] == 1 else -1
        prefix = frame[1:]
        code = session_of_subscription(prefix)
        now = time.monotonic()
        if code is None:
            if is_wildcard(prefix):
                self._count_wildcard(delta, now)
            return
        reg = self.registry
        reg.count_subscription(code, delta)
        s = reg.sessions.get(code)
        if s is None and delta > 0:
            try:
                s = self.create_session(code)
            except CommandError as exc:
                log.warning("subscription to %s: cannot create the session: %s", code, exc)
                return
        if s is None:
            return
        s.last_accessed = time.time()
        self.refresh_publishing(s, now)
        if delta > 0:
            self.publish_meta(s)
        self.publish_event("changed", s)

    def _count_wildcard(self, delta: int, now: float) -> None:
        reg = self.registry
        before = reg.wildcards
        reg.wildcards = max(0, before + delta)
        if (before == 0) != (reg.wildcards == 0):
            for s in reg:
                self.refresh_publishing(s, now)
            log.info("wildcard subscribers: %d", reg.wildcards)

    # -- housekeeping and persistence -------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        self._next_housekeeping = now + HOUSEKEEPING_S
        self.process.sample()
        self.cleanup()
        if now - self._last_save >= SAVE_PERIOD_S and any(
                s.state == PLAYING for s in self.registry.sessions.values()):
            self.dirty = True

    def _snapshot(self) -> str:
        """Every session's saved state, serialised in one go (used at shutdown)."""
        now = time.monotonic()
        parts = []
        for s in self.registry.sessions.values():
            s.sync(now)
            parts.append(state_file.serialise_session(s.saved()))
        return state_file.assemble(parts, self._dataset_summary())

    def _dataset_summary(self) -> dict[str, Any]:
        return {"name": self.recording.name, "bins": self.recording.n_bins}

    def save_state(self) -> None:
        """Start a snapshot; the loop serialises it a chunk per turn, then the writer thread
        writes it. Changes made meanwhile mark the state dirty again, so they are saved next."""
        self._snapshot_job = (list(self.registry.sessions.values()), [])
        self.dirty = False
        self._last_save = time.monotonic()
        self._advance_snapshot()

    def _advance_snapshot(self) -> None:
        pending, parts = self._snapshot_job
        now = time.monotonic()
        live = self.registry.sessions
        for _ in range(min(SNAPSHOT_CHUNK, len(pending))):
            s = pending.pop()
            if live.get(s.code) is s:          # deleted meanwhile: not saved
                s.sync(now)
                parts.append(state_file.serialise_session(s.saved()))
        if not pending:
            if self.writer is None:
                self.writer = state_file.StateWriter(self.state_path)
            self.writer.submit(state_file.assemble(parts[::-1], self._dataset_summary()))
            self._snapshot_job = None

    def final_save(self) -> None:
        """At shutdown: write the last snapshot and wait for it."""
        if self.writer is None:
            self.writer = state_file.StateWriter(self.state_path)
        self.writer.close(self._snapshot())

    def restore_state(self) -> int:
        """Recreate the saved sessions (invalid entries are logged and skipped)."""
        saved = state_file.load(self.state_path)
        saved.sort(key=lambda d: d.get("last_accessed", 0) if isinstance(d.get("last_accessed"), (int, float)) else 0)
        restored = 0
        for entry in saved[-self.config.max_sessions:]:
            try:
                s = self.create_session(
                    entry.get("code"), speed=entry.get("speed", 1.0), loop=bool(entry.get("loop", True)),
                    paused=entry.get("state") == PAUSED, filter=entry.get("filter"),
                    noise=entry.get("noise"), restored=entry)
                restored += 1
                log.debug("restored %s at packet %d", s.code, s.current_packet())
            except (CommandError, TypeError, ValueError) as exc:
                log.warning("state file: skipping session %r: %s", str(entry.get("code"))[:64], exc)
        self.dirty = False
        return restored
