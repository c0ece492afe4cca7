"""The OpenAPI 3 document of the REST API: one table of operations, served at ``/openapi.json``.

tests/test_control_docs.py walks the app's url_map and fails if a route is missing here, so a new
route cannot ship undocumented. ``/docs`` renders this same document as HTML.
"""
from __future__ import annotations

from typing import Any

from protocol.version import __version__ as VERSION


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: tuple[str, ...] = (), **props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


S, I, N, B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
NULL_S, NULL_I, NULL_N = ({"type": t, "nullable": True} for t in ("string", "integer", "number"))
ISO = {"type": "string", "format": "date-time", "nullable": True}
STAT = _obj(mean=NULL_N, std=NULL_N, max=NULL_N)
NOISE = {"description": "a preset name (e.g. `light`, `moderate`, `intense`, `extreme`), an "
                        "object of parameters, or off: `null`, `false` or `\"off\"`",
         "nullable": True, "oneOf": [S, {"type": "object"}, B]}
FILTER = _obj(target_id=I, trial_id=I)

SCHEMAS: dict[str, Any] = {
    "Error": _obj(("error",), error=_obj(("code", "message"), code={
        **S, "enum": ["bad_request", "unknown_command", "unsupported_version", "not_found",
                      "method_not_allowed", "conflict", "too_large", "out_of_range", "limit",
                      "unavailable", "internal"]}, message=S)),
    "SessionSummary": _obj(
        created_at=ISO, last_accessed=ISO, active_connections=I, is_running=B, current_packet=I,
        state={**S, "enum": ["playing", "paused", "ended"]}, is_paused=B, speed=N, loop=B,
        filter={**FILTER, "nullable": True}, noise={"type": "object", "nullable": True},
        total_packets=I, playlist_packets=I, elapsed_seconds=N, sequence_number=I,
        packets_sent=I, packets_skipped=I, stream_url=S),
    "Session": {"allOf": [_obj(session_code=S), _ref("SessionSummary")]},
    "SessionList": _obj(sessions={"type": "object", "additionalProperties": _ref("SessionSummary")},
                        total_sessions=I),
    "Created": _obj(session_code=S, stream_url=S, created_at=ISO, message=S, session=_ref("Session")),
    "Deleted": _obj(session_code=S, deleted=B, message=S),
    "Cleanup": _obj(cleaned_up=I, removed={"type": "array", "items": S}, message=S),
    "ControlResult": _obj(status=S, session_code=S, session=_ref("Session")),
    "Stats": _obj(session_code=S, is_running=B, current_packet=I, total_packets=I,
                  elapsed_seconds=N, active_connections=I, state=S, speed=N, loop=B,
                  packets_sent=I, packets_skipped=I),
    "Overall": _obj(active_connections=I, session_manager=_obj(
        total_sessions=I, active_sessions=I, total_connections=I)),
    "Trial": _obj(trial_id=I, start_time=N, stop_time=N, target_id=NULL_I, target_x=NULL_N,
                  target_y=NULL_N, split=S, success={"type": "boolean", "nullable": True}),
    "TrialList": _obj(trials={"type": "array", "items": _ref("Trial")}, total_trials=I, count=I),
    "Metadata": _obj(dataset=S, source=S, bin_size_ms=I, frequency_hz=N, num_channels=I,
                     total_packets=I, num_trials=I, duration_seconds=N, has_behavior=B),
    "Health": _obj(status={**S, "enum": ["healthy", "degraded"]}, version=S,
                   timestamp={"type": "string", "format": "date-time"},
                   broker=_obj(reachable=B, endpoint=S, latency_ms=N)),
    "Metrics": _obj(timestamp=N, service=S, version=S, metrics=_obj(
        total_sessions=I, active_sessions=I, total_connections=I,
        sessions={"type": "object", "additionalProperties": _obj(
            packets_sent=I, dropped_packets=I, network_latency_ms=STAT, timing_error_ms=STAT,
            memory_usage_mb=NULL_N, is_running=B, is_paused=B, connections=I)})),
}

ERRORS = {
    400: "malformed JSON, a wrong type, an unknown or missing field",
    404: "no such session, trial or target (also unknown routes)",
    405: "method not allowed on this path",
    409: "conflict (e.g. the custom code is taken)",
    413: "body larger than 64 KiB",
    422: "a well-typed value out of range (seek past the end, speed 0, ...)",
    429: "the session limit is reached and no idle session can be evicted",
    503: "the broker did not answer in time",
}
BROKER_ERRORS = (400, 503)


def _param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


CODE = _param("code", {**S, "pattern": "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"},
              "session code: 1-64 of a-z 0-9 -, starting and ending with a letter or digit")


def _op(tag: str, summary: str, ok: str | dict[str, Any], errors: tuple[int, ...] = BROKER_ERRORS,
        params: tuple[dict[str, Any], ...] = (), body: dict[str, Any] | None = None,
        description: str = "", body_required: bool = False) -> dict[str, Any]:
    ok_content = ok if isinstance(ok, dict) else {"application/json": {"schema": _ref(ok)}}
    responses: dict[str, Any] = {"200": {"description": "success", "content": ok_content}}
    for status in sorted(set(errors) | {405}):
        responses[str(status)] = {"description": ERRORS[status],
                                  "content": {"application/json": {"schema": _ref("Error")}}}
    op: dict[str, Any] = {"tags": [tag], "summary": summary, "responses": responses}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = {"required": body_required,
                             "content": {"application/json": {"schema": body}}}
    return op


