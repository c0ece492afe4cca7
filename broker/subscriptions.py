"""Subscription accounting: XPUB subscribe/unsubscribe frames -> per-session and wildcard counts.

Frames from the XPUB socket are ``b"\\x01" + prefix`` (subscribe) and ``b"\\x00" + prefix``
(unsubscribe). The socket runs with XPUB_VERBOSE: every subscribe is reported (so each new
subscriber gets the session's meta), but an unsubscribe only when the last SUB socket holding that
prefix lets go (unsubscribes, closes, is killed, or is dropped for missing heartbeats). libzmq
merges duplicate subscriptions of one socket and identical subscriptions of many, so the exact
statement is "this prefix is held by someone" / "by nobody". The counts here are therefore sets of
live prefixes (a repeated subscribe changes nothing), and they return to zero exactly when no
subscriber is left. (XPUB_VERBOSER, which reports one unsubscribe per socket, cannot be counted:
a socket that subscribed twice reports two subscribes and one unsubscribe.)

A prefix naming one session (``session/<code>/...``) counts for that session (and creates it on
first use); a wildcard prefix (``""``, ``session/``, ``session/<partial>``) counts for every
session; anything else is ignored.

A remote subscriber (its Peer-Address not loopback) creates at most
``PHANTOM_MAX_SESSIONS_PER_CLIENT`` sessions by subscribing; past that its subscriptions to
sessions that do not exist create nothing (a log line says so).
"""
from __future__ import annotations

import ipaddress
import logging
import re
import time

from broker.lifecycle import Sessions
from protocol.commands import CommandError
from protocol.wire import CODE_MAX_LEN, SESSION_PREFIX, session_of_subscription

log = logging.getLogger("broker")

_PARTIAL_CODE = re.compile(rb"[a-z0-9][a-z0-9-]{0,%d}" % (CODE_MAX_LEN - 1))


def is_wildcard(prefix: bytes) -> bool:
    """A subscription matching many sessions' topics without naming one (``""``, ``session/``)."""
    if SESSION_PREFIX.startswith(prefix):
        return True
    # ``session/ab`` (no slash after the code yet) matches every session whose code starts so; a
    # partial code no session code can start with (too long, other characters) matches nothing
    if not prefix.startswith(SESSION_PREFIX):
        return False
    return _PARTIAL_CODE.fullmatch(prefix[len(SESSION_PREFIX):]) is not None


class Subscriptions:
    """Applies subscription frames to the registry's counts and the sessions' publishing."""

    def __init__(self, sessions: Sessions):
        self.sessions = sessions
        self.registry = sessions.registry
        self.max_created = sessions.config.max_sessions_per_client
        self._created: dict[str, set[str]] = {}    # remote address -> sessions it auto-created

    def on_frame(self, frame: bytes, peer: str | None = None) -> None:
        if not frame or frame[0] not in (0, 1):
            return
        live = frame[0] == 1
        prefix = frame[1:]
        self.sessions.generation += 1
        code = session_of_subscription(prefix)
        now = time.monotonic()
        if code is None:
            if is_wildcard(prefix):
                self._set_wildcard(prefix, live, now)
            return
        self._set_session(code, prefix, live, now, peer)

    def _set_session(self, code: str, prefix: bytes, live: bool, now: float,
                     peer: str | None = None) -> None:
        reg, sessions = self.registry, self.sessions
        reg.set_subscription(code, prefix, live)
        s = reg.sessions.get(code)
        if s is None and live:
            if not self._may_create(peer):
                log.warning("subscription to %s from %s: not created, that client already created "
                            "%d sessions (PHANTOM_MAX_SESSIONS_PER_CLIENT)", code, peer, self.max_created)
                return
            try:
                s = sessions.create(code)
            except CommandError as exc:
                log.warning("subscription to %s: cannot create the session: %s", code, exc)
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
