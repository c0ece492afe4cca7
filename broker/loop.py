"""The poll loop: one thread, one wait over the data, command and feedback sockets and the
deadline heap.

Each turn: publish every packet that is due (bounded per turn so commands stay responsive), then
wait for the earliest of the next deadline, a socket event or housekeeping, in one ``select`` on
the sockets' ZMQ_FD descriptors with a microsecond timeout (Loop._wait): a turn costs one
wake-up, a message arriving during the wait is served at once, and nothing busy-spins. The
sockets are used from this thread only.

Frames handled here (protocol/ defines their bytes):
- XPUB in: subscription frames, handed to broker.subscriptions;
- XPUB out: ``[session/<code>/packet, data]`` (meta and events are sent by broker.lifecycle);
- REP: one request frame in, one reply frame out (built by the ``serve`` callable; a reply over
  every session is built a slice per turn between packets, see broker.replies);
- ROUTER (feedback): ``[identity, (empty,) prediction]`` in, ``[identity, (empty,) error]`` out
  for bad predictions only; PULL (feedback push): ``[prediction]`` in (broker.feedback).
"""
from __future__ import annotations

import logging
import math
import select
import time
from typing import Callable

import zmq

from broker.delivery import Delivery
from broker.feedback import Feedback
from broker.lifecycle import Sessions
from broker.persistence import Persistence
from broker.scheduling import HEAVY_PPS, Scheduling
from broker.replies import Incremental
from broker.session import PLAYING, Session
from broker.subscriptions import Subscriptions
from broker.wallclock import WallClock
from protocol.commands import ErrorCode, encode_error
from protocol.curve import ServerKeys
from protocol.wire import MAX_SUBSCRIPTION_FRAME, encode

log = logging.getLogger("broker")

MAX_MESSAGE_BYTES = 16 << 20  # larger frames drop the connection; up to here they get an error reply
FIRE_BUDGET = 2000            # packets per loop turn before serving sockets again
SOCKET_BUDGET = 500           # socket messages per loop turn
LONG_WAIT_S = 0.003           # a wait longer than this ends in two parts (Loop._wait) ...
WARM_UP_S = 0.0003            # ... the second this long
MAX_SELECT_FD = 1024          # select()'s FD_SETSIZE; the loop's sockets are made first, far below
HOUSEKEEPING_S = 1.0
MAX_PREDICTION_FRAME = 64 * 1024  # larger frames on the feedback sockets drop the connection
REPLY_SLICE_S = 0.0003        # longest stretch of building a reply over every session
REPLY_MARGIN_S = 0.00005      # a reply's piece ends this long before the next send (one piece's cost)
CLOCK_STEP_EXACT = 10_000     # skipped ticks a drifting clock is stepped through one by one
RATE_WINDOW_S = 0.1           # the packet rate that decides batching is measured over this long
PREPARE_GUARD_S = 0.00005     # preparing packets ahead stops this long before the next deadline
PREPARE_SLICE_S = 0.001       # longest stretch of preparing before the sockets are served


def peer_address(msg: zmq.Frame) -> str | None:
    """The subscriber's IP address (libzmq's Peer-Address); None for the unsubscriptions libzmq
    generates itself when a subscriber disconnects (they carry no metadata)."""
    try:
        return msg.get("Peer-Address")
    except (zmq.ZMQError, KeyError):
        return None


def source_fd(msg: zmq.Frame) -> int | None:
    """The descriptor of the connection a frame came from (ZMQ_SRCFD, in libzmq's metadata);
    None for the unsubscriptions libzmq generates itself when a subscriber disconnects."""
    try:
        return msg.get(zmq.SRCFD)
    except zmq.ZMQError:
        return None


