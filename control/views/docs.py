"""``/``, ``/openapi.json`` and ``/docs``: the API described for machines and, offline, for people.

``/docs`` is rendered on the server from the OpenAPI document (no JavaScript, no CDN), so it works
on a machine without internet access.
"""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, render_template_string

from control import openapi
from protocol.version import __version__ as VERSION
from control.shapes import SERVICE

bp = Blueprint("docs", __name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ info.title }} {{ info.version }}</title>
<style>
 body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
 h2{border-bottom:1px solid #ccc;margin-top:2rem} code,pre{background:#f4f4f4;border-radius:3px}
 pre{padding:.5rem;overflow-x:auto;font-size:.85rem} .op{margin:1rem 0 1.5rem}
 .m{display:inline-block;min-width:4.5rem;font-weight:bold;font-family:monospace}
 .get{color:#1a6} .post{color:#25c} .delete{color:#c33} table{border-collapse:collapse}
 td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
 nav a{margin-right:.8rem}
</style></head><body>
<h1>{{ info.title }} <small>{{ info.version }}</small></h1>
<p>{{ info.description }}</p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI {{ spec.openapi }}).</p>
<nav>{% for tag in tags %}<a href="#{{ tag }}">{{ tag }}</a>{% endfor %}</nav>
{% for tag in tags %}<h2 id="{{ tag }}">{{ tag }}</h2>
{% for op in ops if op.tag == tag %}<div class="op" id="{{ op.anchor }}">
<h3><span class="m {{ op.method }}">{{ op.method|upper }}</span> <code>{{ op.path }}</code></h3>
<p>{{ op.summary }}</p>{% if op.description %}<p>{{ op.description }}</p>{% endif %}
{% if op.params %}<table><tr><th>path parameter</th><th>schema</th><th>meaning</th></tr>
{% for p in op.params %}<tr><td><code>{{ p.name }}</code></td><td><code>{{ p.schema|tojson }}</code></td>
<td>{{ p.description }}</td></tr>{% endfor %}</table>{% endif %}
{% if op.body %}<p>Request body ({{ "required" if op.body_required else "optional" }}, JSON):</p>
<pre>{{ op.body }}</pre>{% endif %}
<table><tr><th>status</th><th>meaning</th><th>body</th></tr>
{% for r in op.responses %}<tr><td>{{ r.status }}</td><td>{{ r.description }}</td>
<td>{{ r.content }}</td></tr>{% endfor %}</table></div>
{% endfor %}{% endfor %}
<h2>Schemas</h2>
{% for name, schema in schemas %}<h3 id="schema-{{ name }}">{{ name }}</h3><pre>{{ schema }}</pre>
{% endfor %}
</body></html>"""


def _content(content: dict[str, Any]) -> str:
    parts = []
    for mime, media in content.items():
        ref = media.get("schema", {}).get("$ref", "")
        parts.append(f"{mime} {ref.rsplit('/', 1)[-1]}".strip())
    return "; ".join(parts)


def _operations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    ops = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ops.append({
                "tag": op["tags"][0], "method": method, "path": path,
                "anchor": f"{method}-{path}".replace("/", "-").strip("-"),
                "summary": op["summary"], "description": op.get("description", ""),
                "params": op.get("parameters", []),
                "body": json.dumps(body["schema"], indent=2) if body else "",
                "body_required": op.get("requestBody", {}).get("required", False),
                "responses": [{"status": status, "description": r["description"],
                               "content": _content(r.get("content", {}))}
                              for status, r in op["responses"].items()],
            })
    return ops


@bp.get("/openapi.json")
def openapi_json():
    return openapi.document()


@bp.get("/docs")
def docs():
    spec = openapi.document()
    return render_template_string(
        _PAGE, spec=spec, info=spec["info"], tags=[t["name"] for t in spec["tags"]],
        ops=_operations(spec),
        schemas=[(name, json.dumps(s, indent=2)) for name, s in spec["components"]["schemas"].items()])


@bp.get("/")
def index():
    return {"service": SERVICE, "version": VERSION,
            "description": "Replays a neural recording as live 40 Hz streams; this is its control API.",
            "docs": "/docs", "openapi": "/openapi.json", "health": "/health", "metrics": "/metrics"}
