"""The control plane's side of the broker's REQ/REP channel: one command in, one result or error out.

BrokerClient follows the zguide's Lazy Pirate pattern:

- each calling thread has its own REQ socket (a socket belongs to one thread; waitress serves every
  request on one of a fixed pool of threads, so the number of sockets is bounded by the pool);
- every reply is awaited with ``poll(timeout)``; on silence the socket is closed with ``linger=0``,
  which discards the unsent request, so a request that timed out can never reach a broker that
  comes back later; the thread's next attempt gets a fresh socket;
- a command whose repetition is harmless (reads, and setters whose end state does not depend on
  how often they run) is retried on a fresh socket while the overall budget lasts; `create`,
  `delete` and `cleanup` are sent at most once, because a late first copy plus a retry would do
  the work twice;
- the whole call is bounded by ``max(budget_ms, timeout_ms)`` (1.2 s with the default 1 s
  timeout: one full attempt and a short retry): past it, CommandError(UNAVAILABLE), which control
  answers as 503.

Errors (all CommandError, from protocol.commands):
    UNAVAILABLE  the broker did not answer within the budget (it may be down or stuck)
    any other    the broker's own error reply, code and message passed through
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import zmq

from protocol import CommandError, ErrorCode, curve, encode_request, parse_reply

# Commands that may be sent twice without changing the outcome (see the module docstring).
IDEMPOTENT = frozenset({
    "ping", "dataset", "get", "list", "metrics", "trials", "trial",
    "pause", "resume", "seek", "speed", "loop", "filter", "noise",
})

MAX_ATTEMPTS = 3

# Every request answers within this, broker up or down (the 503 bound is 1.5 s end to end).
DEFAULT_BUDGET_MS = 1200


class BrokerClient:
    """Sends commands to the broker's REP endpoint; safe to call from many threads at once."""

    def __init__(self, endpoint: str, timeout_ms: int = 1000, budget_ms: int = DEFAULT_BUDGET_MS,
                 context: zmq.Context | None = None, curve_dir: Path | None = None):
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self.budget_ms = max(budget_ms, timeout_ms)
        self._ctx = curve.client_context(curve_dir, context)   # CURVE client sockets if configured
        self._own_ctx = context is None
        self._local = threading.local()
        self._closed = False
        self._check_endpoint()

    def _check_endpoint(self) -> None:
        """Fail at start-up, not on the first request, if ZeroMQ cannot parse the endpoint."""
        probe = self._ctx.socket(zmq.REQ)
        try:
            probe.connect(self.endpoint)
        except zmq.ZMQError as exc:
            if self._own_ctx:
                self._ctx.destroy(linger=0)
            raise ValueError(f"cannot use broker endpoint {self.endpoint!r}: {exc}") from None
        finally:
            probe.close(linger=0)

    def request(self, cmd: str, args: dict[str, Any] | None = None,
                budget_ms: int | None = None) -> Any:
        """Send one command and return its result; CommandError on an error reply or silence."""
        if self._closed:
            raise CommandError(ErrorCode.UNAVAILABLE, "control is shutting down")
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
        """One send + poll on this thread's socket; None (socket discarded) on silence."""
        start = time.monotonic()
        try:
            sock = self._socket()
            sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
            sock.send(frame)
            left_ms = timeout_ms - int((time.monotonic() - start) * 1000)
            if sock.poll(max(left_ms, 1), zmq.POLLIN):
                return sock.recv()
        except zmq.ZMQError:
            pass
        self._discard()
        return None

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._local.sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
        return sock

    def _discard(self) -> None:
        # linger=0 drops the unanswered request: it is never delivered to a restarted broker.
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close(linger=0)
        self._local.sock = None

    def close(self) -> None:
        """Close every socket (call once the serving threads have stopped)."""
        self._closed = True
        if self._own_ctx:
            self._ctx.destroy(linger=0)
        else:
            self._discard()
