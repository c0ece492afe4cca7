"""Fan-out: one thread owns every client's SUB socket and hands each message to its clients.

Subscriptions, so that a session is subscribed exactly while one of its clients is connected (the
broker counts distinct live prefixes naming a session; libzmq merges identical subscriptions, and a
socket that closes unsubscribes everything it had):

- every client has its own SUB socket with exactly one subscription naming its session;
- the first client of a session (on this worker) subscribes to ``session/<code>/``: its socket is
  the session's *carrier*, and the packets it receives go to every local client of the session;
- the other clients subscribe to ``session/<code>/meta`` only, so the broker sends each packet to
  this worker once, not once per client (with one copy per client, 200 clients of one session cost
  9 ms between the first and the last copy before any WebSocket work);
- when the carrier's client leaves, another client's socket becomes the carrier: it subscribes to
  ``session/<code>/`` and drops ``session/<code>/meta`` (the broker's count is unchanged), and the
  old socket stays open until the new carrier delivers a packet (at most RETIRE_S), packets seen by
  both being de-duplicated by sequence number, so the hand-over loses none.

Every client's own socket receives the session's metadata, so each client's first message is its
metadata. A ZeroMQ socket belongs to one thread, so all SUB sockets live in this thread; handler
threads hand it new and finished clients through a queue plus a pipe that wakes it. The thread
never blocks on a WebSocket (see Client.offer). It also subscribes to ``events/session`` (which
creates and counts nothing) to close the clients of a deleted session.

If the thread itself fails (a bug outside the per-message guard), it calls ``on_death``: the bridge
then stops its worker process (gunicorn starts a fresh one and clients reconnect) rather than leave
every client connected to a frozen stream.
"""
from __future__ import annotations

import logging
import os
import queue
import selectors
import threading
import time
from typing import Any, Callable

import msgpack
import zmq

from bridges.ws.admission import CloseCode
from bridges.ws.client import Client
from protocol import EVENTS_TOPIC, KIND_META, ProtocolError, decode, session_topic

log = logging.getLogger("bridges.ws")

_BATCH = 64         # messages taken from one socket per round, so one busy socket cannot starve others
RETIRE_S = 1.0      # longest an old carrier stays open after a hand-over (the session may be paused)
_SEQ_KEY = msgpack.packb("sequence_number")


class _Session:
    """This worker's clients of one session and the socket(s) carrying its packets."""

    def __init__(self, code: str):
        self.code = code
        self.clients: list[Client] = []
        self.carrier: zmq.Socket | None = None
        self.retiring: zmq.Socket | None = None     # the previous carrier, during a hand-over
        self.retire_by = 0.0
        self.last_seq = -1                          # of the last packet forwarded


