"""Follows the broker for the LSL bridge: which sessions are mirrored, when they are subscribed.

One thread owns everything here: the SUB socket, the broker client and the sockets to the outlet
hosts. Each mirrored session's four outlets live in a process of their own (bridges/lsl/host.py),
which the bridge feeds the session's packets and kills when the session stops being mirrored: no
outlet is ever destroyed one by one, which liblsl 1.18 can crash on (docs/lsl.md, Known issues).

Which sessions are mirrored: those whose ``lsl`` flag is on (docs/lsl.md), up to
``PHANTOM_LSL_MAX_SESSIONS``, first come, first served; a session past the bound waits, and takes
the slot of the next mirrored session to be deleted or switched off. Each mirrored session has its
four outlets, discoverable at once.

What the broker is asked to send: the SUB socket subscribes to ``events/session`` (lifecycle,
which counts for no session), and by name, ``session/<code>/``, to a mirrored session only while
one of its outlets has a consumer (the host says so, see host.ConsumerWatch). Never to the
wildcard ``session/``: an unconsumed session costs the broker nothing. The subscription makes the
broker count the bridge as the session's subscriber, so a session recorded over LSL (by
LabRecorder, say) never expires on the TTL nor is evicted; when the last inlet goes, the bridge
unsubscribes and the session is idle again.
"""
from __future__ import annotations

import logging
import multiprocessing
import socket
import time
from multiprocessing import forkserver
from typing import Any

import zmq

from bridges.lsl import host as hosts
from protocol import (CommandError, EVENTS_TOPIC, ErrorCode, KIND_META, KIND_PACKET, ProtocolError,
                      decode, session_topic, split_topic, validate_code)
from protocol.client import BrokerClient
from protocol.config import Config
from protocol.logs import ready_logger

log = logging.getLogger("bridges.lsl")
ready_log = ready_logger("bridges.lsl")

POLL_MS = 50             # how often the loop looks at the stop flag when no data arrives
RESPAWN_AFTER_S = 5.0    # a host that dies after running this long gets a new one at once
RECONCILE_S = 5.0        # how often the broker is pinged (a restart makes the bridge re-list)
RELIST_S = 60.0          # the full `list` regardless, in case an event was lost
MALFORMED = (ProtocolError, KeyError, TypeError, ValueError, AttributeError, IndexError)


class Stopped(Exception):
    """Stop was requested before the broker answered."""


_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["bridges.lsl.preload"])


class OutletHost:
    """The bridge's end of one session's outlet host (a process, see host.py)."""

    def __init__(self, code: str, config: Config, dataset: dict[str, Any],
                 trials: list[dict[str, Any]], speed: float):
        self.code = code
        self.speed = speed
        self.subscribed = False       # the bridge subscribes while someone consumes an outlet
        self.forwarded = 0            # packets handed to the host
        self.dropped = 0              # packets lost because the host's socket buffer was full
        self.started = time.monotonic()
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = _FORKS.Process(target=hosts.serve, name=f"lsl-host-{code}", daemon=True,
                                          args=(theirs, code, config, dataset, trials, speed))
            self.process.start()
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        """Hand one message to the host; never blocks (a full buffer drops it, counted)."""
        if len(payload) >= hosts.MAX_MESSAGE:
            log.warning("session %s: a %d-byte message is too large for its LSL host: skipped",
                        self.code, len(payload))
            return
        try:
            self.sock.sendmsg([kind, payload])
        except BlockingIOError:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("session %s: its LSL host is behind, %d packets dropped so far",
                            self.code, self.dropped)
            return
        except OSError:
            return                    # the host is gone: its end of file says so to the loop
        if kind == hosts.PACKET:
            self.forwarded += 1

    def receive(self) -> bytes:
        """One message from the host; b"" once it is gone."""
        try:
            return self.sock.recv(hosts.MAX_MESSAGE)
        except BlockingIOError:
            return b"?"               # woken for nothing
        except OSError:
            return b""

    def kill(self) -> None:
        """End the host at once: the kernel closes its outlets' sockets, no teardown runs."""
        self.sock.close()
        try:
            self.process.kill()
        except (OSError, ValueError):
            pass                      # already gone

    def exit_status(self) -> str:
        self.process.join(1.0)
        code = self.process.exitcode
        if code is None:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


