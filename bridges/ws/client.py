"""One WebSocket client: its bounded buffer (oldest packets dropped and counted) and its writer.

The fan-out thread calls ``offer`` and never blocks: it appends to the buffer and sets an Event.
The writer is the client's own handler thread (``run``): it waits on that Event, takes everything
buffered and sends it, so a client that reads slowly blocks only its own thread and loses only its
own oldest packets, never delaying other clients or the broker.
"""
from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
from collections import deque
from typing import Any

import msgpack
from simple_websocket import ConnectionClosed

from bridges.ws.admission import CloseCode, StreamRequest

log = logging.getLogger("bridges.ws")

_ids = itertools.count(1)
# How often the writer looks at the connection when nothing wakes it (a fallback: simple-websocket's
# reader thread normally wakes it at once when the peer goes, see __init__).
_IDLE_CHECK_S = 0.5
_REASON_MAX_BYTES = 123         # RFC 6455: a close frame's reason fits in 123 bytes


class Client:
    """The state of one streaming connection, shared by the fan-out thread and its writer."""

    def __init__(self, ws: Any, req: StreamRequest, capacity: int, peer: str | None):
        self.id = next(_ids)
        self.ws = ws
        self.code = req.code
        self.fmt = req.fmt
        self.filter = req.filter
        self.peer = peer or "?"
        self.connected_at = time.monotonic()
        self.got_meta = False           # written by the fan-out thread only
        self.sent = 0                   # written by the writer only
        self.dropped = 0
        self.skipped_before_meta = 0
        self._capacity = capacity
        self._pending: deque[bytes] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._burst = 0                 # packets dropped since the writer last emptied the buffer
        self._close_request: tuple[int, str] | None = None
        self._wake = threading.Event()
        # simple-websocket's reader thread sets `ws.event` when a message arrives or the peer
        # leaves; sharing our Event makes a disconnect wake the writer immediately.
        ws.event = self._wake
        ws.sock = _WholeFrameSocket(ws.sock)

    # -- fan-out thread ----------------------------------------------------------------------
    def offer(self, kind: bytes, payload: bytes) -> None:
        """Buffer one message; before the first metadata, packets are skipped (metadata first)."""
        if not self.got_meta:
            if kind != b"meta":
                self.skipped_before_meta += 1
                return
            self.got_meta = True
        with self._lock:
            full = len(self._pending) == self._capacity
            self._pending.append(payload)       # a full deque drops its oldest entry
            if full:
                self.dropped += 1
                self._burst += 1
            first_of_burst = full and self._burst == 1
        self._wake.set()
        if first_of_burst:
            log.warning("client %d (session %s, %s) reads too slowly: its buffer of %d is full, "
                        "dropping its oldest packets", self.id, self.code, self.peer, self._capacity)

    # -- any thread ----------------------------------------------------------------------------
    def request_close(self, code: int, reason: str) -> None:
        """Ask the writer to close the connection with ``code`` at its next wake-up."""
        if self._close_request is None:
            self._close_request = (code, reason)
        self._wake.set()

    def abort(self) -> None:
        """Shut the TCP connection down: unblocks a writer stuck sending to a stalled peer."""
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def queued(self) -> int:
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        return {"id": self.id, "session": self.code, "format": self.fmt, "filter": self.filter,
                "peer": self.peer, "sent": self.sent, "dropped": self.dropped,
                "queued": self.queued(), "connected_s": round(time.monotonic() - self.connected_at, 3)}

    # -- writer (the client's handler thread) --------------------------------------------------
    def run(self, meta_timeout_s: float) -> str:
        """Send until the peer leaves or a close is requested; returns why it ended."""
        meta_deadline = time.monotonic() + meta_timeout_s
        while True:
            self._wake.wait(_IDLE_CHECK_S)
            self._wake.clear()
            if self._close_request is not None:
                close(self.ws, *self._close_request)
                return f"closed by the bridge ({self._close_request[0]} {self._close_request[1]})"
            if not self.ws.connected:
                return "client left"
            self.ws.input_buffer.clear()        # clients have nothing to say; keep it bounded
            batch = self._take()
            if batch:
                if not self._send(batch):
                    return "client left"
            elif not self.got_meta and time.monotonic() > meta_deadline:
                reason = f"no metadata from the broker within {meta_timeout_s:g} s"
                close(self.ws, CloseCode.UNAVAILABLE, reason)
                return f"closed by the bridge ({int(CloseCode.UNAVAILABLE)} {reason})"

    def _take(self) -> list[bytes]:
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
            burst, self._burst = self._burst, 0
        if burst:
            log.info("client %d (session %s) dropped %d packets in its last slow burst (%d in all)",
                     self.id, self.code, burst, self.dropped)
        return batch

    def _send(self, batch: list[bytes]) -> bool:
        try:
            for payload in batch:
                self.ws.send(payload if self.fmt == "msgpack" else to_json(payload))
                self.sent += 1
        except (ConnectionClosed, OSError):
            return False
        return True


class _WholeFrameSocket:
    """The connection's socket, with ``send`` writing whole frames one writer at a time.

    simple-websocket writes each frame with a single ``socket.send``, which may write only part of
    it, and its reader thread writes too (pongs, the close reply): a lock plus ``sendall`` keeps
    every frame whole and never interleaved.
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def to_json(payload: bytes) -> str:
    """The JSON text of a msgpack payload: same structure, nil -> null."""
    return json.dumps(msgpack.unpackb(payload, raw=False), separators=(",", ":"))


def close(ws: Any, code: int, reason: str) -> None:
    """Close with ``code`` and ``reason`` (cut to the 123 bytes a close frame allows)."""
    reason = reason.encode()[:_REASON_MAX_BYTES].decode(errors="ignore")
    try:
        ws.close(int(code), reason)
    except (ConnectionClosed, OSError):
        pass
