"""Topics and msgpack framing of the broker's data stream (XPUB -> SUB).

Frames on the data socket are always two parts: ``[topic, payload]``.

- ``session/<code>/packet``: one bin of one session (payload ``{"type": "data", ...}``)
- ``session/<code>/meta``: that session's stream metadata (payload ``{"type": "metadata", ...}``)
- ``events/session``: lifecycle of every session (payload ``{"type": "session_event", ...}``)

The ``/`` after the code makes ``session/abc/`` a prefix of abc's topics only, never of ``abcd``'s.
"""
from __future__ import annotations

import re
from typing import Any

import msgpack

PROTOCOL_VERSION = 1

SESSION_PREFIX = b"session/"
KIND_PACKET = "packet"
KIND_META = "meta"
KINDS = (KIND_PACKET, KIND_META)
EVENTS_TOPIC = b"events/session"

CODE_MAX_LEN = 64
# The longest prefix that can name a topic (``session/<64 characters>/packet``): 79 bytes. ZeroMQ
# drops a data connection that sends a frame over MAX_SUBSCRIPTION_FRAME bytes (its handshake,
# CURVE's included, fits), so no subscription ZeroMQ stores is longer.
MAX_SUBSCRIPTION_FRAME = 512
_CODE_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


class ProtocolError(ValueError):
    """A frame, topic or session code that does not follow the protocol."""


def validate_code(code: Any) -> str:
    """Return ``code`` if it is a valid session code, else raise ProtocolError saying why."""
    if not isinstance(code, str):
        raise ProtocolError(f"session code must be a string, got {type(code).__name__}")
    if not 1 <= len(code) <= CODE_MAX_LEN:
        raise ProtocolError(f"session code must be 1-{CODE_MAX_LEN} characters, got {len(code)}")
    if not _CODE_RE.fullmatch(code):
        raise ProtocolError(
            f"invalid session code {code!r}: use lower-case letters, digits and dashes, "
            "starting and ending with a letter or digit"
        )
    return code


def session_topic(code: str, kind: str | None = None) -> bytes:
    """Topic of one kind of one session's messages, or the prefix of all of them (kind=None)."""
    if kind is not None and kind not in KINDS:
        raise ProtocolError(f"unknown message kind {kind!r}")
    return SESSION_PREFIX + code.encode() + b"/" + (kind.encode() if kind else b"")


def split_topic(topic: bytes) -> tuple[str, str]:
    """``b"session/abc/packet"`` -> ``("abc", "packet")``; ProtocolError for anything else."""
    if not topic.startswith(SESSION_PREFIX):
        raise ProtocolError(f"not a session topic: {topic[:80]!r}")
    parts = topic[len(SESSION_PREFIX):].split(b"/")
    if len(parts) != 2:
        raise ProtocolError(f"malformed session topic: {topic[:80]!r}")
    try:
        code, kind = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"non-ASCII topic: {topic[:80]!r}") from exc
    validate_code(code)
    if kind not in KINDS:
        raise ProtocolError(f"unknown message kind in topic: {topic[:80]!r}")
    return code, kind


def session_of_subscription(prefix: bytes) -> str | None:
    """The session a subscription prefix names, if it names exactly one valid session.

    ``session/abc/`` and ``session/abc/packet`` name ``abc``; the empty prefix, ``session/``,
    ``session/ab`` (no closing slash) and ``events/session`` name none and create nothing.
    """
    if not prefix.startswith(SESSION_PREFIX):
        return None
    rest = prefix[len(SESSION_PREFIX):]
    slash = rest.find(b"/")
    if slash <= 0:
        return None
    kind = rest[slash + 1:]
    if kind and not any(k.encode().startswith(kind) for k in KINDS):
        return None
    try:
        return validate_code(rest[:slash].decode("ascii"))
    except (UnicodeDecodeError, ProtocolError):
        return None


def encode(obj: Any) -> bytes:
    """msgpack-encode one payload (maps with str keys, lists, ints, floats, str, bool, nil)."""
    return msgpack.packb(obj, use_bin_type=True)


def decode(data: bytes, max_bytes: int = 1 << 20) -> Any:
    """Decode one msgpack payload; ProtocolError on anything that is not exactly one object."""
    if len(data) > max_bytes:
        raise ProtocolError(f"payload of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as exc:
        raise ProtocolError(f"not a msgpack payload: {exc}") from exc
