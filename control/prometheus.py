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
_STAT_KEYS = ("mean", "std", "max", "p99")
_STATS = (
    ("phantomlink_session_timing_error_seconds", "Lateness of packets vs their deadline",
     "timing_error_ms"),
    ("phantomlink_session_network_latency_seconds", "Time from building a packet to handing it to ZeroMQ",
     "network_latency_ms"),
)

# (metric, type, help, key in the broker's `process` map, scale to base units)
_PROCESS = (
    ("phantomlink_broker_resident_memory_bytes", "gauge", "Broker resident set size", "rss_mb", 1e6),
    ("phantomlink_broker_cpu_seconds_total", "counter", "Broker CPU time", "cpu_seconds", 1),
    ("phantomlink_broker_uptime_seconds", "gauge", "Broker uptime", "uptime_s", 1),
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
                           ("active_sessions", "Sessions playing to at least one subscriber"),
                           ("total_connections", "Live subscriptions over all sessions")):
        lines += _family(f"phantomlink_{key}", "gauge", help_text, [("", metrics.get(key))])
    for name, kind, help_text, field in _PER_SESSION:
        lines += _family(name, kind, help_text,
                         [(f'{{session="{_label(code)}"}}', s.get(field)) for code, s in sessions.items()])
    for name, help_text, field in _STATS:
        samples = []
        for code, s in sessions.items():
            values = s.get(field) or {}
            for stat in _STAT_KEYS:
                value = values.get(stat)
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                seconds = value / 1000 if ok else None
                samples.append((f'{{session="{_label(code)}",stat="{_label(stat)}"}}', seconds))
        lines += _family(name, "gauge", help_text, samples)
    process = metrics.get("process") or {}
    for name, kind, help_text, key, scale in _PROCESS:
        value = process.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        lines += _family(name, kind, help_text, [("", value * scale if ok else None)])
    return "\n".join(lines) + "\n"