class Bridge:
    """The broker's LSL-flagged sessions mirrored as LSL outlets, up to the configured bound."""

    def __init__(self, config: Config, ctx: zmq.Context):
        self.config = config
        self.ctx = ctx
        self.dataset: dict[str, Any] = {}
        self.trials: list[dict[str, Any]] = []
        self.mirrored: dict[str, OutletHost] = {}
        self.by_fd: dict[int, OutletHost] = {}
        self.waiting: dict[str, None] = {}      # past the bound; insertion order is queue order
        self.stopping = False
        self.broker = BrokerClient(config.control_endpoint, config.control_timeout_ms, context=ctx)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        now = time.monotonic()
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
        forkserver.ensure_running()             # hosts then start in milliseconds
        self.sub.connect(self.config.pub_endpoint)
        self.sub.setsockopt(zmq.SUBSCRIBE, EVENTS_TOPIC)
        # Subscribed before listing: a session created in between arrives as an event.
        self._restarted(self._ask("ping"))
        self.dataset = self._ask("dataset")
        self.trials = self._ask("trials")["trials"]
        self._follow(self._ask("list")["sessions"])
        ready_log.info("READY lsl pub=%s control=%s max_sessions=%d", self.config.pub_endpoint,
                       self.config.control_endpoint, self.config.lsl_max_sessions)

    def run(self) -> None:
        while not self.stopping:
            for item, _ in self.poller.poll(POLL_MS):
                if item is self.sub:
                    self.handle(self.sub.recv_multipart())
                else:
                    host = self.by_fd.get(item)
                    if host is not None:
                        self._from_host(host)
            if time.monotonic() >= self._next_reconcile:
                self.reconcile()

    def _from_host(self, host: OutletHost) -> None:
        """A host's message: ready, failed, consumed or not; end of file if it died."""
        message = host.receive()
        if message == hosts.READY:
            pass                      # its outlets exist: discoverable from now on
        elif message in (hosts.CONSUMED, hosts.UNCONSUMED):
            consumed = message == hosts.CONSUMED
            if consumed != host.subscribed:
                self.sub.setsockopt(zmq.SUBSCRIBE if consumed else zmq.UNSUBSCRIBE,
                                    session_topic(host.code))
                host.subscribed = consumed
                log.info("session %s %s", host.code, "has an LSL consumer: subscribed" if consumed
                         else "has no LSL consumer left: unsubscribed")
        elif message.startswith(hosts.FAILED):
            # liblsl out of sockets or threads: park it rather than retry
            log.error("could not create the LSL outlets of session %s (%s); it waits for a slot",
                      host.code, message[1:].decode(errors="replace"))
            self._forget(host.code, park=True)
        elif not message:
            self._host_died(host)

    def _host_died(self, host: OutletHost) -> None:
        ran = time.monotonic() - host.started
        status = host.exit_status()
        if ran >= RESPAWN_AFTER_S:
            log.error("the LSL host of session %s died after %.0f s (%s): starting a new one; its "
                      "inlets reconnect by source id", host.code, ran, status)
            self._drop(host)
            self._adopt(host.code, host.speed)
        else:
            log.error("the LSL host of session %s died after %.1f s (%s): the session waits for "
                      "a slot", host.code, ran, status)
            self._forget(host.code, park=True)

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
            for host in self.mirrored.values():
                host.send(hosts.CLOCK)          # it may run on another host now
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
        """Close the sockets. The hosts see end of file and exit, their outlets with them."""
        self.sub.close()
        self.broker.close()
        for host in self.mirrored.values():
            host.kill()
        log.info("LSL bridge stopped: sockets closed, the outlet hosts of %d sessions killed",
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
        """Route one data message to its host (which decodes it); a malformed one is logged and
        skipped, never fatal."""
        topic = frames[0] if frames else b""
        try:
            if len(frames) != 2:
                raise ValueError(f"{len(frames)} frames instead of [topic, payload]")
            if topic == EVENTS_TOPIC:
                self._on_event(decode(frames[1]))
                return
            code, kind = split_topic(topic)
            host = self.mirrored.get(code)
            if host is None:
                return                          # unsubscribed meanwhile
            if kind == KIND_PACKET:
                host.send(hosts.PACKET, frames[1])
            elif kind == KIND_META:
                host.speed = hosts.metadata_speed(decode(frames[1]))
                host.send(hosts.META, frames[1])
        except MALFORMED as exc:
            log.warning("skipped a malformed message on %r: %s: %s", topic[:80],
                        type(exc).__name__, exc)
        except Exception:  # a bug of ours: report it and keep serving the others
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
            speed = hosts.positive(session.get("speed") or 1.0)
            host = self._adopt(code, speed)
            if host is not None and host.speed != speed:
                host.speed = speed
                host.send(hosts.SPEED, repr(speed).encode())
        else:
            self._forget(code)

    def _adopt(self, code: str, speed: float) -> OutletHost | None:
        """The session's outlet host, started now if there is room; None if it has to wait."""
        host = self.mirrored.get(code)
        if host is not None:
            return host
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
            host = OutletHost(code, self.config, self.dataset, self.trials, speed)
        except Exception as exc:  # out of processes or file descriptors: park it rather than retry
            log.error("could not start the LSL host of session %s (%s: %s); it waits for a slot",
                      code, type(exc).__name__, exc)
            self.waiting[code] = None
            return None
        self.waiting.pop(code, None)
        self.mirrored[code] = host
        self.by_fd[host.fileno()] = host
        self.poller.register(host.fileno(), zmq.POLLIN)
        log.info("mirroring session %s as %s-{Neural,Kinematics,Intention,Markers}-%s (%d of %d, "
                 "host pid %s)", code, self.config.lsl_stream_name, code, len(self.mirrored),
                 self.config.lsl_max_sessions, host.process.pid)
        return host

    def _forget(self, code: str, park: bool = False) -> None:
        """Stop mirroring the session: kill its host. ``park``: it waits for a slot again; else
        the first waiting session takes the slot."""
        self.waiting.pop(code, None)
        host = self.mirrored.get(code)
        if host is None:
            return
        self._drop(host)
        if park:
            self.waiting[code] = None
            return
        log.info("session %s no longer mirrored (deleted or lsl off): its LSL host is killed, its "
                 "outlets gone (%d packets forwarded, %d dropped)", code, host.forwarded, host.dropped)
        if self.waiting:
            self._adopt(next(iter(self.waiting)), 1.0)

    def _drop(self, host: OutletHost) -> None:
        del self.mirrored[host.code]
        self.poller.unregister(host.fileno())
        del self.by_fd[host.fileno()]
        if host.subscribed:
            self.sub.setsockopt(zmq.UNSUBSCRIBE, session_topic(host.code))
        host.kill()
