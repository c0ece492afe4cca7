"""One WebSocket client: its bounded buffer (oldest packets dropped and counted) and its writer.

Two paths deliver a message, and neither lets one client delay another or the broker:

- direct: when nothing is queued for the client, the fan-out thread writes the binary frame itself
  with a non-blocking ``send(MSG_DONTWAIT)``; a healthy client thus costs one system call per
  packet, with no thread wake-up in between;
- queued: otherwise (a JSON client, a full socket buffer, a writer busy), the fan-out thread appends
  to the client's queue and sets an Event; the client's own handler thread (``run``) sends what is
  queued, blocking only itself on a slow peer. The queue holds at most ``capacity`` packets: when
  it is full, the oldest *packet* is dropped and counted. Metadata is never dropped (it is rare,
  one message per change of the session, and a client that lost it would misread what follows).

Every write holds the connection's send lock, so frames are never interleaved (simple-websocket's
reader thread writes pongs and close replies through the same lock). When a direct send writes only
part of a frame, the fan-out thread keeps the lock and hands it, with the rest of the frame, to the
writer, which finishes the frame before anything else is written.

A peer that stops reading cannot hold a thread: every blocking write is a loop of non-blocking
sends and polls (``send_within``) that gives up after ``PHANTOM_WS_SEND_TIMEOUT_S`` without
progress; the connection is then cut and its subscription goes. Once a Close frame has been written (by
us or by simple-websocket: a ping timeout, a message too big, the reply to the peer's Close), no
data frame follows it: the send lock's holder checks that first.

simple-websocket has no public hook for its socket or wake-up event, so ``ws.sock`` and ``ws.event``
are replaced here; pyproject.toml pins the versions this was tested with and
tests/test_ws_security.py checks the use.
"""
from __future__ import annotations

import itertools
import json
import logging
import select
import socket
import struct
import threading
import time
from collections import deque
from typing import Any

import msgpack
from simple_websocket import ConnectionClosed

from bridges.ws.admission import CloseCode, StreamRequest
from bridges.ws.feedback import PredictionRelay

log = logging.getLogger("bridges.ws")