class FanOut:
    """The fan-out thread and its inbox; ``add``/``remove``/``stop`` may be called from any thread."""

    def __init__(self, ctx: zmq.Context, pub_endpoint: str,
                 on_death: Callable[[], None] | None = None,
                 on_deleted: Callable[[str], None] | None = None):
        self._ctx = ctx
        self._endpoint = pub_endpoint
        self._on_death = on_death
        self._on_deleted = on_deleted
        self._inbox: queue.SimpleQueue[tuple[str, Client | None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Fan-out thread only: sessions by code; each socket's client (None once it left) and session.
        self._sessions: dict[str, _Session] = {}
        self._owner: dict[zmq.Socket, tuple[Client | None, _Session]] = {}
        self._sock_of: dict[int, zmq.Socket] = {}
        self._sel: selectors.BaseSelector | None = None
        self._backlog: set[zmq.Socket] = set()
        self._thread = threading.Thread(target=self._run, name="ws-fanout", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, client: Client) -> None:
        self._post("add", client)

    def remove(self, client: Client) -> None:
        self._post("remove", client)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._post("stop", None)
            self._thread.join(timeout)

    def _post(self, what: str, client: Client | None) -> None:
        self._inbox.put((what, client))
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass        # the pipe is full of wake-ups already; the thread will drain the inbox
        except BrokenPipeError:
            pass        # the thread has stopped and closed its end: nothing left to wake

    # -- the fan-out thread ------------------------------------------------------------------
    # zmq.Poller walks every socket on every poll (~0.8 us each: 150 us a round with 200 clients),
    # so the thread waits with epoll on each socket's ZMQ_FD instead, which costs O(ready sockets).
    # ZMQ_FD is edge-triggered: a socket is read until ZMQ_EVENTS shows nothing left, or kept in a
    # backlog for the next round when it had more than _BATCH messages.
    def _run(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        events = self._socket(EVENTS_TOPIC)
        self._sel.register(events.FD, selectors.EVENT_READ, events)
        self._backlog.add(events)
        died = False
        try:
            while self._round(events):
                pass
        except Exception:
            died = True
            log.critical("fan-out thread failed; this worker stops so that it is replaced",
                         exc_info=True)
        finally:
            for sock in list(self._owner) + [events]:
                sock.close(linger=0)
            self._sel.close()
            os.close(self._wake_r)
        if died and self._on_death is not None:
            self._on_death()

    def _round(self, events: zmq.Socket) -> bool:
        """One wait and what it found; False once asked to stop."""
        ready = self._sel.select(self._timeout())
        todo = set(self._backlog)
        self._backlog.clear()
        woken = False
        for key, _ in ready:
            if key.data is None:
                woken = True
            else:
                todo.add(key.data)
        # Data first, then adds and removes: a socket removed in this round must not be read.
        for sock in todo:
            try:
                if sock is events:
                    more = self._handle_events(events)
                elif sock in self._owner:
                    more = self._forward(sock)
                else:
                    continue
            except Exception:       # a bug must not take every client's data down with it
                log.exception("fan-out: failed to forward a message; carrying on")
                continue
            if more:
                self._backlog.add(sock)
        self._retire_overdue()
        if woken:
            return self._handle_inbox()
        return True

    def _timeout(self) -> float | None:
        if self._backlog:
            return 0
        due = [s.retire_by for s in self._sessions.values() if s.retiring is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _socket(self, prefix: bytes) -> zmq.Socket:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self._endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, prefix)
        return sock

    def _close(self, sock: zmq.Socket) -> None:
        """Close a SUB socket: its subscription goes, and the broker's count with it."""
        self._sel.unregister(sock.FD)
        self._owner.pop(sock, None)
        self._backlog.discard(sock)
        sock.close(linger=0)

    # -- adds and removes ------------------------------------------------------------------------
    def _handle_inbox(self) -> bool:
        """Apply queued adds and removes; False once asked to stop."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                what, client = self._inbox.get_nowait()
            except queue.Empty:
                return True
            if what == "stop":
                return False
            if what == "add":
                self._add(client)
            elif what == "remove":
                self._remove(client)

    def _add(self, client: Client) -> None:
        session = self._sessions.get(client.code)
        if session is None:
            session = self._sessions[client.code] = _Session(client.code)
        if session.carrier is None:
            sock = self._socket(session_topic(client.code))
            session.carrier = sock
        else:
            sock = self._socket(session_topic(client.code, KIND_META))
        session.clients.append(client)
        self._owner[sock] = (client, session)
        self._sock_of[client.id] = sock
        self._sel.register(sock.FD, selectors.EVENT_READ, sock)
        self._backlog.add(sock)            # the edge may have passed while subscribing

    def _remove(self, client: Client) -> None:
        sock = self._sock_of.pop(client.id, None)
        if sock is None:
            return
        session = self._owner[sock][1]
        session.clients.remove(client)
        if sock is not session.carrier:
            self._close(sock)
        elif session.clients:
            self._hand_over(session)
        else:
            session.carrier = None
            self._close(sock)
        if not session.clients:
            if session.retiring is not None:
                self._close(session.retiring)
            del self._sessions[session.code]

    def _hand_over(self, session: _Session) -> None:
        """Make another client's socket the carrier; the old one retires once the new one delivers."""
        if session.retiring is not None:           # a hand-over still running: finish it now
            self._close(session.retiring)
        old = session.carrier
        self._owner[old] = (None, session)
        successor = self._sock_of[session.clients[0].id]
        # Subscribe before unsubscribing: the socket always has one subscription naming the session.
        successor.setsockopt(zmq.SUBSCRIBE, session_topic(session.code))
        successor.setsockopt(zmq.UNSUBSCRIBE, session_topic(session.code, KIND_META))
        session.carrier = successor
        session.retiring = old
        session.retire_by = time.monotonic() + RETIRE_S
        self._backlog.add(successor)

    def _retire_overdue(self) -> None:
        now = time.monotonic()
        for session in self._sessions.values():
            if session.retiring is not None and now >= session.retire_by:
                self._close(session.retiring)
                session.retiring = None

    # -- messages ----------------------------------------------------------------------------
    def _forward(self, sock: zmq.Socket) -> bool:
        """Hand the socket's messages to its client(s); True if it still has more."""
        client, session = self._owner[sock]
        for _ in range(_BATCH):
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return False
            frames = sock.recv_multipart(zmq.NOBLOCK)
            if len(frames) != 2:
                continue
            if frames[0].endswith(b"/meta"):
                if client is not None:
                    client.offer(b"meta", frames[1])
            elif self._fresh(sock, session, frames[1]):
                for each in session.clients:
                    each.offer(b"packet", frames[1])
            if sock not in self._owner:             # the hand-over finished: the old carrier is gone
                return False
        return True

    def _fresh(self, sock: zmq.Socket, session: _Session, payload: bytes) -> bool:
        """Whether to forward this packet: always, except during a hand-over, when the two
        carriers' copies are de-duplicated by sequence number."""
        seq = _sequence_number(payload)
        if session.retiring is None:
            session.last_seq = seq
            return True
        if sock is session.carrier:             # the new carrier delivers: the old one can go
            self._close(session.retiring)
            session.retiring = None
        if seq <= session.last_seq:
            return False
        session.last_seq = seq
        return True

    def _handle_events(self, events: zmq.Socket) -> bool:
        """Close the clients of deleted sessions; True if the socket still has more."""
        for _ in range(_BATCH):
            if not events.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return False
            code = _deleted_session(events.recv_multipart(zmq.NOBLOCK))
            if code and self._on_deleted is not None:
                self._on_deleted(code)
            session = self._sessions.get(code) if code else None
            for client in session.clients if session else ():
                client.request_close(CloseCode.GONE, f"session {code} was deleted")
        return True


def _sequence_number(payload: bytes) -> int:
    """A packet's sequence number, read without decoding the whole payload (~1 us instead of ~6)."""
    at = payload.find(_SEQ_KEY)
    if at < 0:
        return -1
    unpacker = msgpack.Unpacker()
    unpacker.feed(payload[at + len(_SEQ_KEY):at + len(_SEQ_KEY) + 9])
    value = unpacker.unpack()
    return value if isinstance(value, int) else -1


def _deleted_session(frames: list[bytes]) -> str | None:
    if len(frames) != 2:
        return None
    try:
        event: Any = decode(frames[1])
    except ProtocolError:
        return None
    if not isinstance(event, dict) or event.get("event") != "deleted":
        return None
    session = event.get("session")
    return session.get("code") if isinstance(session, dict) else None
