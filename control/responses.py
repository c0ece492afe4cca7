"""What control answers, as pydantic models: the OpenAPI document's response schemas.

They document; they do not validate (control.shapes builds the answers, and
tests/test_control_docs.py checks that every field documented here is present in real answers).
``errors(...)`` gives an operation's error responses, all with the one ``Error`` shape.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ERROR_CODES = Literal["bad_request", "unauthorized", "forbidden", "unknown_command",
                      "unsupported_version", "not_found",
                      "method_not_allowed", "conflict", "too_large", "unsupported_media_type",
                      "out_of_range", "limit", "unavailable", "internal"]


class ErrorDetail(BaseModel):
    code: ERROR_CODES
    message: str


class Error(BaseModel):
    """Every error: ``{"error": {"code", "message"}}``."""
    error: ErrorDetail


ERROR_DESCRIPTIONS = {
    400: "malformed JSON, a wrong type, an unknown or missing field",
    401: "PHANTOM_AUTH_TOKEN is set and the request lacks `Authorization: Bearer <token>`",
    403: "a foreign Host while bound to loopback, or a write from another site's Origin",
    404: "no such session, trial or target (also unknown routes)",
    405: "method not allowed on this path (the Allow header lists the right ones)",
    409: "conflict (e.g. the custom code is taken)",
    413: "body larger than 64 KiB",
    415: "a body without `Content-Type: application/json`",
    422: "a well-typed value out of range (seek past the end, speed 0, ...)",
    429: "the session limit is reached and no session is idle past the grace period (Retry-After)",
    502: "the broker reported a bug of its own",
    503: "the broker did not answer in time",
}

ERROR_REF = {"$ref": "#/components/schemas/Error"}


def errors(*statuses: int) -> dict[int, dict[str, Any]]:
    """An operation's error responses (405 is added to every operation by control.app)."""
    return {status: {"description": ERROR_DESCRIPTIONS[status],
                     "content": {"application/json": {"schema": ERROR_REF}}}
            for status in statuses}


# Errors every broker-backed route can give.
BROKER = errors(503)


