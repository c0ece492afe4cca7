"""Follows the broker for the LSL bridge: which sessions exist, which are mirrored, where packets go.

One thread owns everything here: the SUB socket, the short-lived REQ sockets and every live outlet.
A deleted session's outlets are handed to the reaper thread, which alone destroys them: liblsl takes
about 25 ms to tear down one outlet, which would otherwise hold up every other session's packets.

The SUB socket subscribes to ``events/session`` (lifecycle) and to the wildcard prefix ``session/``,
never to one session's topic: a per-session subscription would count as a subscriber, create
sessions and keep them from expiring, while the wildcard counts for no session yet makes the broker
publish every session's packets, which are routed here by topic.

Sessions are mirrored first come, first served, up to ``PHANTOM_LSL_MAX_SESSIONS``; a session past
the bound waits, and takes the slot of the next mirrored session to be deleted.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import zmq

from bridges.lsl.markers import TrialEvents
from bridges.lsl.streams import SessionOutlets
from protocol import (CommandError, EVENTS_TOPIC, KIND_PACKET, SESSION_PREFIX, ProtocolError,
                      decode, encode_request, parse_reply, split_topic, validate_code)
from protocol.config import Config
from protocol.logs import ready_logger

log = logging.getLogger("bridges.lsl")
ready_log = ready_logger("bridges.lsl")

POLL_MS = 200            # how often the loop looks at the stop flag when no data arrives
RECONCILE_S = 5.0        # how often the mirrored set is checked against the broker's `list`
MALFORMED = (ProtocolError, KeyError, TypeError, ValueError, AttributeError, IndexError)


class Stopped(Exception):
    """Stop was requested before the broker answered."""


def query(ctx: zmq.Context, endpoint: str, cmd: str, timeout_ms: int) -> Any:
    """One command on a fresh REQ socket (linger 0, so an unanswered request dies with it).

    Returns the result; raises TimeoutError if the broker is silent, CommandError if it refuses.
    """
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(encode_request(cmd))
        if not sock.poll(timeout_ms):
            raise TimeoutError(f"no answer to {cmd!r} within {timeout_ms} ms")
        return parse_reply(sock.recv())
    finally:
        sock.close()


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
    """The broker's sessions mirrored as LSL outlets, up to the configured bound."""

    def __init__(self, config: Config, ctx: zmq.Context):
        self.config = config
        self.ctx = ctx
        self.dataset: dict[str, Any] = {}
        self.trials = TrialEvents((), 1)
        self.mirrored: dict[str, SessionOutlets] = {}
        self.waiting: dict[str, None] = {}      # past the bound; insertion order is queue order
        self.stopping = False
        self.reaper = OutletReaper()
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self._next_reconcile = time.monotonic() + RECONCILE_S
        self._broker_uptime = 0.0

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler: only sets a flag)."""
        self.stopping = True

    def start(self) -> None:
        """Subscribe, learn the dataset and the existing sessions, mirror them, log READY."""
        self.sub.connect(self.config.pub_endpoint)
        self.sub.setsockopt(zmq.SUBSCRIBE, EVENTS_TOPIC)
        self.sub.setsockopt(zmq.SUBSCRIBE, SESSION_PREFIX)
        # Subscribed before listing: a session created in between arrives as an event or a packet.
        self.dataset = self._ask("dataset")
        self.trials = TrialEvents(self._ask("trials")["trials"], int(self.dataset["bin_size_ms"]))
        for session in self._ask("list")["sessions"]:
            self._adopt(validate_code(session["code"]))
        ready_log.info("READY lsl pub=%s control=%s max_sessions=%d", self.config.pub_endpoint,
                 self.config.control_endpoint, self.config.lsl_max_sessions)

    def run(self) -> None:
        while not self.stopping:
            if self.sub.poll(POLL_MS):
                self.handle(self.sub.recv_multipart())
            if time.monotonic() >= self._next_reconcile:
                self.reconcile()

    def reconcile(self) -> None:
        """Mirror exactly the broker's sessions. Events cover every change while both run; this
        catches what no event announced (a broker restarted without some sessions, events lost to
        a full queue). A cheap `ping` each round; the full `list` only when the session count
        differs from ours or the broker restarted. One attempt: a silent broker is asked next round."""
        self._next_reconcile = time.monotonic() + RECONCILE_S
        try:
            pong = self._query("ping")
            restarted = pong["uptime_s"] < self._broker_uptime
            self._broker_uptime = pong["uptime_s"]
            if not restarted and pong["sessions"] == len(self.mirrored) + len(self.waiting):
                return
            codes = {validate_code(s["code"]) for s in self._query("list")["sessions"]}
        except TimeoutError:
            return
        except (CommandError, *MALFORMED) as exc:
            log.warning("reconcile: unusable reply from the broker: %s", exc)
            return
        for code in [c for c in (*self.mirrored, *self.waiting) if c not in codes]:
            log.info("session %s is gone from the broker (no event seen): forgetting it", code)
            self._forget(code)
        for code in sorted(codes - self.mirrored.keys() - self.waiting.keys()):
            self._adopt(code)

    def _query(self, cmd: str) -> Any:
        return query(self.ctx, self.config.control_endpoint, cmd, self.config.control_timeout_ms)

    def close(self) -> None:
        """Close the sockets. The outlets end with the process (see __main__), not one by one."""
        self.sub.close()
        log.info("LSL bridge stopped: sockets closed, the outlets of %d sessions end with the process",
                 len(self.mirrored))

    def _ask(self, cmd: str) -> Any:
        """Ask the broker until it answers (logging the wait once); Stopped if stop comes first."""
        endpoint, timeout = self.config.control_endpoint, self.config.control_timeout_ms
        waited = False
        while not self.stopping:
            try:
                return query(self.ctx, endpoint, cmd, timeout)
            except TimeoutError:
                if not waited:
                    log.warning("broker at %s does not answer %r yet; retrying until it does",
                                endpoint, cmd)
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
            if kind == KIND_PACKET:
                self._on_packet(code, frames[1])
        except MALFORMED as exc:
            log.warning("skipped a malformed message on %r: %s: %s", topic[:80],
                        type(exc).__name__, exc)
        except Exception:  # a bug of ours or liblsl's: report it and keep serving the others
            log.exception("failed to handle a message on %r", topic[:80])

    def _on_event(self, msg: Any) -> None:
        if not isinstance(msg, dict) or msg.get("type") != "session_event":
            raise ValueError("not a session_event payload")
        event, code = msg["event"], validate_code(msg["session"]["code"])
        if event == "deleted":
            self._forget(code)
        elif event in ("created", "changed"):
            self._adopt(code)
        elif event == "perturbation":
            pass        # its markers go out with the packet itself (streams.SessionOutlets.push)
        else:
            raise ValueError(f"unknown session event {event!r}")

    def _on_packet(self, code: str, payload: bytes) -> None:
        outlets = self.mirrored.get(code)
        if outlets is None:
            if code in self.waiting:
                return
            # A session we have not heard of (created between subscribing and listing, or an event
            # lost to a full queue): its packets prove it exists.
            outlets = self._adopt(code)
            if outlets is None:
                return
        msg = decode(payload)
        if not isinstance(msg, dict) or msg.get("type") != "data":
            raise ValueError("not a data payload")
        outlets.push(msg["data"])

    def _adopt(self, code: str) -> SessionOutlets | None:
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
            outlets = SessionOutlets(code, self.config, self.dataset, self.trials)
        except Exception as exc:  # liblsl out of sockets or threads: park it rather than retry per packet
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
        self.reaper.retire(outlets)
        log.info("session %s deleted: its LSL outlets are being destroyed (%d packets pushed)",
                 code, outlets.pushed)
        if self.waiting:
            self._adopt(next(iter(self.waiting)))
