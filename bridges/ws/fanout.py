"""Fan-out: one thread owns every client's SUB socket and hands each message to its client's buffer.

Each WebSocket client gets its own SUB socket subscribed to ``session/<code>/``, so the broker
counts one subscriber per client: libzmq forwards only a socket's first duplicate subscription, and
a socket that closes unsubscribes everything it had. A ZeroMQ socket belongs to one thread, so all
SUB sockets live in this thread; handler threads hand it new and finished clients through a queue
plus a pipe that wakes its poll. The thread never touches a WebSocket (Client.offer only appends
and sets an Event), so no client can slow it down.

It also subscribes to ``events/session`` (which creates and counts nothing) to close the clients of
a session that gets deleted.
"""
from __future__ import annotations

import logging
import os
import queue
import selectors
import threading
from typing import Any

import zmq

from bridges.ws.admission import CloseCode
from bridges.ws.client import Client
from protocol import EVENTS_TOPIC, ProtocolError, decode, session_topic

log = logging.getLogger("bridges.ws")

_BATCH = 64     # messages taken from one socket per poll round, so one busy session cannot starve others


class FanOut:
    """The fan-out thread and its inbox; ``add``/``remove``/``stop`` may be called from any thread."""

    def __init__(self, ctx: zmq.Context, pub_endpoint: str):
        self._ctx = ctx
        self._endpoint = pub_endpoint
        self._inbox: queue.SimpleQueue[tuple[str, Client | None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sock_of: dict[int, zmq.Socket] = {}      # client id -> its SUB socket (fan-out thread only)
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

    # -- the fan-out thread ------------------------------------------------------------------
    # zmq.Poller walks every socket on every poll (~0.8 us each: 150 us a round with 200 clients),
    # so the thread waits with epoll on each socket's ZMQ_FD instead, which costs O(ready sockets).
    # ZMQ_FD is edge-triggered: a socket is read until ZMQ_EVENTS shows nothing left, or kept in a
    # backlog for the next round when it had more than _BATCH messages.
    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        events = self._ctx.socket(zmq.SUB)
        events.setsockopt(zmq.LINGER, 0)
        events.connect(self._endpoint)
        events.setsockopt(zmq.SUBSCRIBE, EVENTS_TOPIC)
        sel.register(events.FD, selectors.EVENT_READ, events)
        subs: dict[zmq.Socket, Client] = {}
        backlog: set[zmq.Socket] = {events}
        try:
            while self._round(sel, events, subs, backlog):
                pass
        finally:
            for sock in list(subs) + [events]:
                sock.close(linger=0)
            sel.close()
            os.close(self._wake_r)

    def _round(self, sel: selectors.BaseSelector, events: zmq.Socket,
               subs: dict[zmq.Socket, Client], backlog: set[zmq.Socket]) -> bool:
        """One wait and what it found; False once asked to stop."""
        ready = sel.select(0 if backlog else None)
        todo = set(backlog)
        backlog.clear()
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
                    more = self._handle_events(events, subs)
                elif sock in subs:
                    more = self._forward(sock, subs[sock])
                else:
                    continue
            except Exception:       # a bug must not take every client's data down with it
                log.exception("fan-out: failed to forward a message; carrying on")
                continue
            if more:
                backlog.add(sock)
        if woken:
            return self._handle_inbox(sel, subs, backlog)
        return True

    def _handle_inbox(self, sel: selectors.BaseSelector, subs: dict[zmq.Socket, Client],
                      backlog: set[zmq.Socket]) -> bool:
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
                sock = self._subscribe(client)
                sel.register(sock.FD, selectors.EVENT_READ, sock)
                subs[sock] = client
                self._sock_of[client.id] = sock
                backlog.add(sock)           # the edge may have passed while subscribing
            elif what == "remove":
                sock = self._sock_of.pop(client.id, None)
                if sock is not None:
                    sel.unregister(sock.FD)
                    del subs[sock]
                    backlog.discard(sock)
                    sock.close(linger=0)       # unsubscribes: the broker's count drops

    def _subscribe(self, client: Client) -> zmq.Socket:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self._endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, session_topic(client.code))
        return sock

    def _forward(self, sock: zmq.Socket, client: Client) -> bool:
        """Hand the socket's messages to its client; True if it still has more."""
        for _ in range(_BATCH):
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return False
            frames = sock.recv_multipart(zmq.NOBLOCK)
            if len(frames) == 2:
                client.offer(frames[0].rpartition(b"/")[2], frames[1])
        return True

    def _handle_events(self, events: zmq.Socket, subs: dict[zmq.Socket, Client]) -> bool:
        """Close the clients of deleted sessions; True if the socket still has more."""
        for _ in range(_BATCH):
            if not events.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return False
            frames = events.recv_multipart(zmq.NOBLOCK)
            code = _deleted_session(frames)
            if code is None:
                continue
            for client in subs.values():
                if client.code == code:
                    client.request_close(CloseCode.GONE, f"session {code} was deleted")
        return True


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
