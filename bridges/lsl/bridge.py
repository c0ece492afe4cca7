"""Follows the broker for the LSL bridge: which sessions are mirrored, when they are subscribed.

One thread owns everything here: the SUB socket, the broker client and every live outlet.
A deleted session's outlets are handed to the reaper thread, which alone destroys them: liblsl takes
about 25 ms to tear down one outlet, which would otherwise hold up every other session's packets.

Which sessions are mirrored: those whose ``lsl`` flag is on (docs/lsl.md), up to
``PHANTOM_LSL_MAX_SESSIONS``, first come, first served; a session past the bound waits, and takes
the slot of the next mirrored session to be deleted or switched off. Each mirrored session has its
four outlets, discoverable at once.

What the broker is asked to send: the SUB socket subscribes to ``events/session`` (lifecycle,
which counts for no session), and by name, ``session/<code>/``, to a mirrored session only while
one of its outlets has a consumer (pylsl ``have_consumers``, checked every CONSUMERS_S). Never to
the wildcard ``session/``: an unconsumed session costs the broker nothing. The subscription makes
the broker count the bridge as the session's subscriber, so a session recorded over LSL (by
LabRecorder, say) never expires on the TTL nor is evicted; when the last inlet goes, the bridge
unsubscribes and the session is idle again.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import zmq

from bridges.lsl.markers import TrialEvents
from bridges.lsl.streams import Clocks, SessionOutlets
from protocol import (CommandError, EVENTS_TOPIC, ErrorCode, KIND_META, KIND_PACKET, ProtocolError,
                      decode, session_topic, split_topic, validate_code)
from protocol.client import BrokerClient
from protocol.config import Config
from protocol.logs import ready_logger

log = logging.getLogger("bridges.lsl")
ready_log = ready_logger("bridges.lsl")

POLL_MS = 50             # how often the loop looks at the stop flag when no data arrives
CONSUMERS_S = 0.1        # how often the outlets are asked whether they have consumers
RECONCILE_S = 5.0        # how often the broker is pinged (a restart makes the bridge re-list)
RELIST_S = 60.0          # the full `list` regardless, in case an event was lost
MALFORMED = (ProtocolError, KeyError, TypeError, ValueError, AttributeError, IndexError)


class Stopped(Exception):
    """Stop was requested before the broker answered."""


class OutletReaper:
    """Destroys retired sessions' outlets on its own thread; the caller never touches them again."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[SessionOutlets] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="lsl-reaper", daemon=True)
        self._thread.start()

    def retire(self, outlets: SessionOutlets) -> None:
        self._queue.put(outlets)

    def _run(self) -> None:
        while True:
            outlets = self._queue.get()
            started = time.monotonic()
            outlets.close()
            log.debug("outlets of session %s destroyed in %.0f ms", outlets.code,
                      (time.monotonic() - started) * 1000)


