"""The WebSocket bridge's Flask app: ``create_app(config)``, its routes and the process-wide Bridge.

Routes:
- ``/stream/<code>`` (WebSocket): ``?format=msgpack`` binary frames (the broker's payload bytes
  unchanged) or ``?format=json`` text frames; without ``?format=``, JSON for a handshake with an
  ``Origin`` header (a browser), msgpack otherwise, packets only unless ``?metadata=true``;
  ``?target_id=`` / ``?trial_id=`` filter the session.
- ``/stream/binary/<code>`` (WebSocket): always msgpack.
- ``/stream`` (WebSocket): a fresh session for this connection, deleted when it closes.
- ``GET /health``: clients, per-client counters and drops of this worker process.

With metadata on (an explicit format, or ?metadata=true), the first message of a stream is the
session's metadata. See docs/ws.md and docs/protocol.md (the format rule).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Any

import zmq
from flask import Flask, jsonify, request
from flask_sock import Sock

from bridges.ws.admission import CloseCode, Creation, Refused, parse_stream_request, prepare_session
from bridges.ws.client import Client, close
from bridges.ws.feedback import PredictionRelay
from bridges.ws.fanout import FanOut
from bridges.ws import guard
from protocol import CommandError, curve
from protocol.client import BrokerClient
from protocol.config import Config
from protocol.memory import Trimmer

log = logging.getLogger("bridges.ws")

META_TIMEOUT_S = 5.0        # a client that got no metadata by then is closed with 4503
PING_INTERVAL_S = 25        # simple-websocket's recommendation


class Bridge:
    """Process-wide state: the ZeroMQ context, the fan-out thread and the registry of clients."""

    def __init__(self, config: Config):
        self.config = config
        self.ctx = curve.client_context(config.curve_dir)    # CURVE client sockets if configured
        self.ctx.setsockopt(zmq.LINGER, 0)
        self.ctx.set(zmq.MAX_SOCKETS, 8192)      # one SUB per client; the default 1023 caps clients
        self.fanout = FanOut(self.ctx, config.pub_endpoint, on_death=_stop_worker,
                             on_deleted=self.forget_created)
        self.broker = BrokerClient(config.control_endpoint, config.control_timeout_ms,
                                   context=self.ctx)
        # Sessions this worker created on a client's behalf, by client address (bounded by
        # PHANTOM_MAX_SESSIONS_PER_CLIENT); a code leaves its set when the session is deleted.
        self._created: dict[str, set[str]] = {}
        self.slots = guard.Slots(config.ws_max_per_address, config.ws_max_clients)
        self._clients: dict[int, Client] = {}
        self._lock = threading.Lock()
        # Filtered connections are admitted one at a time, so two clients asking for different
        # filters on an idle session cannot both see it unused.
        self.filter_lock = threading.Lock()
        self._departed = {"sent": 0, "dropped": 0, "clients": 0}
        self.closing = False
        self._shutdown_once = threading.Lock()
        # Freed messages and client buffers go back to the system (protocol.memory).
        self.trimmer = Trimmer()

    def start(self) -> None:
        self.fanout.start()
        self.trimmer.start()

    def may_create(self, address: str) -> bool:
        if guard.is_loopback_ip(address):
            return True                     # this machine's users: the broker's limit only
        with self._lock:
            return len(self._created.get(address, ())) < self.config.max_sessions_per_client

    def note_created(self, address: str, code: str) -> None:
        with self._lock:
            self._created.setdefault(address, set()).add(code)

    def forget_created(self, code: str) -> None:
        with self._lock:
            for address in [a for a, codes in self._created.items() if code in codes]:
                self._created[address].discard(code)
                if not self._created[address]:
                    del self._created[address]

    def in_use(self, code: str) -> bool:
        with self._lock:
            return any(c.code == code for c in self._clients.values())

    def attach(self, client: Client) -> None:
        with self._lock:
            self._clients[client.id] = client
        self.fanout.add(client)

    def detach(self, client: Client) -> None:
        self.fanout.remove(client)
        with self._lock:
            self._clients.pop(client.id, None)
            self._departed["sent"] += client.sent
            self._departed["dropped"] += client.dropped
            self._departed["clients"] += 1

    def clients(self) -> list[Client]:
        with self._lock:
            return list(self._clients.values())

    def health(self) -> dict[str, Any]:
        clients = self.clients()
        with self._lock:
            departed = dict(self._departed)
        sessions: dict[str, int] = {}
        for c in clients:
            sessions[c.code] = sessions.get(c.code, 0) + 1
        status = "closing" if self.closing else ("ok" if self.fanout.alive() else "failed")
        return {
            "status": status, "service": "bridges.ws", "pid": os.getpid(),
            "clients": len(clients), "sessions": sessions,
            "packets_sent": departed["sent"] + sum(c.sent for c in clients),
            "buffer_dropped_packets": departed["dropped"] + sum(c.dropped for c in clients),
            "clients_served": departed["clients"] + len(clients),
            "buffer_packets": self.config.ws_buffer_packets,
            "clients_detail": [c.stats() for c in clients],
        }

    def shutdown(self, grace_s: float = 2.0) -> None:
        """Close every client with 1001, cut the ones that do not go within ``grace_s``, stop.

        Runs once: gunicorn's worker can be signalled twice (by its arbiter and by a launcher that
        signals the whole process group); later calls return at once."""
        if not self._shutdown_once.acquire(blocking=False):
            return
        self.closing = True
        clients = self.clients()
        for c in clients:
            c.request_close(CloseCode.GOING_AWAY, "bridge shutting down")
        deadline = time.monotonic() + grace_s
        while self.clients() and time.monotonic() < deadline:
            threading.Event().wait(0.02)
        for c in self.clients():
            c.abort()       # stuck sending to a stalled peer
        self.fanout.stop()
        self.trimmer.stop()
        self.broker.close()
        log.info("bridge stopped (%d clients closed)", len(clients))


def _stop_worker() -> None:
    """The fan-out thread died: stop this worker the way a SIGTERM does (gunicorn replaces it)."""
    os.kill(os.getpid(), signal.SIGTERM)


def create_app(config: Config) -> Flask:
    """The Flask app; starts the bridge's fan-out thread (call once per process, after any fork)."""
    app = Flask(__name__)
    # Pings find peers that vanished without closing (their subscription would otherwise stay):
    # no pong by the next ping closes the connection (1008).
    # Inbound messages past the limit close the connection with 1009 (simple-websocket counts
    # every frame of a message; compression is off, see bridges.ws.guard).
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": PING_INTERVAL_S,
                                         "max_message_size": config.ws_max_message_bytes}
    bridge = Bridge(config)
    app.extensions["phantom_ws"] = bridge
    guard.install(app, config, bridge.slots)
    sock = Sock(app)

    @sock.route("/stream/<code>")
    def stream(ws, code):
        serve_stream(bridge, ws, code, binary_only=False)

    @sock.route("/stream")
    def stream_fresh(ws):
        serve_stream(bridge, ws, None, binary_only=False)

    @sock.route("/stream/binary/<code>")
    def stream_binary(ws, code):
        serve_stream(bridge, ws, code, binary_only=True)

    @app.get("/health")
    def health():
        return jsonify(bridge.health())

    bridge.start()
    return app


