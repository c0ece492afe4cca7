"""``GET /health``: control's own liveness, always 200, with the broker's reachability in the body."""
from __future__ import annotations

import time

from protocol.version import __version__ as VERSION
from control.extensions import broker
from control.responses import Health
from control.shapes import now_iso
from control.views import blueprint
from protocol import CommandError

bp = blueprint("health", __name__, token=False)

# /health must stay quick for load balancers even while the broker is down.
PING_BUDGET_MS = 500


@bp.get("/health", summary="Liveness of control and reachability of the broker",
        description="Always 200 while control runs, even when the broker is down: `status` is "
                    "`healthy` when the broker answered a ping within 500 ms, else `degraded` "
                    "with `broker.reachable` false and the reason in `broker.error`.",
        responses={200: Health})
def health():
    client = broker()
    start = time.perf_counter()
    try:
        info = client.request("ping", budget_ms=PING_BUDGET_MS)
        link = {"reachable": True, "endpoint": client.endpoint,
                "latency_ms": round((time.perf_counter() - start) * 1000, 3), **(info or {})}
    except CommandError as exc:
        link = {"reachable": False, "endpoint": client.endpoint,
                "error": {"code": exc.code.value, "message": exc.message}}
    state_ok = (link.get("state") or {}).get("ok", True)   # the broker's saved sessions are safe
    return {
        "status": "healthy" if link["reachable"] and state_ok else "degraded",
        "version": VERSION,
        "timestamp": now_iso(),
        "broker": link,
    }
