"""``GET /metrics`` (the original's JSON, or Prometheus text on ``Accept: text/plain``) and
``GET /metrics/prometheus`` (always Prometheus text, for scrape configs that cannot set headers)."""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, request

from control import VERSION, prometheus
from control.extensions import call
from control.shapes import SERVICE

bp = Blueprint("metrics", __name__)


def _stat(value: Any) -> dict[str, Any]:
    """{mean, std, max} in ms (the original's keys) plus whatever else the broker measured."""
    value = value if isinstance(value, dict) else {}
    return {"mean": value.get("mean"), "std": value.get("std"), "max": value.get("max"),
            **{k: v for k, v in value.items() if k not in ("mean", "std", "max")}}


def _session_metrics(s: dict[str, Any]) -> dict[str, Any]:
    state = s.get("state")
    return {
        "packets_sent": s.get("packets_sent"),
        "dropped_packets": s.get("packets_skipped"),
        "network_latency_ms": _stat(s.get("send_latency_ms")),
        "timing_error_ms": _stat(s.get("lateness_ms")),
        "memory_usage_mb": s.get("memory_usage_mb"),
        "is_running": state == "playing",
        "is_paused": state == "paused",
        "connections": s.get("subscribers", 0),
        "state": state,
        "current_packet": s.get("current_packet"),
        "speed": s.get("speed"),
    }


def metrics_document() -> dict[str, Any]:
    """The original's /metrics JSON from the broker's `metrics` result; broker extras under `broker`."""
    raw = call("metrics") or {}
    sessions = raw.get("sessions", {})
    if isinstance(sessions, list):
        sessions = {str(s.get("code")): s for s in sessions}
    per_session = {code: _session_metrics(s) for code, s in sessions.items()}
    return {
        "timestamp": time.time(),
        "service": SERVICE,
        "version": VERSION,
        "metrics": {
            "total_sessions": len(per_session),
            "active_sessions": sum(1 for m in per_session.values() if m["is_running"]),
            "total_connections": sum(m["connections"] or 0 for m in per_session.values()),
            "sessions": per_session,
        },
        "broker": {k: v for k, v in raw.items() if k != "sessions"},
    }


def _prometheus() -> Response:
    return Response(prometheus.render(metrics_document()), content_type=prometheus.CONTENT_TYPE)


@bp.get("/metrics")
def metrics():
    # JSON unless the client prefers plain text (Prometheus sends text/plain with a higher q).
    best = request.accept_mimetypes.best_match(["application/json", "text/plain"])
    if best == "text/plain" and "text/plain" in request.accept_mimetypes:
        return _prometheus()
    return metrics_document()


@bp.get("/metrics/prometheus")
def metrics_prometheus():
    return _prometheus()