_ids = itertools.count(1)
# How often the writer looks at the connection when nothing wakes it (a fallback: simple-websocket's
# reader thread normally wakes it at once when the peer goes, see __init__).
_IDLE_CHECK_S = 0.5
_REASON_MAX_BYTES = 123         # RFC 6455: a close frame's reason fits in 123 bytes
OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8
# Kinds of queued messages: only packets count against the buffer and are ever dropped.
PACKET, META, REPLY = b"packet", b"meta", b"reply"


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, unfragmented server frame (RFC 6455 5.2). An uncompressed frame is valid even
    when permessage-deflate was negotiated (RFC 7692: compression is per message, flagged by RSV1)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class Client:
    """The state of one streaming connection, shared by the fan-out thread and its writer."""

    def __init__(self, ws: Any, req: StreamRequest, capacity: int, peer: str | None,
                 relay: PredictionRelay | None = None, send_timeout_s: float = 10.0):
        self.id = next(_ids)
        self.ws = ws
        self.code = req.code
        self.fmt = req.fmt
        self.filter = req.filter
        self.metadata = req.metadata    # False: packets only (the original's URL form)
        self.channel_ids = req.channel_ids      # re-encode packets with spikes.channel_ids
        self._unit_ids: list[int] | None = None     # from the session's metadata
        self.peer = peer or "?"
        self.connected_at = time.monotonic()
        self.got_meta = False           # fan-out thread only
        self.sent_direct = 0            # fan-out thread only
        self.sent_queued = 0            # writer only
        self.dropped = 0
        self.skipped_before_meta = 0
        self._capacity = capacity
        self._pending: deque[tuple[bytes, bytes]] = deque()     # (kind, payload), in order
        self._packets = 0                       # packets (not metadata) in _pending
        self._lock = threading.Lock()           # guards _pending, _packets, dropped, _burst
        self._burst = 0                 # packets dropped since the writer last emptied the buffer
        self._handover: bytes | None = None     # rest of a partly sent frame; send lock held for it
        self._close_request: tuple[int, str] | None = None
        self._wake = threading.Event()
        self._relay = relay                     # predictions the client sends (writer thread)
        self._sock: socket.socket = ws.sock
        self._send_timeout_s = send_timeout_s
        self._send_lock = threading.Lock()
        # simple-websocket's reader thread sets `ws.event` when a message arrives or the peer
        # leaves; sharing our Event makes a disconnect wake the writer immediately. Its writes go
        # through the send lock.
        ws.event = self._wake
        self._locked = ws.sock = _LockedSocket(self._sock, self._send_lock, send_timeout_s)

    @property
    def sent(self) -> int:
        return self.sent_direct + self.sent_queued

    # -- fan-out thread ----------------------------------------------------------------------
    def offer(self, kind: bytes, payload: bytes) -> None:
        """Deliver or buffer one message; before the first metadata, packets are skipped."""
        if not self.got_meta:
            if kind != META:
                self.skipped_before_meta += 1
                return
            self.got_meta = True
        if kind == b"meta" and self.channel_ids:
            self._unit_ids = msgpack.unpackb(payload, raw=False)["data"].get("unit_ids")
        if kind == b"meta" and not self.metadata:
            return
        if self.fmt == "msgpack" and not self.channel_ids and self._try_direct(payload):
            return
        with self._lock:
            self._pending.append((kind, payload))
            full = kind == PACKET and self._packets == self._capacity
            if full:
                self._drop_oldest_packet()
                self.dropped += 1
                self._burst += 1
            elif kind == PACKET:
                self._packets += 1
            first_of_burst = full and self._burst == 1
        self._wake.set()
        if first_of_burst:
            log.warning("client %d (session %s, %s) reads too slowly: its buffer of %d is full, "
                        "dropping its oldest packets", self.id, self.code, self.peer, self._capacity)

    def _drop_oldest_packet(self) -> None:
        """Remove the oldest queued packet (metadata and replies stay); called with the lock held."""
        for i, (kind, _) in enumerate(self._pending):
            if kind == PACKET:
                del self._pending[i]
                return

    def _try_direct(self, payload: bytes) -> bool:
        """Send now without blocking if nothing is queued; False if it must be queued instead."""
        if self._pending or self._handover is not None or self._close_request is not None:
            return False
        if not self._send_lock.acquire(blocking=False):
            return False                        # the writer (or a pong) is writing
        if self._locked.close_sent:
            self._send_lock.release()
            return True                         # closing: nothing more is sent
        data = frame(OP_BINARY, payload)
        try:
            sent = self._sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._send_lock.release()
            return True                         # the peer is gone; the writer will notice
        if sent == len(data):
            self._send_lock.release()
            self.sent_direct += 1
            return True
        if sent == 0:
            self._send_lock.release()
            return False
        self._handover = data[sent:]            # keep the lock: the writer finishes this frame
        self.sent_direct += 1
        self._wake.set()
        return True

    # -- any thread ----------------------------------------------------------------------------
    def request_close(self, code: int, reason: str) -> None:
        """Ask the writer to close the connection with ``code`` at its next wake-up."""
        if self._close_request is None:
            self._close_request = (code, reason)
        self._wake.set()

    def abort(self) -> None:
        """Shut the TCP connection down: unblocks a writer stuck sending to a stalled peer."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def queued(self) -> int:
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        return {"id": self.id, "session": self.code, "format": self.fmt, "filter": self.filter,
                "metadata": self.metadata,
                "peer": self.peer, "sent": self.sent, "sent_direct": self.sent_direct,
                "buffer_dropped": self.dropped,
                "queued": self.queued(), "connected_s": round(time.monotonic() - self.connected_at, 3)}

    # -- writer (the client's handler thread) --------------------------------------------------
    def run(self, meta_timeout_s: float) -> str:
        """Send until the peer leaves or a close is requested; returns why it ended."""
        meta_deadline = time.monotonic() + meta_timeout_s
        try:
            while True:
                self._wake.wait(_IDLE_CHECK_S)
                self._wake.clear()
                if not self.ws.connected:
                    return "client left"
                if not self._flush():
                    return "client left"
                if self._close_request is not None:
                    close(self.ws, *self._close_request)
                    return f"closed by the bridge ({self._close_request[0]} {self._close_request[1]})"
                self._take_messages()
                if not self.got_meta and time.monotonic() > meta_deadline:
                    reason = f"no metadata from the broker within {meta_timeout_s:g} s"
                    close(self.ws, CloseCode.UNAVAILABLE, reason)
                    return f"closed by the bridge ({int(CloseCode.UNAVAILABLE)} {reason})"
        finally:
            if self._relay is not None:
                self._relay.flush(self.ws.input_buffer)     # what came just before the close
                self._relay.close()
            if self._handover is not None:      # leaving mid-frame: free the lock we were handed
                self._handover = None
                self._send_lock.release()

    def _take_messages(self) -> None:
        """Relay what the client sent (predictions) and queue any answers for it."""
        inbox = self.ws.input_buffer
        if self._relay is None:
            inbox.clear()                       # nowhere to relay to; keep the buffer bounded
            return
        answers = []
        while inbox:
            reply = self._relay.handle(inbox.pop(0))
            if reply is not None:
                answers.append(msgpack.packb(reply, use_bin_type=True))
        answers += self._relay.replies()
        if answers:
            with self._lock:
                self._pending.extend((REPLY, answer) for answer in answers)
            self._wake.set()

    def _flush(self) -> bool:
        """Finish a handed-over frame, then send everything queued; False if the peer is gone."""
        rest = self._handover
        if rest is not None:
            self._handover = None               # we now own the send lock the fan-out kept
        elif not self._pending or not self._send_lock.acquire(timeout=0.05):
            return True
        try:
            if rest:
                send_within(self._sock, rest, self._send_timeout_s)
            for payload in self._take():
                if self._locked.close_sent:
                    return False
                send_within(self._sock, self._frame(payload), self._send_timeout_s)
                self.sent_queued += 1
        except OSError:                         # includes the send timeout (a stalled peer)
            self.abort()
            return False
        finally:
            self._send_lock.release()
        return True

    def _frame(self, payload: bytes) -> bytes:
        if self.channel_ids:
            return self._frame_with_ids(payload)
        if self.fmt == "msgpack":
            return frame(OP_BINARY, payload)
        return frame(OP_TEXT, to_json(payload).encode())

    def _frame_with_ids(self, payload: bytes) -> bytes:
        """A packet with ``spikes.channel_ids`` (the original server's field) added, re-encoded."""
        msg = msgpack.unpackb(payload, raw=False)
        if msg.get("type") == "data":
            msg["data"]["spikes"]["channel_ids"] = self._unit_ids
        if self.fmt == "msgpack":
            return frame(OP_BINARY, msgpack.packb(msg, use_bin_type=True))
        return frame(OP_TEXT, json.dumps(msg, separators=(",", ":")).encode())

    def _take(self) -> list[bytes]:
        with self._lock:
            batch = [payload for _, payload in self._pending]
            self._pending.clear()
            self._packets = 0
            burst, self._burst = self._burst, 0
        if burst:
            log.info("client %d (session %s) dropped %d packets in its last slow burst (%d in all)",
                     self.id, self.code, burst, self.dropped)
        return batch


class _LockedSocket:
    """The connection's socket as simple-websocket sees it: each ``send`` writes a whole frame
    under the send lock (the library itself writes with a single, possibly partial, send)."""

    def __init__(self, sock: socket.socket, lock: threading.Lock, timeout_s: float):
        self._sock = sock
        self._lock = lock
        self._timeout_s = timeout_s
        self.close_sent = False          # set under the lock once a Close frame went out

    def send(self, data: bytes) -> int:
        with self._lock:
            if self.close_sent:
                return len(data)         # nothing after a Close (RFC 6455 5.5.1)
            send_within(self._sock, data, self._timeout_s)
            self.close_sent = has_close_frame(data)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def has_close_frame(data: bytes) -> bool:
    """Whether a run of whole server frames (unmasked, as simple-websocket writes them) holds a Close."""
    at = 0
    while at + 2 <= len(data):
        if data[at] & 0x0F == OP_CLOSE:
            return True
        n, at = data[at + 1] & 0x7F, at + 2
        if n == 126:
            n, at = struct.unpack_from("!H", data, at)[0], at + 2
        elif n == 127:
            n, at = struct.unpack_from("!Q", data, at)[0], at + 8
        at += n
    return False


def send_within(sock: socket.socket, data: bytes, idle_s: float) -> None:
    """Send all of ``data``; TimeoutError if the peer takes nothing for ``idle_s`` seconds.

    Non-blocking sends plus poll for writability, so no thread ever waits on a stalled peer for
    longer than ``idle_s`` (the socket itself stays blocking for simple-websocket's reader)."""
    view = memoryview(data)
    poller = None
    while view:
        try:
            view = view[sock.send(view, socket.MSG_DONTWAIT):]
            continue
        except BlockingIOError:
            pass
        if poller is None:
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
        if not poller.poll(idle_s * 1000):
            raise TimeoutError(f"the peer took no data for {idle_s:g} s")


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
