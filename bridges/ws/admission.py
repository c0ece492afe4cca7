"""Admission of one WebSocket connection: URL and query checks, the session prepared on the broker,
and the close codes a refused or ended connection gets.

A connection is admitted in three steps, all before any data flows:

1. the session code and query parameters are checked (``4400`` otherwise);
2. the session is fetched from the broker, or created when missing, with the requested filter
   (``?target_id=`` or ``?trial_id=``) in the same command (``4404`` for an unknown target or
   trial, ``4429`` at the session limit, ``4503`` when the broker does not answer in time);
3. on an existing session a requested filter is applied, unless the session is already in use
   with a different filter (``4409``) or names an unknown target or trial (``4404``).

A refused connection leaves no session behind and changes none.

Broker commands go through protocol.client.BrokerClient (a request that timed out is never
delivered late to a restarted broker).
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from protocol import CommandError, ErrorCode, ProtocolError, validate_code
from protocol.client import BrokerClient

FORMATS = {"msgpack": "msgpack", "binary": "msgpack", "json": "json"}
QUERY_PARAMS = ("format", "target_id", "trial_id", "metadata", "channel_ids")
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_INT_RE = re.compile(r"-?[0-9]{1,9}")


class CloseCode(enum.IntEnum):
    """WebSocket close codes of the bridge (4000-4999 are the application's range)."""
    NORMAL = 1000            # the client closed
    GOING_AWAY = 1001        # the bridge is shutting down
    BAD_REQUEST = 4400       # invalid session code, unknown or malformed query parameter
    NOT_FOUND = 4404         # unknown target_id or trial_id
    CONFLICT = 4409          # the session is in use with a different filter
    GONE = 4410              # the session was deleted while streaming
    LIMIT = 4429             # the broker's session limit is reached
    INTERNAL = 4500          # unexpected broker error
    UNAVAILABLE = 4503       # the broker did not answer, or sent no metadata, in time


_CLOSE_FOR_ERROR = {
    ErrorCode.BAD_REQUEST: CloseCode.BAD_REQUEST,
    ErrorCode.NOT_FOUND: CloseCode.NOT_FOUND,
    ErrorCode.OUT_OF_RANGE: CloseCode.NOT_FOUND,
    ErrorCode.CONFLICT: CloseCode.CONFLICT,
    ErrorCode.LIMIT: CloseCode.LIMIT,
    ErrorCode.UNAVAILABLE: CloseCode.UNAVAILABLE,
}


class Refused(Exception):
    """The connection cannot stream: close it with ``code`` and ``reason``."""

    def __init__(self, code: CloseCode, reason: str):
        super().__init__(f"{int(code)} {reason}")
        self.code = code
        self.reason = reason

    @classmethod
    def from_command_error(cls, exc: CommandError) -> "Refused":
        return cls(_CLOSE_FOR_ERROR.get(exc.code, CloseCode.INTERNAL), exc.message or exc.code.value)


@dataclass(frozen=True)
class StreamRequest:
    code: str | None                        # None: ``/stream``, a fresh session for this connection
    fmt: str                                # "msgpack" or "json"
    filter: dict[str, int] | None           # {"target_id": n} or {"trial_id": n}
    metadata: bool = True                   # send metadata messages (first, and on every change)
    channel_ids: bool = False               # add spikes.channel_ids (the unit ids) to every packet


def parse_stream_request(code: str | None, query: Mapping[str, list[str]], binary_only: bool,
                         origin: str | None = None) -> StreamRequest:
    """Check the URL's code and query (``name -> values``); Refused(4400) saying what is wrong.

    The format rule (contract 9, docs/protocol.md): an explicit ``?format=`` wins; otherwise a
    handshake with an ``Origin`` header (a browser) gets JSON text, one without gets msgpack;
    ``/stream/binary/<code>`` is always msgpack. A URL without ``?format=`` is the original
    PhantomLink's form, whose clients read every message as a packet: it sends packets only,
    unless ``?metadata=true`` asks for the metadata messages too.
    """
    if code is not None:
        try:
            validate_code(code)
        except ProtocolError as exc:
            raise Refused(CloseCode.BAD_REQUEST, str(exc)) from None
    unknown = sorted(set(query) - set(QUERY_PARAMS))
    if unknown:
        raise Refused(CloseCode.BAD_REQUEST, f"unknown query parameter(s): {', '.join(unknown)[:60]}; "
                                             f"use {', '.join(QUERY_PARAMS)}")
    values = {}
    for name, given in query.items():
        if len(given) != 1:
            raise Refused(CloseCode.BAD_REQUEST, f"query parameter {name} given {len(given)} times")
        values[name] = given[0]
    fmt = _format(values.get("format"), binary_only, origin)
    explicit = "format" in values or binary_only
    return StreamRequest(code, fmt, _filter(values), _flag("metadata", values.get("metadata"), explicit),
                         _flag("channel_ids", values.get("channel_ids"), False))


def _format(text: str | None, binary_only: bool, origin: str | None) -> str:
    if text is None:
        return "json" if origin and not binary_only else "msgpack"
    fmt = FORMATS.get(text.lower())
    if fmt is None:
        raise Refused(CloseCode.BAD_REQUEST, f"format must be msgpack, binary or json, not {text[:20]!r}")
    if binary_only and fmt != "msgpack":
        raise Refused(CloseCode.BAD_REQUEST, "/stream/binary/<code> serves msgpack only; "
                                             "use /stream/<code>?format=json for JSON")
    return fmt


def _flag(name: str, text: str | None, default: bool) -> bool:
    if text is None:
        return default
    value = _BOOLS.get(text.lower())
    if value is None:
        raise Refused(CloseCode.BAD_REQUEST, f"{name} must be true or false, not {text[:20]!r}")
    return value


def _filter(values: Mapping[str, str]) -> dict[str, int] | None:
    wanted = {name: values[name] for name in ("target_id", "trial_id") if name in values}
    if len(wanted) > 1:
        raise Refused(CloseCode.BAD_REQUEST, "give target_id or trial_id, not both")
    for name, text in wanted.items():
        if not _INT_RE.fullmatch(text):
            raise Refused(CloseCode.BAD_REQUEST, f"{name} must be an integer, not {text[:20]!r}")
        return {name: int(text)}
    return None


class Creation:
    """Whether a client may have one more session created for it, and the record that it did."""

    def __init__(self, allowed: Callable[[], bool] = lambda: True,
                 record: Callable[[str], None] = lambda code: None):
        self.allowed = allowed
        self.record = record


def prepare_session(broker: BrokerClient, req: StreamRequest, in_use_locally: bool,
                    creation: Creation | None = None) -> dict[str, Any]:
    """The session ``req`` streams, created if missing and filtered as asked; Refused otherwise.

    A refused connection creates nothing: a missing session is created together with its filter
    in one ``create`` (which checks the filter first), never created and then filtered.
    ``in_use_locally`` says whether this bridge already streams the session to another client,
    which the broker may not count yet (its subscription can still be in flight). ``creation``
    bounds how many sessions a client may create by connecting (4429 past it).
    """
    try:
        creation = creation or Creation()
        if req.code is None:
            if not creation.allowed():
                raise Refused(CloseCode.LIMIT, "this client has created its maximum of sessions "
                                               "(PHANTOM_MAX_SESSIONS_PER_CLIENT)")
            created = broker.request("create", {"filter": req.filter} if req.filter else {})
            creation.record(str(created["code"]))
            return created
        session = _get_or_create(broker, req, creation)
        if req.filter is None or session.get("filter") == req.filter:
            return session
        if session.get("subscribers", 0) > 0 or in_use_locally:
            raise Refused(CloseCode.CONFLICT,
                          f"session {req.code} is in use with filter {_describe(session.get('filter'))}; "
                          "connect without a filter or use another session")
        return broker.call("filter", code=req.code, **req.filter)
    except CommandError as exc:
        raise Refused.from_command_error(exc) from None


def _get_or_create(broker: BrokerClient, req: StreamRequest, creation: Creation) -> dict[str, Any]:
    try:
        return broker.call("get", code=req.code)
    except CommandError as exc:
        if exc.code is not ErrorCode.NOT_FOUND:
            raise
    if not creation.allowed():
        raise Refused(CloseCode.LIMIT, f"session {req.code} does not exist and this client has created "
                                       "its maximum of sessions (PHANTOM_MAX_SESSIONS_PER_CLIENT)")
    args: dict[str, Any] = {"code": req.code}
    if req.filter is not None:
        args["filter"] = req.filter
    try:
        created = broker.request("create", args)
        creation.record(req.code)
        return created
    except CommandError as exc:
        if exc.code is not ErrorCode.CONFLICT:     # created by someone else meanwhile
            raise
    return broker.call("get", code=req.code)


def _describe(session_filter: Any) -> str:
    if not session_filter:
        return "none"
    return ", ".join(f"{k}={v}" for k, v in sorted(session_filter.items()))
