"""The one way every PhantomLink process sends a command to the broker: BrokerClient.

``BrokerClient(endpoint, timeout_ms).request(cmd, args)`` returns the command's result, or raises
CommandError: the broker's own error code and message, or ``unavailable`` when it did not answer
within the budget. It is safe to call from many threads at once, and follows the zguide's Lazy
Pirate pattern with persistent sockets:

- a pool of REQ sockets, each connected once and reused while the broker answers (connecting a
  fresh socket per request costs a TCP handshake and a ZMTP greeting: about 0.1 ms on loopback);
  a thread takes an idle socket from the pool for one request and gives it back after the reply,
  so the pool holds at most as many sockets as requests were ever in flight at once;
- every reply is awaited with ``poll(timeout)``;
- on silence the socket is closed with ``linger=0``, which discards the unanswered request: a
  request that timed out is **never delivered late** to a broker that comes back; it is never
  returned to the pool, so a late reply can never be read as the answer to another request;
- a command whose repetition is harmless (reads, and setters whose end state does not depend on
  how often they run: IDEMPOTENT) is retried on a fresh socket while the budget lasts; others
  (``create``, ``delete``, ``cleanup``) are sent once, since a late first copy plus a retry would
  do the work twice;
- the whole call is bounded by ``max(budget_ms, timeout_ms)``.

docs/protocol.md ("Commands") describes the requests and replies; this module only carries them.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import zmq

from protocol import curve
from protocol.commands import CommandError, ErrorCode, encode_request, parse_reply

# Commands that may be sent twice without changing the outcome (see the module docstring).
IDEMPOTENT = frozenset({
    "ping", "dataset", "get", "list", "metrics", "trials", "trial",
    "pause", "resume", "seek", "speed", "loop", "filter", "noise", "lsl", "touch",
    "perturbations", "set_perturbations", "clear_perturbations", "perturbation_kinds",
})

MAX_ATTEMPTS = 3
DEFAULT_TIMEOUT_MS = 1000
# Every request answers within this, broker up or down (control's 503 bound is 1.5 s end to end).
DEFAULT_BUDGET_MS = 1200
# Idle sockets kept for reuse; beyond this, a returned socket is closed.
POOL_MAX = 32


class BrokerClient:
    """Sends commands to the broker's REP endpoint; safe to call from many threads at once."""

    def __init__(self, endpoint: str, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 budget_ms: int = DEFAULT_BUDGET_MS, context: zmq.Context | None = None,
                 curve_dir: Path | None = None):
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self.budget_ms = max(budget_ms, timeout_ms)
        # CURVE client sockets when configured (a given context is left as its owner set it up)
        self._ctx = context if context is not None else curve.client_context(curve_dir)
        self._own_ctx = context is None
        self._idle: list[zmq.Socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._check_endpoint()

    def _check_endpoint(self) -> None:
        """Fail at start-up, not on the first request, if ZeroMQ cannot parse the endpoint."""
        probe = self._ctx.socket(zmq.REQ)
        try:
            probe.connect(self.endpoint)
        except zmq.ZMQError as exc:
            probe.close(linger=0)
            if self._own_ctx:
                self._ctx.destroy(linger=0)
            raise ValueError(f"cannot use broker endpoint {self.endpoint!r}: {exc}") from None
        probe.setsockopt(zmq.LINGER, 0)
        self._idle.append(probe)        # connected and unused: the pool's first socket

    def call(self, cmd: str, **args: Any) -> Any:
        """``request(cmd, args)`` with the arguments as keywords."""
        return self.request(cmd, args)

    def request(self, cmd: str, args: dict[str, Any] | None = None,
                budget_ms: int | None = None) -> Any:
        """Send one command and return its result; CommandError on an error reply or silence."""
        if self._closed:
            raise CommandError(ErrorCode.UNAVAILABLE, "the broker client is closed")
        try:
            frame = encode_request(cmd, args)
        except (ValueError, OverflowError, TypeError) as exc:  # too deep, too big: msgpack refuses
            raise CommandError(ErrorCode.BAD_REQUEST, f"cannot encode `{cmd}`: {exc}") from None
        budget = self.budget_ms if budget_ms is None else min(budget_ms, self.budget_ms)
        deadline = time.monotonic() + budget / 1000
        attempts = 0
        while True:
            attempts += 1
            left_ms = int((deadline - time.monotonic()) * 1000)
            reply = self._attempt(frame, max(1, min(self.timeout_ms, left_ms)))
            if reply is not None:
                return parse_reply(reply)
            if (cmd not in IDEMPOTENT or attempts >= MAX_ATTEMPTS
                    or deadline - time.monotonic() < 0.005):
                raise CommandError(
                    ErrorCode.UNAVAILABLE,
                    f"broker at {self.endpoint} did not answer `{cmd}` within {budget} ms "
                    f"({attempts} attempt{'s' if attempts > 1 else ''})")

    def _attempt(self, frame: bytes, timeout_ms: int) -> bytes | None:
        """One send and wait on a pooled socket; None (the socket closed, linger 0) on silence."""
        sock = self._checkout()
        try:
            sock.send(frame, zmq.NOBLOCK)
            if sock.poll(timeout_ms, zmq.POLLIN):
                reply = sock.recv()
                self._checkin(sock)
                return reply
        except zmq.ZMQError:
            pass
        sock.close(linger=0)        # the unanswered request dies with it
        return None

    def _checkout(self) -> zmq.Socket:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def _checkin(self, sock: zmq.Socket) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < POOL_MAX:
                self._idle.append(sock)
                return
        sock.close(linger=0)

    def close(self) -> None:
        """Close every idle socket (and the context if this client made it); later requests fail."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close(linger=0)
        if self._own_ctx:
            self._ctx.destroy(linger=0)
