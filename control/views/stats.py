"""``/api/stats``: one session's playback statistics, and the service-wide summary."""
from __future__ import annotations

from control import shapes
from control.extensions import call
from control.inputs import SessionPath
from control.responses import BROKER, Overall, Stats, errors
from control.views import blueprint

bp = blueprint("stats", __name__, url_prefix="/api/stats")


@bp.get("/<code>", summary="One session's playback statistics",
        responses={200: Stats, **errors(404), **BROKER})
def session_stats(path: SessionPath):
    return shapes.stats(call("get", code=path.code))


@bp.get("", summary="Service-wide session and connection totals (the original's)",
        responses={200: Overall, **BROKER})
def overall():
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
