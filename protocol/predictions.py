"""Predictions sent back by decoders (WebSocket messages and the broker's feedback sockets): the
message shape, its checks, and the error reply.

A prediction is one map (msgpack, or JSON text on WebSocket):
``{"type": "prediction", "session": code, "packet_id": int, "sequence_number": int,
"velocity": [vx, vy], "position": [x, y]?, "target_id": int?, "decoder": str?,
"received_at": unix_s?, "sent_at": unix_s?}``. Unknown fields are ignored. An error reply is
``{"v": 1, "type": "prediction_error", "session", "packet_id", "sequence_number", "decoder",
"error": {"code", "message"}}``; accepted predictions get no reply.
"""
from __future__ import annotations

import json
from math import isfinite
from typing import Any, NamedTuple

from protocol.wire import PROTOCOL_VERSION, ProtocolError, decode, validate_code

MAX_PREDICTION_BYTES = 4096
DECODER_NAME_MAX = 64
DEFAULT_DECODER = "default"
INT64 = 2 ** 63

# Error codes of a prediction_error reply.
BAD_PREDICTION = "bad_request"          # not a prediction map, a wrong type or shape, NaN
UNKNOWN_SESSION = "not_found"           # no such session
UNKNOWN_PACKET = "unknown_packet"       # no such bin was sent to that session (or too long ago)
DUPLICATE = "duplicate"                 # this decoder already answered that bin
TOO_MANY_DECODERS = "limit"             # the session has the most decoders it can score


class Prediction(NamedTuple):
    """One checked prediction (a tuple: the broker makes one per answer, so it is cheap to build)."""
    session: str
    packet_id: int
    sequence_number: int
    velocity: tuple[float, float]
    position: tuple[float, float] | None
    target_id: int | None
    decoder: str
    received_at: float | None           # client clock: when it received the packet (Unix s)
    sent_at: float | None               # client clock: when it sent this answer (Unix s)


class BadPrediction(ProtocolError):
    """A prediction that cannot be scored; ``code`` is one of the error codes above."""

    def __init__(self, code: str, message: str, fields: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields or {}


def decode_message(data: bytes | str) -> Any:
    """The object of one message: JSON when it is text, msgpack when it is bytes."""
    if len(data) > MAX_PREDICTION_BYTES:
        raise BadPrediction(BAD_PREDICTION, f"message of {len(data)} bytes exceeds "
                                            f"{MAX_PREDICTION_BYTES}")
    if isinstance(data, str):
        try:
            return json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise BadPrediction(BAD_PREDICTION, f"not valid JSON: {str(exc)[:120]}") from None
    try:
        return decode(data, MAX_PREDICTION_BYTES)
    except ProtocolError as exc:
        raise BadPrediction(BAD_PREDICTION, str(exc)[:160]) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse_prediction(msg: Any) -> Prediction:
    """Check one decoded message; BadPrediction (with the fields that could be read) if it is bad."""
    if not isinstance(msg, dict):
        raise BadPrediction(BAD_PREDICTION, "a prediction is a map")
    get = msg.get
    try:
        if get("type") != "prediction":
            raise ValueError("`type` must be \"prediction\"")
        return Prediction(
            validate_code(get("session")), _int(msg, "packet_id"), _int(msg, "sequence_number"),
            _pair(msg, "velocity"),
            _pair(msg, "position") if get("position") is not None else None,
            _int(msg, "target_id") if get("target_id") is not None else None,
            _decoder(get("decoder", DEFAULT_DECODER)), _time(msg, "received_at"),
            _time(msg, "sent_at"))
    except (ValueError, ProtocolError) as exc:
        ids = {k: get(k) for k in ("session", "packet_id", "sequence_number", "decoder")}
        raise BadPrediction(BAD_PREDICTION, str(exc), _printable(ids)) from None


def _int(msg: dict, key: str) -> int:
    value = msg.get(key)
    if type(value) is int and 0 <= value < INT64:    # bool is a subclass of int, not int itself
        return value
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < INT64:
        raise ValueError(f"`{key}` must be a non-negative integer")
    return int(value)


def _pair(msg: dict, key: str) -> tuple[float, float]:
    value = msg.get(key)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"`{key}` must be a list of two numbers")
    x, y = value
    if type(x) is float and type(y) is float and isfinite(x) and isfinite(y):
        return x, y                         # the usual case, without the general checks below
    out = []
    for item in value:
        if not isinstance(item, (int, float)) or isinstance(item, bool) or not isfinite(item):
            raise ValueError(f"`{key}` must hold two finite numbers, got {str(value)[:60]}")
        out.append(float(item))
    return out[0], out[1]


def _time(msg: dict, key: str) -> float | None:
    value = msg.get(key)
    if value is None:
        return None
    if type(value) is float and isfinite(value):
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not isfinite(value):
        raise ValueError(f"`{key}` must be a finite number (Unix seconds)")
    return float(value)


def _decoder(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= DECODER_NAME_MAX or not value.isprintable():
        raise ValueError(f"`decoder` must be a printable string of 1-{DECODER_NAME_MAX} characters")
    return value


def _printable(ids: dict[str, Any]) -> dict[str, Any]:
    """The identifying fields of a bad message, kept only when they have a plain type."""
    return {k: v for k, v in ids.items()
            if isinstance(v, (str, int)) and not isinstance(v, bool) and len(str(v)) <= 64}


def error_reply(code: str, message: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The prediction_error map answering a bad prediction."""
    return {"v": PROTOCOL_VERSION, "type": "prediction_error",
            "session": fields.get("session"), "packet_id": fields.get("packet_id"),
            "sequence_number": fields.get("sequence_number"), "decoder": fields.get("decoder"),
            "error": {"code": code, "message": message[:300]}}
