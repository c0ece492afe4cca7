"""Subscription accounting: XPUB subscribe/unsubscribe frames -> per-connection slots, per-session
and wildcard counts.

Frames from the XPUB socket are ``b"\\x01" + prefix`` (subscribe) and ``b"\\x00" + prefix``
(unsubscribe). The socket runs with XPUB_VERBOSER: libzmq reports every subscribe and every
unsubscribe a SUB socket sends (a SUB socket sends an unsubscribe once its own count of that prefix
is back to zero), each carrying the metadata of the connection it came from, and when a connection
ends (closed, its process killed, dropped for missing heartbeats, cut for an oversized frame) one
unsubscribe without metadata per prefix that connection held.

A connection is known by the file descriptor libzmq reads it from (``ZMQ_SRCFD``, in each frame's
metadata) together with that descriptor's inode (``fstat``): the kernel hands a closed
descriptor's number to the next connection, whose socket has another inode. Per connection the
broker keeps the set of prefixes it counts for it, at most ``PHANTOM_MAX_SUBSCRIPTIONS_PER_CONNECTION``;
a subscription to one more prefix is refused: not counted, it creates no session and makes none
publish (libzmq still keeps the prefix for that connection, and still delivers messages that match
it if they are published for someone else). A repeated subscription takes no new slot; a slot is
given back when that connection unsubscribes or ends, whoever else holds the same prefix.

A prefix is *held* while at least one connection holds it counted; the registry's counts are the
held prefixes naming each session (plus the held wildcards), so they return to zero exactly when
no connection holds one, whatever the clients did (duplicates, kills, half-open peers). A
connection's end is noticed when libzmq reports its metadata-less unsubscribes: every connection
holding one of those prefixes is checked, and one whose descriptor is closed or reused is released
(libzmq closes the descriptor before it reports them). Frames whose descriptor is already closed
come from a connection that ended and are dropped.

What each prefix counts for: ``session/<code>/...`` for that session (it creates the session on
first use); a wildcard (``""``, ``session/``, ``session/<partial>``) for every session; a prefix of
``events/session`` for nothing (it takes a slot, creates nothing). Anything else names no topic the
broker publishes: ignored (counted in ``subscriptions_ignored``), it takes no slot and is never a
wildcard.

A remote subscriber (its Peer-Address not loopback) creates at most
``PHANTOM_MAX_SESSIONS_PER_CLIENT`` sessions by subscribing; past that its subscriptions to
sessions that do not exist create nothing.

Refusals and failures to create are logged on one line per kind every LOG_EVERY_S seconds (the
lines in between are counted into the next), never one per frame.

One case is not exact: when a connection ends while subscriptions it sent are still queued unread
in libzmq and a new data connection gets the same descriptor number before the broker reads them,
those late subscriptions are counted for the new connection (too high, never too low: a live
subscriber never loses a count) until that connection ends.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import stat
import time
from dataclasses import dataclass, field

from broker.lifecycle import Sessions
from protocol.commands import CommandError
from protocol.wire import CODE_MAX_LEN, EVENTS_TOPIC, SESSION_PREFIX, session_of_subscription

log = logging.getLogger("broker")

_PARTIAL_CODE = re.compile(rb"[a-z0-9][a-z0-9-]{0,%d}" % (CODE_MAX_LEN - 1))
LOG_EVERY_S = 10.0

SESSION, WILDCARD, EVENTS = "session", "wildcard", "events"


def is_wildcard(prefix: bytes) -> bool:
    """A subscription matching many sessions' topics without naming one (``""``, ``session/``)."""
    if SESSION_PREFIX.startswith(prefix):
        return True
    # ``session/ab`` (no slash after the code yet) matches every session whose code starts so; a
    # partial code no session code can start with (too long, other characters) matches nothing
    if not prefix.startswith(SESSION_PREFIX):
        return False
    return _PARTIAL_CODE.fullmatch(prefix[len(SESSION_PREFIX):]) is not None


def kind_of(prefix: bytes) -> str | None:
    """What a prefix subscribes to: SESSION, WILDCARD, EVENTS, or None (no topic it could match)."""
    if session_of_subscription(prefix) is not None:
        return SESSION
    if is_wildcard(prefix):
        return WILDCARD
    if EVENTS_TOPIC.startswith(prefix):
        return EVENTS
    return None


