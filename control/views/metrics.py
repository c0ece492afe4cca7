"""``GET /metrics`` (the original's JSON, or Prometheus text on ``Accept: text/plain``) and
``GET /metrics/prometheus`` (always Prometheus text, for scrape configs that cannot set headers)."""
from __future__ import annotations

import time
from typing import Any

from flask import Response, request

from control import prometheus
from protocol.version import __version__ as VERSION
from control.extensions import call, telemetry
from control.responses import BROKER, Metrics, content
from control.shapes import SERVICE
from control.views import blueprint

bp = blueprint("metrics", __name__)

PROMETHEUS_TEXT = content("text/plain", "Prometheus text exposition (format 0.0.4)")


ORIGINAL_TOTALS = ("total_sessions", "active_sessions", "total_connections")


def _stat(value: Any) -> dict[str, Any]:
    """{mean, std, max} in ms (the original's keys) plus whatever else the broker measured."""
    value = value if isinstance(value, dict) else {}
    return {"mean": value.get("mean"), "std": value.get("std"), "max": value.get("max"),
            **{k: v for k, v in value.items() if k not in ("mean", "std", "max")}}


def _session_metrics(s: dict[str, Any]) -> dict[str, Any]:
    """The original's per-session keys first (filled in if the broker lacks one), then the rest."""
    state = s.get("state")
    original = {
        "packets_sent": s.get("packets_sent"),
        "dropped_packets": s.get("dropped_packets", s.get("packets_skipped")),
        "network_latency_ms": _stat(s.get("network_latency_ms")),
        "timing_error_ms": _stat(s.get("timing_error_ms")),
        "memory_usage_mb": s.get("memory_usage_mb"),
        "is_running": s.get("is_running", state == "playing"),
        "is_paused": s.get("is_paused", state == "paused"),
        "connections": s.get("connections", s.get("subscribers", 0)),
    }
    return {**original, **{k: v for k, v in s.items() if k not in original}}


def metrics_document() -> dict[str, Any]:
    """The original's /metrics JSON from the broker's `metrics` result (its extras kept)."""
    raw = call("metrics") or {}
    sessions = raw.get("sessions") or {}
    if isinstance(sessions, list):
        sessions = {str(s.get("code")): s for s in sessions}
    per_session = {code: _session_metrics(s) for code, s in sessions.items()}
    totals = {
        "total_sessions": raw.get("total_sessions", len(per_session)),
        "active_sessions": raw.get("active_sessions",
                                   sum(1 for m in per_session.values() if m["is_running"])),
        "total_connections": raw.get("total_connections",
                                     sum(m["connections"] or 0 for m in per_session.values())),
    }
    skip = {"timestamp", "service", "version", "sessions", *ORIGINAL_TOTALS}
    return {
        "timestamp": raw.get("timestamp", time.time()),
        "service": SERVICE,
        "version": VERSION,
        "metrics": {**totals, "sessions": per_session,
                    **{k: v for k, v in raw.items() if k not in skip}},
    }


def _prometheus() -> Response:
    return Response(telemetry().exposition(), content_type=prometheus.CONTENT_TYPE)


def _quality(mime: str) -> float:
    """The client's q for ``mime`` from its most specific matching Accept entry, ignoring
    media-type parameters (Prometheus asks for ``text/plain;version=0.0.4``, which Werkzeug's
    own matching does not equate with text/plain)."""
    found: dict[str, float] = {}
    for value, q in request.accept_mimetypes:
        base = value.split(";")[0].strip().lower()
        found[base] = max(found.get(base, 0.0), q)
    for candidate in (mime, mime.split("/")[0] + "/*", "*/*"):
        if candidate in found:
            return found[candidate]
    return 0.0


@bp.get("/metrics", summary="Service metrics (JSON; Prometheus text with `Accept: text/plain`)",
        description="The original PhantomLink's JSON. A client whose Accept header prefers "
                    "`text/plain` (as Prometheus's does) gets the text exposition instead.",
        responses={200: Metrics, **BROKER})
def metrics():
    # JSON unless the client prefers plain text (Prometheus sends text/plain with a higher q).
    if _quality("text/plain") > _quality("application/json"):
        return _prometheus()
    return metrics_document()


@bp.get("/metrics/prometheus", summary="Service metrics in Prometheus text format",
        responses={200: PROMETHEUS_TEXT, **BROKER})
def metrics_prometheus():
    return _prometheus()