class Bridge:
    """The broker's LSL-flagged sessions mirrored as LSL outlets, up to the configured bound."""

    def __init__(self, config: Config, ctx: zmq.Context):
        self.config = config
        self.ctx = ctx
        self.dataset: dict[str, Any] = {}
        self.trials = TrialEvents((), 1)
        self.clocks = Clocks()
        self.mirrored: dict[str, SessionOutlets] = {}
        self.waiting: dict[str, None] = {}      # past the bound; insertion order is queue order
        self.stopping = False
        self.reaper = OutletReaper()
        self.broker = BrokerClient(config.control_endpoint, config.control_timeout_ms, context=ctx)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        now = time.monotonic()
        self._next_consumers = now + CONSUMERS_S
        self._next_reconcile = now + RECONCILE_S
        # The first round lists: the events subscription may have become live only after the
        # start-up `list` (ZeroMQ connects in the background), missing an event in between.
        self._next_relist = now + RECONCILE_S
        self._broker_started: float | None = None     # monotonic estimate of the broker's start

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler: only sets a flag)."""
        self.stopping = True

    def start(self) -> None:
        """Subscribe to events, learn the dataset and the sessions, mirror them, log READY."""
        self.sub.connect(self.config.pub_endpoint)
        self.sub.setsockopt(zmq.SUBSCRIBE, EVENTS_TOPIC)
        # Subscribed before listing: a session created in between arrives as an event.
        self._restarted(self._ask("ping"))
        self.dataset = self._ask("dataset")
        self.trials = TrialEvents(self._ask("trials")["trials"], int(self.dataset["bin_size_ms"]))
        self._follow(self._ask("list")["sessions"])
        ready_log.info("READY lsl pub=%s control=%s max_sessions=%d", self.config.pub_endpoint,
                       self.config.control_endpoint, self.config.lsl_max_sessions)

    def run(self) -> None:
        while not self.stopping:
            if self.sub.poll(POLL_MS):
                self.handle(self.sub.recv_multipart())
            now = time.monotonic()
            if now >= self._next_consumers:
                self._next_consumers = now + CONSUMERS_S
                self.follow_consumers()
            if now >= self._next_reconcile:
                self.reconcile()

    def follow_consumers(self) -> None:
        """Subscribe to the sessions someone consumes over LSL, unsubscribe from the others."""
        for code, outlets in self.mirrored.items():
            consumed = outlets.consumed()
            if consumed == outlets.subscribed:
                continue
            option = zmq.SUBSCRIBE if consumed else zmq.UNSUBSCRIBE
            self.sub.setsockopt(option, session_topic(code))
            outlets.subscribed = consumed
            log.info("session %s %s", code, "has an LSL consumer: subscribed" if consumed
                     else "has no LSL consumer left: unsubscribed")

    def reconcile(self) -> None:
        """Mirror exactly the broker's LSL-flagged sessions. Events cover every change while both
        run; a broker restarted without some sessions (uptime went back) or a lost event is caught
        by a full `list`, after a restart or every RELIST_S. One attempt: a silent broker is asked
        next round."""
        now = time.monotonic()
        self._next_reconcile = now + RECONCILE_S
        try:
            restarted = self._restarted(self.broker.request(
                "ping", budget_ms=self.config.control_timeout_ms))
            if not restarted and now < self._next_relist:
                return
            sessions = self.broker.request("list", budget_ms=self.config.control_timeout_ms)["sessions"]
        except CommandError as exc:
            if exc.code is not ErrorCode.UNAVAILABLE:
                log.warning("reconcile: the broker refused: %s", exc)
            return
        except MALFORMED as exc:
            log.warning("reconcile: unusable reply from the broker: %s", exc)
            return
        self._next_relist = now + RELIST_S
        if restarted:
            self.clocks = Clocks()              # it may run on another host now
            for outlets in self.mirrored.values():
                outlets.clocks = self.clocks
        codes = self._follow(sessions)
        for code in [c for c in (*self.mirrored, *self.waiting) if c not in codes]:
            log.info("session %s is gone from the broker (no event seen): forgetting it", code)
            self._forget(code)

    def _restarted(self, pong: dict[str, Any]) -> bool:
        """Whether the broker started again since the last ping (its start time moved)."""
        started = time.monotonic() - float(pong["uptime_s"])
        before, self._broker_started = self._broker_started, started
        return before is not None and abs(started - before) > 1.0

    def _follow(self, sessions: list[dict[str, Any]]) -> set[str]:
        """Adopt the LSL-flagged sessions of a `list`, forget the others; the codes listed."""
        codes = set()
        for session in sessions:
            codes.add(validate_code(session["code"]))
            self._on_session(session)
        return codes

    def close(self) -> None:
        """Close the sockets. The outlets end with the process (see __main__), not one by one."""
        self.sub.close()
        self.broker.close()
        log.info("LSL bridge stopped: sockets closed, the outlets of %d sessions end with the process",
                 len(self.mirrored))

    def _ask(self, cmd: str) -> Any:
        """Ask the broker until it answers (logging the wait once); Stopped if stop comes first."""
        waited = False
        while not self.stopping:
            try:
                return self.broker.request(cmd)
            except CommandError as exc:
                if exc.code is not ErrorCode.UNAVAILABLE:
                    raise
                if not waited:
                    log.warning("broker at %s does not answer %r yet; retrying until it does",
                                self.config.control_endpoint, cmd)
                    waited = True
        raise Stopped

    def handle(self, frames: list[bytes]) -> None:
        """Route one data message; a malformed one is logged and skipped, never fatal."""
        topic = frames[0] if frames else b""
        try:
            if len(frames) != 2:
                raise ValueError(f"{len(frames)} frames instead of [topic, payload]")
            if topic == EVENTS_TOPIC:
                self._on_event(decode(frames[1]))
                return
            code, kind = split_topic(topic)
            outlets = self.mirrored.get(code)
            if outlets is None:
                return                          # unsubscribed meanwhile
            msg = decode(frames[1])
            if kind == KIND_PACKET:
                if not isinstance(msg, dict) or msg.get("type") != "data":
                    raise ValueError("not a data payload")
                outlets.push(msg["data"])
            elif kind == KIND_META:
                outlets.speed = _speed(msg)
        except MALFORMED as exc:
            log.warning("skipped a malformed message on %r: %s: %s", topic[:80],
                        type(exc).__name__, exc)
        except Exception:  # a bug of ours or liblsl's: report it and keep serving the others
            log.exception("failed to handle a message on %r", topic[:80])

    def _on_event(self, msg: Any) -> None:
        if not isinstance(msg, dict) or msg.get("type") != "session_event":
            raise ValueError("not a session_event payload")
        event, session = msg["event"], msg["session"]
        if event == "deleted":
            self._forget(validate_code(session["code"]))
        elif event in ("created", "changed"):
            self._on_session(session)
        elif event == "perturbation":
            pass        # its markers go out with the packet itself (streams.SessionOutlets.push)
        else:
            raise ValueError(f"unknown session event {event!r}")

    def _on_session(self, session: dict[str, Any]) -> None:
        """Mirror the session if its ``lsl`` flag is on, stop mirroring it if it is off."""
        code = validate_code(session["code"])
        if session.get("lsl") is True:
            outlets = self._adopt(code, float(session.get("speed") or 1.0))
            if outlets is not None:
                outlets.speed = float(session.get("speed") or outlets.speed)
        else:
            self._forget(code)

    def _adopt(self, code: str, speed: float) -> SessionOutlets | None:
        """The session's outlets, created now if there is room; None if it has to wait."""
        outlets = self.mirrored.get(code)
        if outlets is not None:
            return outlets
        if len(self.mirrored) >= self.config.lsl_max_sessions:
            if code not in self.waiting:
                if not self.waiting:
                    log.warning("LSL bound reached (PHANTOM_LSL_MAX_SESSIONS=%d): session %s and "
                                "later ones are not mirrored until a mirrored session is deleted",
                                self.config.lsl_max_sessions, code)
                self.waiting[code] = None
                log.debug("session %s waits for an LSL slot", code)
            return None
        try:
            outlets = SessionOutlets(code, self.config, self.dataset, self.trials, self.clocks, speed)
        except Exception as exc:  # liblsl out of sockets or threads: park it rather than retry
            log.error("could not create the LSL outlets of session %s (%s: %s); it waits for a slot",
                      code, type(exc).__name__, exc)
            self.waiting[code] = None
            return None
        self.waiting.pop(code, None)
        self.mirrored[code] = outlets
        log.info("mirroring session %s as %s-{Neural,Kinematics,Intention,Markers}-%s (%d of %d)",
                 code, self.config.lsl_stream_name, code, len(self.mirrored),
                 self.config.lsl_max_sessions)
        return outlets

    def _forget(self, code: str) -> None:
        self.waiting.pop(code, None)
        outlets = self.mirrored.pop(code, None)
        if outlets is None:
            return
        if outlets.subscribed:
            self.sub.setsockopt(zmq.UNSUBSCRIBE, session_topic(code))
        self.reaper.retire(outlets)
        log.info("session %s no longer mirrored (deleted or lsl off): its LSL outlets are being "
                 "destroyed (%d packets pushed)", code, outlets.pushed)
        if self.waiting:
            self._adopt(next(iter(self.waiting)), 1.0)


def _speed(msg: Any) -> float:
    """The playback speed in a `metadata` payload."""
    if not isinstance(msg, dict) or msg.get("type") != "metadata":
        raise ValueError("not a metadata payload")
    speed = msg["data"]["session"]["speed"]
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0:
        raise ValueError(f"speed must be a positive number, got {speed!r}")
    return float(speed)
