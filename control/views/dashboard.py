"""``/dashboard``: the live dashboard's pages, its static files and where its WebSockets connect.

The pages are static HTML, CSS and ES modules from ``dashboard/static`` (no build step); they hold
no session data, so they are served without a token (contract 7: the API calls they make carry it).
"""
from __future__ import annotations

from flask import Response, current_app, request, send_from_directory
from pydantic import BaseModel, Field
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from control.extensions import config
from control.inputs import SessionPath
from control.responses import content, errors
from control.views import blueprint
from protocol.config import REPO_ROOT

STATIC_DIR = REPO_ROOT / "dashboard" / "static"

bp = blueprint("dashboard", __name__, url_prefix="/dashboard")

# Python's mimetypes does not know .mjs on every platform; a module script must be JavaScript.
MIME_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".css": "text/css"}

# The pages load only their own files; WebSockets may go to the bridge's port (another origin).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
PROXY_HEADERS = ("X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-For", "Forwarded")
HTML = {200: content("text/html", "the page (static HTML; its scripts call the API)")}

# Optional routes the page uses when this server has them (other features of the API add them).
FEATURES = {"perturbations": ("POST", "/api/control/x/perturbations"),
            "evaluation": ("GET", "/api/sessions/x/evaluation")}


class StaticPath(BaseModel):
    name: str = Field(description="a file under dashboard/static, e.g. `js/session.js`")


class Features(BaseModel):
    perturbations: bool = Field(description="the perturbation API exists")
    evaluation: bool = Field(description="the decoder-evaluation API exists")


class DashboardConfig(BaseModel):
    front_door: bool = Field(description="the request came through the front door: open "
                                         "WebSockets on the page's own origin")
    ws_port: int = Field(description="the WebSocket bridge's port, for pages on control's own port")
    stream_path: str
    features: Features


def _file(name: str) -> Response:
    suffix = name[name.rfind("."):] if "." in name else ""
    resp = send_from_directory(STATIC_DIR, name, mimetype=MIME_TYPES.get(suffix), max_age=0)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    if name.endswith(".html"):
        resp.headers["Content-Security-Policy"] = CSP
    return resp


@bp.get("", summary="The dashboard: list, create, open and delete sessions", responses=HTML)
def session_list():
    return _file("sessions.html")


@bp.get("/<code>", summary="The dashboard's live view of one session",
        responses={**HTML, **errors(404)})
def session_page(path: SessionPath):
    return _file("session.html")


@bp.get("/static/<path:name>", summary="The dashboard's static files (HTML, CSS, ES modules, "
        "vendored libraries)", responses={200: content("*/*", "the file"), **errors(404)})
def static_file(path: StaticPath):
    return _file(path.name)


def behind_proxy() -> bool:
    """Whether this request came through the front door rather than to control's own port.

    A reverse proxy keeps the browser's Host (Caddy does), so its port differs from the one control
    listens on; proxy headers, when the server keeps them, say the same.
    """
    if any(h in request.headers for h in PROXY_HEADERS):
        return True
    host = request.host
    port = host.rsplit(":", 1)[1] if ":" in host and not host.endswith("]") else None
    if port is None:
        port = "443" if request.scheme == "https" else "80"
    return port != str(request.environ.get("SERVER_PORT", ""))


def serves(method: str, path: str) -> bool:
    """Whether this app has a route for ``method path`` (asked of its URL map, nothing is called)."""
    try:
        current_app.url_map.bind("localhost").match(path, method=method)
    except RequestRedirect:
        return True
    except (NotFound, MethodNotAllowed):
        return False
    return True


@bp.get("/config.json", summary="Where the dashboard opens its WebSockets, and which optional "
        "routes it can use", responses={200: DashboardConfig})
def dashboard_config():
    return {"front_door": behind_proxy(), "ws_port": config().ws_port, "stream_path": "/stream",
            "features": {name: serves(*route) for name, route in FEATURES.items()}}
