"""Who may talk to PhantomLink's HTTP servers: the token, Host and Origin rules shared by control and
the WebSocket bridge (docs/security.md). Pure functions over header values; each server hooks them in.

- Token: when ``PHANTOM_AUTH_TOKEN`` (or ``_FILE``) is set, requests carry
  ``Authorization: Bearer <token>`` (WebSocket clients may use ``?token=`` instead); compared in
  constant time.
- Host (DNS rebinding): while a server binds a loopback address, or whenever
  ``PHANTOM_ALLOWED_HOSTS`` is set, the Host header must be a loopback name or one of those hosts.
- Origin: a browser request's ``Origin`` must be the server's own origin (same host as the request's
  Host, or ``PHANTOM_PUBLIC_HOST``), a loopback origin on any port, or in ``PHANTOM_ALLOWED_ORIGINS``.
  A request without ``Origin`` (a script) passes this check.
"""
from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache
from urllib.parse import urlsplit

from protocol.config import Config

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


@lru_cache(maxsize=4096)      # asked on every request; parsing an address costs ~10 us
def is_loopback_host(host: str) -> bool:
    """``localhost``, ``*.localhost`` (RFC 6761), 127.0.0.0/8 or ::1; ``host`` without a port."""
    host = host.strip().lower().rstrip(".")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The host part of a Host header (``example.org:8000`` -> ``example.org``, ``[::1]:80`` -> ``::1``)."""
    text = host_header.strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def host_allowed(config: Config, host_header: str | None, bound_host: str) -> bool:
    """Whether a request with this Host header may be served (DNS-rebinding protection)."""
    allowed = config.allowed_hosts
    if "*" in allowed or (not allowed and not is_loopback_host(bound_host)):
        return True                         # bound to a public interface with no list: no check
    if not host_header:
        return False                        # HTTP/1.1 requires Host; a rebinding page always sends one
    name = host_name(host_header)
    return is_loopback_host(name) or name in allowed


def origin_allowed(config: Config, origin: str | None, host_header: str | None) -> bool:
    """Whether a request carrying this Origin header may be served (no Origin: yes)."""
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    if "*" in config.allowed_origins or origin in config.allowed_origins:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False                        # includes the opaque origin "null"
    own = {config.public_host.lower()}
    if host_header:
        own.add(host_name(host_header))
    return is_loopback_host(parts.hostname) or parts.hostname in own


def token_required(config: Config) -> bool:
    return bool(config.auth_token)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def token_ok(config: Config, given: str | None) -> bool:
    """Constant-time comparison of the presented token with the configured one."""
    if not config.auth_token:
        return True
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               config.auth_token.encode("utf-8"))
