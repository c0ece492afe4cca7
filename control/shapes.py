"""The original PhantomLink's JSON shapes, built from the broker's session, trial and metrics maps.

The broker speaks in Unix seconds and `state`; the original REST API spoke in ISO 8601 strings,
`is_running` and `active_connections`. These functions translate, keep every original field and
add ours after them. They never fail on a missing field: the broker may add fields within a
protocol version, and a field it drops becomes null rather than a 500.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from protocol.config import Config

SERVICE = "PhantomLink Core"


def iso(ts: Any) -> str | None:
    """Unix seconds -> ``2026-01-12T13:30:00.123Z`` (UTC); None stays None."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return None
    try:
        moment = datetime.fromtimestamp(ts, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso(datetime.now(timezone.utc).timestamp())  # type: ignore[return-value]


def stream_url(config: Config, code: str) -> str:
    return f"{config.stream_base()}/stream/{code}"


def session_summary(s: dict[str, Any], config: Config) -> dict[str, Any]:
    """One entry of ``GET /api/sessions``: the original's five fields, then ours."""
    state = s.get("state")
    return {
        "created_at": iso(s.get("created_at")),
        "last_accessed": iso(s.get("last_accessed")),
        "active_connections": s.get("subscribers", 0),
        "is_running": state == "playing",
        "current_packet": s.get("current_packet"),
        "state": state,
        "is_paused": state == "paused",
        "speed": s.get("speed"),
        "loop": s.get("loop"),
        "filter": s.get("filter"),
        "noise": s.get("noise"),
        "total_packets": s.get("total_packets"),
        "playlist_packets": s.get("playlist_packets"),
        "elapsed_seconds": s.get("elapsed_seconds"),
        "sequence_number": s.get("sequence_number"),
        "packets_sent": s.get("packets_sent"),
        "packets_skipped": s.get("packets_skipped"),
        "lsl": s.get("lsl"),
        "stream_url": stream_url(config, str(s.get("code", ""))),
    }


def session_detail(s: dict[str, Any], config: Config) -> dict[str, Any]:
    """``GET /api/sessions/{code}``: the summary with the code first."""
    return {"session_code": s.get("code"), **session_summary(s, config)}


def session_list(sessions: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """``GET /api/sessions``: README's ``total_sessions`` and the original server's ``stats``."""
    listed = {str(s.get("code")): session_summary(s, config) for s in sessions}
    return {"sessions": listed, "total_sessions": len(listed), "stats": session_stats(sessions, config)}


def session_stats(sessions: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """The original's session-manager summary (also ``GET /api/stats``'s ``session_manager``).

    ``running_sessions`` (the original's) counts sessions playing; ``active_sessions`` those
    playing to at least one subscriber (streaming), as in ``/metrics``.
    """
    connections = sum(s.get("subscribers", 0) or 0 for s in sessions)
    running = [s for s in sessions if s.get("state") == "playing"]
    return {
        "total_sessions": len(sessions),
        "running_sessions": len(running),
        "active_sessions": sum(1 for s in running if (s.get("subscribers") or 0) > 0),
        "total_connections": connections,
        "active_connections": connections,
        "max_sessions": config.max_sessions,
        "session_ttl_seconds": config.session_ttl_s,
    }


def created(s: dict[str, Any], config: Config) -> dict[str, Any]:
    """``POST /api/sessions/create``."""
    code = str(s.get("code"))
    return {
        "session_code": code,
        "stream_url": stream_url(config, code),
        "created_at": iso(s.get("created_at")),
        "message": "Session created. Use this code to stream independent neural data.",
        "session": session_detail(s, config),
    }


def stats(s: dict[str, Any]) -> dict[str, Any]:
    """``GET /api/stats/{code}``: the original's six fields, then ours."""
    state = s.get("state")
    return {
        "session_code": s.get("code"),
        "is_running": state == "playing",
        "current_packet": s.get("current_packet"),
        "total_packets": s.get("total_packets"),
        "elapsed_seconds": s.get("elapsed_seconds"),
        "active_connections": s.get("subscribers", 0),
        "state": state,
        "speed": s.get("speed"),
        "loop": s.get("loop"),
        "filter": s.get("filter"),
        "noise": s.get("noise"),
        "playlist_packets": s.get("playlist_packets"),
        "sequence_number": s.get("sequence_number"),
        "packets_sent": s.get("packets_sent"),
        "packets_skipped": s.get("packets_skipped"),
        "last_accessed": iso(s.get("last_accessed")),
    }


def control_result(status: str, s: dict[str, Any], config: Config, **extra: Any) -> dict[str, Any]:
    """Reply of ``POST /api/control/{code}/<action>``: the original's status + code, then the session."""
    return {"status": status, "session_code": s.get("code"), **extra,
            "session": session_detail(s, config)}


def position(s: dict[str, Any]) -> dict[str, Any]:
    """``GET /api/control/{code}/position``."""
    playlist = s.get("playlist_packets") or s.get("total_packets")
    current = s.get("current_packet")
    done = current / playlist if isinstance(current, int) and playlist else None
    return {"session_code": s.get("code"), "current_packet": current,
            "total_packets": s.get("total_packets"), "position_seconds": s.get("elapsed_seconds"),
            "playlist_packets": s.get("playlist_packets"), "progress": done,
            "state": s.get("state"), "is_running": s.get("state") == "playing"}


def trial(t: dict[str, Any]) -> dict[str, Any]:
    """One trial record: the broker's fields plus the original's NWB names for the target:
    ``active_target`` (= ``target_id``) and ``target_pos`` (= ``[target_x, target_y]``)."""
    x, y = t.get("target_x"), t.get("target_y")
    return {**t, "active_target": t.get("target_id"),
            "target_pos": [x, y] if x is not None and y is not None else None}


def trial_list(trials: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """``GET /api/trials``: README's ``total_trials`` and the original server's ``count``."""
    records = [trial(t) for t in trials]
    return {"trials": records, "total_trials": len(records), "count": len(records), **extra}
