"""``/``, ``/openapi.json`` and ``/docs``: the API described for machines and, interactively, for people.

``/openapi.json`` is flask-openapi3's document of every route. ``/docs`` is Swagger UI, served from
the static files of the flask-openapi3-swagger package (no CDN: it works offline). The page reads
``?token=`` from its own URL, keeps it in sessionStorage and sends it as a Bearer token on every
call it makes ("Try it out"), for a control that requires one.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template_string, url_for
from flask_openapi3_swagger.plugins import RegisterPlugin

from control.responses import content
from protocol.version import __version__ as VERSION
from control.shapes import SERVICE
from control.views import blueprint

bp = blueprint("docs", __name__, token=False)   # "/" needs the token (control.guard)

# The Swagger UI bundle's files (JS, CSS, icon) as the plugin ships them, at /docs/swagger/...
assets = Blueprint("swagger_assets", __name__,
                   static_folder=RegisterPlugin.register(doc_url="openapi.json").static_folder,
                   static_url_path="/docs/swagger")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ title }} {{ version }}</title>
<link rel="icon" href="{{ asset('images/swagger.svg') }}">
<link rel="stylesheet" href="{{ asset('css/swagger-ui.css') }}">
<style>body{margin:0;background:#fafafa}</style>
</head><body>
<div id="swagger-ui"></div>
<script src="{{ asset('js/swagger-ui-bundle.js') }}"></script>
<script src="{{ asset('js/swagger-ui-standalone-preset.js') }}"></script>
<script>
  const params = new URLSearchParams(window.location.search);
  if (params.get("token")) sessionStorage.setItem("phantomlink-token", params.get("token"));
  const token = sessionStorage.getItem("phantomlink-token");
  window.ui = SwaggerUIBundle({
    url: {{ spec_url|tojson }}, dom_id: "#swagger-ui", deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "BaseLayout", tryItOutEnabled: true, displayRequestDuration: true,
    requestInterceptor: (req) => {
      if (token) req.headers["Authorization"] = "Bearer " + token;
      return req;
    },
  });
</script>
</body></html>"""

# flask-openapi3 documents a 400 on every operation with its own array shape; ours declare theirs.
_AUTO_400 = {"type": "array", "items": {"$ref": "#/components/schemas/Error"}}


def document() -> dict[str, Any]:
    """The app's OpenAPI document, without the generic 400 on operations that cannot give one."""
    spec = current_app.api_doc  # type: ignore[attr-defined]
    for operations in spec["paths"].values():
        for op in operations.values():
            bad = op.get("responses", {}).get("400", {})
            if bad.get("content", {}).get("application/json", {}).get("schema") == _AUTO_400:
                del op["responses"]["400"]
    return spec


@bp.get("/openapi.json", summary="This OpenAPI document",
        responses={200: content("application/json", "OpenAPI 3.1", {"type": "object"})})
def openapi_json():
    return document()


@bp.get("/docs", summary="Interactive API reference (Swagger UI, served locally)",
        responses={200: content("text/html", "Swagger UI")})
def docs():
    return render_template_string(
        _PAGE, title=current_app.api_doc["info"]["title"], version=VERSION,  # type: ignore[attr-defined]
        spec_url=url_for("docs.openapi_json"),
        asset=lambda name: url_for("swagger_assets.static", filename=name))


@bp.get("/", summary="Service index: name, version and links",
        responses={200: content("application/json", "links", {"type": "object"})})
def index():
    return {"service": SERVICE, "version": VERSION,
            "description": "Replays a neural recording as live 40 Hz streams; this is its control API.",
            "docs": "/docs", "openapi": "/openapi.json", "health": "/health", "metrics": "/metrics"}