def serve_stream(bridge: Bridge, ws: Any, code: str | None, binary_only: bool) -> None:
    """One WebSocket connection from admission to close (runs in its handler thread).

    It must never raise: Flask would answer an exception with an HTTP 500 written onto the
    upgraded connection, which the client reads as a corrupt frame.
    """
    try:
        _serve_stream(bridge, ws, code, binary_only)
    except Exception:
        log.exception("WebSocket handler failed for %s", guard.logged_path())
        close(ws, CloseCode.INTERNAL, "internal error in the bridge")


def _serve_stream(bridge: Bridge, ws: Any, code: str | None, binary_only: bool) -> None:
    config = bridge.config
    if bridge.closing:
        close(ws, CloseCode.GOING_AWAY, "bridge shutting down")
        return
    try:
        query = request.args.to_dict(flat=False)
        query.pop("token", None)            # checked by the guard before the upgrade
        req = parse_stream_request(code, query, binary_only, request.headers.get("Origin"))
        lock = bridge.filter_lock if req.filter is not None and code else contextlib.nullcontext()
        with lock:
            address = guard.client_address()
            creation = Creation(lambda: bridge.may_create(address),
                                lambda made: bridge.note_created(address, made))
            session = prepare_session(bridge.broker, req, code is not None and bridge.in_use(code),
                                      creation)
            req = dataclasses.replace(req, code=str(session["code"]))
            relay = PredictionRelay(bridge.ctx, config.feedback_endpoint, req.code)
            client = Client(ws, req, config.ws_buffer_packets, address, relay,
                            config.ws_send_timeout_s)
            bridge.attach(client)
    except Refused as exc:
        log.info("refused %s from %s: %d %s", guard.logged_path(), guard.client_address(),
                 exc.code, exc.reason)
        close(ws, exc.code, exc.reason)
        return
    log.info("client %d joined session %s (%s%s) from %s", client.id, client.code, client.fmt,
             f", filter {req.filter}" if req.filter else "", client.peer)
    try:
        why = client.run(META_TIMEOUT_S)
    finally:
        bridge.detach(client)
        if code is None:
            _delete_fresh(bridge, client.code)
    log.info("client %d left session %s after %.1f s: %s; sent %d, dropped %d", client.id,
             client.code, time.monotonic() - client.connected_at, why, client.sent, client.dropped)


def _delete_fresh(bridge: Bridge, code: str) -> None:
    """``/stream`` made this session for its connection alone: it goes with the connection."""
    try:
        bridge.broker.call("delete", code=code)
    except CommandError as exc:
        log.info("fresh session %s not deleted: %s", code, exc)
