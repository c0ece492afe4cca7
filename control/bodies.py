"""Request bodies and path values: parsed and type-checked here, before anything reaches the broker.

Control checks types and shapes (400); the broker checks ranges and existence (422, 404, ...).
"""
from __future__ import annotations

import json
import math
from typing import Any

from flask import request

from control.errors import ApiError, bad_request
from protocol import ProtocolError, validate_code

INT64 = 2 ** 63

# Field type -> (predicate, name used in messages). bool is not an int here, as on the wire.
_CHECKS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "noise": (lambda v: v is None or v is False or isinstance(v, (str, dict)),
              "a preset name, an object of parameters, null or false"),
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def json_object() -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}``. 400 for anything else."""
    raw = request.get_data(cache=True)  # enforces MAX_CONTENT_LENGTH (413)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise bad_request(f"body must be a JSON object, got {type(body).__name__}")
    return body


def check_fields(body: dict[str, Any], types: dict[str, str],
                 required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The known fields of ``body`` with their types checked; unknown or missing ones are 400.

    A field given as null counts as absent (except `noise`, where null means off).
    """
    unknown = sorted(set(body) - set(types))
    if unknown:
        raise bad_request(f"unknown field(s) {', '.join(map(repr, unknown))[:200]}; "
                          f"expected {', '.join(sorted(types)) or 'an empty body'}")
    out: dict[str, Any] = {}
    for name, kind in types.items():
        if name not in body or (body[name] is None and kind != "noise"):
            if name in required:
                raise bad_request(f"`{name}` is required ({_CHECKS[kind][1]})")
            continue
        value = body[name]
        check, what = _CHECKS[kind]
        if not check(value):
            raise bad_request(f"`{name}` must be {what}, got {json.dumps(value)[:80]}")
        _check_wire_range(name, value)
        out[name] = value
    return out


def _check_wire_range(name: str, value: Any) -> None:
    """Numbers the wire (msgpack int64 / finite floats) cannot carry are out of range (422)."""
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        raise ApiError(422, "out_of_range", f"`{name}` is out of range")
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(422, "out_of_range", f"`{name}` must be finite")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_wire_range(f"{name}.{key}", item)
    if isinstance(value, list):
        for item in value:
            _check_wire_range(f"{name}[]", item)


def session_code(code: str) -> str:
    """A session code from the path; one that can never exist is simply not found (404)."""
    try:
        return validate_code(code)
    except ProtocolError as exc:
        raise ApiError(404, "not_found", f"no session {code[:80]!r}: {exc}") from None


def path_id(value: int, what: str) -> int:
    """An id from the path (Flask's int converter already made it a non-negative int)."""
    if value >= INT64:
        raise ApiError(404, "not_found", f"no {what} {value}")
    return value
