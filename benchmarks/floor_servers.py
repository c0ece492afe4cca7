"""Servers for benchmarks/bench_control_floor.py: each answers GET /api/sessions with what control
answers, doing one layer of control's work less than the next.

    python benchmarks/floor_servers.py RUNG --broker ENDPOINT

RUNG is one of ``RUNGS``. Every rung listens on an OS-chosen loopback port and prints
``READY floor rung=RUNG url=http://127.0.0.1:PORT``; SIGTERM stops it.

- ``socket``: one thread, a blocking socket: read the request, send a canned answer (the body
  control gave for this broker's sessions at start-up). The client's and the kernel's share.
- ``waitress``: waitress with control's settings and a bare WSGI callable sending the canned
  answer: waitress's I/O thread, its hand-off to a worker thread and back.
- ``waitress_broker``: the same callable asks the broker (``list``, through the
  ``protocol.client.BrokerClient`` control uses), shapes the sessions as control does
  (``control.shapes``) and encodes JSON: everything control does but the web framework.
- ``flask``: a plain Flask app (no flask-openapi3, no guard, no metrics) with one route doing
  the same: Flask's own share.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import waitress  # noqa: E402
from flask import Flask  # noqa: E402

from control import shapes  # noqa: E402
from control.__main__ import SEND_BYTES, THREADS  # noqa: E402
from protocol.client import BrokerClient  # noqa: E402
from protocol.config import load_config  # noqa: E402

RUNGS = ("socket", "waitress", "waitress_broker", "flask")
HEADERS = [("Content-Type", "application/json")]


def _answer(client: BrokerClient, config) -> bytes:
    # separators as Flask's JSON provider writes them, so the body has control's size
    return json.dumps(shapes.session_list(client.request("list")["sessions"], config),
                      separators=(",", ":")).encode()


def _serve_socket(body: bytes) -> None:
    response = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/json\r\n"
                b"Server: floor\r\n\r\n" % len(body)) + body
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"READY floor rung=socket url=http://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                pending += data
                while b"\r\n\r\n" in pending:         # GETs only: no body to read
                    _, pending = pending.split(b"\r\n\r\n", 1)
                    conn.sendall(response)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rung", choices=RUNGS)
    parser.add_argument("--broker", required=True, help="the broker's REQ endpoint")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    config = load_config({})
    client = BrokerClient(args.broker)
    body = _answer(client, config)
    if args.rung == "socket":
        _serve_socket(body)
        return 0

    def canned(environ, start_response):
        start_response("200 OK", HEADERS + [("Content-Length", str(len(body)))])
        return [body]

    def with_broker(environ, start_response):
        answer = _answer(client, config)
        start_response("200 OK", HEADERS + [("Content-Length", str(len(answer)))])
        return [answer]

    flask_app = Flask("floor")

    @flask_app.get("/api/sessions")
    def sessions():
        return shapes.session_list(client.request("list")["sessions"], config)

    app = {"waitress": canned, "waitress_broker": with_broker, "flask": flask_app}[args.rung]
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=THREADS,
                                    send_bytes=SEND_BYTES, clear_untrusted_proxy_headers=True)
    print(f"READY floor rung={args.rung} url=http://127.0.0.1:{server.effective_port}", flush=True)
    try:
        server.run()
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
