"""The WebSocket bridge's handshake guard: every check that refuses a connection with an HTTP status
before the upgrade, and the per-address and per-worker connection slots.

In order: Host (403, DNS rebinding), a WebSocket upgrade at all (400), Origin (403), token (401, from
``Authorization: Bearer`` or ``?token=``), then a connection slot (429 past
``PHANTOM_WS_MAX_PER_ADDRESS`` for the client's address (clients on this machine share the loopback
address and are bounded by the worker limit only), 503 past ``PHANTOM_WS_MAX_CLIENTS`` for the
worker), both with ``Retry-After``. The slot is released when the connection's request ends.
Compression is switched off by hiding the client's ``Sec-WebSocket-Extensions`` offer, so an
inbound message's size is its size on the wire (bounded by ``PHANTOM_WS_MAX_MESSAGE_BYTES``).
"""
from __future__ import annotations

import ipaddress
import json
import threading

from flask import Flask, Response, g, request

from protocol import access
from protocol.config import Config

RETRY_AFTER_S = "5"
STREAM_PREFIX = "/stream/"


class Slots:
    """Connection counts per client address and in all; ``take`` refuses past either bound."""

    def __init__(self, per_address: int, total: int):
        self.per_address = per_address
        self.total = total
        self._by_address: dict[str, int] = {}
        self._count = 0
        self._lock = threading.Lock()

    def take(self, address: str) -> tuple[int, str] | None:
        """Reserve a slot for ``address``; None, or the (status, reason) of the refusal."""
        with self._lock:
            if self._count >= self.total:
                return 503, f"this bridge worker serves its maximum of {self.total} clients"
            held = self._by_address.get(address, 0)
            if held >= self.per_address and not is_loopback_ip(address):
                return 429, f"{address} already has {held} connections (PHANTOM_WS_MAX_PER_ADDRESS)"
            self._by_address[address] = held + 1
            self._count += 1
        return None

    def give_back(self, address: str) -> None:
        with self._lock:
            held = self._by_address.get(address, 0) - 1
            if held > 0:
                self._by_address[address] = held
            else:
                self._by_address.pop(address, None)
            self._count = max(0, self._count - 1)

    def count(self) -> int:
        return self._count


def client_address() -> str:
    """The client's address; behind a proxy on loopback (the front door), the address it forwards."""
    peer = request.remote_addr or "?"
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded and is_loopback_ip(peer):
        last = forwarded.split(",")[-1].strip()
        if last:
            return last[:64]
    return peer


def is_loopback_ip(text: str) -> bool:
    """Clients on this machine share one address: only the worker bound applies to them."""
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def install(app: Flask, config: Config, slots: Slots) -> None:
    """Hook the checks before every request and release the slot when the request ends."""

    @app.before_request
    def _guard() -> Response | None:
        refusal = check(config)
        if refusal is not None or not request.path.startswith(STREAM_PREFIX):
            return refusal
        address = client_address()
        full = slots.take(address)
        if full is not None:
            resp = _error(full[0], "limit", full[1])
            resp.headers["Retry-After"] = RETRY_AFTER_S
            return resp
        g.ws_slot = address
        request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)      # no permessage-deflate
        return None

    @app.teardown_request
    def _release(exc: BaseException | None) -> None:
        address = g.pop("ws_slot", None)
        if address is not None:
            slots.give_back(address)


def check(config: Config) -> Response | None:
    """The HTTP refusal for the current request, or None."""
    host = request.headers.get("Host")
    if not access.host_allowed(config, host, config.host):
        return _error(403, "forbidden", f"Host {str(host)[:80]!r} is not served here; "
                                        "add it to PHANTOM_ALLOWED_HOSTS")
    if not request.path.startswith(STREAM_PREFIX):
        return None
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return _error(400, "bad_request", "this is a WebSocket endpoint: send an Upgrade request")
    origin = request.headers.get("Origin")
    if not access.origin_allowed(config, origin, host):
        return _error(403, "forbidden", f"Origin {origin[:80]!r} is not allowed; "
                                        "add it to PHANTOM_ALLOWED_ORIGINS")
    given = access.bearer(request.headers.get("Authorization")) or request.args.get("token")
    if not access.token_ok(config, given):
        resp = _error(401, "unauthorized", "missing or wrong access token: send "
                                           "`Authorization: Bearer <token>` or `?token=<token>`")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="PhantomLink"'
        return resp
    return None


def _error(status: int, code: str, message: str) -> Response:
    return Response(json.dumps({"error": {"code": code, "message": message}}), status,
                    mimetype="application/json")


def logged_path() -> str:
    """The request's path and query for log lines, with any token replaced."""
    if "token" not in request.args:
        return request.full_path
    query = "&".join(f"{k}={'<hidden>' if k == 'token' else v}"
                     for k, values in request.args.lists() for v in values)
    return f"{request.path}?{query}"
