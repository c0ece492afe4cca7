"""``/api/stats``: one session's playback statistics, and the service-wide summary."""
from __future__ import annotations

from control import shapes
from control.extensions import call, config
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
    summary = shapes.session_stats(call("list")["sessions"], config())
    return {"active_connections": summary["total_connections"], "session_manager": summary}