def _control(summary: str, body: dict[str, Any] | None = None, required: bool = False,
             errors: tuple[int, ...] = (400, 404, 413, 422, 503), description: str = ""):
    return {"post": _op("control", summary, "ControlResult", errors, (CODE,), body,
                        description, required)}


PLAIN = {"text/plain": {"schema": S}}
HTML = {"text/html": {"schema": S}}

PATHS: dict[str, dict[str, Any]] = {
    "/": {"get": _op("docs", "Service index: name, version and links", {
        "application/json": {"schema": {"type": "object"}}}, ())},
    "/health": {"get": _op(
        "health", "Liveness of control and reachability of the broker", "Health", (),
        description="Always 200 while control runs, even when the broker is down: `status` is "
                    "`healthy` when the broker answered a ping within 500 ms, else `degraded` "
                    "with `broker.reachable` false and the reason in `broker.error`.")},
    "/openapi.json": {"get": _op("docs", "This OpenAPI document", {
        "application/json": {"schema": {"type": "object"}}}, ())},
    "/docs": {"get": _op("docs", "Human-readable API reference (rendered from this document)",
                         HTML, ())},
    "/api/sessions/create": {"post": _op(
        "sessions", "Create a session", "Created", (400, 409, 413, 422, 429, 503),
        body=_obj(custom_code={**S, "description": "the session code to use (else generated)"},
                  speed={**N, "description": "playback speed, 0.1-1000 (default 1)"},
                  loop={**B, "description": "restart at the end (default true)"},
                  paused={**B, "description": "create paused (default false)"},
                  filter={**FILTER, "description": "`{target_id}` or `{trial_id}`"},
                  noise=NOISE),
        description="The body is optional; with none, a code such as `swift-neural-42` is "
                    "generated and playback starts at once. The original server's query form "
                    "`?custom_code=...` also works.")},
    "/api/sessions": {"get": _op("sessions", "List every session", "SessionList")},
    "/api/sessions/{code}": {
        "get": _op("sessions", "One session", "Session", (400, 404, 503), (CODE,)),
        "delete": _op("sessions", "Delete a session", "Deleted", (400, 404, 503), (CODE,)),
    },
    "/api/sessions/cleanup": {"post": _op(
        "sessions", "Delete every session idle for longer than the TTL", "Cleanup",
        (400, 413, 503))},
    "/api/control/{code}/pause": _control("Pause playback"),
    "/api/control/{code}/resume": _control("Resume playback (re-anchors the deadlines)"),
    "/api/control/{code}/seek": _control(
        "Move playback to a packet id (or a time)",
        _obj(packet_id={**I, "description": "0 .. total_packets-1"},
             position_seconds={**N, "description": "alternative: seconds into the recording "
                                                   "(floored to a bin)"}), True,
        description="Give exactly one of `packet_id` and `position_seconds`. The original "
                    "server's query form `?position_seconds=12.5` (no body) also works."),
    "/api/control/{code}/speed": _control(
        "Set the playback speed", _obj(("speed",), speed={**N, "description": "0.1-1000"}), True),
    "/api/control/{code}/loop": _control("Loop at the end, or stop there", _obj(("loop",), loop=B),
                                         True),
    "/api/control/{code}/filter": _control(
        "Play only one target's or one trial's trials; `{}` clears", FILTER, False,
        description="422 or 404 when the target or trial does not exist in the dataset."),
    "/api/control/{code}/noise": _control("Set, change or switch off noise injection",
                                          _obj(("noise",), noise=NOISE), True),
    "/api/stats": {"get": _op("stats", "Service-wide session and connection totals", "Overall")},
    "/api/stats/{code}": {"get": _op("stats", "One session's playback statistics", "Stats",
                                     (400, 404, 503), (CODE,))},
    "/api/trials": {"get": _op("trials", "Every trial of the dataset", "TrialList")},
    "/api/trials/by-target/{target_id}": {"get": _op(
        "trials", "The trials reaching for one target", "TrialList", (400, 404, 503),
        (_param("target_id", {**I, "minimum": 0}, "target index"),))},
    "/api/trials/{trial_id}": {"get": _op(
        "trials", "One trial", "Trial", (400, 404, 503),
        (_param("trial_id", {**I, "minimum": 0}, "trial id"),))},
    "/api/metadata": {"get": _op("trials", "The dataset's stream metadata", "Metadata")},
    "/metrics": {"get": _op(
        "metrics", "Service metrics (JSON; Prometheus text with `Accept: text/plain`)",
        {"application/json": {"schema": _ref("Metrics")}, **PLAIN},
        description="The original PhantomLink's JSON. A client whose Accept header prefers "
                    "`text/plain` (as Prometheus's does) gets the text exposition instead.")},
    "/metrics/prometheus": {"get": _op("metrics", "Service metrics in Prometheus text format",
                                       PLAIN)},
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "PhantomLink control API",
            "version": VERSION,
            "description": "Create and drive replay sessions of a neural recording. Every error "
                           "is JSON `{\"error\": {\"code\", \"message\"}}`; the status says which "
                           "kind (see each operation).",
        },
        "tags": [{"name": t} for t in ("health", "sessions", "control", "stats", "trials",
                                       "metrics", "docs")],
        "paths": PATHS,
        "components": {"schemas": SCHEMAS},
    }