def socket_inode(fd: int) -> int | None:
    """The inode of the socket open on ``fd``; None if nothing is open there or it is no socket."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_ino if stat.S_ISSOCK(st.st_mode) else None


@dataclass
class Connection:
    """One data connection that holds at least one counted prefix."""
    fd: int
    inode: int
    prefixes: set[bytes] = field(default_factory=set)


class Throttled:
    """Log one line per reason every ``every_s`` seconds; the ones in between are counted."""

    def __init__(self, every_s: float = LOG_EVERY_S):
        self.every_s = every_s
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, level: int, reason: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next.get(reason, 0.0):
            self._held[reason] = self._held.get(reason, 0) + 1
            return
        self._next[reason] = now + self.every_s
        held = self._held.pop(reason, 0)
        if held:
            message += " (and %d more since the last such line)"
            args += (held,)
        log.log(level, message, *args)


class Subscriptions:
    """Applies subscription frames to per-connection slots, the registry's counts and the
    sessions' publishing."""

    def __init__(self, sessions: Sessions):
        self.sessions = sessions
        self.registry = sessions.registry
        self.max_created = sessions.config.max_sessions_per_client
        self.max_per_connection = sessions.config.max_subscriptions_per_connection
        self._created: dict[str, set[str]] = {}    # remote address -> sessions it auto-created
        self._connections: dict[int, Connection] = {}     # fd -> connection holding prefixes
        self._holders: dict[bytes, set[int]] = {}         # held prefix -> fds of its holders
        self._ended: set[bytes] = set()            # prefixes of connections that ended, unchecked
        self._local: tuple[socket.AddressFamily, int | None] | None = None  # family, tcp port
        self.held = 0                              # (connection, prefix) pairs counted
        self.refused = 0
        self.ignored = 0
        self._log = Throttled()
        sessions.subscription_figures = self.figures

    def listening(self, endpoint: str) -> None:
        """The data socket's bound endpoint: a descriptor is taken for one of its connections only
        if it is a TCP socket on that port (``tcp://``) or a Unix socket (``ipc://``)."""
        scheme, _, rest = endpoint.partition("://")
        if scheme == "tcp":
            self._local = (socket.AF_INET, int(rest.rsplit(":", 1)[1]))
        elif scheme == "ipc":
            self._local = (socket.AF_UNIX, None)

    def figures(self) -> dict[str, int]:
        return {"subscriptions_held": self.held, "subscriber_connections": len(self._connections),
                "subscriptions_refused": self.refused, "subscriptions_ignored": self.ignored}

    # -- frames -----------------------------------------------------------------------------------
    def on_frame(self, frame: bytes, peer: str | None = None, fd: int | None = None) -> None:
        """One frame from the data socket; ``fd`` is its connection's descriptor (ZMQ_SRCFD),
        None for the unsubscribes libzmq makes up when a connection ends."""
        if not frame or frame[0] not in (0, 1):
            return                             # an XSUB's message upstream: not a subscription
        live = frame[0] == 1
        prefix = frame[1:]
        if fd is None:
            if live:
                self.refused += 1
                self._log(logging.WARNING, "unidentified", "data socket: refused subscription %r: "
                          "libzmq names no connection for it (not tcp:// or ipc://), so it "
                          "cannot be bounded", prefix[:80])
            else:
                self._ended.add(prefix)        # some connection holding it ended: see flush()
            return
        kind = kind_of(prefix)
        if kind is None:
            if live:
                self.ignored += 1
                self._log(logging.INFO, "ignored", "data socket: ignored subscription %r from %s: "
                          "it names no topic the broker publishes", prefix[:80], peer)
            return
        conn = self._connection(fd, create=live)
        if conn is None:
            return                             # a connection that ended (its descriptor is closed)
        if not live:
            if prefix in conn.prefixes:
                self._release(conn, prefix)
            return
        if prefix not in conn.prefixes:
            if len(conn.prefixes) >= self.max_per_connection:
                self.refused += 1
                self._log(logging.WARNING, "refused", "data socket: refused subscription %r from "
                          "%s: that connection already holds %d (PHANTOM_MAX_SUBSCRIPTIONS_PER_"
                          "CONNECTION); a refused subscription is not counted and creates nothing",
                          prefix[:80], peer, self.max_per_connection)
                return
            conn.prefixes.add(prefix)
            self.held += 1
            self._holders.setdefault(prefix, set()).add(fd)
        self._apply(prefix, kind, True, peer)   # every counted subscribe: a new holder gets the meta

    def flush(self) -> None:
        """After a batch of frames: release the connections that ended (checked once each)."""
        if not self._ended:
            return
        suspects = set()
        for prefix in self._ended:
            suspects.update(self._holders.get(prefix, ()))
        self._ended.clear()
        for fd in suspects:
            conn = self._connections.get(fd)
            if conn is not None and socket_inode(fd) != conn.inode:
                self._end(conn)

    # -- connections ------------------------------------------------------------------------------
    def _connection(self, fd: int, create: bool) -> Connection | None:
        inode = socket_inode(fd)
        conn = self._connections.get(fd)
        if conn is not None and conn.inode != inode:
            self._end(conn)                    # its descriptor is closed or another's now
            conn = None
        if conn is None and create and inode is not None and self._is_data_connection(fd):
            conn = self._connections[fd] = Connection(fd, inode)
        return conn

    def _is_data_connection(self, fd: int) -> bool:
        """``fd`` is a socket whose local address is the data socket's (not a connection to
        another broker socket that took a closed descriptor's number)."""
        if self._local is None:
            return True
        try:
            dup = os.dup(fd)                   # a socket object of our own: closing it closes the dup
        except OSError:
            return False
        try:
            sock = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            return False
        family, port = self._local
        with sock:
            if family == socket.AF_UNIX:
                return sock.family == socket.AF_UNIX
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return False
            try:
                return sock.getsockname()[1] == port
            except OSError:
                return False

    def _release(self, conn: Connection, prefix: bytes) -> None:
        conn.prefixes.discard(prefix)
        self.held -= 1
        if not conn.prefixes:
            del self._connections[conn.fd]
        holders = self._holders[prefix]
        holders.discard(conn.fd)
        if not holders:
            del self._holders[prefix]
            self._apply(prefix, kind_of(prefix), False, None)

    def _end(self, conn: Connection) -> None:
        for prefix in list(conn.prefixes):
            self._release(conn, prefix)
        self._connections.pop(conn.fd, None)

    # -- counts -----------------------------------------------------------------------------------
    def _apply(self, prefix: bytes, kind: str | None, live: bool, peer: str | None) -> None:
        """``prefix`` was subscribed (again) by a holder, or is held by nobody now."""
        now = time.monotonic()
        if kind == SESSION:
            self.sessions.generation += 1
            self._set_session(session_of_subscription(prefix), prefix, live, now, peer)
        elif kind == WILDCARD:
            self.sessions.generation += 1
            self._set_wildcard(prefix, live, now)

    def _set_session(self, code: str, prefix: bytes, live: bool, now: float,
                     peer: str | None = None) -> None:
        reg, sessions = self.registry, self.sessions
        reg.set_subscription(code, prefix, live)
        s = reg.sessions.get(code)
        if s is None and live:
            if not self._may_create(peer):
                self._log(logging.WARNING, "client-limit", "subscription to %s from %s: not "
                          "created, that client already created %d sessions "
                          "(PHANTOM_MAX_SESSIONS_PER_CLIENT)", code, peer, self.max_created)
                return
            try:
                s = sessions.create(code)
            except CommandError as exc:
                self._log(logging.WARNING, "cannot-create",
                          "subscription to %s: cannot create the session: %s", code, exc)
                return
            if peer is not None and not is_local(peer):
                self._created.setdefault(peer, set()).add(code)
        if s is None:
            return
        sessions.mark_accessed(s)
        sessions.refresh_publishing(s, now)
        if live:
            sessions.publish_meta(s)
        sessions.publish_event("changed", s)

    def _may_create(self, peer: str | None) -> bool:
        if peer is None or is_local(peer):
            return True
        codes = self._created.get(peer)
        if not codes:
            return True
        codes.intersection_update(self.registry.sessions)       # forget the deleted ones
        if not codes:
            del self._created[peer]
            return True
        return len(codes) < self.max_created

    def _set_wildcard(self, prefix: bytes, live: bool, now: float) -> None:
        reg = self.registry
        before = reg.wildcards
        if live:
            reg.wildcard_prefixes.add(prefix)
        else:
            reg.wildcard_prefixes.discard(prefix)
        if (before == 0) != (reg.wildcards == 0):
            for s in reg:
                self.sessions.refresh_publishing(s, now)
            log.info("wildcard subscribers: %d", reg.wildcards)


def is_local(peer: str) -> bool:
    """A loopback IP, or a non-IP transport (ipc://, inproc://) on this machine."""
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return True
