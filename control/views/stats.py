"""``/api/stats``: one session's playback statistics, and the service-wide summary."""
from __future__ import annotations

from flask import Blueprint

from control import shapes
from control.bodies import session_code
from control.extensions import call

bp = Blueprint("stats", __name__, url_prefix="/api/stats")


@bp.get("/<code>")
def session_stats(code: str):
    return shapes.stats(call("get", code=session_code(code)))


@bp.get("")
def overall():
    """The original's ``GET /api/stats``: connection and session totals."""
    sessions = call("list")["sessions"]
    connections = sum(s.get("subscribers", 0) or 0 for s in sessions)
    return {
        "active_connections": connections,
        "session_manager": {
            "total_sessions": len(sessions),
            "active_sessions": sum(1 for s in sessions if s.get("state") == "playing"),
            "total_connections": connections,
        },
    }
