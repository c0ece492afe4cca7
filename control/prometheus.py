"""Prometheus text exposition (format 0.0.4) of the metrics that ``GET /metrics`` returns as JSON."""
from __future__ import annotations

from typing import Any, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (metric, type, help, per-session field or None for the service-wide ones)
_PER_SESSION = (
    ("phantomlink_session_packets_sent_total", "counter", "Packets published", "packets_sent"),
    ("phantomlink_session_dropped_packets_total", "counter",
     "Packets skipped because they were too late", "dropped_packets"),
    ("phantomlink_session_connections", "gauge", "Live subscriptions naming the session",
     "connections"),
    ("phantomlink_session_running", "gauge", "1 while the session is playing", "is_running"),
    ("phantomlink_session_paused", "gauge", "1 while the session is paused", "is_paused"),
    ("phantomlink_session_current_packet", "gauge", "Packet id of the next packet to play",
     "current_packet"),
)
_STATS = (
    ("phantomlink_session_timing_error_seconds", "Lateness of packets vs their deadline",
     "timing_error_ms"),
    ("phantomlink_session_network_latency_seconds", "Deadline to send latency",
     "network_latency_ms"),
)


def _label(value: Any) -> str:
    text = str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return None


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, Any]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        text = _number(value)
        if text is not None:
            lines.append(f"{name}{labels} {text}")
    return lines


def render(doc: dict[str, Any]) -> str:
    """The exposition of a ``GET /metrics`` JSON document."""
    metrics = doc.get("metrics", {})
    sessions: dict[str, dict[str, Any]] = metrics.get("sessions", {})
    lines = _family("phantomlink_info", "gauge", "Service version",
                    [(f'{{version="{_label(doc.get("version"))}"}}', 1)])
    for key, help_text in (("total_sessions", "Sessions held by the broker"),
                           ("active_sessions", "Sessions playing"),
                           ("total_connections", "Live subscriptions over all sessions")):
        lines += _family(f"phantomlink_{key}", "gauge", help_text, [("", metrics.get(key))])
    for name, kind, help_text, field in _PER_SESSION:
        lines += _family(name, kind, help_text,
                         [(f'{{session="{_label(code)}"}}', s.get(field)) for code, s in sessions.items()])
    for name, help_text, field in _STATS:
        samples = []
        for code, s in sessions.items():
            for stat, value in (s.get(field) or {}).items():
                seconds = value / 1000 if _number(value) is not None and not isinstance(value, bool) else None
                samples.append((f'{{session="{_label(code)}",stat="{_label(stat)}"}}', seconds))
        lines += _family(name, "gauge", help_text, samples)
    return "\n".join(lines) + "\n"