class Loop:
    """Owns both sockets; fires due packets and dispatches socket messages."""

    def __init__(self, sessions: Sessions, subscriptions: Subscriptions, persistence: Persistence,
                 serve: Callable[[list[bytes]], bytes], context: zmq.Context | None = None,
                 feedback: Feedback | None = None):
        self.sessions = sessions
        self.feedback = feedback or Feedback(sessions)
        self.subscriptions = subscriptions
        self.persistence = persistence
        self.serve = serve
        self.deadlines = sessions.deadlines
        self.encoder = sessions.encoder
        self.recording = sessions.recording
        self.late_skip = sessions.config.late_skip_ms / 1000.0
        self.batch_s = sessions.config.send_batch_us / 1e6
        self.batching = False                 # True while the packet rate is above HEAVY_PPS
        # one CPU above HEAVY_PPS; a saturated real-time loop back to nice (broker.scheduling)
        self.scheduling = Scheduling(sessions.config.broker_priority, sessions.config.broker_cpu)
        self._fired = 0                       # packets fired in the current rate window
        self._rate_window_end = time.monotonic() + RATE_WINDOW_S
        self.peer_timeout_s = sessions.config.peer_timeout_s
        self.context = context or zmq.Context.instance()
        self.pub: zmq.Socket | None = None
        self.rep: zmq.Socket | None = None
        self.router: zmq.Socket | None = None
        self.pull: zmq.Socket | None = None
        self.wall = WallClock()               # Unix stamps of monotonic instants (broker.wallclock)
        self.delivery = Delivery(lambda s: sessions.registry.sessions.get(s.code) is s, self.wall)
        self.stopping = False
        self.pending_reply: Incremental | None = None
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_S

    # -- sockets ----------------------------------------------------------------------------------
    def bind(self, pub_endpoint: str, control_endpoint: str,
             curve_keys: ServerKeys | None = None) -> tuple[str, str]:
        """Bind both sockets (CURVE servers with ``curve_keys``); returns the real endpoints.
        zmq.ZMQError if an endpoint is taken."""
        pub = self.context.socket(zmq.XPUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.XPUB_VERBOSER, 1)
        # No topic needs more than 79 bytes; a longer frame drops its connection before libzmq
        # stores it as a prefix (libzmq keeps every prefix a subscriber sends).
        pub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_FRAME)
        # Per subscriber (PHANTOM_PUB_QUEUE_PACKETS, default 20,000: a whole replay's burst fits,
        # about 12 MB); a subscriber that stops reading costs the broker up to that much memory.
        pub.setsockopt(zmq.SNDHWM, self.sessions.config.pub_queue_packets)
        # XPUB_VERBOSER: every subscribe and unsubscribe with its connection's descriptor, and
        # one unsubscribe per prefix of a connection that ends (broker.subscriptions); heartbeats
        # and TCP keepalive drop peers that went silent without closing (half-open connections)
        timeout_ms = max(1, int(self.peer_timeout_s * 1000))
        pub.setsockopt(zmq.HEARTBEAT_IVL, max(1, timeout_ms // 4))
        pub.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
        pub.setsockopt(zmq.HEARTBEAT_TTL, timeout_ms)
        pub.setsockopt(zmq.TCP_KEEPALIVE, 1)
        pub.setsockopt(zmq.TCP_KEEPALIVE_IDLE, max(1, int(self.peer_timeout_s)))
        pub.setsockopt(zmq.TCP_KEEPALIVE_INTVL, max(1, int(self.peer_timeout_s) // 4))
        rep = self.context.socket(zmq.REP)
        rep.setsockopt(zmq.LINGER, 0)
        rep.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.pub, self.rep = pub, rep
        self.sessions.pub = pub
        self.delivery.pub = pub
        for sock in (pub, rep) if curve_keys is not None else ():
            curve_keys.apply(sock)
        pub.bind(pub_endpoint)
        rep.bind(control_endpoint)
        self.subscriptions.listening(pub.getsockopt(zmq.LAST_ENDPOINT).decode())
        return (pub.getsockopt(zmq.LAST_ENDPOINT).decode(),
                rep.getsockopt(zmq.LAST_ENDPOINT).decode())

    def bind_feedback(self, router_endpoint: str, pull_endpoint: str,
                      curve_keys: ServerKeys | None = None) -> tuple[str, str]:
        """Bind the prediction sockets (CURVE servers with ``curve_keys``); returns the real
        endpoints. zmq.ZMQError if taken."""
        router = self.context.socket(zmq.ROUTER)
        pull = self.context.socket(zmq.PULL)
        for sock in (router, pull):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_PREDICTION_FRAME)
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)     # replies to vanished peers are dropped
        self.router, self.pull = router, pull
        for sock in (router, pull) if curve_keys is not None else ():
            curve_keys.apply(sock)
        router.bind(router_endpoint)
        pull.bind(pull_endpoint)
        return (router.getsockopt(zmq.LAST_ENDPOINT).decode(),
                pull.getsockopt(zmq.LAST_ENDPOINT).decode())

    def close(self) -> None:
        for sock in (self.pub, self.rep, self.router, self.pull):
            if sock is not None:
                sock.close(linger=0)
        self.pub = self.rep = self.router = self.pull = None

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        watched = [sock for sock in (self.rep, self.pub, self.router, self.pull) if sock is not None]
        fds = [sock.getsockopt(zmq.FD) for sock in watched]
        if max(fds) >= MAX_SELECT_FD:
            raise RuntimeError(f"a socket's ZMQ_FD is {max(fds)}, beyond select()'s limit "
                               f"{MAX_SELECT_FD}: create the broker's sockets first")
        poller = zmq.Poller()                  # readiness checks: one zmq_poll call for all
        for sock in watched:
            poller.register(sock, zmq.POLLIN)
        deadlines, persistence, delivery = self.deadlines, self.persistence, self.delivery
        preparer, feedback = self.sessions.preparer, self.feedback
        self.scheduling.started()
        rep, pub, router, pull = self.rep, self.pub, self.router, self.pull
        while not self.stopping:
            turn = time.monotonic()
            self._fire_due()
            if feedback.pending:               # answers that released the bins just sent
                feedback.score_pending()
            now = time.monotonic()
            # Batching: under heavy load the next packets wait until `batch_s` after this turn's,
            # so that several go out per wake-up (each lone send costs a wake-up of this thread
            # and of libzmq's I/O thread); a packet is then at most `batch_s` late on that count.
            earliest = turn + self.batch_s if self.batching else 0.0
            due = min(max(deadlines.next_deadline(), earliest), max(delivery.next_due(), earliest))
            more = False
            if preparer.queue:                 # perturbed packets, before they are due
                more = preparer.work(due - PREPARE_GUARD_S, now + PREPARE_SLICE_S)
                now = time.monotonic()
            wake = min(due, self._next_housekeeping, now + 0.1)
            if persistence.busy or self.pending_reply is not None or more:
                wake = now                     # keep turning until the snapshot/reply is complete
            ready = self._wait(poller, fds, wake)
            if ready:
                if rep in ready:
                    self._serve_requests()
                if pub in ready:
                    self._serve_subscriptions()
                if router in ready or pull in ready:
                    self._serve_feedback(ready)
            if self.pending_reply is not None:
                feedback.score_pending()        # a reply in the making counts every answer
                next_send = max(min(deadlines.next_deadline(), delivery.next_due()), earliest)
                self._advance_reply(next_send)  # the time before the next send builds the reply
            now = time.monotonic()
            if now >= self._rate_window_end:
                self._measure_rate(now)
            if now >= self._next_housekeeping:
                self._housekeeping(now)
            persistence.on_turn(now)

    @staticmethod
    def _wait(poller: zmq.Poller, fds: list[int], until: float) -> list[zmq.Socket]:
        """The sockets with a message waiting, after waiting for one until monotonic ``until`` at
        most: one ``select`` on their ZMQ_FD descriptors, whose timeout has microsecond
        resolution (zmq_poll's has whole milliseconds), so a turn costs one wake-up of this thread;
        a wait longer than LONG_WAIT_S is split, its last WARM_UP_S waited after a wake-up.

        ZMQ_FD signals only changes, so the sockets are checked first with a zero-timeout
        ``zmq_poll``, which reads each one's ZMQ_EVENTS (re-arming its descriptor) in one call: a
        message that arrived before the check is seen by it, one arriving after it wakes
        ``select``. A descriptor that woke ``select`` without a message (libzmq's own commands) is
        re-armed by the second check, so the next turn waits again: no busy spin."""
        ready = [sock for sock, _ in poller.poll(0)]
        if ready:
            return ready
        timeout = until - time.monotonic()
        if timeout > LONG_WAIT_S:
            # A CPU idle for milliseconds sinks into a deep idle state (a VM's vCPU halts) and wakes
            # from it hundreds of µs late; woken WARM_UP_S early, the rest is a short wait, which
            # ends within tens of µs (docs/broker.md, "The loop and the timing model").
            if select.select(fds, (), (), timeout - WARM_UP_S)[0]:
                return [sock for sock, _ in poller.poll(0)]
            ready = [sock for sock, _ in poller.poll(0)]
            if ready:
                return ready
            timeout = until - time.monotonic()
        if timeout <= 0 or not select.select(fds, (), (), timeout)[0]:
            return ready
        return [sock for sock, _ in poller.poll(0)]

    def _measure_rate(self, now: float) -> None:
        """Batching on, and the threads on one CPU (broker.placement), while the last window's
        packet rate is above HEAVY_PPS."""
        elapsed = now - self._rate_window_end + RATE_WINDOW_S
        pps = self._fired / elapsed
        heavy = pps > HEAVY_PPS
        batching = self.batch_s > 0 and heavy
        if batching != self.batching:
            log.info("send batching %s: %d packets/s %s %d", "on" if batching else "off",
                     pps, ">" if batching else "<=", HEAVY_PPS)
        self.batching = self.sessions.send_batching = batching
        self.scheduling.rate(heavy, pps)
        self._fired = 0
        self._rate_window_end = now + RATE_WINDOW_S

    def _housekeeping(self, now: float) -> None:
        self._next_housekeeping = now + HOUSEKEEPING_S
        self.wall.refresh()
        self.scheduling.housekeeping(now)
        self.sessions.process.sample()
        self.sessions.cleanup()
        self.persistence.on_housekeeping(now)

    def _serve_requests(self) -> None:
        for _ in range(SOCKET_BUDGET):
            if self.pending_reply is not None:
                return                      # REP: the next request waits for this reply
            try:
                frames = self.rep.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            reply = self.serve(frames)
            if isinstance(reply, Incremental):
                self.pending_reply = reply     # advanced at the end of this and the next turns
            else:
                self.rep.send(reply)

    def _advance_reply(self, next_send: float) -> None:
        """Build more of the pending reply until just before the next packet is to go out
        (``next_send``: the next deadline or held packet, or the end of the batching wait; at most
        REPLY_SLICE_S, at least one piece); send it once complete."""
        now = time.monotonic()
        until = min(now + REPLY_SLICE_S, next_send - REPLY_MARGIN_S)
        try:
            done = self.pending_reply.advance(until)
        except Exception as exc:   # a bug: report it, keep serving
            log.exception("internal error building a reply")
            done = encode_error(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"[:500])
        if done is not None:
            self.pending_reply = None
            self.rep.send(done)

    def _serve_subscriptions(self) -> None:
        subscriptions = self.subscriptions
        for _ in range(SOCKET_BUDGET):
            try:
                msg = self.pub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            frame = msg.bytes
            try:
                subscriptions.on_frame(frame, peer_address(msg), source_fd(msg))
            except Exception:
                log.exception("internal error handling subscription %r", frame[:80])
        try:
            subscriptions.flush()              # connections that ended in this batch
        except Exception:
            log.exception("internal error releasing ended subscribers")

    def _serve_feedback(self, ready: list[zmq.Socket]) -> None:
        """Predictions until both sockets are drained or a packet falls due (it goes first)."""
        deadlines = self.deadlines
        for sock in (self.router, self.pull):
            if sock not in ready:
                continue
            for _ in range(SOCKET_BUDGET):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_prediction(sock, frames)
                if deadlines.due(time.monotonic()):
                    return

    def _on_prediction(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        """One prediction; a bad one from a DEALER is answered with the same envelope."""
        try:
            reply = self.feedback.on_message(frames[-1])
        except Exception:
            log.exception("internal error handling a prediction")
            return
        if reply is not None and sock is self.router and len(frames) >= 2:
            sock.send_multipart([*frames[:-1], encode(reply)])

    # -- packets ----------------------------------------------------------------------------------
    def _fire_due(self) -> None:
        deadlines, delivery = self.deadlines, self.delivery
        heap, held = deadlines.heap, delivery.held     # read directly: this runs per packet
        monotonic = time.monotonic
        now = monotonic()
        for _ in range(FIRE_BUDGET):
            if held and held[0][0] <= now and held[0][0] <= deadlines.next_deadline():
                delivery.flush_one()           # held packets and ticks go in time order
                continue
            if not heap or heap[0][0] > now:
                return
            session = deadlines.pop()
            if session is None:
                pass
            elif not session.published:
                self.sessions.on_unwatched_due(session, now)
            elif session.state == PLAYING:
                self._fire(session, now)
            now = monotonic()

    def _fire(self, s: Session, now: float) -> None:
        """Play tick ``s.next_tick``: send it, or skip every tick that is too late to be useful."""
        tick = s.next_tick
        size = s.playlist.size
        deadline = s.deadline(tick)
        if now - deadline > self.late_skip:
            self._skip_late(s, tick, now)
            return
        raw = s.anchor_pos + tick - s.anchor_tick
        if raw >= size:
            if not s.loop:
                self.sessions.end(s)
                return
            raw %= size
        packet_id = s.playlist.packet_id(raw)
        if s.lockstep_waiting:                 # a lock-step bin nobody answered in time
            s.evaluation.lockstep_timeouts += 1
        began = time.monotonic()
        self._fired += 1
        sent = self._send(s, tick, packet_id, deadline, began)
        s.evaluation.record(tick, packet_id, sent)
        s.next_tick = tick + 1
        if s.perturber is not None:
            self.sessions.preparer.played(s)   # top up its packets prepared ahead when low
        if not s.loop and raw + 1 >= size:
            self.sessions.end(s)
            return
        if s.lockstep:
            s.hold(sent)
        self.deadlines.push(s)

    def _send(self, s: Session, tick: int, packet_id: int, deadline: float, began: float) -> float:
        """Build tick ``tick``'s packet (perturbed if the session says so) and hand it on (a
        transport fault may hold or lose it); the monotonic time it was stamped with."""
        engine, spikes, active, plan = s.perturber, None, (), None
        if engine is not None:
            prepared = s.ahead.take(engine, packet_id) if s.ahead is not None else None
            if prepared is not None:           # made in idle time by this engine (broker.prepare)
                active, spikes = prepared
                s.metrics.computed_ahead += 1
            else:
                active = engine.active(packet_id)
                counts = engine.counts(packet_id, self.recording.counts[packet_id])
                if counts is not None:
                    spikes = self.encoder.spikes_fragment(counts)
                s.metrics.computed_at_deadline += 1
        if active != s.last_active:
            self.sessions.announce_perturbations(s, active, packet_id, tick,
                                                 self.wall.unix(deadline))
        if engine is not None:
            if engine.faults is not None:
                plan = engine.faults.plan(tick, packet_id, s.interval)
                s.anchor_mono += engine.faults.clock_step(packet_id, s.interval)
        sent, offset = time.monotonic(), self.wall.offset
        payload = self.encoder.packet(s.prefix, packet_id, tick, spikes, deadline + offset,
                                      sent + offset, deadline, s.withhold_labels, active)
        if plan is None or plan.lost is None:
            self.delivery.send(s, payload, plan, deadline, time.monotonic() - began)
        return sent

    @staticmethod
    def _clock_steps(s: Session, faults, first: int, end: int) -> float:
        """How far a drifting clock moves the deadlines over ticks ``first..end-1`` that were
        skipped as late: a sender's clock drifts whether or not each tick went out. Exact tick by
        tick up to CLOCK_STEP_EXACT ticks; past that (a long stall), the level at the middle."""
        last = s.playlist.packet_id(s.playlist.size - 1)

        def packet(tick: int) -> int:         # past the end without loop: the last packet's level
            packet_id = s.packet_of(tick)
            return last if packet_id is None else packet_id

        if end - first <= CLOCK_STEP_EXACT:
            return sum(faults.clock_step(packet(t), s.interval) for t in range(first, end))
        return faults.clock_step(packet((first + end) // 2), s.interval * (end - first))

    def _skip_late(self, s: Session, tick: int, now: float) -> None:
        """Skip (and count) every tick of ``s`` too late to send; O(1) after any stall."""
        size = s.playlist.size
        # the first tick whose bin closed at most late_skip ago: deadline(k) >= now - late_skip
        first_ok = s.anchor_tick + math.ceil((now - self.late_skip - s.anchor_mono) / s.interval) - 1
        first_ok = max(first_ok, tick + 1)
        if not s.loop:
            first_ok = min(first_ok, s.anchor_tick + max(0, size - s.anchor_pos))
        s.metrics.skipped += first_ok - tick
        engine = s.perturber
        if engine is not None and engine.faults is not None and engine.faults.clocks:
            s.anchor_mono += self._clock_steps(s, engine.faults, tick, first_ok)
        s.next_tick = first_ok
        if not s.loop and s.raw_position(first_ok) >= size:
            self.sessions.end(s)
        else:
            self.deadlines.push(s)