def content(mime: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A non-model success response (HTML, plain text, a free-form JSON object)."""
    return {"description": description,
            "content": {mime: {"schema": schema or {"type": "string"}}}}


class Filter(BaseModel):
    target_id: int | None = None
    trial_id: int | None = None


class SessionSummary(BaseModel):
    """One session: the original's five fields first, then ours."""
    created_at: str | None = Field(None, json_schema_extra={"format": "date-time"})
    last_accessed: str | None = Field(None, json_schema_extra={"format": "date-time"})
    active_connections: int
    is_running: bool
    current_packet: int
    state: Literal["playing", "paused", "ended"]
    is_paused: bool
    speed: float
    loop: bool
    filter: Filter | None
    noise: dict[str, Any] | None
    total_packets: int
    playlist_packets: int
    elapsed_seconds: float
    sequence_number: int
    packets_sent: int
    packets_skipped: int
    lsl: bool = Field(description="mirrored as LSL outlets (docs/lsl.md)")
    stream_url: str


class Session(SessionSummary):
    session_code: str


class SessionManager(BaseModel):
    """The original's session-manager summary: ``stats`` of GET /api/sessions, ``session_manager``
    of GET /api/stats."""
    total_sessions: int
    running_sessions: int = Field(description="sessions playing")
    active_sessions: int = Field(description="sessions streaming: playing to at least one "
                                             "subscriber naming them (as in /metrics)")
    total_connections: int
    active_connections: int
    max_sessions: int
    session_ttl_seconds: float


class SessionList(BaseModel):
    sessions: dict[str, SessionSummary]
    total_sessions: int
    stats: SessionManager


class Position(BaseModel):
    session_code: str
    current_packet: int
    total_packets: int
    position_seconds: float
    playlist_packets: int
    progress: float | None = Field(description="current_packet / playlist_packets, 0-1")
    state: str
    is_running: bool


class Created(BaseModel):
    session_code: str
    stream_url: str
    created_at: str | None = Field(None, json_schema_extra={"format": "date-time"})
    message: str
    session: Session


class Deleted(BaseModel):
    session_code: str
    deleted: bool
    message: str


class Cleanup(BaseModel):
    cleaned_up: int
    removed: list[str]
    message: str


class ControlResult(BaseModel):
    status: str = Field(description="`paused`, `resumed`, `stopped`, `seeked`, `speed_set`, "
                                    "`loop_set`, `filtered`, `filter_cleared`, `noise_set` or `noise_off`")
    session_code: str
    session: Session


class Stats(BaseModel):
    session_code: str
    is_running: bool
    current_packet: int
    total_packets: int
    elapsed_seconds: float
    active_connections: int
    state: str
    speed: float
    loop: bool
    packets_sent: int
    packets_skipped: int


class Overall(BaseModel):
    active_connections: int
    session_manager: SessionManager


class Trial(BaseModel):
    model_config = ConfigDict(extra="allow")
    trial_id: int
    start_time: float
    stop_time: float
    target_id: int | None
    target_x: float | None
    target_y: float | None
    active_target: int | None = Field(description="the original's name of target_id (NWB's column)")
    target_pos: list[float] | None = Field(description="[target_x, target_y], mm")
    split: str
    success: bool | None


class TrialList(BaseModel):
    trials: list[Trial]
    total_trials: int
    count: int


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    dataset: str
    source: str
    bin_size_ms: int
    frequency_hz: float
    num_channels: int
    total_packets: int
    num_trials: int
    duration_seconds: float
    has_behavior: bool


class BrokerLink(BaseModel):
    reachable: bool
    endpoint: str
    latency_ms: float | None = None


class Health(BaseModel):
    status: Literal["healthy", "degraded"]
    version: str
    timestamp: str = Field(json_schema_extra={"format": "date-time"})
    broker: BrokerLink


class Stat(BaseModel):
    mean: float | None
    std: float | None
    max: float | None


class SessionMetrics(BaseModel):
    packets_sent: int
    dropped_packets: int
    network_latency_ms: Stat
    timing_error_ms: Stat
    memory_usage_mb: float | None
    is_running: bool
    is_paused: bool
    connections: int


class MetricsBody(BaseModel):
    total_sessions: int
    active_sessions: int
    total_connections: int
    sessions: dict[str, SessionMetrics]


class Metrics(BaseModel):
    """The original's metrics JSON (Prometheus text instead with ``Accept: text/plain``)."""
    model_config = ConfigDict(openapi_extra={  # type: ignore[typeddict-unknown-key]
        "content": {"text/plain": {"schema": {"type": "string"}}}})
    timestamp: float
    service: str
    version: str
    metrics: MetricsBody


class Latency(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    mean: float | None


class Reaches(BaseModel):
    scored: int
    success_rate: float | None
    mean_time_to_target_s: float | None
    path_efficiency: float | None


class DecoderEvaluation(BaseModel):
    """One decoder's figures (docs/evaluation.md); more fields follow these."""
    model_config = ConfigDict(extra="allow")
    predictions: int
    missing: int
    invalid: int
    latency_ms: Latency
    deadline_misses: int
    normalized_latency: float | None
    velocity_r2: float | None
    velocity_corr: list[float | None]
    trials: Reaches
    per_trial: list[dict[str, Any]]


class Evaluation(BaseModel):
    model_config = ConfigDict(extra="allow")
    session: str
    labels_withheld: bool
    lockstep: bool
    bins_published: int
    lockstep_timeouts: int
    invalid: int
    options: dict[str, Any]
    decoders: dict[str, DecoderEvaluation]


class EvaluationReset(BaseModel):
    session: str
    reset: bool


class Perturbations(BaseModel):
    """A session's perturbation schedule and the ids active at its current packet."""
    seed: int | None
    items: list[dict[str, Any]]
    active: list[str]


class PerturbationKinds(BaseModel):
    """Every kind: its domain (neural or transport), what it models, parameters and presets."""
    kinds: dict[str, dict[str, Any]]
