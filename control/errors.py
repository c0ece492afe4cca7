"""Every error control answers: one JSON shape, one status per error code, no 500 tracebacks.

The body is always ``{"error": {"code": "<code>", "message": "<text>"}}``. Broker error codes keep
their names; HTTP-level errors (unknown route, wrong method, body too large) get their own.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any

from flask import Flask, Response, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from protocol import CommandError, ErrorCode

log = logging.getLogger("control")

# Broker error code -> HTTP status. `internal` (a broker bug) is the upstream's failure, not ours:
# 502 says so without pretending control crashed.
STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNKNOWN_COMMAND: 400,
    ErrorCode.UNSUPPORTED_VERSION: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.OUT_OF_RANGE: 422,
    ErrorCode.LIMIT: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 502,
}

# HTTP status -> error code for errors raised by Flask/Werkzeug before a view runs.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error found by control itself (bad body, invalid path value) before asking the broker."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def error_response(status: int, code: str, message: str) -> Response:
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    return resp


def register(app: Flask) -> None:
    """Install the handlers that turn every failure into the JSON error shape."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(CommandError)
    def _command_error(exc: CommandError):
        status = STATUS.get(exc.code, 502)
        if status >= 500:
            log.warning("broker %s: %s", exc.code.value, exc.message)
        resp = error_response(status, exc.code.value, exc.message)
        if exc.retry_after_s is not None:
            resp.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = f"request body larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        resp = error_response(status, HTTP_CODES.get(status, f"http_{status}"), message)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            resp.headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # type: ignore[attr-defined]
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # A bug in control: log the traceback for us, give the client no internals.
        log.exception("unhandled error")
        return error_response(500, "internal", "internal error in control (logged)")


# Validation error types (set by control.inputs) that are not a plain 400.
VALIDATION_STATUS = {"not_found": (404, "not_found"), "out_of_range": (422, "out_of_range")}


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"])
    text = f"`{where}`: {error['msg']}" if where else error["msg"]
    if where and error["type"] not in ("missing", "extra_forbidden"):
        try:
            text += f", got {json.dumps(error['input'])[:80]}"
        except (TypeError, ValueError):
            pass
    return text


def validation_error(exc: ValidationError) -> None:
    """flask-openapi3's validation_error_callback: a failed body, path or query model -> ApiError.

    404 if a path value can never exist, 422 if every problem is a value the wire cannot carry,
    else 400 (a wrong type, an unknown or missing field, a malformed value).
    """
    errors = exc.errors(include_url=False)
    kinds = {e["type"] for e in errors}
    if "not_found" in kinds:
        status, code = VALIDATION_STATUS["not_found"]
    elif kinds == {"out_of_range"}:
        status, code = VALIDATION_STATUS["out_of_range"]
    else:
        status, code = 400, "bad_request"
    raise ApiError(status, code, "; ".join(_describe(e) for e in errors[:3])[:400])
