"""Control's request guard: Host, Origin, token and Content-Type checks, and the CORS policy.

Installed as app-level ``before_request``/``after_request`` hooks, so every route (whatever
Blueprint or framework declares it) passes through them before its view runs. Refusals use the
usual error shape (control.errors): 403 ``forbidden`` (Host or Origin not allowed), 401
``unauthorized`` (token missing or wrong, with ``WWW-Authenticate: Bearer``), 415
``unsupported_media_type`` (a body that is not ``application/json``). docs/security.md explains the
rules; protocol/access.py implements them.

The checks run on every request, so they read the WSGI environ (one dict look-up per header)
rather than Flask's header proxies; a request that passes costs a few microseconds.
"""
from __future__ import annotations

from flask import Flask, Request, Response, request

from control.errors import error_response
from protocol import access
from protocol.config import Config

# Served without a token (contract 7): pages and their static assets hold no session data; the
# API calls the pages make carry the token. /health is for load balancers.
OPEN_PATHS = ("/health", "/docs", "/openapi.json", "/dashboard")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CORS_HEADERS = "Authorization, Content-Type"
CORS_METHODS = "GET, POST, DELETE"
CORS_MAX_AGE_S = "600"


def is_open(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPEN_PATHS)


def install(app: Flask, config: Config) -> None:
    """Hook the checks into ``app`` (before every view) and the CORS headers (after)."""

    @app.before_request
    def _guard() -> Response | None:
        return refusal(config)

    if config.cors_origins:     # else no response ever carries CORS headers: no hook at all
        @app.after_request
        def _cors(resp: Response) -> Response:
            return add_cors(config, resp)


def refusal(config: Config) -> Response | None:
    """The error response for the current request, or None if it may proceed."""
    req: Request = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    environ = req.environ
    host = environ.get("HTTP_HOST")
    if not access.host_allowed(config, host, config.host):
        return error_response(403, "forbidden", f"Host {str(host)[:80]!r} is not served here; "
                                                "add it to PHANTOM_ALLOWED_HOSTS")
    origin = environ.get("HTTP_ORIGIN")
    method = req.method
    if method in UNSAFE_METHODS and not _origin_ok(config, origin, host):
        return error_response(403, "forbidden", f"Origin {str(origin)[:80]!r} may not change "
                                                "sessions; add it to PHANTOM_ALLOWED_ORIGINS")
    if method != "OPTIONS" and access.token_required(config) and not is_open(req.path):
        given = access.bearer(environ.get("HTTP_AUTHORIZATION"))
        if not access.token_ok(config, given):
            resp = error_response(401, "unauthorized", "missing or wrong access token: send "
                                                       "`Authorization: Bearer <token>`")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="PhantomLink"'
            return resp
    if _has_body(req) and req.mimetype != "application/json":
        return error_response(415, "unsupported_media_type",
                              f"a request body must be JSON with `Content-Type: application/json`, "
                              f"got {req.content_type or 'no Content-Type'!r}"[:200])
    return None


def _origin_ok(config: Config, origin: str | None, host: str | None) -> bool:
    return access.origin_allowed(config, origin, host) or _cors_allows(config, origin)


def _has_body(req: Request) -> bool:
    environ = req.environ
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", ""):
        return True
    return environ.get("CONTENT_LENGTH", "") not in ("", "0") and bool(req.content_length)


def _cors_allows(config: Config, origin: str | None) -> bool:
    if not origin or not config.cors_origins:
        return False
    return "*" in config.cors_origins or origin.strip().lower().rstrip("/") in config.cors_origins


def add_cors(config: Config, resp: Response) -> Response:
    """CORS headers for an allowed cross-origin caller (none unless PHANTOM_CORS_ORIGINS is set)."""
    origin = request.environ.get("HTTP_ORIGIN")
    if not _cors_allows(config, origin):
        return resp
    resp.headers["Access-Control-Allow-Origin"] = origin
    resp.headers.add("Vary", "Origin")
    if request.method == "OPTIONS":
        resp.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        resp.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        resp.headers["Access-Control-Max-Age"] = CORS_MAX_AGE_S
    return resp
