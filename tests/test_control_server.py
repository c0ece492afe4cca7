"""How control's server hands answers over (what its REST latency depends on), checked from outside
on a real control process, and the app's refusal of views it cannot run fast."""
from __future__ import annotations

import socket

import pytest

from control import app as control_app
from control import create_app
from control_support import create, stack  # noqa: F401  (module fixture)
from protocol.config import load_config


def _first_read(sock: socket.socket, request: bytes) -> tuple[bytes, int]:
    """Send one request; what the first recv() returns, and the whole answer's length."""
    sock.sendall(request)
    first = sock.recv(1 << 16)
    head, _, body = first.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    got = len(body)
    while got < length:                 # read the rest, if it came later, so the next one starts clean
        got += len(sock.recv(1 << 16))
    return first, len(head) + 4 + length


def test_a_json_answer_arrives_in_one_piece(stack):
    """Headers and body leave in one send(): the client's first read holds the whole answer (with
    separate sends it often holds the headers alone and the client waits again for the body)."""
    http, _ = stack
    create(http, "one-piece", paused=True)
    requests = [b"GET /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                b"POST /api/control/one-piece/resume HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: 0\r\n\r\n",
                b"POST /api/control/one-piece/pause HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: 0\r\n\r\n",
                b"GET /api/sessions/one-piece HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"]
    split = []
    with socket.create_connection((http.host, http.port), timeout=10) as sock:
        for i in range(120):
            first, whole = _first_read(sock, requests[i % len(requests)])
            assert first.startswith(b"HTTP/1.1 200"), first[:100]
            if len(first) < whole:
                split.append((i, len(first), whole))
    assert not split, f"answers read in pieces (request, first read, whole): {split[:5]}"


def test_async_views_are_refused_at_start_up():
    """ControlApp runs views as they are (no per-call async check), so an async one must not slip
    in: the check create_app makes refuses it."""
    app = create_app(load_config({}))       # every declared view and hook is plain: no error
    broker = app.extensions["phantomlink"]["broker"]
    try:
        @app.get("/async-probe")
        async def probe():
            return {}

        with pytest.raises(TypeError, match="async"):
            control_app._check_sync(app)
    finally:
        broker.close()
